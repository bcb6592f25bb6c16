//! Signed webhooks: the cases of `../shared/cases/providers.md` that are about signatures,
//! each checked over the exact bytes sent, through the real binary.

use crate::support::*;
use serde_json::json;

/// Provider workflows need no API key: the signature is the authentication.
fn signed_workflow(id: &str, signature: &str, extra: &str) -> String {
    format!("id: {id}\ntrigger:\n  api_key:\n    required: false\nsignature:\n{signature}{extra}")
}

fn post(gateway: &Gateway, id: &str, body: &[u8], headers: &[(&str, &str)]) -> Response {
    let mut request = Request::post(&gateway.path(id), body.to_vec());
    for (name, value) in headers {
        request = request.header(name, value);
    }
    gateway.send(&request)
}

const GITHUB: &str = "  preset: github\n  secret: \"${GITHUB_WEBHOOK_SECRET:-test_secret}\"\n";
const P1_BODY: &[u8] = br#"{"action": "opened", "number": 1}"#;
const P1_SIGNATURE: &str =
    "sha256=897add7e1351ce2312f89b62783055b5e4de615d1452b6fed557068abcc629cf";

#[test]
fn github_signatures_are_checked_over_the_bytes_received() {
    let workflow = signed_workflow("gh", GITHUB, "mapping:\n  number: { pointer: /number }\n");
    let gateway = Gateway::custom(&[("workflows/gh.yaml", &workflow)]);

    let signed = [("x-hub-signature-256", P1_SIGNATURE)];
    let accepted = post(&gateway, "gh", P1_BODY, &signed);
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    assert_eq!(accepted.json(), json!({"number": 1}));

    let flipped = br#"{"action": "opened", "number": 2}"#;
    let refused = post(&gateway, "gh", flipped, &signed);
    assert_eq!(
        (refused.status, refused.error_code()),
        (401, "invalid_signature".into())
    );
    let compact = br#"{"action":"opened","number":1}"#;
    assert_eq!(
        post(&gateway, "gh", compact, &signed).status,
        401,
        "re-serialised JSON"
    );
    let wrong = [("x-hub-signature-256", "sha256=00")];
    assert_eq!(post(&gateway, "gh", P1_BODY, &wrong).status, 401);
    let unsigned = post(&gateway, "gh", P1_BODY, &[]);
    assert_eq!(unsigned.error_code(), "invalid_signature");
    assert!(unsigned.text().contains("missing"), "{}", unsigned.text());

    // The empty body of P8 verifies too.
    let empty = [(
        "x-hub-signature-256",
        "sha256=f7f9bd47fb987337b5796fdc1fdb9ba221d0d5396814bfcaf9521f43fd8927fd",
    )];
    assert_eq!(post(&gateway, "gh", b"", &empty).status, 200);
}

#[test]
fn a_workflow_whose_secret_is_missing_refuses_everything() {
    let signature = "  preset: github\n  secret: \"${NO_SUCH_SECRET_SET:-}\"\n";
    let gateway = Gateway::custom(&[("workflows/gh.yaml", &signed_workflow("gh", signature, ""))]);
    let refused = post(
        &gateway,
        "gh",
        P1_BODY,
        &[("x-hub-signature-256", P1_SIGNATURE)],
    );
    assert_eq!(refused.status, 401);
    assert!(
        refused.text().contains("no signing secret"),
        "{}",
        refused.text()
    );
}

#[test]
fn stripe_accepts_any_v1_in_its_window_and_refuses_v0_alone() {
    let signature = "  preset: stripe\n  secret: \"${STRIPE_WEBHOOK_SECRET:-whsec_test_secret}\"\n";
    let workflow = signed_workflow("stripe", signature, "mapping:\n  id: { pointer: /id }\n");
    let at = |clock: &str| {
        Start::custom(&[("workflows/stripe.yaml", &workflow)])
            .env("WEBHOOK_GATEWAY_SIGNATURE_CLOCK", clock)
            .run()
    };
    let body = br#"{"id":"evt_test_1","object":"event","type":"payment_intent.succeeded"}"#;
    let old = "16aefa73878372c037f147c10813a519e6a72ba4d9e4f3ef790e9a49cca4b538";
    let good = "871acfe933554b446cc41d791076dd56a10c0553cc61aafbeb881d0082b45043";
    let v0 = "6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39";

    let gateway = at("1700000100");
    for header in [
        format!("t=1700000000,v1={old},v1={good},v0={v0}"),
        format!("t=1700000000,v1={good},v1={old},v0={v0}"),
    ] {
        let answer = post(&gateway, "stripe", body, &[("stripe-signature", &header)]);
        assert_eq!(answer.status, 200, "{header}: {}", answer.text());
        assert_eq!(answer.json()["id"], "evt_test_1");
    }
    let only_v0 = format!("t=1700000000,v0={v0}");
    assert_eq!(
        post(&gateway, "stripe", body, &[("stripe-signature", &only_v0)]).status,
        401
    );

    let late = at("1700000400");
    let header = format!("t=1700000000,v1={good}");
    let answer = post(&late, "stripe", body, &[("stripe-signature", &header)]);
    assert_eq!(answer.status, 401);
    assert!(answer.text().contains("tolerance"), "{}", answer.text());
}

#[test]
fn shopify_signs_in_base64_and_big_ids_stay_exact() {
    let signature = "  preset: shopify\n  secrets: [\"retired-secret\", \"shpss_test_secret\"]\n";
    let workflow = signed_workflow("shop", signature, "mapping:\n  id: { pointer: /id }\n");
    let gateway = Gateway::custom(&[("workflows/shop.yaml", &workflow)]);
    let body = br#"{"id":820982911946154508,"email":"jon@example.com"}"#;

    let base64 = [(
        "x-shopify-hmac-sha256",
        "LnwdZPLBbdjkBwPD/lDL1/rYEGby/GHPtL1aAH6Dxjc=",
    )];
    let answer = post(&gateway, "shop", body, &base64);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text().trim(), r#"{"id":820982911946154508}"#);

    let hex = [(
        "x-shopify-hmac-sha256",
        "2e7c1d64f2c16dd8e40703c3fe50cbd7fad81066f2fc61cfb4bd5a007e83c637",
    )];
    assert_eq!(post(&gateway, "shop", body, &hex).status, 401);
}

#[test]
fn a_generic_hmac_takes_its_header_prefix_algorithm_encoding_and_timestamp() {
    let signature = "  preset: hmac\n  secret: s3cret\n  header: X-Signature\n  prefix: \"sha512=\"\n  algorithm: sha512\n  encoding: base64\n  timestamp_header: X-Timestamp\n  tolerance_seconds: 60\n";
    let workflow = signed_workflow("generic", signature, "");
    let gateway = Start::custom(&[("workflows/generic.yaml", &workflow)])
        .env("WEBHOOK_GATEWAY_SIGNATURE_CLOCK", "1700000030")
        .run();
    // base64(HMAC-SHA512("s3cret", "1700000000.{\"a\":1}")), computed with Python's hmac module.
    let signature = "sha512=3B5RbYGUB9x0mdZXZHMAAlMuyEkpuBQ0ikGsWA0paYC2E66uJH9XoXQtXfhHnImUUnCfDAGQbTmcRCBJsWtT/g==";
    let headers = [("x-timestamp", "1700000000"), ("x-signature", signature)];
    let answer = post(&gateway, "generic", br#"{"a":1}"#, &headers);
    assert_eq!(answer.status, 200, "{}", answer.text());

    let stale = [("x-timestamp", "1699990000"), ("x-signature", signature)];
    assert_eq!(post(&gateway, "generic", br#"{"a":1}"#, &stale).status, 401);
}

#[test]
fn the_test_url_checks_the_signature_too_and_keeps_no_unsigned_sample() {
    let gateway = Gateway::custom(&[("workflows/gh.yaml", &signed_workflow("gh", GITHUB, ""))]);
    let path = gateway.test_path("gh");
    let unsigned = gateway.send(&Request::post(&path, P1_BODY.to_vec()));
    assert_eq!(unsigned.error_code(), "invalid_signature");
    let signed = Request::post(&path, P1_BODY.to_vec()).header("x-hub-signature-256", P1_SIGNATURE);
    assert_eq!(gateway.send(&signed).json()["outcome"], "succeeded");

    let samples = gateway.admin_get("/api/v1/workflows/gh/samples").json();
    assert_eq!(samples["count"], 1);
    assert_eq!(
        samples["samples"][0]["headers"]["x-hub-signature-256"],
        "[redacted]"
    );
}

#[test]
fn slack_url_verification_is_answered_with_its_challenge_once_signed() {
    let signature = "  preset: slack\n  secret: \"${SLACK_SIGNING_SECRET:-slack_test_secret}\"\n";
    let workflow = signed_workflow("slack", signature, "script: never.rhai\n");
    let gateway = Start::custom(&[
        ("workflows/slack.yaml", &workflow),
        (
            "scripts/never.rhai",
            "throw \"the workflow must not run for a handshake\";",
        ),
    ])
    .env("WEBHOOK_GATEWAY_SIGNATURE_CLOCK", "1700000005")
    .run();
    let body = br#"{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let headers = [
        ("x-slack-request-timestamp", "1700000000"),
        (
            "x-slack-signature",
            "v0=a495ef4010801a6887db40a81ed04985a5345c0fe0bd0eaf6662cfcc0e104662",
        ),
    ];
    let answer = post(&gateway, "slack", body, &headers);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        answer.json(),
        json!({"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"})
    );

    let unsigned = post(&gateway, "slack", body, &headers[..1]);
    assert_eq!(unsigned.status, 401, "the handshake is verified first");
}

#[test]
fn meta_subscription_echoes_the_challenge_for_the_right_token_only() {
    let signature = "  preset: meta\n  secret: meta_secret\n  verify_token: verify_test_token\n";
    let gateway = Gateway::custom(&[
        (
            "workflows/meta.yaml",
            &signed_workflow("meta", signature, ""),
        ),
        ("workflows/plain.yaml", "id: plain\n"),
    ]);
    let subscribe = |token: &str| {
        let path = format!(
            "{}?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token={token}",
            gateway.path("meta")
        );
        gateway.send(&Request::new("GET", &path))
    };
    let answer = subscribe("verify_test_token");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "1158201444");
    let wrong = subscribe("guess");
    assert_eq!(
        (wrong.status, wrong.error_code()),
        (403, "verification_failed".into())
    );

    let plain_get = gateway.send(&Request::new("GET", &gateway.path("plain")));
    assert_eq!(
        plain_get.status, 405,
        "no handshake configured: GET is not allowed"
    );
}

#[test]
fn a_head_probe_sees_a_live_url_without_running_anything() {
    let gateway = Gateway::custom(&[
        ("workflows/live.yaml", "id: live\nscript: never.rhai\n"),
        ("scripts/never.rhai", "throw \"must not run\";"),
        ("workflows/off.yaml", "id: off\nactive: false\n"),
    ]);
    let probe = gateway.send(&Request::new("HEAD", &gateway.path("live")));
    assert_eq!(probe.status, 200);
    assert!(probe.body.is_empty());
    let off = gateway.send(&Request::new("HEAD", &gateway.path("off")));
    assert_eq!(off.status, 404, "an inactive workflow's URL is not live");
}

const FORM: &str = "application/x-www-form-urlencoded";

#[test]
fn github_form_deliveries_are_verified_as_sent_then_read_from_their_payload_field() {
    let mapping =
        "mapping:\n  zen: { pointer: /zen }\n  hook_id: { pointer: /hook_id, type: integer }\n";
    let gateway =
        Gateway::custom(&[("workflows/gh.yaml", &signed_workflow("gh", GITHUB, mapping))]);
    let body =
        b"payload=%7B%22zen%22%3A%22Keep%20it%20logically%20awesome.%22%2C%22hook_id%22%3A1%7D";
    let signature = "sha256=cb18e2ffb31ded64e7d82096cd49b158d36909241ebd00588e215c890ead0c2f";
    let request = Request::post(&gateway.path("gh"), body.to_vec())
        .without_header("content-type")
        .header("content-type", FORM)
        .header("x-hub-signature-256", signature);
    let answer = gateway.send(&request);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        answer.json(),
        json!({"zen": "Keep it logically awesome.", "hook_id": 1})
    );
}

#[test]
fn slack_commands_arrive_as_signed_forms_and_json_only_workflows_refuse_forms() {
    let signature = "  preset: slack\n  secret: slack_test_secret\n";
    let mapping = "mapping:\n  text: { pointer: /text }\n  command: { pointer: /command }\n";
    let json_only = "id: strict\ntrigger:\n  formats: [json]\n";
    let gateway = Start::custom(&[
        (
            "workflows/slack.yaml",
            &signed_workflow("slack", signature, mapping),
        ),
        ("workflows/strict.yaml", json_only),
    ])
    .env("WEBHOOK_GATEWAY_SIGNATURE_CLOCK", "1700000000")
    .run();
    let body = b"token=x&command=%2Fdeploy&text=a%2Ab+c%2B1&user_name=jane.doe";
    let request = Request::post(&gateway.path("slack"), body.to_vec())
        .without_header("content-type")
        .header("content-type", FORM)
        .header("x-slack-request-timestamp", "1700000000")
        .header(
            "x-slack-signature",
            "v0=70cc4788596e224fc70dfee49da150c9557b58366568e035b6bcd3c79ca75786",
        );
    let answer = gateway.send(&request);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        answer.json(),
        json!({"text": "a*b c+1", "command": "/deploy"})
    );

    let form_to_strict = Request::post(&gateway.path("strict"), "a=1")
        .without_header("content-type")
        .header("content-type", FORM)
        .header("x-api-key", TEST_KEY);
    let refused = gateway.send(&form_to_strict);
    assert_eq!(
        (refused.status, refused.error_code()),
        (415, "unsupported_media_type".into())
    );
}
