//! The Rhai sandbox that runs workflow scripts.
//!
//! Scripts are compiled once at load. Each run gets a fresh scope holding the mapped
//! variables (by name and as `vars`), the `event`, the `headers` and the `query`. The sandbox
//! bounds operations, call depth, expression depth, string, array and map sizes and wall-clock
//! time; `eval` is disabled and `import` is compiled out, so scripts have no file, module or
//! network access. A script ends a run with a client error through `reject(status, message)`.

use crate::config::SandboxLimits;
use rhai::{Dynamic, Engine, EvalAltResult, ImmutableString, Map as RhaiMap, Scope, AST};
use serde_json::{Map, Number, Value};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Variable names a workflow may not use, because the scope already holds them.
pub const RESERVED_NAMES: [&str; 4] = ["event", "headers", "query", "vars"];

thread_local! {
    /// Deadline of the run on this thread. Runs are synchronous Rhai evaluations, so the
    /// thread that set it is the thread whose progress callback reads it.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// A script ready to run.
pub struct CompiledScript {
    ast: AST,
    pub file: PathBuf,
    pub timeout: Duration,
}

impl std::fmt::Debug for CompiledScript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CompiledScript({})", self.file.display())
    }
}

/// What a script sees besides the variables.
pub struct ScriptInput<'a> {
    pub variables: &'a Map<String, Value>,
    pub event: &'a Value,
    pub headers: &'a Map<String, Value>,
    pub query: &'a Map<String, Value>,
}

/// How a run can fail.
#[derive(Debug, PartialEq)]
pub enum ScriptFailure {
    /// The script called `reject(status, message)` with a 4xx status.
    Rejected { status: u16, message: String },
    /// The wall-clock limit passed.
    TimedOut,
    /// The operation budget ran out.
    BudgetExhausted,
    /// Any other error: a bug in the script, or a sandbox limit other than time.
    Runtime(String),
}

/// Raised by `reject()`; a private type, so a script cannot forge one with `throw`.
#[derive(Debug, Clone)]
struct Rejection {
    status: u16,
    message: String,
}

/// The engine shared by every workflow, configured once with the sandbox limits.
pub struct ScriptEngine {
    engine: Engine,
}

impl ScriptEngine {
    pub fn new(limits: &SandboxLimits) -> Self {
        let mut engine = Engine::new();
        engine
            .set_max_operations(limits.max_operations)
            .set_max_call_levels(limits.max_call_levels)
            .set_max_expr_depths(64, 32)
            .set_max_string_size(limits.max_string_bytes)
            .set_max_array_size(limits.max_array_len)
            .set_max_map_size(limits.max_map_len)
            .set_max_variables(1_000)
            .set_max_functions(256);
        engine.disable_symbol("eval");
        engine.on_progress(past_deadline);
        engine.on_print(|text| tracing::info!(script.output = text, "script printed"));
        engine.on_debug(|text, _, position| {
            tracing::debug!(script.output = text, script.position = %position, "script debug")
        });
        engine.register_fn("reject", reject);
        Self { engine }
    }

    /// Compiles the script at `path`; an error names the file, line and column.
    pub fn compile(&self, path: &Path, timeout: Duration) -> Result<CompiledScript, String> {
        let source = std::fs::read_to_string(path)
            .map_err(|error| format!("{}: cannot read script: {error}", path.display()))?;

        let ast = self.engine.compile(&source).map_err(|error| {
            let position = error.position();
            format!(
                "{}:{}:{}: {}",
                path.display(),
                position.line().unwrap_or(0),
                position.position().unwrap_or(0),
                error.err_type()
            )
        })?;

        Ok(CompiledScript {
            ast,
            file: path.to_path_buf(),
            timeout,
        })
    }

    /// Runs `script` on this thread, within its time limit, and returns its value as JSON.
    pub fn run(
        &self,
        script: &CompiledScript,
        input: &ScriptInput<'_>,
    ) -> Result<Value, ScriptFailure> {
        let mut scope = build_scope(input);
        let _deadline = DeadlineGuard::set(Instant::now() + script.timeout);

        self.engine
            .eval_ast_with_scope::<Dynamic>(&mut scope, &script.ast)
            .map(|value| dynamic_to_json(&value))
            .map_err(|error| classify(&error))
    }
}

fn build_scope(input: &ScriptInput<'_>) -> Scope<'static> {
    let mut scope = Scope::new();
    for (name, value) in input.variables {
        scope.push_dynamic(name.as_str(), json_to_dynamic(value));
    }

    let vars: RhaiMap = input
        .variables
        .iter()
        .map(|(name, value)| (name.as_str().into(), json_to_dynamic(value)))
        .collect();
    scope.push_constant_dynamic("vars", Dynamic::from_map(vars));
    scope.push_constant_dynamic("event", json_to_dynamic(input.event));
    scope.push_constant_dynamic("headers", map_to_dynamic(input.headers));
    scope.push_constant_dynamic("query", map_to_dynamic(input.query));
    scope
}

/// Clears the thread's deadline when the run ends, however it ends.
struct DeadlineGuard;

impl DeadlineGuard {
    fn set(deadline: Instant) -> Self {
        DEADLINE.with(|cell| cell.set(Some(deadline)));
        Self
    }
}

impl Drop for DeadlineGuard {
    fn drop(&mut self) {
        DEADLINE.with(|cell| cell.set(None));
    }
}

/// Progress callback: stops the script once the deadline has passed. The clock is read every
/// 256 operations so that timing costs little.
fn past_deadline(operations: u64) -> Option<Dynamic> {
    if operations % 256 != 0 {
        return None;
    }
    let deadline = DEADLINE.with(Cell::get)?;
    (Instant::now() >= deadline).then(|| Dynamic::from("timeout"))
}

fn reject(status: rhai::INT, message: ImmutableString) -> Result<Dynamic, Box<EvalAltResult>> {
    let rejection = Rejection {
        status: u16::try_from(status).unwrap_or(0),
        message: message.to_string(),
    };
    Err(Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(rejection),
        rhai::Position::NONE,
    )))
}

fn classify(error: &EvalAltResult) -> ScriptFailure {
    match error.unwrap_inner() {
        EvalAltResult::ErrorRuntime(value, _) if value.is::<Rejection>() => {
            let rejection = value.clone().cast::<Rejection>();
            if (400..500).contains(&rejection.status) {
                ScriptFailure::Rejected {
                    status: rejection.status,
                    message: rejection.message,
                }
            } else {
                ScriptFailure::Runtime(format!(
                    "reject() needs a 4xx status, got {}",
                    rejection.status
                ))
            }
        }
        EvalAltResult::ErrorTerminated(..) => ScriptFailure::TimedOut,
        EvalAltResult::ErrorTooManyOperations(..) => ScriptFailure::BudgetExhausted,
        _ => ScriptFailure::Runtime(error.to_string()),
    }
}

/// JSON → Rhai. Integers beyond Rhai's 64-bit `INT` arrive as strings of their exact digits,
/// never as rounded floats.
pub fn json_to_dynamic(value: &Value) -> Dynamic {
    match value {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => number_to_dynamic(n),
        Value::String(s) => Dynamic::from(s.clone()),
        Value::Array(items) => Dynamic::from_array(items.iter().map(json_to_dynamic).collect()),
        Value::Object(map) => map_to_dynamic(map),
    }
}

fn map_to_dynamic(map: &Map<String, Value>) -> Dynamic {
    let converted: RhaiMap = map
        .iter()
        .map(|(key, value)| (key.as_str().into(), json_to_dynamic(value)))
        .collect();
    Dynamic::from_map(converted)
}

fn number_to_dynamic(number: &Number) -> Dynamic {
    if let Some(int) = number.as_i64() {
        return Dynamic::from_int(int);
    }
    let text = number.to_string();
    if text.contains(['.', 'e', 'E']) {
        Dynamic::from_float(number.as_f64().unwrap_or(f64::NAN))
    } else {
        Dynamic::from(text)
    }
}

/// Rhai → JSON. Values with no JSON form (functions, custom types) become their text.
pub fn dynamic_to_json(value: &Dynamic) -> Value {
    if value.is_unit() {
        return Value::Null;
    }
    if let Ok(b) = value.as_bool() {
        return Value::Bool(b);
    }
    if let Ok(int) = value.as_int() {
        return Value::Number(int.into());
    }
    if let Ok(float) = value.as_float() {
        return Number::from_f64(float).map_or(Value::Null, Value::Number);
    }
    if let Ok(c) = value.as_char() {
        return Value::String(c.to_string());
    }
    if let Some(text) = value.read_lock::<ImmutableString>() {
        return Value::String(text.to_string());
    }
    if let Some(items) = value.read_lock::<rhai::Array>() {
        return Value::Array(items.iter().map(dynamic_to_json).collect());
    }
    if let Some(blob) = value.read_lock::<rhai::Blob>() {
        return Value::Array(blob.iter().map(|byte| Value::from(*byte)).collect());
    }
    if let Some(map) = value.read_lock::<RhaiMap>() {
        let converted = map
            .iter()
            .map(|(key, value)| (key.to_string(), dynamic_to_json(value)))
            .collect();
        return Value::Object(converted);
    }
    Value::String(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn engine(max_operations: u64) -> ScriptEngine {
        ScriptEngine::new(&SandboxLimits {
            max_operations,
            max_call_levels: 16,
            max_string_bytes: 1024,
            max_array_len: 100,
            max_map_len: 100,
            timeout: Duration::from_millis(200),
        })
    }

    fn run_source(
        engine: &ScriptEngine,
        source: &str,
        variables: Value,
    ) -> Result<Value, ScriptFailure> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.rhai");
        std::fs::write(&path, source).unwrap();
        let script = engine.compile(&path, Duration::from_millis(200)).unwrap();

        let empty = Map::new();
        let variables = variables.as_object().cloned().unwrap_or_default();
        let event = json!({ "n": 2 });
        engine.run(
            &script,
            &ScriptInput {
                variables: &variables,
                event: &event,
                headers: &empty,
                query: &empty,
            },
        )
    }

    #[test]
    fn script_sees_variables_and_event_and_returns_json() {
        let result = run_source(
            &engine(10_000),
            r#"#{ doubled: x * event.n, same: vars.x == x, list: [1, "a", ()] }"#,
            json!({ "x": 21 }),
        );
        assert_eq!(
            result.unwrap(),
            json!({ "doubled": 42, "same": true, "list": [1, "a", null] })
        );
    }

    #[test]
    fn reject_ends_the_run_with_a_client_status() {
        let result = run_source(
            &engine(10_000),
            r#"reject(409, "duplicate order")"#,
            json!({}),
        );
        assert_eq!(
            result.unwrap_err(),
            ScriptFailure::Rejected {
                status: 409,
                message: "duplicate order".into()
            }
        );
        let bad = run_source(&engine(10_000), r#"reject(200, "not an error")"#, json!({}));
        assert!(matches!(bad.unwrap_err(), ScriptFailure::Runtime(_)));
    }

    #[test]
    fn endless_loop_hits_the_budget_or_the_clock() {
        let budget = run_source(&engine(5_000), "loop {}", json!({}));
        assert_eq!(budget.unwrap_err(), ScriptFailure::BudgetExhausted);
        let clock = run_source(&engine(u64::MAX), "loop {}", json!({}));
        assert_eq!(clock.unwrap_err(), ScriptFailure::TimedOut);
    }

    #[test]
    fn eval_and_oversized_strings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eval.rhai");
        std::fs::write(&path, r#"eval("1")"#).unwrap();
        let refused = engine(10_000).compile(&path, Duration::from_secs(1));
        assert!(refused.unwrap_err().contains("eval"));

        let big = run_source(
            &engine(100_000),
            r#"let s = "x"; loop { s += s; }"#,
            json!({}),
        );
        assert!(matches!(big.unwrap_err(), ScriptFailure::Runtime(_)));
    }

    #[test]
    fn compile_error_names_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.rhai");
        std::fs::write(&path, "let a = 1;\nlet b = ;\n").unwrap();
        let error = engine(10)
            .compile(&path, Duration::from_secs(1))
            .unwrap_err();
        assert!(error.contains("broken.rhai:2:"), "{error}");
    }

    #[test]
    fn integers_beyond_i64_reach_scripts_as_exact_digits() {
        let value: Value = serde_json::from_str("98765432109876543210").unwrap();
        assert_eq!(json_to_dynamic(&value).to_string(), "98765432109876543210");
        let fits: Value = serde_json::from_str("1497549923779084388").unwrap();
        assert_eq!(
            json_to_dynamic(&fits).as_int().unwrap(),
            1497549923779084388
        );
    }
}
