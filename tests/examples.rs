//! The shipped `gateway.yaml` and example workflows answer as the README documents.

use crate::support::*;
use serde_json::json;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repo_root().join("tests/fixtures").join(name)).unwrap()
}

#[test]
fn order_created_returns_the_summary_with_a_run_id() {
    let gateway = Gateway::shipped();
    let request = Request::post(
        &gateway.path("order-created"),
        fixture("order-created.json"),
    )
    .header("x-api-key", DEMO_KEY)
    .header("x-order-channel", "pos");
    let response = gateway.send(&request);

    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    let run_id = response.header("x-run-id").expect("run id header");
    assert_eq!(run_id.len(), 36, "a uuid: {run_id}");
    assert_eq!(
        response.json(),
        json!({
            "order_id": "ord_1042", "customer": "ada@example.com", "item_count": 3,
            "total": 124.0, "currency": "EUR", "priority": "normal", "channel": "pos"
        })
    );
}

#[test]
fn order_over_the_approval_limit_is_rejected_by_the_script() {
    let gateway = Gateway::shipped();
    let body = r#"{"id": 7, "customer": {"email": "a@b.c"},
                   "items": [{"sku": "X", "quantity": 1000, "unit_price": 500}]}"#;
    let request = Request::post(&gateway.path("order-created"), body).header("x-api-key", DEMO_KEY);
    let response = gateway.send(&request);

    assert_eq!(response.status, 422);
    assert_eq!(response.error_code(), "rejected");
    assert!(
        response.text().contains("order 7 exceeds"),
        "{}",
        response.text()
    );
}

#[test]
fn github_push_is_accepted_then_summarised_in_the_background() {
    let gateway = Gateway::shipped();
    let request = Request::post(&gateway.path("github-push"), fixture("github-push.json"))
        .header("authorization", &format!("Bearer {DEMO_KEY}"))
        .header("x-github-event", "push")
        .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958");
    let response = gateway.send(&request);

    assert_eq!(response.status, 202, "{}", response.text());
    let body = response.json();
    assert_eq!(body["status"], "accepted");
    let run_id = body["run_id"].as_str().unwrap();
    assert_eq!(response.header("x-run-id"), Some(run_id));

    let record = gateway.wait_for_run(run_id);
    assert_eq!(record["state"], "succeeded", "{record}");
    assert_eq!(record["workflow_id"], "github-push");
    assert_eq!(
        record["result"]["summary"],
        "Codertocat pushed 2 commits to Codertocat/Hello-World@main"
    );
    assert_eq!(
        record["result"]["delivery"],
        "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    );
}

#[test]
fn inactive_example_answers_workflow_inactive() {
    let gateway = Gateway::shipped();
    let request = Request::post(
        &gateway.path("invoice-paid"),
        r#"{"invoice": {"id": "in_1", "amount_cents": 5}}"#,
    )
    .header("x-api-key", DEMO_KEY);
    let response = gateway.send(&request);

    assert_eq!(response.status, 404);
    assert_eq!(response.error_code(), "workflow_inactive");
}

#[test]
fn shipped_configuration_passes_check() {
    let output = std::process::Command::new(BINARY)
        .args(["check", "--config"])
        .arg(repo_root().join("gateway.yaml"))
        .env(
            "WEBHOOK_GATEWAY_STATE_DIR",
            tempfile::tempdir().unwrap().path(),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("4 workflows (3 active)"), "{stdout}");
}

#[test]
fn the_inactive_invoice_workflow_can_be_tried_on_its_test_url_then_activated() {
    let gateway = Gateway::shipped();
    let event = r#"{"invoice":{"id":"in_1","amount_cents":500}}"#;
    let production = gateway.path("invoice-paid");
    let send = |path: &str| gateway.send(&Request::post(path, event).header("x-api-key", DEMO_KEY));
    assert_eq!(send(&production).error_code(), "workflow_inactive");

    let trace = send(&gateway.test_path("invoice-paid"));
    assert_eq!(trace.status, 200, "{}", trace.text());
    assert_eq!(trace.json()["outcome"], "succeeded");
    let fields = gateway.remote(&["fields", "invoice-paid", "--show", "json"]);
    let fields: serde_json::Value = serde_json::from_slice(&fields.stdout).unwrap();
    assert_eq!(fields["fields"][1]["pointer"], "/invoice/id");

    assert!(gateway
        .remote(&["activate", "invoice-paid"])
        .status
        .success());
    assert_eq!(send(&production).status, 200);
}
