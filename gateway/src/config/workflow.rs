//! Validation of `workflows/*.yaml` into [`Workflow`]s: ids, triggers, schemas, mappings and
//! scripts, each problem reported with the workflow file and the field it concerns.

use super::file::{
    FormatFile, ForwardBodyFile, ForwardFile, MappingRuleFile, ResponseModeFile,
    SignatureAlgorithmFile, SignatureEncodingFile, SignatureFile, SignaturePresetFile,
    ValueTypeFile, WorkflowFile,
};
use super::settings::GatewaySettings;
use super::{
    intake, read_yaml, ConfigError, Problems, ResponseMode, Workflow, MAX_BODY_LIMIT_BYTES,
};
use crate::auth::KeyPolicy;
use crate::forward::{refusal, Forward, ForwardBody, PathTemplate, RetryPolicy};
use crate::mapping::{coerce, Mapping, Pointer, Rule, Source, ValueType};
use crate::payload::Format;
use crate::schema::Schema;
use crate::script::{CompiledScript, ScriptEngine, RESERVED_NAMES};
use crate::signature::{Algorithm, Encoding, Layout, Scheme, SignatureCheck, Signed};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Most variables one workflow may map.
const MAX_VARIABLES: usize = 256;

/// Loads every `*.yaml` / `*.yml` file of the workflows folder, sorted by id.
pub(super) fn load_all(
    gateway: &GatewaySettings,
    engine: &ScriptEngine,
    errors: &mut Vec<ConfigError>,
) -> Vec<Arc<Workflow>> {
    let mut workflows = Vec::new();
    for path in workflow_files(&gateway.workflows_dir, errors) {
        let Some(file) = read_yaml::<WorkflowFile>(&path, errors) else {
            continue;
        };
        if let Some(workflow) = validate(&path, file, gateway, engine, errors) {
            workflows.push(Arc::new(workflow));
        }
    }

    reject_duplicate_ids(&workflows, errors);
    workflows.sort_by(|a, b| a.id.cmp(&b.id));
    workflows
}

fn workflow_files(dir: &Path, errors: &mut Vec<ConfigError>) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => {
            Problems::new(dir, errors)
                .add("", format!("cannot read the workflows folder: {error}"));
            return Vec::new();
        }
    };

    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            )
        })
        // Hidden files are editors' lock and swap files (`.#order.yaml`), not workflows.
        .filter(|path| {
            !path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

fn reject_duplicate_ids(workflows: &[Arc<Workflow>], errors: &mut Vec<ConfigError>) {
    let mut first_seen: HashMap<&str, &Path> = HashMap::new();
    for workflow in workflows {
        if let Some(earlier) = first_seen.insert(&workflow.id, &workflow.source) {
            Problems::new(&workflow.source, errors).add(
                "id",
                format!("{:?} is also the id of {}", workflow.id, earlier.display()),
            );
        }
    }
}

fn validate(
    path: &Path,
    file: WorkflowFile,
    gateway: &GatewaySettings,
    engine: &ScriptEngine,
    errors: &mut Vec<ConfigError>,
) -> Option<Workflow> {
    let before = errors.len();
    let mut problems = Problems::new(path, errors);
    check_id(&file.id, &mut problems);

    let mapping = mapping(&file, &mut problems);
    let forward = file
        .forward
        .as_ref()
        .and_then(|forward| forward_settings(forward, &file, &mapping, gateway, &mut problems));
    let workflow = Workflow {
        methods: methods(&file.trigger.methods, &mut problems),
        formats: formats(&file.trigger.formats, &mut problems),
        key_policy: key_policy(&file, gateway, &mut problems),
        schema: schema(path, &file, &mut problems),
        mapping,
        forward,
        script: script(&file, gateway, engine, &mut problems),
        response: match file.response {
            ResponseModeFile::ReturnResults => ResponseMode::ReturnResults,
            ResponseModeFile::Accept => ResponseMode::Accept,
        },
        max_body_bytes: body_limit(&file, gateway, &mut problems),
        sample_production: file.samples.production,
        signature: file
            .signature
            .as_ref()
            .and_then(|signature| signature_check(signature, &mut problems)),
        allow_ips: intake::cidrs(&file.trigger.allow_ips, "trigger.allow_ips", &mut problems),
        limits: intake::caller_limits(file.limits.as_ref(), "limits", &mut problems),
        idempotency: intake::idempotency(file.idempotency.as_ref(), &mut problems),
        dependencies: dependencies(path, &file, gateway),
        id: file.id,
        description: file.description,
        active: file.active,
        source: path.to_path_buf(),
    };
    (errors.len() == before).then_some(workflow)
}

fn signature_check(file: &SignatureFile, problems: &mut Problems<'_>) -> Option<SignatureCheck> {
    let mut secrets: Vec<String> = file.secret.iter().cloned().collect();
    secrets.extend(file.secrets.iter().cloned());
    if file.secret.is_none() && file.secrets.is_empty() {
        problems.add("signature", "needs `secret` or `secrets`");
        return None;
    }
    if let Some(seconds) = file.tolerance_seconds {
        problems.in_range("signature.tolerance_seconds", seconds, 1..=86_400);
    }
    let tolerance = file
        .tolerance_seconds
        .map_or(crate::signature::DEFAULT_TOLERANCE, Duration::from_secs);

    let generic_fields = [
        ("header", file.header.is_some()),
        ("prefix", file.prefix.is_some()),
        ("algorithm", file.algorithm.is_some()),
        ("encoding", file.encoding.is_some()),
        ("timestamp_header", file.timestamp_header.is_some()),
    ];
    let preset = file.preset;
    if file.verify_token.is_some() && !matches!(preset, SignaturePresetFile::Meta) {
        problems.add("signature.verify_token", "only `preset: meta` takes it");
    }
    if !matches!(preset, SignaturePresetFile::Hmac) {
        for (name, given) in generic_fields {
            if given {
                problems.add(
                    format!("signature.{name}"),
                    "is fixed by the preset; only `preset: hmac` takes it",
                );
            }
        }
    }

    let check = match preset {
        SignaturePresetFile::Github => SignatureCheck::new(Scheme::github(), tolerance, secrets),
        SignaturePresetFile::Meta => SignatureCheck::meta(secrets, file.verify_token.clone()),
        SignaturePresetFile::Shopify => SignatureCheck::new(Scheme::shopify(), tolerance, secrets),
        SignaturePresetFile::Slack => SignatureCheck::new(Scheme::slack(), tolerance, secrets),
        SignaturePresetFile::Stripe => SignatureCheck::new(Scheme::stripe(), tolerance, secrets),
        SignaturePresetFile::Twilio => SignatureCheck::new(Scheme::twilio(), tolerance, secrets),
        SignaturePresetFile::StandardWebhooks => {
            SignatureCheck::standard_webhooks(secrets, tolerance)
                .map_err(|(position, message)| {
                    problems.add(format!("signature.secrets[{position}]"), message)
                })
                .ok()?
        }
        SignaturePresetFile::Hmac => {
            SignatureCheck::new(generic_scheme(file, problems)?, tolerance, secrets)
        }
    };
    if file.tolerance_seconds.is_some() && !check.scheme.signs_a_timestamp() {
        problems.add(
            "signature.tolerance_seconds",
            "this scheme signs no timestamp, so there is nothing to be tolerant about",
        );
    }
    if !check.has_secret() {
        // Failing closed, not failing to load: one missing secret must not stop the others.
        tracing::warn!(
            signature.preset = ?file.preset,
            "a workflow's signing secret is empty; it will refuse every request"
        );
    }
    Some(check)
}

/// The scheme `preset: hmac` describes field by field.
fn generic_scheme(file: &SignatureFile, problems: &mut Problems<'_>) -> Option<Scheme> {
    let header = header_name(file.header.as_deref(), "signature.header", problems)?;
    let timestamp_header = match file.timestamp_header.as_deref() {
        Some(name) => Some(header_name(
            Some(name),
            "signature.timestamp_header",
            problems,
        )?),
        None => None,
    };
    let signed = match timestamp_header {
        Some(_) => Signed::TimestampAndBody {
            before: "",
            between: ".",
        },
        None => Signed::Body,
    };
    let algorithm = match file.algorithm.unwrap_or(SignatureAlgorithmFile::Sha256) {
        SignatureAlgorithmFile::Sha1 => Algorithm::Sha1,
        SignatureAlgorithmFile::Sha256 => Algorithm::Sha256,
        SignatureAlgorithmFile::Sha512 => Algorithm::Sha512,
    };
    let encoding = match file.encoding.unwrap_or(SignatureEncodingFile::Hex) {
        SignatureEncodingFile::Hex => Encoding::Hex,
        SignatureEncodingFile::Base64 => Encoding::Base64,
    };
    let layout = Layout::Header {
        name: header,
        prefix: file.prefix.clone().unwrap_or_default(),
        timestamp_header,
    };
    Some(Scheme {
        name: "hmac",
        algorithm,
        encoding,
        layout,
        signed,
    })
}

/// A header name from the configuration, lowercased; reported when missing or invalid.
fn header_name(name: Option<&str>, location: &str, problems: &mut Problems<'_>) -> Option<String> {
    let Some(name) = name else {
        problems.add(location, "is required with `preset: hmac`");
        return None;
    };
    match http::HeaderName::from_bytes(name.trim().as_bytes()) {
        Ok(name) => Some(name.as_str().to_string()),
        Err(_) => {
            problems.add(location, format!("{name:?} is not a header name"));
            None
        }
    }
}

/// The schema file and script a workflow reads, so a change to them triggers a reload.
fn dependencies(path: &Path, file: &WorkflowFile, gateway: &GatewaySettings) -> Vec<PathBuf> {
    let schema = file
        .schema_file
        .as_ref()
        .map(|relative| path.parent().unwrap_or(Path::new(".")).join(relative));
    let script = file
        .script
        .as_ref()
        .map(|name| gateway.scripts_dir.join(name));
    schema.into_iter().chain(script).collect()
}

/// Ids appear in URLs and logs: lowercase letters, digits, `-` and `_`, at most 64.
fn check_id(id: &str, problems: &mut Problems<'_>) {
    let valid = (1..=64).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        problems.add(
            "id",
            format!(
                "{id:?} must be 1 to 64 of a-z, 0-9, '-' and '_', starting with a letter or digit"
            ),
        );
    }
}

fn methods(listed: &[String], problems: &mut Problems<'_>) -> Vec<String> {
    if listed.is_empty() {
        problems.add("trigger.methods", "lists no method");
    }
    let mut methods = Vec::new();
    for method in listed {
        let upper = method.trim().to_ascii_uppercase();
        if http::Method::from_bytes(upper.as_bytes()).is_err() || upper.is_empty() {
            problems.add(
                "trigger.methods",
                format!("{method:?} is not an http method"),
            );
        } else if !methods.contains(&upper) {
            methods.push(upper);
        }
    }
    methods
}

fn formats(listed: &[FormatFile], problems: &mut Problems<'_>) -> Vec<Format> {
    if listed.is_empty() {
        problems.add("trigger.formats", "lists no format");
    }
    let mut formats = Vec::new();
    for format in listed {
        let format = match format {
            FormatFile::Json => Format::Json,
            FormatFile::Form => Format::Form,
            FormatFile::Text => Format::Text,
        };
        if !formats.contains(&format) {
            formats.push(format);
        }
    }
    formats
}

fn key_policy(
    file: &WorkflowFile,
    gateway: &GatewaySettings,
    problems: &mut Problems<'_>,
) -> KeyPolicy {
    let policy = &file.trigger.api_key;
    for name in &policy.keys {
        if !gateway.keys.contains_name(name) {
            problems.add(
                "trigger.api_key.keys",
                format!("no api key named {name:?} in gateway.yaml"),
            );
        }
    }

    let query_param = policy.query.as_deref().map(str::trim).map(str::to_string);
    if query_param.as_deref() == Some("") {
        problems.add("trigger.api_key.query", "must name a query parameter");
    }
    if query_param.is_some() && !policy.required {
        problems.add("trigger.api_key.query", "is given but `required` is false");
    }

    match (policy.required, policy.keys.is_empty()) {
        (false, false) => {
            problems.add("trigger.api_key.keys", "lists keys but `required` is false");
            KeyPolicy::Open
        }
        (false, true) => KeyPolicy::Open,
        (true, true) => KeyPolicy::Required {
            allowed: None,
            query_param,
        },
        (true, false) => KeyPolicy::Required {
            allowed: Some(policy.keys.iter().cloned().collect::<HashSet<_>>()),
            query_param,
        },
    }
}

fn schema(path: &Path, file: &WorkflowFile, problems: &mut Problems<'_>) -> Option<Schema> {
    let document = match (&file.schema, &file.schema_file) {
        (Some(_), Some(_)) => {
            problems.add("schema", "give `schema` or `schema_file`, not both");
            return None;
        }
        (Some(inline), None) => inline.clone(),
        (None, Some(relative)) => read_schema_file(path, relative, problems)?,
        (None, None) => return None,
    };

    Schema::compile(&document)
        .map_err(|error| problems.add("schema", format!("invalid json schema: {error}")))
        .ok()
}

/// Reads a schema file in JSON or YAML, relative to the workflow file.
fn read_schema_file(
    workflow_path: &Path,
    relative: &str,
    problems: &mut Problems<'_>,
) -> Option<serde_json::Value> {
    let path = workflow_path
        .parent()
        .unwrap_or(Path::new("."))
        .join(relative);
    let text = std::fs::read_to_string(&path)
        .map_err(|error| {
            problems.add(
                "schema_file",
                format!("cannot read {}: {error}", path.display()),
            )
        })
        .ok()?;

    // A `.json` file is read as JSON: YAML would take U+2028 and U+0085 inside a string for
    // line breaks, and JSON writers (the gateway's own schema proposal among them) leave them
    // raw.
    let parsed = if path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("json"))
    {
        serde_json::from_str(&text).map_err(|error| error.to_string())
    } else {
        serde_yaml_ng::from_str(&text).map_err(|error| error.to_string())
    };
    parsed
        .map_err(|error| problems.add("schema_file", format!("{}: {error}", path.display())))
        .ok()
}

fn mapping(file: &WorkflowFile, problems: &mut Problems<'_>) -> Mapping {
    let key_query = file.trigger.api_key.query.as_deref().map(str::trim);
    for (name, rule) in &file.mapping {
        if rule.query.is_some() && rule.query.as_deref() == key_query {
            problems.add(
                format!("mapping.{name}.query"),
                "carries the caller's api key (`trigger.api_key.query`) and cannot be mapped",
            );
        }
    }
    if file.mapping.len() > MAX_VARIABLES {
        problems.add(
            "mapping",
            format!("maps more than {MAX_VARIABLES} variables"),
        );
    }
    let rules = file
        .mapping
        .iter()
        .filter_map(|(name, rule)| mapping_rule(name, rule, problems))
        .collect();
    Mapping::new(rules)
}

fn mapping_rule(name: &str, rule: &MappingRuleFile, problems: &mut Problems<'_>) -> Option<Rule> {
    let location = format!("mapping.{name}");
    check_variable_name(name, &location, problems);

    let source = mapping_source(rule, &location, problems)?;
    let value_type = match rule.value_type {
        ValueTypeFile::Any => ValueType::Any,
        ValueTypeFile::String => ValueType::String,
        ValueTypeFile::Integer => ValueType::Integer,
        ValueTypeFile::Number => ValueType::Number,
        ValueTypeFile::Boolean => ValueType::Boolean,
    };

    if rule.required && rule.default.is_some() {
        problems.add(&location, "a required variable cannot have a default");
    }
    let default = match rule.default.clone().map(|value| coerce(value, value_type)) {
        Some(Err(reason)) => {
            problems.add(format!("{location}.default"), format!("default {reason}"));
            None
        }
        other => other.and_then(Result::ok),
    };

    Some(Rule {
        name: name.to_string(),
        source,
        value_type,
        required: rule.required,
        default,
    })
}

/// Variables become Rhai variables, so they must be Rhai identifiers.
fn check_variable_name(name: &str, location: &str, problems: &mut Problems<'_>) {
    let mut chars = name.chars();
    let identifier = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !identifier {
        problems.add(
            location,
            "variable names must be letters, digits and '_', not starting with a digit",
        );
    } else if RESERVED_NAMES.contains(&name) {
        problems.add(
            location,
            format!("{name:?} is reserved; scripts already see it"),
        );
    } else if crate::script::RHAI_RESERVED_WORDS.contains(&name) {
        problems.add(
            location,
            format!("{name:?} is a Rhai keyword; a script could not use it as a variable"),
        );
    }
}

fn mapping_source(
    rule: &MappingRuleFile,
    location: &str,
    problems: &mut Problems<'_>,
) -> Option<Source> {
    match (&rule.pointer, &rule.header, &rule.query) {
        (Some(pointer), None, None) => Pointer::parse(pointer)
            .map(Source::Body)
            .map_err(|error| problems.add(format!("{location}.pointer"), error))
            .ok(),
        (None, Some(header), None) => {
            match http::HeaderName::from_bytes(header.trim().as_bytes()) {
                Ok(name) if crate::pipeline::HIDDEN_HEADERS.contains(&name.as_str()) => {
                    // The caller's credential for the gateway must not leave it in a result,
                    // a forwarded body or a run record; scripts do not see it either.
                    problems.add(
                        format!("{location}.header"),
                        format!("{header:?} carries the caller's credential and cannot be mapped"),
                    );
                    None
                }
                Ok(name) => Some(Source::Header(name.as_str().to_string())),
                Err(_) => {
                    problems.add(
                        format!("{location}.header"),
                        format!("{header:?} is not a header name"),
                    );
                    None
                }
            }
        }
        (None, None, Some(query)) if !query.is_empty() => Some(Source::Query(query.clone())),
        _ => {
            problems.add(
                location,
                "needs exactly one of `pointer`, `header` or `query`",
            );
            None
        }
    }
}

fn script(
    file: &WorkflowFile,
    gateway: &GatewaySettings,
    engine: &ScriptEngine,
    problems: &mut Problems<'_>,
) -> Option<CompiledScript> {
    let timeout = match file.script_timeout_ms {
        Some(ms) => {
            problems.in_range("script_timeout_ms", ms, 1..=60_000);
            Duration::from_millis(ms)
        }
        None => gateway.sandbox.timeout,
    };

    let name = file.script.as_deref()?;
    engine
        .compile(&gateway.scripts_dir.join(name), timeout)
        .map_err(|error| problems.add("script", error))
        .ok()
}

fn body_limit(
    file: &WorkflowFile,
    gateway: &GatewaySettings,
    problems: &mut Problems<'_>,
) -> usize {
    match file.max_body_bytes {
        Some(limit) => {
            problems.in_range("max_body_bytes", limit, 1..=MAX_BODY_LIMIT_BYTES);
            limit
        }
        None => gateway.limits.max_body_bytes,
    }
}

fn forward_settings(
    forward: &ForwardFile,
    file: &WorkflowFile,
    mapping: &Mapping,
    gateway: &GatewaySettings,
    problems: &mut Problems<'_>,
) -> Option<Forward> {
    if !gateway
        .backends
        .iter()
        .any(|backend| backend.name == forward.backend)
    {
        problems.add(
            "forward.backend",
            format!("no backend named {:?} in gateway.yaml", forward.backend),
        );
    }
    let method = forward
        .method
        .as_ref()
        .map(|m| m.trim().to_ascii_uppercase());
    if let Some(method) = &method {
        if method.is_empty() || http::Method::from_bytes(method.as_bytes()).is_err() {
            problems.add(
                "forward.method",
                format!("{method:?} is not an http method"),
            );
        }
    }

    let path = PathTemplate::parse(&forward.path)
        .map_err(|error| problems.add("forward.path", error))
        .ok()?;
    for name in path.variables() {
        let rule = mapping.rules().iter().find(|rule| rule.name == name);
        // An absent value would leave an empty segment and send the request somewhere else.
        if rule.is_some_and(|rule| !rule.required && rule.default.is_none()) {
            problems.add(
                "forward.path",
                format!("{{{name}}} must be a required variable or have a default"),
            );
        }
        if rule.is_none() {
            problems.add(
                "forward.path",
                format!("{{{name}}} is not a mapped variable"),
            );
        }
    }
    let sample = path.render(&serde_json::Map::new());
    if sample.contains('#') || sample.parse::<http::uri::PathAndQuery>().is_err() {
        problems.add(
            "forward.path",
            format!(
                "{:?} is not a valid path and query: percent-encode spaces and non-ASCII, no '#'",
                forward.path
            ),
        );
    }

    let body = match (forward.body, file.script.is_some()) {
        (Some(ForwardBodyFile::Original), _) => ForwardBody::Original,
        (Some(ForwardBodyFile::Variables), _) | (None, false) => ForwardBody::Variables,
        (Some(ForwardBodyFile::Script), true) | (None, true) => ForwardBody::Script,
        (Some(ForwardBodyFile::Script), false) => {
            problems.add(
                "forward.body",
                "`script` needs the workflow to have a script",
            );
            ForwardBody::Variables
        }
    };

    Some(Forward {
        backend: forward.backend.clone(),
        method,
        path,
        body,
        pass_headers: pass_headers(&forward.headers.pass, problems),
        add_headers: added_headers(forward, problems),
        retry: retry_policy(forward, problems),
    })
}

fn pass_headers(names: &[String], problems: &mut Problems<'_>) -> Vec<String> {
    let mut passed = Vec::new();
    for name in names {
        let lower = name.trim().to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            problems.add(
                "forward.headers.pass",
                format!("{name:?} is not a header name"),
            );
        } else if let Some(reason) = refusal(&lower) {
            problems.add(
                "forward.headers.pass",
                format!("{name:?} {reason}; it is never passed on"),
            );
        } else {
            passed.push(lower);
        }
    }
    passed
}

fn added_headers(forward: &ForwardFile, problems: &mut Problems<'_>) -> Vec<(String, String)> {
    let mut added = Vec::new();
    for (name, value) in &forward.headers.add {
        let lower = name.trim().to_ascii_lowercase();
        let valid_name = http::HeaderName::from_bytes(lower.as_bytes()).is_ok();
        let valid_value = http::HeaderValue::from_str(value).is_ok();
        // A workflow may add its own credentials for the backend, but not headers the gateway
        // owns or that describe the connection.
        let owned = refusal(&lower).filter(|_| !crate::forward::looks_secret(&lower));
        if !valid_name || !valid_value {
            problems.add(
                "forward.headers.add",
                format!("{name:?} is not a valid header"),
            );
        } else if let Some(reason) = owned {
            problems.add(
                "forward.headers.add",
                format!("{name:?} {reason}; it cannot be added"),
            );
        } else {
            added.push((lower, value.clone()));
        }
    }
    added
}

fn retry_policy(forward: &ForwardFile, problems: &mut Problems<'_>) -> RetryPolicy {
    let retry = &forward.retry;
    problems.in_range("forward.retry.max_attempts", retry.max_attempts, 1..=100);
    problems.in_range(
        "forward.retry.initial_backoff_ms",
        retry.initial_backoff_ms,
        1..=3_600_000,
    );
    problems.in_range(
        "forward.retry.max_backoff_ms",
        retry.max_backoff_ms,
        1..=86_400_000,
    );
    RetryPolicy {
        max_attempts: retry.max_attempts.clamp(1, 100),
        initial_backoff: Duration::from_millis(retry.initial_backoff_ms.max(1)),
        max_backoff: Duration::from_millis(
            retry.max_backoff_ms.max(retry.initial_backoff_ms).max(1),
        ),
    }
}
