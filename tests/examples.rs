//! The shipped `gateway.yaml` and example workflows answer as the README documents.

use crate::support::*;
use hmac::{Hmac, Mac};
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
    assert!(stdout.contains("7 workflows (6 active)"), "{stdout}");
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

/// The shipped provider examples, with a clock at which the cases' timestamps are fresh.
fn provider_gateway() -> Gateway {
    Start::shipped()
        .env("WEBHOOK_GATEWAY_SIGNATURE_CLOCK", "1700000100")
        .run()
}

fn signed(gateway: &Gateway, id: &str, body: &[u8], headers: &[(&str, &str)]) -> Response {
    let mut request = Request::post(&gateway.path(id), body.to_vec());
    for (name, value) in headers {
        request = request.without_header(name).header(name, value);
    }
    gateway.send(&request)
}

#[test]
fn github_events_verifies_the_signature_and_answers_a_redelivery_once() {
    let gateway = provider_gateway();
    let body = br#"{"action": "opened", "number": 1}"#;
    let signature = (
        "x-hub-signature-256",
        "sha256=897add7e1351ce2312f89b62783055b5e4de615d1452b6fed557068abcc629cf",
    );
    let event = ("x-github-event", "pull_request");

    // A forged delivery is refused, and does not take the delivery id from the real one.
    let forged = signed(
        &gateway,
        "github-events",
        body,
        &[
            ("x-hub-signature-256", "sha256=00"),
            event,
            ("x-github-delivery", "d-1"),
        ],
    );
    assert_eq!(forged.status, 401);
    let first = signed(
        &gateway,
        "github-events",
        body,
        &[signature, event, ("x-github-delivery", "d-1")],
    );
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(
        first.json(),
        json!({"github_event": "pull_request", "delivery": "d-1", "action": "opened",
               "repository": null, "sender": null})
    );
    assert_eq!(first.header("idempotent-replayed"), None);

    let redelivery = signed(
        &gateway,
        "github-events",
        body,
        &[signature, event, ("x-github-delivery", "d-1")],
    );
    assert_eq!(redelivery.status, 200);
    assert_eq!(redelivery.header("idempotent-replayed"), Some("true"));
    assert_eq!(redelivery.header("x-run-id"), first.header("x-run-id"));
    assert_eq!(redelivery.json(), first.json());

    // P2: the form delivery, signed over the form bytes, seen as the inner document.
    let form =
        b"payload=%7B%22zen%22%3A%22Keep%20it%20logically%20awesome.%22%2C%22hook_id%22%3A1%7D";
    let ping = signed(
        &gateway,
        "github-events",
        form,
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            (
                "x-hub-signature-256",
                "sha256=cb18e2ffb31ded64e7d82096cd49b158d36909241ebd00588e215c890ead0c2f",
            ),
            ("x-github-event", "ping"),
            ("x-github-delivery", "d-2"),
        ],
    );
    assert_eq!(ping.status, 200, "{}", ping.text());
    assert_eq!(ping.json()["github_event"], "ping");
}

#[test]
fn stripe_events_accepts_once_per_event_id_and_runs_once() {
    let gateway = provider_gateway();
    let body = br#"{"id":"evt_test_1","object":"event","type":"payment_intent.succeeded"}"#;
    let old = "16aefa73878372c037f147c10813a519e6a72ba4d9e4f3ef790e9a49cca4b538";
    let good = "871acfe933554b446cc41d791076dd56a10c0553cc61aafbeb881d0082b45043";
    let rotated = format!("t=1700000000,v1={old},v1={good}");
    let swapped = format!("t=1700000000,v1={good},v1={old}");

    let first = signed(
        &gateway,
        "stripe-events",
        body,
        &[("stripe-signature", &rotated)],
    );
    assert_eq!(first.status, 202, "{}", first.text());
    let run_id = first.json()["run_id"].as_str().unwrap().to_string();
    let record = gateway.wait_for_run(&run_id);
    assert_eq!(record["state"], "succeeded", "{record}");
    assert_eq!(record["result"]["event_id"], "evt_test_1");
    assert_eq!(record["result"]["event_type"], "payment_intent.succeeded");

    let retry = signed(
        &gateway,
        "stripe-events",
        body,
        &[("stripe-signature", &swapped)],
    );
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(
        retry.json(),
        json!({"run_id": run_id, "status": "duplicate"})
    );
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    let runs = gateway
        .admin_get("/api/v1/runs?workflow=stripe-events")
        .json();
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "{runs}");

    let v0_only =
        "t=1700000000,v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39";
    let refused = signed(
        &gateway,
        "stripe-events",
        body,
        &[("stripe-signature", v0_only)],
    );
    assert_eq!(refused.status, 401);
}

#[test]
fn slack_commands_answers_commands_and_the_url_verification() {
    let gateway = provider_gateway();
    let command = b"token=x&command=%2Fdeploy&text=a%2Ab+c%2B1&user_name=jane.doe";
    let answer = signed(
        &gateway,
        "slack-commands",
        command,
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-slack-request-timestamp", "1700000000"),
            (
                "x-slack-signature",
                "v0=70cc4788596e224fc70dfee49da150c9557b58366568e035b6bcd3c79ca75786",
            ),
        ],
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        answer.json(),
        json!({"response_type": "ephemeral", "text": "jane.doe asked /deploy for a*b c+1"})
    );

    let challenge = br#"{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let handshake = signed(
        &gateway,
        "slack-commands",
        challenge,
        &[
            ("x-slack-request-timestamp", "1700000000"),
            (
                "x-slack-signature",
                "v0=a495ef4010801a6887db40a81ed04985a5345c0fe0bd0eaf6662cfcc0e104662",
            ),
        ],
    );
    assert_eq!(handshake.status, 200, "{}", handshake.text());
    assert_eq!(
        handshake.json(),
        json!({"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"})
    );

    // An Events API callback on the same URL is acknowledged, not refused for lack of a command.
    let event = br#"{"type":"event_callback","event":{"type":"app_mention","text":"hi"}}"#;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"slack_test_secret").unwrap();
    mac.update(b"v0:1700000000:");
    mac.update(event);
    let signature = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
    let acknowledged = signed(
        &gateway,
        "slack-commands",
        event,
        &[
            ("x-slack-request-timestamp", "1700000000"),
            ("x-slack-signature", &signature),
        ],
    );
    assert_eq!(acknowledged.status, 200, "{}", acknowledged.text());
    assert_eq!(
        acknowledged.json(),
        json!({"ok": true, "kind": "event_callback", "event_type": "app_mention"})
    );
}
