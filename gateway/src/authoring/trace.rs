//! The answer of a test URL or a sample replay: what arrived, what each step of the pipeline
//! made of it, and how long each step took, so an author can see where an event goes wrong
//! without reading logs. [`run_steps`] runs decode, schema, mapping and script one by one;
//! the caller adds the forward step (or says why there is none) and finishes the trace.

use crate::authoring::fields::{discover, DiscoveryLimits};
use crate::authoring::samples::{redacted_headers, redacted_query};
use crate::config::{Config, ResponseMode, Workflow};
use crate::error::GatewayError;
use crate::pipeline::{self, Prepared, RequestParts};
use http::HeaderMap;
use serde_json::{json, Map, Value};
use std::time::Instant;

/// An event to trace, as it arrived.
pub struct Arrived<'a> {
    pub method: &'a str,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
}

/// The trace so far, what it shows besides its steps, and what the steps produced.
pub struct Traced {
    pub trace: Trace,
    /// Workflow, received, fields, event, variables, result.
    pub extra: Map<String, Value>,
    pub prepared: Option<Prepared>,
    /// The script's result, or the variables for a workflow without a script.
    pub result: Option<Value>,
}

/// Runs decode, schema, mapping and script as steps of a trace, on this thread.
pub fn run_steps(
    config: &Config,
    workflow: &Workflow,
    active: bool,
    arrived: &Arrived<'_>,
    run_id: &str,
) -> Traced {
    let mut trace = Trace::new();
    let mut extra = received(workflow, active, arrived);
    let parts = RequestParts {
        headers: arrived.headers,
        query: arrived.query,
        body: arrived.body,
    };

    let prepared = prepare_steps(&mut trace, config, workflow, &parts, &mut extra);
    let result = match &prepared {
        Some(prepared) => script_step(&mut trace, config, workflow, prepared, run_id),
        None => None,
    };
    if let Some(result) = &result {
        extra.insert("result".into(), result.clone());
        if workflow.response == ResponseMode::Accept {
            // Production accepts once the event is mapped and runs the rest later.
            trace.set_status(202);
        }
    }
    Traced {
        trace,
        extra,
        prepared,
        result,
    }
}

/// The trace of an event refused before its body was used (its method, its size), with every
/// step marked as not run.
pub fn refused(
    workflow: &Workflow,
    active: bool,
    arrived: &Arrived<'_>,
    error: &GatewayError,
) -> Traced {
    let mut trace = Trace::new();
    trace.refuse(error);
    trace.skip_rest("the request was refused before its body was used");
    Traced {
        trace,
        extra: received(workflow, active, arrived),
        prepared: None,
        result: None,
    }
}

/// Decode, schema and mapping, each a step of the trace.
fn prepare_steps(
    trace: &mut Trace,
    config: &Config,
    workflow: &Workflow,
    parts: &RequestParts<'_>,
    extra: &mut Map<String, Value>,
) -> Option<Prepared> {
    let limits = &config.limits;
    let formats = &workflow.formats;
    let decode = || pipeline::decode(parts, limits, formats, true);
    let event = trace.step("decode", decode, |_| None)?;
    let fields = discover(std::slice::from_ref(&event), &DiscoveryLimits::default()).fields;
    extra.insert("fields".into(), json!(fields));
    extra.insert("event".into(), event.clone());

    if workflow.schema.is_some() {
        trace.step("schema", || pipeline::validate(workflow, &event), |_| None)?;
    } else {
        trace.skip("schema", "the workflow has no schema");
    }

    let prepared = trace.step(
        "mapping",
        || pipeline::map(workflow, event, parts),
        |prepared| Some(Value::Object(prepared.variables.clone())),
    )?;
    extra.insert(
        "variables".into(),
        Value::Object(prepared.variables.clone()),
    );
    Some(prepared)
}

/// Runs the script to its end with its output captured.
fn script_step(
    trace: &mut Trace,
    config: &Config,
    workflow: &Workflow,
    prepared: &Prepared,
    run_id: &str,
) -> Option<Value> {
    if workflow.script.is_none() {
        trace.skip(
            "script",
            "the workflow has no script; its result is the mapped variables",
        );
        return Some(Value::Object(prepared.variables.clone()));
    }

    let started = Instant::now();
    let ran = pipeline::execute_traced(&config.engine, workflow, prepared, run_id);
    let duration_ms = elapsed_ms(started);
    match ran.outcome {
        Ok(result) => {
            let mut step = Map::new();
            step.insert("outcome".into(), json!("ok"));
            step.insert("output".into(), result.clone());
            step.insert("printed".into(), json!(ran.printed));
            trace.record("script", step, duration_ms);
            Some(result)
        }
        Err(error) => {
            trace.fail("script", &error, ran.detail, duration_ms);
            None
        }
    }
}

/// What arrived, as the trace shows it: credentials redacted.
fn received(workflow: &Workflow, active: bool, arrived: &Arrived<'_>) -> Map<String, Value> {
    let mut extra = Map::new();
    extra.insert(
        "workflow".into(),
        json!({
            "id": workflow.id,
            "active": active,
            "response": match workflow.response {
                ResponseMode::ReturnResults => "return_results",
                ResponseMode::Accept => "accept",
            },
        }),
    );
    extra.insert(
        "received".into(),
        json!({
            "method": arrived.method,
            "headers": redacted_headers(arrived.headers),
            "query": redacted_query(arrived.query, workflow.key_policy.query_param()),
            "body_bytes": arrived.body.len(),
        }),
    );
    extra
}

/// Steps in the order the pipeline runs them.
pub const STEPS: [&str; 5] = ["decode", "schema", "mapping", "script", "forward"];

/// Steps taken so far, and the outcome.
pub struct Trace {
    started: Instant,
    steps: Vec<Value>,
    error: Option<Value>,
    error_code: Option<&'static str>,
    status: u16,
}

impl Default for Trace {
    fn default() -> Self {
        Self::new()
    }
}

impl Trace {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            steps: Vec::new(),
            error: None,
            error_code: None,
            status: 200,
        }
    }

    /// Runs one step, timing it and recording its output (as `describe` shows it) or error.
    pub fn step<T>(
        &mut self,
        name: &'static str,
        work: impl FnOnce() -> Result<T, GatewayError>,
        describe: impl FnOnce(&T) -> Option<Value>,
    ) -> Option<T> {
        let started = Instant::now();
        let outcome = work();
        let duration_ms = elapsed_ms(started);
        match outcome {
            Ok(value) => {
                let mut step = json!({ "step": name, "outcome": "ok", "duration_ms": duration_ms });
                if let Some(output) = describe(&value) {
                    step["output"] = output;
                }
                self.steps.push(step);
                Some(value)
            }
            Err(error) => {
                self.fail(name, &error, None, duration_ms);
                None
            }
        }
    }

    /// Records a finished step whose outcome the caller computed (the script, the forward).
    pub fn record(&mut self, name: &'static str, step: Map<String, Value>, duration_ms: f64) {
        let mut entry = Map::new();
        entry.insert("step".into(), json!(name));
        entry.extend(step);
        entry.insert("duration_ms".into(), json!(duration_ms));
        self.steps.push(Value::Object(entry));
    }

    /// Records a failed step; the trace's status becomes the one a production caller would get.
    pub fn fail(
        &mut self,
        name: &'static str,
        error: &GatewayError,
        detail: Option<String>,
        duration_ms: f64,
    ) {
        let mut described = error.to_json(None)["error"].clone();
        if let Some(detail) = detail {
            described["detail"] = json!(detail);
        }
        self.steps.push(json!({
            "step": name, "outcome": "error", "duration_ms": duration_ms, "error": described
        }));
        self.status = error.status();
        self.error_code = Some(error.code());
        self.error = Some(described);
    }

    /// Records a refusal that comes before any step.
    pub fn refuse(&mut self, error: &GatewayError) {
        self.status = error.status();
        self.error_code = Some(error.code());
        self.error = Some(error.to_json(None)["error"].clone());
    }

    /// The stable code of the error that failed the trace, for the request's log line.
    pub fn error_code(&self) -> Option<&'static str> {
        self.error_code
    }

    /// Records a backend's answer to a forwarded event. A caller of a `return_results`
    /// workflow gets the backend's status, so `relayed` makes it the trace's status too, and
    /// an error status fails the step.
    pub fn answered(&mut self, name: &'static str, answer: Value, relayed: bool, duration_ms: f64) {
        let status = answer["status"]
            .as_u64()
            .and_then(|s| u16::try_from(s).ok());
        let status = status.unwrap_or(502);
        let mut step = json!({ "step": name, "outcome": "ok", "duration_ms": duration_ms });
        if status >= 400 {
            let backend = answer["backend"].as_str().unwrap_or_default().to_string();
            let error = GatewayError::BackendRejected { backend, status };
            let described = error.to_json(None)["error"].clone();
            step["outcome"] = json!("error");
            step["error"] = described.clone();
            self.error_code = Some(error.code());
            self.error = Some(described);
        }
        step["output"] = answer;
        self.steps.push(step);
        if relayed {
            self.status = status;
        }
    }

    /// Sets the status a production caller would get, for outcomes decided outside the steps
    /// (an accepted run answers 202 whatever happens later).
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    /// Marks the steps from `from` on as not run, with the reason.
    pub fn skip_rest(&mut self, reason: &str) {
        let done = self.steps.len();
        for name in STEPS.iter().skip(done) {
            self.skip(name, reason);
        }
    }

    pub fn skip(&mut self, name: &'static str, reason: &str) {
        self.steps
            .push(json!({ "step": name, "outcome": "skipped", "reason": reason }));
    }

    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// The status a production caller would have received.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The whole trace; `extra` (workflow, received, variables, result) is merged in.
    pub fn finish(self, extra: Map<String, Value>) -> Value {
        let mut trace = Map::new();
        trace.insert("test".into(), json!(true));
        trace.insert(
            "outcome".into(),
            json!(if self.error.is_some() {
                "failed"
            } else {
                "succeeded"
            }),
        );
        trace.insert("status".into(), json!(self.status));
        trace.extend(extra);
        trace.insert("steps".into(), Value::Array(self.steps));
        if let Some(error) = self.error {
            trace.insert("error".into(), error);
        }
        trace.insert("duration_ms".into(), json!(elapsed_ms(self.started)));
        Value::Object(trace)
    }
}

pub fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_micros() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_step_sets_the_status_and_the_rest_are_skipped() {
        let mut trace = Trace::new();
        let decoded = trace.step("decode", || Ok(json!({"a": 1})), |_| None);
        assert!(decoded.is_some());
        let checked: Option<()> = trace.step(
            "schema",
            || Err(GatewayError::MissingField("a".into())),
            |_| None,
        );
        assert!(checked.is_none());
        trace.skip_rest("an earlier step failed");

        assert!(trace.failed());
        let value = trace.finish(Map::new());
        assert_eq!(value["status"], 422);
        assert_eq!(value["outcome"], "failed");
        assert_eq!(value["error"]["code"], "missing_field");
        let steps = value["steps"].as_array().unwrap();
        assert_eq!(steps.len(), STEPS.len());
        assert_eq!(steps[1]["outcome"], "error");
        assert_eq!(steps[4]["step"], "forward");
        assert_eq!(steps[4]["outcome"], "skipped");
    }
}
