//! The command line: `check` reports every problem, `test` runs the pipeline offline, and
//! `--log-format json` writes one JSON object per request.

use crate::support::*;
use std::process::Command;

fn check(files: &[(&str, &str)]) -> (bool, String) {
    let dir = ConfigDir::new(files);
    let output = Command::new(BINARY)
        .args(["check", "--config"])
        .arg(dir.config())
        .env("WEBHOOK_GATEWAY_STATE_DIR", dir.dir.path().join("state"))
        .env("TEST_API_KEY", TEST_KEY)
        .env("OTHER_API_KEY", OTHER_KEY)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn check_reports_every_problem_with_file_and_location() {
    let (ok, text) = check(&[
        ("workflows/a.yaml", "id: a\nmapping:\n  x: { pointer: \"no-slash\" }\n  y: { pointer: /a~2 }\nscript: broken.rhai\n"),
        ("scripts/broken.rhai", "let a = 1;\nlet b = ;\n"),
        ("workflows/b.yaml", "id: B!\ntrigger:\n  methods: [\"NOT A METHOD\"]\n  api_key:\n    keys: [nobody]\nschema: { type: nonsense }\n"),
        ("workflows/c.yaml", "id: c\nunknown_field: 1\n"),
        ("workflows/d.yaml", "id: dup\n"),
        ("workflows/e.yaml", "id: dup\n"),
        ("workflows/f.yaml", "id: f\nmapping:\n  a: { pointer: /a }\n  a: { pointer: /b }\n"),
        ("workflows/g.yaml", "id: g\nmapping:\n  t: { pointer: /t }\nforward:\n  backend: none\n  path: /x/{t}\n  headers:\n    pass: [X-Gitlab-Token]\n"),
    ]);
    assert!(!ok, "{text}");
    for expected in [
        "a.yaml: mapping.x.pointer",
        "a.yaml: mapping.y.pointer",
        "broken.rhai:2:",
        "b.yaml: id",
        "b.yaml: trigger.methods",
        "b.yaml: trigger.api_key.keys",
        "b.yaml: schema",
        "c.yaml: line 2 column 1",
        "e.yaml: id: \"dup\" is also the id of",
        "\"a\" is given twice",
        "g.yaml: forward.backend: no backend named \"none\"",
        "g.yaml: forward.path: {t} must be a required variable or have a default",
        "g.yaml: forward.headers.pass: \"X-Gitlab-Token\" looks like it carries credentials",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
}

#[test]
fn check_reports_unset_environment_variables_and_bad_limits() {
    let config = format!(
        "{BASE_CONFIG}limits:\n  max_body_bytes: ${{NO_SUCH_VARIABLE_HERE}}\n  max_json_depth: 0\n"
    );
    let (ok, text) = check(&[("gateway.yaml", &config)]);
    assert!(!ok);
    assert!(text.contains("NO_SUCH_VARIABLE_HERE is not set"), "{text}");

    let config = format!("{BASE_CONFIG}limits:\n  max_json_depth: 0\nserver:\n  listen: nowhere\n");
    let (ok, text) = check(&[("gateway.yaml", &config)]);
    assert!(!ok);
    assert!(
        text.contains("limits.max_json_depth") || text.contains("duplicate"),
        "{text}"
    );
}

#[test]
fn scripts_cannot_import_or_eval() {
    for source in ["import \"os\" as os;\n1", "eval(\"1 + 1\")"] {
        let (ok, text) = check(&[
            ("workflows/a.yaml", "id: a\nscript: a.rhai\n"),
            ("scripts/a.rhai", source),
        ]);
        assert!(!ok, "{source} compiled:\n{text}");
        assert!(text.contains("a.rhai:1:"), "{text}");
    }
}

#[test]
fn test_command_prints_variables_and_result() {
    let root = repo_root();
    let output = Command::new(BINARY)
        .args(["test", "order-created", "--event"])
        .arg(root.join("tests/fixtures/order-created.json"))
        .args(["--header", "X-Order-Channel: email", "--config"])
        .arg(root.join("gateway.yaml"))
        .env(
            "WEBHOOK_GATEWAY_STATE_DIR",
            tempfile::tempdir().unwrap().path(),
        )
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["variables"]["order_id"], "ord_1042");
    assert_eq!(report["variables"]["channel"], "email");
    assert_eq!(report["result"]["priority"], "normal");
    assert_eq!(report["result"]["item_count"], 3);
}

#[test]
fn test_command_reports_a_refusal_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let event = dir.path().join("event.json");
    std::fs::write(&event, r#"{"id": "x", "items": []}"#).unwrap();
    let output = Command::new(BINARY)
        .args(["test", "order-created", "--event"])
        .arg(&event)
        .arg("--config")
        .arg(repo_root().join("gateway.yaml"))
        .env("WEBHOOK_GATEWAY_STATE_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["error"]["code"], "schema_violation");
    assert_eq!(report["status"], 422);
}

#[test]
fn json_logs_carry_one_line_per_request_with_stable_fields() {
    let gateway = Start::custom(&[("workflows/echo.yaml", "id: echo\n")])
        .arg("--log-format")
        .arg("json")
        .run();
    let response = gateway.post_json(&gateway.path("echo"), "{}");
    let run_id = response.header("x-run-id").unwrap().to_string();
    gateway.post_json(&gateway.path("echo"), "{");

    // The line is written after the answer; wait for it rather than guess a delay.
    let deadline = std::time::Instant::now() + PATIENCE;
    let lines = loop {
        let lines: Vec<serde_json::Value> = gateway
            .log()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .filter(|line: &serde_json::Value| line["message"] == "request")
            .filter(|line| !is_readiness_probe(line))
            .collect();
        if lines.len() >= 2 || std::time::Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(lines.len(), 2, "{}", gateway.log());
    let ok = lines
        .iter()
        .find(|l| l["run.id"] == run_id.as_str())
        .expect("line with the run id");
    assert_eq!(ok["workflow.id"], "echo");
    assert_eq!(ok["http.status"], 200);
    assert!(ok["duration_ms"].is_number());
    let refused = lines.iter().find(|l| l["http.status"] == 400).unwrap();
    assert_eq!(refused["error.code"], "invalid_json");
}

/// The harness's own request that proves the listener belongs to the gateway it started.
fn is_readiness_probe(line: &serde_json::Value) -> bool {
    line["request.id"]
        .as_str()
        .is_some_and(|id| id.starts_with("readiness-probe"))
}

#[test]
fn check_refuses_a_mapping_that_reads_the_callers_credential() {
    let (ok, errors) = check(&[(
        "workflows/leaky.yaml",
        "id: leaky\nmapping:\n  key: { header: X-API-Key }\n  auth: { header: authorization }\n  trace: { header: X-Trace }\n  let: { pointer: /let }\n",
    )]);
    assert!(!ok);
    assert!(errors.contains("mapping.key.header"), "{errors}");
    assert!(errors.contains("mapping.auth.header"), "{errors}");
    assert!(!errors.contains("mapping.trace"), "{errors}");
    assert!(
        errors.contains("mapping.let: \"let\" is a Rhai keyword"),
        "{errors}"
    );
}

#[test]
fn check_reports_signature_settings_a_preset_fixes_or_hmac_lacks() {
    let (ok, text) = check(&[
        (
            "workflows/a.yaml",
            "id: a\nsignature:\n  preset: github\n  secret: x\n  header: X-Other\n",
        ),
        (
            "workflows/b.yaml",
            "id: b\nsignature:\n  preset: hmac\n  secret: x\n",
        ),
        ("workflows/c.yaml", "id: c\nsignature:\n  preset: stripe\n"),
        (
            "workflows/d.yaml",
            "id: d\nsignature:\n  preset: slack\n  secret: x\n  tolerance_seconds: 0\n",
        ),
    ]);
    assert!(!ok, "{text}");
    for expected in [
        "a.yaml: signature.header: is fixed by the preset",
        "b.yaml: signature.header: is required with `preset: hmac`",
        "c.yaml: signature: needs `secret` or `secrets`",
        "d.yaml: signature.tolerance_seconds: 0 is outside 1..=86400",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}
