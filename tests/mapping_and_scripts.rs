//! Mapping events to variables, and the Rhai sandbox that runs workflow scripts.

use crate::support::*;
use serde_json::json;

const MAPPING: &str = r#"
id: mapping
trigger:
  methods: [POST]
mapping:
  build: { pointer: /properties/sonar.analysis.buildnumber, type: integer, required: true }
  tilde: { pointer: /a~0b }
  slash: { pointer: /x~01y }
  empty_key: { pointer: / }
  severity: { pointer: "/m/application~1vnd.x+json; v=1/s" }
  second: { pointer: /list/1 }
  source: { header: X-Source, default: unknown }
  page: { query: page, type: integer, default: 1 }
  verbose: { query: verbose, type: boolean, default: false }
  label: { pointer: /label, type: string, default: none }
"#;
const DOCUMENT: &str = r#"{"properties":{"sonar.analysis.buildnumber":"1567096760967"},"a~b":1,"x~1y":2,"":"empty-key","m":{"application/vnd.x+json; v=1":{"s":"Medium"}},"list":["a","b"],"label":42}"#;

const SANDBOX_WORKFLOWS: &[(&str, &str)] = &[
    ("workflows/view.yaml", "id: view\nmapping:\n  who: { pointer: /who }\nscript: view.rhai\n"),
    ("scripts/view.rhai", "#{ who: who, vars_who: vars.who, event_n: event.n, source: headers[\"x-source\"], has_key: headers.contains(\"x-api-key\"), q: query.q }"),
    ("workflows/crash.yaml", "id: crash\nscript: crash.rhai\n"),
    ("scripts/crash.rhai", "let secret_detail = \"internal-detail-42\";\nlet x = secret_detail + 1;\nx.no_such_method()"),
    ("workflows/spin.yaml", "id: spin\nscript: spin.rhai\nscript_timeout_ms: 300\n"),
    ("scripts/spin.rhai", "let i = 0;\nloop { i += 1; }"),
    ("workflows/budget.yaml", "id: budget\nscript: budget.rhai\n"),
    ("scripts/budget.rhai", "let i = 0;\nwhile i < 100000000 { i += 1; }\ni"),
    ("workflows/reject.yaml", "id: reject\nmapping:\n  amount: { pointer: /amount, type: number, required: true }\nscript: reject.rhai\n"),
    ("scripts/reject.rhai", "if amount > 100 { reject(409, `amount ${amount} needs approval`) }\n#{ ok: true }"),
    ("workflows/grow.yaml", "id: grow\nscript: grow.rhai\n"),
    ("scripts/grow.rhai", "let s = \"x\";\nloop { s += s; }"),
    ("workflows/recurse.yaml", "id: recurse\nscript: recurse.rhai\n"),
    ("scripts/recurse.rhai", "fn down(n) { down(n + 1) }\ndown(0)"),
];

fn sandbox() -> Gateway {
    sandbox_with("scripts:\n  max_operations: 10000000000\n  timeout_ms: 5000\n")
}

fn sandbox_with(limits: &str) -> Gateway {
    let config = format!("{BASE_CONFIG}{limits}");
    let mut files = vec![("gateway.yaml", config.as_str())];
    files.extend_from_slice(SANDBOX_WORKFLOWS);
    Gateway::custom(&files)
}

#[test]
fn maps_pointers_headers_and_query_with_defaults_and_coercion() {
    let gateway = Gateway::custom(&[("workflows/mapping.yaml", MAPPING)]);
    let path = format!("{}?page=3&verbose=yes&page=9", gateway.path("mapping"));
    let response = gateway.send(
        &Request::post(&path, DOCUMENT)
            .header("x-api-key", TEST_KEY)
            .header("x-source", "ci"),
    );

    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.json(),
        json!({
            "build": 1567096760967i64, "tilde": 1, "slash": 2, "empty_key": "empty-key",
            "severity": "Medium", "second": "b", "source": "ci", "page": 3, "verbose": true,
            "label": "42"
        })
    );

    let defaults = gateway.post_json(
        &gateway.path("mapping"),
        r#"{"properties":{"sonar.analysis.buildnumber":7}}"#,
    );
    let body = defaults.json();
    assert_eq!(
        (
            body["source"].clone(),
            body["page"].clone(),
            body["label"].clone()
        ),
        (json!("unknown"), json!(1), json!("none"))
    );
    assert_eq!(body["tilde"], serde_json::Value::Null);
}

#[test]
fn missing_required_field_is_422_naming_it() {
    let gateway = Gateway::custom(&[("workflows/mapping.yaml", MAPPING)]);
    for body in [
        r#"{}"#,
        r#"{"properties":{"sonar.analysis.buildnumber":null}}"#,
    ] {
        let response = gateway.post_json(&gateway.path("mapping"), body);
        assert_eq!(response.status, 422, "{body}");
        assert_eq!(response.error_code(), "missing_field");
        assert_eq!(response.json()["error"]["field"], "build");
    }
}

#[test]
fn uncoercible_value_is_422_invalid_field() {
    let gateway = Gateway::custom(&[("workflows/mapping.yaml", MAPPING)]);
    let response = gateway.post_json(
        &gateway.path("mapping"),
        r#"{"properties":{"sonar.analysis.buildnumber":"12a"}}"#,
    );
    assert_eq!(response.status, 422);
    assert_eq!(response.error_code(), "invalid_field");
    assert!(response.text().contains("12a"), "{}", response.text());

    let bad_query = format!("{}?page=two", gateway.path("mapping"));
    let response = gateway.send(
        &Request::post(
            &bad_query,
            r#"{"properties":{"sonar.analysis.buildnumber":1}}"#,
        )
        .header("x-api-key", TEST_KEY),
    );
    assert_eq!(response.status, 422);
    assert_eq!(response.json()["error"]["field"], "page");
}

#[test]
fn script_sees_variables_event_headers_and_query_but_not_the_key() {
    let gateway = sandbox();
    let path = format!("{}?q=found", gateway.path("view"));
    let request = Request::post(&path, r#"{"who": "ada", "n": 3}"#)
        .header("x-api-key", TEST_KEY)
        .header("x-source", "test");
    let response = gateway.send(&request);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.json(),
        json!({ "who": "ada", "vars_who": "ada", "event_n": 3, "source": "test", "has_key": false, "q": "found" })
    );
}

#[test]
fn runtime_error_is_500_with_the_run_id_and_no_internals() {
    let gateway = sandbox();
    let response = gateway.post_json(&gateway.path("crash"), "{}");
    assert_eq!(response.status, 500);
    assert_eq!(response.error_code(), "script_error");
    let run_id = response.json()["error"]["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(response.header("x-run-id"), Some(run_id.as_str()));
    assert!(!response.text().contains("internal-detail-42"));
    assert!(!response.text().contains("crash.rhai"));

    // The operator finds the detail in the log, under the run id.
    let log = gateway.log();
    assert!(
        log.lines()
            .any(|l| l.contains(&run_id) && l.contains("script failed")),
        "{log}"
    );
}

#[test]
fn a_script_error_is_logged_without_the_payload_values_it_quotes() {
    let gateway = Gateway::custom(&[
        (
            "workflows/pin.yaml",
            "id: pin\nmapping:\n  pin: { pointer: /pin }\nscript: pin.rhai\n",
        ),
        ("scripts/pin.rhai", "parse_int(pin) + 1"),
    ]);
    let response = gateway.post_json(&gateway.path("pin"), r#"{"pin":"secret-4711"}"#);
    assert_eq!(response.status, 500, "{}", response.text());
    let run_id = response.json()["error"]["run_id"]
        .as_str()
        .unwrap()
        .to_string();

    let log = gateway.log();
    let line = log
        .lines()
        .find(|l| l.contains(&run_id) && l.contains("script failed"))
        .unwrap_or_else(|| panic!("no script failure line:\n{log}"));
    assert!(
        line.contains("parse_int") || line.contains("integer"),
        "{line}"
    );
    assert!(!log.contains("secret-4711"), "{log}");
}

#[test]
fn endless_script_is_stopped_by_the_clock_with_504() {
    let gateway = sandbox();
    let started = std::time::Instant::now();
    let response = gateway.post_json(&gateway.path("spin"), "{}");
    assert_eq!(response.status, 504);
    assert_eq!(response.error_code(), "script_timeout");
    assert!(
        response.text().contains("time limit"),
        "{}",
        response.text()
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "stopped near its 300 ms limit"
    );
    assert_eq!(
        gateway
            .post_json(&gateway.path("reject"), r#"{"amount":1}"#)
            .status,
        200,
        "still serving"
    );
}

#[test]
fn exhausted_operation_budget_is_504() {
    let gateway = sandbox_with("scripts:\n  max_operations: 100000\n  timeout_ms: 5000\n");
    let response = gateway.post_json(&gateway.path("budget"), "{}");
    assert_eq!(response.status, 504);
    assert_eq!(response.error_code(), "script_timeout");
    assert!(
        response.text().contains("operation budget"),
        "{}",
        response.text()
    );
}

#[test]
fn script_can_reject_with_its_own_4xx() {
    let gateway = sandbox();
    let response = gateway.post_json(&gateway.path("reject"), r#"{"amount": 250}"#);
    assert_eq!(response.status, 409);
    assert_eq!(response.error_code(), "rejected");
    assert_eq!(
        response.json()["error"]["message"],
        "amount 250 needs approval"
    );
}

#[test]
fn runaway_memory_and_recursion_are_contained() {
    let gateway = sandbox();
    for id in ["grow", "recurse"] {
        let response = gateway.post_json(&gateway.path(id), "{}");
        assert!(
            matches!(response.status, 500 | 504),
            "{id}: {}",
            response.status
        );
        assert!(matches!(
            response.error_code().as_str(),
            "script_error" | "script_timeout"
        ));
    }
    assert_eq!(
        gateway
            .post_json(&gateway.path("reject"), r#"{"amount":1}"#)
            .status,
        200
    );
}
