//! The part of a run that does not depend on HTTP: decode and validate the payload, map it
//! to variables (`prepare`), then run the workflow's logic (`execute`). The edge, the
//! background pool and `webhook-gateway test` all go through these two functions, so an
//! offline test behaves exactly like a real request.

use crate::config::{Limits, Workflow};
use crate::error::GatewayError;
use crate::mapping::MappingInput;
use crate::metrics::{timed, Phase, PhaseLatency};
use crate::payload;
use crate::script::{ScriptEngine, ScriptFailure, ScriptInput, Timing};
use http::HeaderMap;
use serde_json::{Map, Value};

/// Headers a script never sees and a mapping cannot read: they carry the caller's credentials.
pub const HIDDEN_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "cookie",
];

/// What a request brings, read off the wire.
pub struct RequestParts<'a> {
    pub headers: &'a HeaderMap,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    pub body: &'a [u8],
}

/// A validated, mapped event, ready for the workflow's logic.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub event: Value,
    pub variables: Map<String, Value>,
    /// Lowercased header names; repeated headers joined with ", " (RFC 9110 §5.3).
    pub headers: Map<String, Value>,
    /// The first value of each query parameter.
    pub query: Map<String, Value>,
    /// The caller's `Content-Type` for a workflow that forwards: the first one when repeated,
    /// the one the body was decoded by.
    pub content_type: Option<String>,
}

/// Decodes, validates and maps a request for `workflow`.
pub fn prepare(
    workflow: &Workflow,
    limits: &Limits,
    parts: &RequestParts<'_>,
) -> Result<Prepared, GatewayError> {
    let event = decoded(workflow, limits, parts)?;
    map(workflow, event, parts)
}

/// [`prepare`], recording how long validation (decoding included) and mapping take.
pub fn prepare_timed(
    workflow: &Workflow,
    limits: &Limits,
    parts: &RequestParts<'_>,
    latency: &PhaseLatency,
) -> Result<Prepared, GatewayError> {
    let event = timed(Some(latency), Phase::Validation, || {
        decoded(workflow, limits, parts)
    })?;
    timed(Some(latency), Phase::Mapping, || {
        map(workflow, event, parts)
    })
}

/// The event decoded and checked against the workflow's schema.
fn decoded(
    workflow: &Workflow,
    limits: &Limits,
    parts: &RequestParts<'_>,
) -> Result<Value, GatewayError> {
    let event = decode(parts, limits, &workflow.formats, uses_event(workflow))?;
    validate(workflow, &event)?;
    Ok(event)
}

/// Checks the content type against the workflow's formats and decodes the body. A JSON body
/// becomes a tree only when `build_tree` is set; otherwise its syntax is checked and the event
/// is `null`. A form always becomes an object.
pub fn decode(
    parts: &RequestParts<'_>,
    limits: &Limits,
    accepted: &[payload::Format],
    build_tree: bool,
) -> Result<Value, GatewayError> {
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap_or("(not text)"));
    match payload::format_of(content_type, accepted)? {
        payload::Format::Form => return payload::parse_form(parts.body, limits.max_json_depth),
        payload::Format::Text => return payload::parse_text(parts.body),
        payload::Format::Json => {}
    }
    if build_tree {
        return payload::parse_json(parts.body, limits.max_json_depth);
    }
    payload::validate_json(parts.body, limits.max_json_depth)?;
    Ok(Value::Null)
}

/// Checks the event against the workflow's schema, if it has one.
pub fn validate(workflow: &Workflow, event: &Value) -> Result<(), GatewayError> {
    let Some(schema) = &workflow.schema else {
        return Ok(());
    };
    let (total, violations) = schema.violations(event);
    if total > 0 {
        return Err(GatewayError::SchemaViolation { total, violations });
    }
    Ok(())
}

/// Maps the event, headers and query to the workflow's variables.
pub fn map(
    workflow: &Workflow,
    event: Value,
    parts: &RequestParts<'_>,
) -> Result<Prepared, GatewayError> {
    let mut query = parse_query(parts.query);
    if let Some(credential) = workflow.key_policy.query_param() {
        query.retain(|(name, _)| name != credential);
    }
    let variables = workflow.mapping.apply(&MappingInput {
        event: &event,
        headers: parts.headers,
        query: &query,
    })?;

    // Only a script that names them and a forward (which passes some on) read the headers;
    // only a forward reads the content type.
    let forwards = workflow.forward.is_some();
    let reads_headers = forwards
        || workflow
            .script
            .as_ref()
            .is_some_and(|script| script.reads_headers());
    let headers = if reads_headers {
        visible_headers(parts.headers)
    } else {
        Map::new()
    };
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .filter(|_| forwards)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    Ok(Prepared {
        event,
        variables,
        headers,
        query: first_values(query),
        content_type,
    })
}

/// Whether anything after the mapping reads the decoded event: only a script that names
/// `event` does (a forward sends the original body, the script's result or the variables).
pub fn event_read_after_mapping(workflow: &Workflow) -> bool {
    workflow
        .script
        .as_ref()
        .is_some_and(|script| script.reads_event())
}

/// Whether anything reads the parsed event: a schema, a body pointer or a script. A workflow
/// that only forwards the body as received needs its syntax checked, not a tree built.
pub fn uses_event(workflow: &Workflow) -> bool {
    let keyed_by_body = workflow.idempotency.as_ref().is_some_and(|idempotency| {
        matches!(
            idempotency.source,
            crate::config::IdempotencySource::Pointer(_)
        )
    });
    keyed_by_body
        || workflow.schema.is_some()
        || workflow.script.is_some()
        || workflow
            .mapping
            .rules()
            .iter()
            .any(|rule| matches!(rule.source, crate::mapping::Source::Body(_)))
}

/// Runs the workflow's script to its end, or, for a workflow without one, returns the mapped
/// variables.
pub fn execute(
    engine: &ScriptEngine,
    workflow: &Workflow,
    prepared: &Prepared,
    run_id: &str,
) -> Result<Value, GatewayError> {
    let outcome = execute_timed(engine, workflow, prepared, run_id, Timing::whole())?;
    outcome.ok_or(GatewayError::Internal)
}

/// Like [`execute`], with the script's clock and inline slice given (see [`Timing`]):
/// `Ok(None)` when the script used up its slice and must be run again elsewhere.
pub fn execute_timed(
    engine: &ScriptEngine,
    workflow: &Workflow,
    prepared: &Prepared,
    run_id: &str,
    timing: Timing,
) -> Result<Option<Value>, GatewayError> {
    let Some(script) = &workflow.script else {
        return Ok(Some(Value::Object(prepared.variables.clone())));
    };

    let input = ScriptInput {
        variables: &prepared.variables,
        event: &prepared.event,
        headers: &prepared.headers,
        query: &prepared.query,
    };
    match engine.run(script, &input, timing) {
        Ok(value) => Ok(Some(value)),
        Err(ScriptFailure::Yielded) => Ok(None),
        Err(failure) => Err(into_gateway_error(failure, workflow, run_id)),
    }
}

/// A script run as a test URL shows it: the outcome, the error's detail, and what the
/// script printed.
pub struct ScriptTrace {
    pub outcome: Result<Value, GatewayError>,
    /// The script engine's own words for a failure: line, column and cause.
    pub detail: Option<String>,
    pub printed: Vec<String>,
}

/// Runs the script to its end with its output captured, keeping the failure's detail that
/// [`execute`] leaves in the log. The run happens on this thread.
pub fn execute_traced(
    engine: &ScriptEngine,
    workflow: &Workflow,
    prepared: &Prepared,
    run_id: &str,
) -> ScriptTrace {
    let Some(script) = &workflow.script else {
        return ScriptTrace {
            outcome: Ok(Value::Object(prepared.variables.clone())),
            detail: None,
            printed: Vec::new(),
        };
    };
    let input = ScriptInput {
        variables: &prepared.variables,
        event: &prepared.event,
        headers: &prepared.headers,
        query: &prepared.query,
    };

    let (outcome, printed) =
        crate::script::capture_output(|| engine.run(script, &input, Timing::whole()));
    let detail = match &outcome {
        Err(ScriptFailure::Runtime(detail)) => Some(detail.clone()),
        Err(ScriptFailure::MemoryExceeded) => {
            Some("the script held more memory than scripts.max_memory_bytes allows".into())
        }
        _ => None,
    };
    ScriptTrace {
        outcome: outcome.map_err(|failure| into_gateway_error(failure, workflow, run_id)),
        detail,
        printed,
    }
}

fn into_gateway_error(failure: ScriptFailure, workflow: &Workflow, run_id: &str) -> GatewayError {
    match failure {
        ScriptFailure::Rejected { status, message } => GatewayError::Rejected { status, message },
        ScriptFailure::TimedOut => GatewayError::ScriptTimeout("ran past its time limit"),
        ScriptFailure::BudgetExhausted => {
            GatewayError::ScriptTimeout("ran out of its operation budget")
        }
        // Only runs given a slice yield, and `execute_timed` handles those itself.
        ScriptFailure::Yielded => GatewayError::Internal,
        ScriptFailure::MemoryExceeded => {
            tracing::warn!(workflow.id = %workflow.id, run.id = run_id, "script exceeded its memory limit");
            GatewayError::ScriptError
        }
        ScriptFailure::Runtime(detail) => {
            // The detail stays out of the answer; the log gets it without the values it
            // quotes, which can come from the payload. The test URL shows it whole.
            tracing::warn!(
                workflow.id = %workflow.id,
                run.id = run_id,
                script.file = %script_name(workflow),
                error.detail = %quoted_values_hidden(&detail),
                "script failed"
            );
            GatewayError::ScriptError
        }
    }
}

/// `detail` with every quoted stretch ('...' or "...") replaced by `'…'`: the script engine
/// quotes the values it failed on ("Error parsing integer number 'x'"), and a value may be
/// part of a payload. A stray apostrophe hides more than needed, never less.
pub fn quoted_values_hidden(detail: &str) -> String {
    let mut shown = String::with_capacity(detail.len());
    let mut open_quote = None;
    for c in detail.chars() {
        match (open_quote, c) {
            (None, '\'' | '"') => {
                open_quote = Some(c);
                shown.push_str("'…'");
            }
            (None, _) => shown.push(c),
            (Some(quote), _) if c == quote => open_quote = None,
            (Some(_), _) => {}
        }
    }
    shown
}

fn script_name(workflow: &Workflow) -> String {
    workflow
        .script
        .as_ref()
        .map(|script| script.file.display().to_string())
        .unwrap_or_default()
}

/// Decodes `a=1&b=x%20y` into pairs, in order.
pub fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn first_values(pairs: Vec<(String, String)>) -> Map<String, Value> {
    let mut map = Map::new();
    for (name, value) in pairs {
        map.entry(name).or_insert(Value::String(value));
    }
    map
}

fn visible_headers(headers: &HeaderMap) -> Map<String, Value> {
    let mut map = Map::new();
    for name in headers.keys() {
        if HIDDEN_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let joined = headers
            .get_all(name)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        map.insert(name.as_str().to_string(), Value::String(joined));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::quoted_values_hidden;

    #[test]
    fn quoted_values_are_hidden_and_the_rest_is_kept() {
        assert_eq!(
            quoted_values_hidden("Error parsing integer number 'pw-123': invalid digit (line 1)"),
            "Error parsing integer number '…': invalid digit (line 1)"
        );
        assert_eq!(
            quoted_values_hidden(r#"Property not found: "a b" in 'x' and "y""#),
            "Property not found: '…' in '…' and '…'"
        );
        assert_eq!(quoted_values_hidden("unclosed 'rest of it"), "unclosed '…'");
        assert_eq!(quoted_values_hidden("no quotes"), "no quotes");
    }
}
