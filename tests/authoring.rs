//! The author's loop: test URLs and their traces, samples, and field discovery, over real HTTP
//! and through the CLI.

use crate::support::backend::{Backend, Reply};
use crate::support::*;
use serde_json::{json, Value};

/// An inactive workflow with a schema, a mapping and a script that prints.
const ORDERS: &str = r#"
id: orders
active: false
schema:
  type: object
  required: [id]
  properties:
    id: { type: string }
mapping:
  order_id: { pointer: /id, type: string, required: true }
  total: { pointer: /total, type: number, default: 0 }
script: orders.rhai
"#;
const ORDERS_SCRIPT: &str = r#"
print(`order ${order_id}`);
if total > 1000 { throw "too big to handle"; }
#{ order: order_id, large: total > 100 }
"#;

const FORWARDING: &str = "id: relay\nmapping:\n  n: { pointer: /n }\nforward:\n  backend: svc\n  path: /in\n  body: variables\n";

fn gateway() -> Gateway {
    Gateway::custom(&[
        ("workflows/orders.yaml", ORDERS),
        ("scripts/orders.rhai", ORDERS_SCRIPT),
    ])
}

/// A gateway whose backend `svc` is `backend`, with the `relay` workflow forwarding to it.
fn forwarding_to(backend: &Backend, more: &[(&str, &str)]) -> Gateway {
    let config = format!(
        "{BASE_CONFIG}backends:\n  svc:\n    addresses: [\"{}\"]\n",
        backend.url()
    );
    let mut files = vec![
        ("gateway.yaml", config.as_str()),
        ("workflows/relay.yaml", FORWARDING),
    ];
    files.extend_from_slice(more);
    Gateway::custom(&files)
}

fn test_post(gateway: &Gateway, id: &str, body: &str) -> Response {
    gateway.post_json(&gateway.test_path(id), body)
}

fn steps(trace: &Value) -> Vec<(String, String)> {
    trace["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| {
            let name = step["step"].as_str().unwrap().to_string();
            (name, step["outcome"].as_str().unwrap().to_string())
        })
        .collect()
}

fn step<'a>(trace: &'a Value, name: &str) -> &'a Value {
    trace["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|step| step["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {trace}"))
}

#[test]
fn urls_list_a_distinct_test_url_for_every_workflow() {
    let gateway = gateway();
    let urls = gateway.urls();
    let url = urls["orders"]["url"].as_str().unwrap();
    let test_url = urls["orders"]["test_url"].as_str().unwrap();
    assert!(test_url.contains("/test-hooks/orders/"), "{test_url}");
    let token = |url: &str| url.rsplit('/').next().unwrap().to_string();
    assert_ne!(
        token(url),
        token(test_url),
        "knowing one URL gives no other"
    );

    let table = gateway.cli(&["urls"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains(test_url));
}

#[test]
fn test_url_runs_an_inactive_workflow_and_traces_every_step() {
    let gateway = gateway();
    assert_eq!(
        gateway
            .post_json(&gateway.path("orders"), r#"{"id":"o1"}"#)
            .error_code(),
        "workflow_inactive"
    );

    let response = test_post(&gateway, "orders", r#"{"id":"o1","total":250.5}"#);
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(response.header("x-run-id").is_some());
    let trace = response.json();
    assert_eq!(trace["test"], true);
    assert_eq!(trace["outcome"], "succeeded");
    assert_eq!(trace["workflow"]["active"], false);
    assert_eq!(
        steps(&trace),
        [
            ("decode".into(), "ok".into()),
            ("schema".into(), "ok".into()),
            ("mapping".into(), "ok".into()),
            ("script".into(), "ok".into()),
            ("forward".into(), "skipped".into()),
        ]
    );
    assert_eq!(
        trace["variables"],
        json!({"order_id": "o1", "total": 250.5})
    );
    assert_eq!(trace["result"], json!({"order": "o1", "large": true}));
    assert_eq!(step(&trace, "script")["printed"], json!(["order o1"]));
    assert_eq!(trace["received"]["headers"]["x-api-key"], "[redacted]");
    let pointers: Vec<&str> = trace["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|field| field["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(pointers, ["/id", "/total"]);
    assert!(step(&trace, "mapping")["duration_ms"].is_number());
}

#[test]
fn test_url_shows_the_failing_step_with_the_production_status() {
    let gateway = gateway();

    let invalid = test_post(&gateway, "orders", r#"{"total": 3}"#);
    assert_eq!(invalid.status, 422);
    let trace = invalid.json();
    assert_eq!(trace["outcome"], "failed");
    assert_eq!(trace["error"]["code"], "schema_violation");
    assert_eq!(step(&trace, "schema")["outcome"], "error");
    assert_eq!(step(&trace, "script")["outcome"], "skipped");
    assert_eq!(
        trace["fields"][0]["pointer"], "/total",
        "fields show even so"
    );

    let thrown = test_post(&gateway, "orders", r#"{"id":"o2","total":5000}"#);
    assert_eq!(thrown.status, 500);
    let script = step(&thrown.json(), "script").clone();
    assert_eq!(script["error"]["code"], "script_error");
    let detail = script["error"]["detail"].as_str().unwrap();
    assert!(detail.contains("too big to handle"), "{detail}");

    let not_json = test_post(&gateway, "orders", "{oops");
    assert_eq!(not_json.status, 400);
    assert_eq!(not_json.json()["error"]["code"], "invalid_json");

    let log = gateway.log();
    let line = log
        .lines()
        .find(|line| line.contains("url.kind=\"test\"") && line.contains("http.status=422"))
        .unwrap_or_else(|| panic!("no log line for the refused test event:\n{log}"));
    assert!(line.contains("error.code=\"schema_violation\""), "{line}");
}

#[test]
fn test_url_still_checks_the_caller_and_keeps_nothing_it_refused() {
    let gateway = gateway();
    let path = gateway.test_path("orders");

    let anonymous = gateway.send(&Request::post(&path, r#"{"id":"x"}"#));
    assert_eq!(anonymous.status, 401);
    let last = if path.ends_with('0') { '1' } else { '0' };
    let wrong_token = format!("{}{last}", &path[..path.len() - 1]);
    assert_eq!(gateway.post_json(&wrong_token, "{}").status, 404);

    let samples = gateway.admin_get("/api/v1/workflows/orders/samples").json();
    assert_eq!(samples["count"], 0, "{samples}");
}

#[test]
fn test_events_reach_a_backend_only_when_asked() {
    let backend = Backend::start(|_, _| Reply::json(201, r#"{"stored":true}"#));
    let gateway = forwarding_to(&backend, &[]);
    let path = gateway.test_path("relay");

    let dry = gateway.post_json(&path, r#"{"n": 1}"#);
    assert_eq!(dry.status, 200, "{}", dry.text());
    assert_eq!(step(&dry.json(), "forward")["outcome"], "skipped");

    let sent = Request::post(&path, r#"{"n": 2}"#)
        .header("x-api-key", TEST_KEY)
        .header("x-test-forward", "true");
    let wet = gateway.send(&sent);
    assert_eq!(
        wet.status, 201,
        "the backend's status, as production relays it"
    );
    let forward = step(&wet.json(), "forward").clone();
    assert_eq!(forward["output"]["status"], 201);
    assert_eq!(forward["output"]["body"], json!({"stored": true}));

    let received = backend.wait_for(1);
    assert_eq!(received.len(), 1, "the dry run sent nothing");
    assert_eq!(received[0].header("x-test-event"), Some("true"));
    let body: Value = serde_json::from_slice(&received[0].body).unwrap();
    assert_eq!(body, json!({"n": 2}));
}

#[test]
fn samples_keep_the_newest_events_with_secrets_redacted() {
    let config = format!("{BASE_CONFIG}samples:\n  per_workflow: 3\n  max_body_bytes: 64\n");
    let gateway = Gateway::custom(&[
        ("gateway.yaml", &config),
        ("workflows/orders.yaml", ORDERS),
        ("scripts/orders.rhai", ORDERS_SCRIPT),
    ]);
    let path = format!(
        "{}?api_key=secret-in-query&page=2",
        gateway.test_path("orders")
    );
    for n in 1..=5 {
        let request = Request::post(&path, format!(r#"{{"id":"o{n}"}}"#))
            .header("authorization", &format!("Bearer {TEST_KEY}"))
            .header("x-hub-signature-256", "sha256=abcdef")
            .header("cookie", "session=1")
            .header("x-delivery", &format!("d{n}"));
        assert_eq!(gateway.send(&request).status, 200);
    }
    let long = format!(r#"{{"id":"{}"}}"#, "x".repeat(100));
    assert_eq!(test_post(&gateway, "orders", &long).status, 200);

    let listed = gateway.admin_get("/api/v1/workflows/orders/samples").json();
    assert_eq!(listed["count"], 3);
    let samples = listed["samples"].as_array().unwrap();
    assert_eq!(samples[0]["body_truncated"], true);
    assert_eq!(samples[0]["body_bytes"], long.len());
    assert_eq!(samples[0]["body"].as_str().unwrap().len(), 64);
    assert_eq!(samples[1]["body"], r#"{"id":"o5"}"#);
    assert_eq!(samples[2]["body"], r#"{"id":"o4"}"#);

    let sample = &samples[1];
    assert_eq!(sample["source"], "test");
    for secret in ["authorization", "x-hub-signature-256", "cookie"] {
        assert_eq!(sample["headers"][secret], "[redacted]", "{secret}");
    }
    assert_eq!(sample["headers"]["x-delivery"], "d5");
    assert_eq!(sample["query"]["api_key"], "[redacted]");
    assert_eq!(sample["query"]["page"], "2");
    let text = listed.to_string();
    assert!(
        !text.contains(TEST_KEY) && !text.contains("secret-in-query") && !text.contains("abcdef")
    );

    let cleared = gateway.admin_send("DELETE", "/api/v1/workflows/orders/samples");
    assert_eq!(cleared.status, 200);
    assert_eq!(
        gateway.admin_get("/api/v1/workflows/orders/samples").json()["count"],
        0
    );
}

#[test]
fn production_events_are_sampled_only_when_the_workflow_asks() {
    let sampled = "id: sampled\nsamples: { production: true }\n";
    let unsampled = "id: unsampled\n";
    let gateway = Gateway::custom(&[
        ("workflows/sampled.yaml", sampled),
        ("workflows/unsampled.yaml", unsampled),
    ]);
    for id in ["sampled", "unsampled"] {
        assert_eq!(
            gateway.post_json(&gateway.path(id), r#"{"a":1}"#).status,
            200
        );
    }
    let count = |id: &str| {
        gateway
            .admin_get(&format!("/api/v1/workflows/{id}/samples"))
            .json()["count"]
            .clone()
    };
    assert_eq!(count("sampled"), 1);
    assert_eq!(count("unsampled"), 0);
    let sample = &gateway
        .admin_get("/api/v1/workflows/sampled/samples")
        .json()["samples"][0];
    assert_eq!(sample["source"], "production");
}

#[test]
fn fields_are_discovered_from_samples_and_the_proposal_loads_as_a_workflow() {
    let gateway = Gateway::custom(&[("workflows/draft.yaml", "id: draft\nactive: false\n")]);
    let events = [
        r#"{"id":"evt_1","amount":12,"customer":{"email":"a@example.com"},"tags":["x"]}"#,
        r#"{"id":"evt_2","amount":12.5,"customer":{"email":"b@example.com","vip":true},"tags":[]}"#,
    ];
    for event in events {
        assert_eq!(test_post(&gateway, "draft", event).status, 200);
    }

    let fields = gateway.admin_get("/api/v1/workflows/draft/fields").json();
    assert_eq!(fields["samples"], 2);
    let by_pointer = |pointer: &str| {
        fields["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|field| field["pointer"] == pointer)
            .unwrap_or_else(|| panic!("no {pointer} in {fields}"))
            .clone()
    };
    assert_eq!(by_pointer("/amount")["types"], json!(["integer", "number"]));
    assert_eq!(by_pointer("/customer/vip")["present"], 1);
    assert_eq!(by_pointer("/customer/vip")["presence"], 0.5);
    assert_eq!(by_pointer("/customer/email")["example"], "a@example.com");
    assert_eq!(
        fields["schema"]["required"],
        json!(["id", "amount", "customer", "tags"])
    );

    let mapping = gateway.remote(&["fields", "draft", "--show", "mapping"]);
    assert!(
        mapping.status.success(),
        "{}",
        String::from_utf8_lossy(&mapping.stderr)
    );
    let mapping = String::from_utf8(mapping.stdout).unwrap();
    assert!(
        mapping.contains("email:\n    pointer: /customer/email"),
        "{mapping}"
    );
    let schema = gateway.remote(&["fields", "draft", "--show", "schema"]);
    let schema: Value = serde_json::from_slice(&schema.stdout).unwrap();

    // The proposal pasted into the workflow file loads and serves the same events.
    let draft = format!(
        "id: draft\nschema: {}\n{mapping}",
        serde_json::to_string(&schema).unwrap()
    );
    std::fs::write(gateway.config_dir().join("workflows/draft.yaml"), draft).unwrap();
    let reload = gateway.admin_send("POST", "/api/v1/reload");
    assert_eq!(reload.status, 200, "{}", reload.text());
    let answer = gateway.post_json(&gateway.path("draft"), events[1]);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["email"], "b@example.com");
    assert_eq!(answer.json()["amount"], 12.5);

    let table = gateway.remote(&["fields", "draft"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("/customer/vip") && table.contains("1/2"),
        "{table}"
    );
}

#[test]
fn a_kept_sample_replays_through_the_changed_workflow() {
    let config = format!("{BASE_CONFIG}samples:\n  max_body_bytes: 40\n");
    let gateway = Gateway::custom(&[
        ("gateway.yaml", &config),
        ("workflows/orders.yaml", ORDERS),
        ("scripts/orders.rhai", ORDERS_SCRIPT),
    ]);
    let first = test_post(&gateway, "orders", r#"{"id":"o7","total":5000}"#);
    assert_eq!(first.status, 500, "the script throws above 1000");

    // The author fixes the script, then tries the same event again without resending it.
    let fixed = ORDERS_SCRIPT.replace("throw \"too big to handle\"", "print(\"big one\")");
    std::fs::write(gateway.config_dir().join("scripts/orders.rhai"), fixed).unwrap();
    assert_eq!(gateway.admin_send("POST", "/api/v1/reload").status, 200);

    let replayed = gateway.admin_send("POST", "/api/v1/workflows/orders/samples/latest/replay");
    assert_eq!(replayed.status, 200, "{}", replayed.text());
    let trace = replayed.json();
    assert_eq!(trace["outcome"], "succeeded", "{trace}");
    assert_eq!(trace["result"], json!({"order": "o7", "large": true}));
    assert_eq!(
        step(&trace, "script")["printed"],
        json!(["order o7", "big one"])
    );
    assert_eq!(step(&trace, "forward")["outcome"], "skipped");
    assert_eq!(trace["replayed"]["config_version"], 2);

    let sample_id = gateway.admin_get("/api/v1/workflows/orders/samples").json()["samples"][0]
        ["id"]
        .as_str()
        .unwrap()
        .to_string();
    let cli = gateway.remote(&["replay", "orders", "--sample", &sample_id]);
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let printed: Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(printed["replayed"]["sample_id"], sample_id.as_str());

    let long = format!(r#"{{"id":"{}"}}"#, "x".repeat(60));
    assert_eq!(test_post(&gateway, "orders", &long).status, 200);
    let cut = gateway.admin_send("POST", "/api/v1/workflows/orders/samples/latest/replay");
    assert_eq!(
        (cut.status, cut.error_code()),
        (409, "sample_truncated".to_string())
    );
    let unknown = gateway.admin_send("POST", "/api/v1/workflows/orders/samples/nope/replay");
    assert_eq!(unknown.error_code(), "sample_not_found");
}

#[test]
fn credentials_under_provider_specific_names_are_redacted_too() {
    let gateway = gateway();
    let path = format!(
        "{}?private_key=pk1&pwd=pw1&session=s1&jwt=j1&page=2",
        gateway.test_path("orders")
    );
    let secrets = [
        ("paypal-transmission-sig", "sig-value-1"),
        ("ocp-apim-subscription-key", "apim-value-1"),
        ("x-jwt", "jwt-value-1"),
        ("x-passphrase", "pass-value-1"),
        ("x-credential", "cred-value-1"),
        ("x-webhook-hmac-sha512", "hmac-value-1"),
    ];
    let mut request = Request::post(&path, r#"{"id":"o1"}"#)
        .header("x-api-key", TEST_KEY)
        .header("x-github-event", "push");
    for (name, value) in secrets {
        request = request.header(name, value);
    }
    let trace = gateway.send(&request).json();

    let sample = gateway.admin_get("/api/v1/workflows/orders/samples").json();
    for shown in [&trace["received"], &sample["samples"][0]] {
        for (name, _) in secrets {
            assert_eq!(shown["headers"][name], "[redacted]", "{name}");
        }
        for name in ["private_key", "pwd", "session", "jwt"] {
            assert_eq!(shown["query"][name], "[redacted]", "{name}");
        }
        assert_eq!(shown["headers"]["x-github-event"], "push");
        assert_eq!(shown["query"]["page"], "2");
    }
    let everything = format!("{trace}{sample}");
    for (_, value) in secrets {
        assert!(!everything.contains(value), "{value} leaked");
    }
}

#[test]
fn a_test_event_answers_the_status_production_would() {
    let backend = Backend::start(|request, _| match request.path.as_str() {
        "/in" => Reply::json(404, r#"{"missing":true}"#),
        _ => Reply::json(200, "{}"),
    });
    let gateway = forwarding_to(
        &backend,
        &[("workflows/later.yaml", "id: later\nresponse: accept\n")],
    );

    let relayed = Request::post(&gateway.test_path("relay"), r#"{"n": 1}"#)
        .header("x-api-key", TEST_KEY)
        .header("x-test-forward", "true");
    let answer = gateway.send(&relayed);
    assert_eq!(answer.status, 404, "production relays the backend's status");
    let trace = answer.json();
    assert_eq!(trace["outcome"], "failed");
    assert_eq!(
        step(&trace, "forward")["output"]["body"],
        json!({"missing": true})
    );

    let accepted = test_post(&gateway, "later", "{}");
    assert_eq!(accepted.status, 202, "production accepts before running");
    assert_eq!(accepted.json()["outcome"], "succeeded");
}

#[test]
fn a_slow_request_to_a_removed_workflow_leaves_the_sample_budget_whole() {
    // A sample (a 300-byte body plus its headers) costs about 400 bytes: three leaked ones
    // would leave no room.
    let config = format!("{BASE_CONFIG}samples:\n  max_total_bytes: 1000\n");
    let gateway = Gateway::custom(&[
        ("gateway.yaml", &config),
        ("workflows/gone.yaml", "id: gone\n"),
        ("workflows/stays.yaml", "id: stays\n"),
    ]);
    let body = format!(r#"{{"pad":"{}"}}"#, "x".repeat(300));
    let length = body.len().to_string();
    let headers = [("x-api-key", TEST_KEY), ("content-length", length.as_str())];

    for _ in 0..3 {
        let path = gateway.test_path("gone");
        let mut stream = send_head(gateway.port, &path, &headers);
        let in_flight =
            || gateway.admin_get("/api/v1/workflows/gone").json()["counters"]["in_flight"] == 1;
        let deadline = std::time::Instant::now() + PATIENCE;
        while !in_flight() {
            assert!(
                std::time::Instant::now() < deadline,
                "the request never arrived"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::fs::rename(
            gateway.config_dir().join("workflows/gone.yaml"),
            gateway.config_dir().join("gone.yaml.away"),
        )
        .unwrap();
        assert_eq!(gateway.admin_send("POST", "/api/v1/reload").status, 200);
        std::io::Write::write_all(&mut stream, body.as_bytes()).unwrap();
        let answer = read_response(&mut std::io::BufReader::new(stream)).unwrap();
        assert_eq!(
            answer.status, 200,
            "the request finishes on its configuration"
        );
        std::fs::rename(
            gateway.config_dir().join("gone.yaml.away"),
            gateway.config_dir().join("workflows/gone.yaml"),
        )
        .unwrap();
        assert_eq!(gateway.admin_send("POST", "/api/v1/reload").status, 200);
    }

    let kept = test_post(&gateway, "stays", &body).json();
    assert_eq!(kept["sample_kept"], true, "{kept}");
}

#[test]
fn a_proposed_schema_with_unusual_keys_loads_from_its_json_file() {
    let gateway = Gateway::custom(&[("workflows/odd.yaml", "id: odd\n")]);
    let body = "{\"line\u{2028}break\":1,\"next\u{85}line\":\"x\",\"a/b~c\":true}";
    assert_eq!(test_post(&gateway, "odd", body).status, 200);
    let schema = gateway.remote(&["fields", "odd", "--show", "schema"]);
    let mapping = gateway.remote(&["fields", "odd", "--show", "mapping"]);
    let dir = gateway.config_dir();
    std::fs::write(dir.join("workflows/odd.json"), &schema.stdout).unwrap();
    let workflow = format!(
        "id: odd\nschema_file: odd.json\n{}",
        String::from_utf8(mapping.stdout).unwrap()
    );
    std::fs::write(dir.join("workflows/odd.yaml"), workflow).unwrap();

    let reload = gateway.admin_send("POST", "/api/v1/reload");
    assert_eq!(reload.status, 200, "{}", reload.text());
    let answer = gateway.post_json(&gateway.path("odd"), body);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let values: Vec<Value> = answer
        .json()
        .as_object()
        .unwrap()
        .values()
        .cloned()
        .collect();
    assert_eq!(values, [json!(1), json!("x"), json!(true)]);
}

#[test]
fn a_replay_meets_the_workflows_current_rules_and_its_original_headers() {
    let workflow =
        "id: chan\ntrigger:\n  methods: [POST, PUT]\nmapping:\n  chan: { header: X-Chan }\n";
    let gateway = Gateway::custom(&[("workflows/chan.yaml", workflow)]);
    let request = Request::new("PUT", &gateway.test_path("chan"))
        .header("content-type", "application/json")
        .header("x-api-key", TEST_KEY)
        .header("x-chan", "a")
        .header("x-chan", "b");
    let mut request = request;
    request.body = br#"{"n":1}"#.to_vec();
    let tested = gateway.send(&request);
    assert_eq!(tested.status, 200, "{}", tested.text());

    let replay = || {
        gateway
            .admin_send("POST", "/api/v1/workflows/chan/samples/latest/replay")
            .json()
    };
    assert_eq!(
        replay()["variables"],
        tested.json()["variables"],
        "repeated headers map alike"
    );

    let narrowed = workflow.replace("[POST, PUT]", "[POST]");
    std::fs::write(gateway.config_dir().join("workflows/chan.yaml"), &narrowed).unwrap();
    assert_eq!(gateway.admin_send("POST", "/api/v1/reload").status, 200);
    let refused = replay();
    assert_eq!(refused["status"], 405, "{refused}");
    assert_eq!(refused["error"]["code"], "method_not_allowed");
    assert_eq!(step(&refused, "decode")["outcome"], "skipped");

    let small = format!("{}max_body_bytes: 4\n", workflow);
    std::fs::write(gateway.config_dir().join("workflows/chan.yaml"), small).unwrap();
    assert_eq!(gateway.admin_send("POST", "/api/v1/reload").status, 200);
    assert_eq!(replay()["error"]["code"], "payload_too_large");
}
