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
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Variable names a workflow may not use, because the scope already holds them.
pub const RESERVED_NAMES: [&str; 4] = ["event", "headers", "query", "vars"];

/// Rhai keywords and reserved words (Rhai book, "Keywords", plus `exit`, which Rhai 1.27's
/// tokenizer also reserves). Mapped variables become script variables, and a reserved word
/// cannot name a variable even when its feature is disabled. `Fn` is left out: names here
/// are lowercase.
pub const RHAI_RESERVED_WORDS: &[&str] = &[
    "as",
    "async",
    "await",
    "break",
    "call",
    "case",
    "catch",
    "const",
    "continue",
    "curry",
    "debug",
    "default",
    "do",
    "else",
    "eval",
    "exit",
    "export",
    "false",
    "fn",
    "for",
    "global",
    "go",
    "goto",
    "if",
    "import",
    "in",
    "is",
    "is_def_fn",
    "is_def_var",
    "is_shared",
    "let",
    "loop",
    "match",
    "module",
    "new",
    "nil",
    "null",
    "package",
    "print",
    "private",
    "protected",
    "public",
    "return",
    "shared",
    "spawn",
    "static",
    "super",
    "switch",
    "sync",
    "this",
    "thread",
    "throw",
    "true",
    "try",
    "type_of",
    "until",
    "use",
    "var",
    "void",
    "while",
    "with",
    "yield",
];

/// The limits of the run going on on this thread. Runs are synchronous Rhai evaluations, so
/// the thread that sets them is the thread whose progress callback reads them.
#[derive(Clone, Copy)]
struct RunLimits {
    deadline: Instant,
    /// When a run started inline must give its thread back (see [`Timing`]).
    yield_at: Option<Instant>,
    /// Heap bytes this thread had allocated when the run began.
    memory_baseline: isize,
    max_memory_bytes: isize,
}

thread_local! {
    static RUN_LIMITS: Cell<Option<RunLimits>> = const { Cell::new(None) };
    /// Lines printed by a traced run on this thread; `None` when nothing is tracing.
    static CAPTURED: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Most `print` and `debug` lines a traced run keeps, and most characters of each.
const MAX_CAPTURED_LINES: usize = 100;
const MAX_CAPTURED_CHARS: usize = 1_000;

/// Runs `work` (a script run on this thread) and returns what it printed, instead of sending
/// the lines to the log. Used by test URLs, whose trace shows a script's output.
pub fn capture_output<R>(work: impl FnOnce() -> R) -> (R, Vec<String>) {
    CAPTURED.with(|cell| *cell.borrow_mut() = Some(Vec::new()));
    let result = work();
    let lines = CAPTURED
        .with(|cell| cell.borrow_mut().take())
        .unwrap_or_default();
    (result, lines)
}

/// Keeps a printed line when this thread is capturing; returns false otherwise.
fn captured(text: &str) -> bool {
    CAPTURED.with(|cell| match cell.borrow_mut().as_mut() {
        Some(lines) => {
            if lines.len() < MAX_CAPTURED_LINES {
                lines.push(text.chars().take(MAX_CAPTURED_CHARS).collect());
            }
            true
        }
        None => false,
    })
}

const TIMEOUT_TOKEN: &str = "timeout";
const MEMORY_TOKEN: &str = "memory";
const YIELD_TOKEN: &str = "yield";

/// When a run's clock started, and whether it must stop early to move to another thread.
///
/// Most scripts finish in microseconds and run best right where the request is. A run given
/// `yield_after` stops once it has taken that long, so the caller can run it again from the
/// start where a long computation blocks nothing; scripts have no side effects, so the second
/// run computes what the first would have. The time limit counts from `started` either way.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub started: Instant,
    pub yield_after: Option<Duration>,
}

impl Timing {
    /// A run that goes to its end, timed from now.
    pub fn whole() -> Self {
        Self {
            started: Instant::now(),
            yield_after: None,
        }
    }
}

/// Which of the scope's shared values a script mentions. Converting the whole event into Rhai
/// values costs more than most scripts do, so a value the script never names is not built.
/// A script can only reach a scope variable by writing its name (`eval` is disabled), so a
/// word search of the source is a safe, if generous, test.
#[derive(Debug, Clone, Copy)]
struct ScopeUses {
    event: bool,
    headers: bool,
    query: bool,
    vars: bool,
}

impl ScopeUses {
    fn of(source: &str) -> Self {
        Self {
            event: mentions(source, "event"),
            headers: mentions(source, "headers"),
            query: mentions(source, "query"),
            vars: mentions(source, "vars"),
        }
    }
}

/// Whether `word` appears in `source` as a whole identifier.
fn mentions(source: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    source.match_indices(word).any(|(at, _)| {
        let before = source[..at].chars().next_back();
        let after = source[at + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// A script ready to run.
pub struct CompiledScript {
    ast: AST,
    uses: ScopeUses,
    pub file: PathBuf,
    pub timeout: Duration,
}

impl CompiledScript {
    /// Whether the script may read `event`, the whole decoded payload.
    pub fn reads_event(&self) -> bool {
        self.uses.event
    }

    /// Whether the script may read `headers`.
    pub fn reads_headers(&self) -> bool {
        self.uses.headers
    }
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
    /// The run allocated more than the sandbox's memory limit.
    MemoryExceeded,
    /// The run took longer than its inline slice and stopped so it can run elsewhere.
    Yielded,
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
    max_memory_bytes: usize,
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
        engine.on_progress(check_limits);
        engine.on_print(|text| {
            if !captured(text) {
                tracing::info!(script.output = text, "script printed");
            }
        });
        engine.on_debug(|text, _, position| {
            if !captured(text) {
                tracing::debug!(script.output = text, script.position = %position, "script debug");
            }
        });
        engine.register_fn("reject", reject);
        Self {
            engine,
            max_memory_bytes: limits.max_memory_bytes,
        }
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
            uses: ScopeUses::of(&source),
            file: path.to_path_buf(),
            timeout,
        })
    }

    /// Runs `script` on this thread, within its time limit, and returns its value as JSON.
    pub fn run(
        &self,
        script: &CompiledScript,
        input: &ScriptInput<'_>,
        timing: Timing,
    ) -> Result<Value, ScriptFailure> {
        let mut scope = build_scope(input, script.uses);
        let _limits = LimitsGuard::set(RunLimits {
            deadline: timing.started + script.timeout,
            yield_at: timing.yield_after.map(|slice| Instant::now() + slice),
            memory_baseline: crate::memory::thread_net_allocated(),
            max_memory_bytes: isize::try_from(self.max_memory_bytes).unwrap_or(isize::MAX),
        });

        self.engine
            .eval_ast_with_scope::<Dynamic>(&mut scope, &script.ast)
            .map(|value| dynamic_to_json(&value))
            .map_err(|error| classify(&error))
    }
}

fn build_scope(input: &ScriptInput<'_>, uses: ScopeUses) -> Scope<'static> {
    let mut scope = Scope::new();
    for (name, value) in input.variables {
        scope.push_dynamic(name.as_str(), json_to_dynamic(value));
    }

    // Names the script does not mention are still defined, as `()`, so that the scope looks
    // the same to every script.
    let only_if =
        |used: bool, convert: &dyn Fn() -> Dynamic| if used { convert() } else { Dynamic::UNIT };
    let vars = only_if(uses.vars, &|| map_to_dynamic(input.variables));
    let event = only_if(uses.event, &|| json_to_dynamic(input.event));
    let headers = only_if(uses.headers, &|| map_to_dynamic(input.headers));
    let query = only_if(uses.query, &|| map_to_dynamic(input.query));
    scope.push_constant_dynamic("vars", vars);
    scope.push_constant_dynamic("event", event);
    scope.push_constant_dynamic("headers", headers);
    scope.push_constant_dynamic("query", query);
    scope
}

/// Clears the thread's run limits when the run ends, however it ends.
struct LimitsGuard;

impl LimitsGuard {
    fn set(limits: RunLimits) -> Self {
        RUN_LIMITS.with(|cell| cell.set(Some(limits)));
        Self
    }
}

impl Drop for LimitsGuard {
    fn drop(&mut self) {
        RUN_LIMITS.with(|cell| cell.set(None));
    }
}

/// Progress callback, run after every operation: stops the script once it holds more memory
/// than allowed (a thread-local read), or, checked every 256 operations to keep timing cheap,
/// once its deadline has passed.
fn check_limits(operations: u64) -> Option<Dynamic> {
    let limits = RUN_LIMITS.with(Cell::get)?;
    let held = crate::memory::thread_net_allocated().wrapping_sub(limits.memory_baseline);
    if held > limits.max_memory_bytes {
        return Some(Dynamic::from(MEMORY_TOKEN));
    }
    if !operations.is_multiple_of(256) {
        return None;
    }
    let now = Instant::now();
    if now >= limits.deadline {
        return Some(Dynamic::from(TIMEOUT_TOKEN));
    }
    if limits.yield_at.is_some_and(|at| now >= at) {
        return Some(Dynamic::from(YIELD_TOKEN));
    }
    None
}

fn reject(status: rhai::INT, message: ImmutableString) -> Result<Dynamic, Box<EvalAltResult>> {
    let rejection = Rejection {
        status: u16::try_from(status).unwrap_or(0),
        message: message.to_string(),
    };
    // A termination, unlike a runtime error, cannot be caught by the script's own try/catch.
    Err(Box::new(EvalAltResult::ErrorTerminated(
        Dynamic::from(rejection),
        rhai::Position::NONE,
    )))
}

fn classify(error: &EvalAltResult) -> ScriptFailure {
    match error.unwrap_inner() {
        EvalAltResult::ErrorTerminated(token, _) if token.is::<Rejection>() => {
            rejection(token.clone().cast::<Rejection>())
        }
        EvalAltResult::ErrorTerminated(token, _) if token.to_string() == MEMORY_TOKEN => {
            ScriptFailure::MemoryExceeded
        }
        EvalAltResult::ErrorTerminated(token, _) if token.to_string() == YIELD_TOKEN => {
            ScriptFailure::Yielded
        }
        EvalAltResult::ErrorTerminated(..) => ScriptFailure::TimedOut,
        EvalAltResult::ErrorTooManyOperations(..) => ScriptFailure::BudgetExhausted,
        _ => ScriptFailure::Runtime(error.to_string()),
    }
}

/// Statuses whose meaning requires headers a script cannot set (RFC 9110 §15.5).
const NEEDS_HEADERS: [u16; 2] = [405, 407];

fn rejection(rejection: Rejection) -> ScriptFailure {
    if (400..500).contains(&rejection.status) && !NEEDS_HEADERS.contains(&rejection.status) {
        ScriptFailure::Rejected {
            status: rejection.status,
            message: rejection.message,
        }
    } else {
        ScriptFailure::Runtime(format!(
            "reject() needs a 4xx status other than 405 and 407, got {}",
            rejection.status
        ))
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
    // A float beyond f64's range would become infinity and break every comparison in the
    // script; like an oversized integer, it arrives as the text of its digits instead.
    match number.as_f64().filter(|float| float.is_finite()) {
        Some(float) if number.to_string().contains(['.', 'e', 'E']) => Dynamic::from_float(float),
        _ => Dynamic::from(number.to_string()),
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
            max_memory_bytes: 1 << 20,
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
            Timing::whole(),
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
    fn a_run_with_a_slice_yields_and_a_whole_run_finishes() {
        let engine = engine(u64::MAX);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slow.rhai");
        std::fs::write(&path, "let i = 0; while i < 200000 { i += 1; } i").unwrap();
        let script = engine.compile(&path, Duration::from_secs(30)).unwrap();
        let empty = Map::new();
        let input = ScriptInput {
            variables: &empty,
            event: &Value::Null,
            headers: &empty,
            query: &empty,
        };

        let sliced = Timing {
            started: Instant::now(),
            yield_after: Some(Duration::from_micros(100)),
        };
        assert_eq!(
            engine.run(&script, &input, sliced).unwrap_err(),
            ScriptFailure::Yielded
        );
        assert_eq!(
            engine.run(&script, &input, Timing::whole()).unwrap(),
            json!(200000)
        );
    }

    #[test]
    fn only_whole_identifiers_count_as_mentions() {
        assert!(mentions("event.id", "event"));
        assert!(mentions("let x = vars[\"a\"];", "vars"));
        assert!(!mentions("let events = 1; my_event", "event"));
        assert!(!mentions("queryString", "query"));
    }

    #[test]
    fn reject_cannot_be_caught_by_the_script() {
        let source = r#"try { reject(409, "dup") } catch (e) { 1 }"#;
        let result = run_source(&engine(10_000), source, json!({}));
        assert!(matches!(
            result.unwrap_err(),
            ScriptFailure::Rejected { status: 409, .. }
        ));
        let needs_header = run_source(&engine(10_000), r#"reject(405, "x")"#, json!({}));
        assert!(matches!(
            needs_header.unwrap_err(),
            ScriptFailure::Runtime(_)
        ));
    }

    #[test]
    fn floats_beyond_f64_reach_scripts_as_text() {
        let huge: Value = serde_json::from_str("1e400").unwrap();
        assert_eq!(json_to_dynamic(&huge).to_string(), "1e+400");
        let small: Value = serde_json::from_str("2.5").unwrap();
        assert_eq!(json_to_dynamic(&small).as_float().unwrap(), 2.5);
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
