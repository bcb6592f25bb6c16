//! Accepted runs: the background pool, its bound, and the run records on the admin API.

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
