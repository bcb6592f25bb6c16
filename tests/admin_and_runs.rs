//! Accepted runs: the background pool, its bound, and the run records on the admin API.

use crate::support::backend::Backend;
use crate::support::*;

const SLOW: &str = "id: slow\nresponse: accept\nscript: slow.rhai\nscript_timeout_ms: 1500\n";
const SLOW_SCRIPT: &str = "let i = 0;\nloop { i += 1; }";
const QUICK: &str = "id: quick\nresponse: accept\nmapping:\n  n: { pointer: /n, type: integer }\nscript: quick.rhai\n";
const QUICK_SCRIPT: &str =
    "if n < 0 { reject(400, \"n must not be negative\") }\n#{ doubled: n * 2 }";

fn gateway() -> Gateway {
    let config = format!("{BASE_CONFIG}runs:\n  workers: 1\n  queue_capacity: 1\nscripts:\n  max_operations: 10000000000\n");
    Gateway::custom(&[
        ("gateway.yaml", &config),
        ("workflows/slow.yaml", SLOW),
        ("scripts/slow.rhai", SLOW_SCRIPT),
        ("workflows/quick.yaml", QUICK),
        ("scripts/quick.rhai", QUICK_SCRIPT),
    ])
}

#[test]
fn accepted_run_records_its_result() {
    let gateway = gateway();
    let response = gateway.post_json(&gateway.path("quick"), r#"{"n": 21}"#);
    assert_eq!(response.status, 202);
    let run_id = response.json()["run_id"].as_str().unwrap().to_string();

    let record = gateway.wait_for_run(&run_id);
    assert_eq!(record["state"], "succeeded");
    assert_eq!(record["result"]["doubled"], 42);
    assert!(record["accepted_at"].is_string() && record["finished_at"].is_string());
}

#[test]
fn accepted_runs_read_the_event_and_headers_and_log_only_ends_that_did_not_succeed() {
    let peek = "let n = event.items[0].n;\nif n < 0 { reject(400, \"negative\") }\n#{ n: n, agent: headers[\"x-agent\"] }";
    let gateway = Gateway::custom(&[
        (
            "workflows/peek.yaml",
            "id: peek\nresponse: accept\nscript: peek.rhai\n",
        ),
        ("scripts/peek.rhai", peek),
    ]);
    let post = |n: i64| {
        let body = format!(r#"{{"items":[{{"n":{n}}}]}}"#);
        let request = Request::post(&gateway.path("peek"), body)
            .header("x-api-key", TEST_KEY)
            .header("x-agent", "probe/1");
        let response = gateway.send(&request);
        assert_eq!(response.status, 202, "{}", response.text());
        response.json()["run_id"].as_str().unwrap().to_string()
    };
    let succeeded = post(5);
    let rejected = post(-1);

    let record = gateway.wait_for_run(&succeeded);
    assert_eq!(record["state"], "succeeded");
    assert_eq!(
        record["result"],
        serde_json::json!({"n": 5, "agent": "probe/1"})
    );
    assert_eq!(gateway.wait_for_run(&rejected)["state"], "rejected");

    let log = gateway.log();
    let ended = |run_id: &str| {
        log.lines()
            .find(|line| line.contains("run ended") && line.contains(run_id))
            .map(str::to_string)
    };
    let line =
        ended(&rejected).unwrap_or_else(|| panic!("no end line for the rejected run:\n{log}"));
    assert!(line.contains("rejected"), "{line}");
    assert!(
        ended(&succeeded).is_none(),
        "a success is logged at debug only:\n{log}"
    );
}

#[test]
fn a_run_record_shows_results_and_bodies_nested_as_deep_as_the_intake_accepts() {
    let gateway = Gateway::custom(&[(
        "workflows/nested.yaml",
        "id: nested\nresponse: accept\nmapping:\n  a: { pointer: /a }\n",
    )]);
    // Deeper than serde_json's default reading limit of 128, within the default 256.
    let depth = 200;
    let body = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
    let response = gateway.post_json(&gateway.path("nested"), &body);
    assert_eq!(response.status, 202, "{}", response.text());

    let record = gateway.wait_for_run(response.json()["run_id"].as_str().unwrap());
    assert_eq!(record["state"], "succeeded");
    let mapped = &body[r#"{"a":"#.len()..body.len() - 1];
    assert_eq!(
        record["result"]["a"].to_string(),
        mapped,
        "the whole result, as JSON"
    );

    let run_id = record["run_id"].as_str().unwrap();
    let shown = gateway.admin_get(&format!("/api/v1/runs/{run_id}")).json();
    assert!(shown["input"]["body"].is_object(), "{}", shown["input"]);
}

#[test]
fn a_run_record_shows_a_repeated_header_with_its_values_joined() {
    let gateway = gateway();
    let request = Request::post(&gateway.path("quick"), r#"{"n": 1}"#)
        .header("x-api-key", TEST_KEY)
        .header("x-tag", "first")
        .header("x-tag", "second");
    let response = gateway.send(&request);
    assert_eq!(response.status, 202, "{}", response.text());

    let record = gateway.wait_for_run(response.json()["run_id"].as_str().unwrap());
    assert_eq!(record["input"]["headers"]["x-tag"], "first, second");
    assert_eq!(
        record["input"]["headers"]["x-api-key"],
        serde_json::Value::Null
    );
}

#[test]
fn accepted_run_that_rejects_is_recorded_as_rejected() {
    let gateway = gateway();
    let response = gateway.post_json(&gateway.path("quick"), r#"{"n": -1}"#);
    assert_eq!(
        response.status, 202,
        "validation passed; the script runs later"
    );
    let record = gateway.wait_for_run(response.json()["run_id"].as_str().unwrap());
    assert_eq!(record["state"], "rejected");
    assert_eq!(record["error"]["code"], "rejected");
}

#[test]
fn full_pool_answers_503_with_retry_after_and_drops_nothing_it_accepted() {
    let gateway = gateway();
    let path = gateway.path("slow");
    // One worker and one queue slot: while the first run spins for 1.5 s, at most two are taken.
    let responses: Vec<Response> = (0..4).map(|_| gateway.post_json(&path, "{}")).collect();
    let accepted: Vec<&Response> = responses.iter().filter(|r| r.status == 202).collect();
    let refused: Vec<&Response> = responses.iter().filter(|r| r.status == 503).collect();

    assert_eq!(
        accepted.len() + refused.len(),
        4,
        "{:?}",
        responses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!((1..=2).contains(&accepted.len()));
    for response in &refused {
        assert_eq!(response.error_code(), "overloaded");
        assert_eq!(response.header("retry-after"), Some("1"));
        assert!(
            response.json()["error"].get("run_id").is_none(),
            "a refused run has no id"
        );
    }
    for response in accepted {
        let record = gateway.wait_for_run(response.json()["run_id"].as_str().unwrap());
        assert_eq!(record["state"], "failed");
        assert_eq!(record["error"]["code"], "script_timeout");
    }
}

#[test]
fn unknown_run_and_unknown_admin_path_are_404() {
    let gateway = gateway();
    let response = gateway.admin_get("/api/v1/runs/does-not-exist");
    assert_eq!(response.status, 404);
    assert_eq!(response.error_code(), "run_not_found");
    assert_eq!(
        gateway.admin_get("/api/v1/nothing").error_code(),
        "not_found"
    );
}

#[test]
fn metrics_count_requests_by_workflow_and_status_class() {
    let gateway = Gateway::custom(&[
        ("workflows/echo.yaml", "id: echo\n"),
        ("workflows/later.yaml", "id: later\nresponse: accept\n"),
        ("workflows/broken.yaml", "id: broken\nscript: broken.rhai\n"),
        ("scripts/broken.rhai", "throw \"boom\";"),
        ("workflows/spin.yaml", "id: spin\nscript: spin.rhai\n"),
        ("scripts/spin.rhai", "loop { }"),
    ]);
    assert_eq!(gateway.post_json(&gateway.path("broken"), "{}").status, 500);
    assert_eq!(gateway.post_json(&gateway.path("spin"), "{}").status, 504);
    assert_eq!(gateway.post_json(&gateway.path("echo"), "{}").status, 200);
    assert_eq!(gateway.post_json(&gateway.path("echo"), "{").status, 400);
    let unauthorized = gateway.send(&Request::post(&gateway.path("echo"), "{}"));
    assert_eq!(unauthorized.status, 401);

    let anonymous = send(gateway.admin_port, &Request::new("GET", "/metrics"));
    assert_eq!(anonymous.status, 401, "metrics need the admin token");
    let metrics = gateway.admin_get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = metrics.text();
    for line in [
        "webhook_gateway_requests_total{workflow=\"echo\",class=\"2xx\"} 1",
        "webhook_gateway_requests_total{workflow=\"echo\",class=\"4xx\"} 2",
        "webhook_gateway_requests_total{workflow=\"later\",class=\"2xx\"} 0",
        "webhook_gateway_requests_in_flight{workflow=\"echo\"} 0",
        "webhook_gateway_workflows 4",
        "webhook_gateway_script_failures_total{workflow=\"broken\",kind=\"error\"} 1",
        "webhook_gateway_script_failures_total{workflow=\"spin\",kind=\"timeout\"} 1",
        "webhook_gateway_script_failures_total{workflow=\"echo\",kind=\"error\"} 0",
        "webhook_gateway_config_version 1",
        "# TYPE webhook_gateway_runs_unfinished gauge",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from:\n{text}"
        );
    }
    assert!(
        !text.contains(&gateway.path("echo")),
        "no paths (and their tokens) as labels"
    );
}

#[test]
fn metrics_show_phase_latency_run_ends_journal_lag_and_backend_health() {
    let live = Backend::ok();
    let gone = Backend::ok();
    let gone_address = gone.address;
    drop(gone);
    let backend = |name: &str, url: &str| {
        format!("  {name}:\n    addresses: [\"{url}\"]\n    connect_timeout_ms: 500\n    health_check:\n      path: /health\n      interval_ms: 60000\n")
    };
    let config = format!(
        "{BASE_CONFIG}backends:\n{}{}",
        backend("live", &live.url()),
        backend("gone", &format!("http://{gone_address}"))
    );
    let gateway = Gateway::custom(&[
        ("gateway.yaml", &config),
        ("workflows/relay.yaml", "id: relay\nforward:\n  backend: live\n  path: /in\n"),
        ("workflows/lost.yaml", "id: lost\nforward:\n  backend: gone\n  path: /in\n"),
        (
            "workflows/later.yaml",
            "id: later\nresponse: accept\nmapping:\n  fail: { pointer: /fail, type: boolean, default: false }\nscript: later.rhai\n",
        ),
        ("scripts/later.rhai", "if fail { throw \"boom\" }\n#{ ok: true }"),
    ]);

    assert_eq!(gateway.post_json(&gateway.path("relay"), "{}").status, 200);
    assert_eq!(gateway.post_json(&gateway.path("relay"), "{}").status, 200);
    let lost = gateway.post_json(&gateway.path("lost"), "{}").status;
    assert!(lost == 502 || lost == 503, "{lost}");
    let unrouted_count = || {
        let text = gateway.admin_get("/metrics").text();
        sample(&text, "webhook_gateway_unrouted_requests_total")
    };
    // The harness's own readiness probes may have been unrouted too.
    let unrouted_before = unrouted_count();
    let unrouted = gateway.post_json("/hooks/no-such-workflow/0123456789abcdef", "{}");
    assert_eq!(unrouted.status, 404);
    assert_eq!(unrouted_count(), unrouted_before + 1);
    let mut runs = Vec::new();
    for body in [r#"{"fail":false}"#, r#"{"fail":true}"#, r#"{"fail":false}"#] {
        let accepted = gateway.post_json(&gateway.path("later"), body);
        assert_eq!(accepted.status, 202, "{}", accepted.text());
        runs.push(accepted.json()["run_id"].as_str().unwrap().to_string());
    }
    for run in &runs {
        gateway.wait_for_run(run);
    }
    // Requests on a test URL are traced, not timed: the phases count production alone.
    let traced = gateway.post_json(&gateway.test_path("later"), r#"{"fail":false}"#);
    assert_eq!(traced.status, 202, "{}", traced.text());

    let live_line = format!(
        "webhook_gateway_backend_up{{backend=\"live\",address=\"{}\"}} 1",
        live.address
    );
    let gone_line =
        format!("webhook_gateway_backend_up{{backend=\"gone\",address=\"{gone_address}\"}} 0");
    let expected = [
        "webhook_gateway_phase_duration_seconds_count{workflow=\"relay\",phase=\"auth\"} 2",
        "webhook_gateway_phase_duration_seconds_count{workflow=\"relay\",phase=\"body\"} 2",
        "webhook_gateway_phase_duration_seconds_count{workflow=\"relay\",phase=\"validation\"} 2",
        "webhook_gateway_phase_duration_seconds_count{workflow=\"relay\",phase=\"mapping\"} 2",
        "webhook_gateway_phase_duration_seconds_count{workflow=\"relay\",phase=\"forward\"} 2",
        "webhook_gateway_phase_duration_seconds_count{workflow=\"relay\",phase=\"script\"} 0",
        "webhook_gateway_phase_duration_seconds_count{workflow=\"later\",phase=\"auth\"} 3",
        "webhook_gateway_request_duration_seconds_count{workflow=\"relay\"} 2",
        "webhook_gateway_request_duration_seconds_bucket{workflow=\"relay\",le=\"+Inf\"} 2",
        "webhook_gateway_runs_ended_total{workflow=\"later\",state=\"succeeded\"} 2",
        "webhook_gateway_runs_ended_total{workflow=\"later\",state=\"failed\"} 1",
        "webhook_gateway_run_script_failures_total{workflow=\"later\",kind=\"error\"} 1",
        "webhook_gateway_run_script_failures_total{workflow=\"later\",kind=\"timeout\"} 0",
        "webhook_gateway_journal_pending_changes 0",
        "# TYPE webhook_gateway_journal_lag_seconds histogram",
        &live_line,
        &gone_line,
    ];
    // Run ends reach the journal a few milliseconds after the runs end.
    let missing = || {
        let text = gateway.admin_get("/metrics").text();
        let absent = |line: &&&str| !text.lines().any(|l| l == **line);
        expected
            .iter()
            .filter(absent)
            .map(|line| line.to_string())
            .collect::<Vec<_>>()
    };
    let mut last_missing = Vec::new();
    wait_until("the metrics to show every request and run", || {
        last_missing = missing();
        last_missing.is_empty() || {
            eprintln!("still missing: {last_missing:?}");
            false
        }
    });

    let text = gateway.admin_get("/metrics").text();
    let commits = sample(&text, "webhook_gateway_journal_commits_total");
    assert!(commits >= 1, "{text}");
    let lagged = sample(&text, "webhook_gateway_journal_lag_seconds_count");
    assert!(lagged >= 3, "three appends at least: {text}");
    assert!(
        !text.contains("no-such-workflow"),
        "an unrouted path is never a label"
    );
}

/// The value of an unlabelled sample in a metrics text.
fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}
