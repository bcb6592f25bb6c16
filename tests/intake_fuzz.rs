//! Made-up requests against the real binary: whatever method, headers, content type, coding
//! and body a sender invents, every request gets a well-formed answer with a client status
//! (or a success), never a 500 or a dropped connection, and the gateway serves on.

use crate::support::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const WORKFLOWS: [(&str, &str); 4] = [
    (
        "workflows/typed.yaml",
        "id: typed\ntrigger:\n  formats: [json, form, text]\nschema:\n  type: object\n  required: [n]\nmapping:\n  n: { pointer: /n, type: integer, required: true }\n  who: { header: X-Who, default: nobody }\n",
    ),
    (
        "workflows/signed.yaml",
        "id: signed\ntrigger:\n  api_key:\n    required: false\nsignature:\n  preset: github\n  secret: test_secret\nidempotency:\n  header: X-GitHub-Delivery\n",
    ),
    (
        "workflows/stamped.yaml",
        "id: stamped\ntrigger:\n  api_key:\n    required: false\nsignature:\n  preset: standard_webhooks\n  secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n",
    ),
    (
        "workflows/limited.yaml",
        "id: limited\ntrigger:\n  api_key:\n    query: k\n  allow_ips: [\"127.0.0.0/8\"]\nidempotency:\n  pointer: /id\nlimits:\n  max_concurrent: 4\nmapping:\n  id: { pointer: /id }\n",
    ),
];

fn header_pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        Just("content-type".to_string()),
        Just("content-encoding".to_string()),
        Just("x-api-key".to_string()),
        Just("authorization".to_string()),
        Just("x-hub-signature-256".to_string()),
        Just("x-github-delivery".to_string()),
        Just("webhook-signature".to_string()),
        Just("webhook-timestamp".to_string()),
        Just("webhook-id".to_string()),
        Just("x-forwarded-for".to_string()),
        Just("x-who".to_string()),
        "x-[a-z]{1,12}",
    ];
    let value = prop_oneof![
        Just("application/json".to_string()),
        Just("application/x-www-form-urlencoded".to_string()),
        Just("text/plain".to_string()),
        Just("gzip".to_string()),
        Just(TEST_KEY.to_string()),
        Just(format!("Bearer {TEST_KEY}")),
        "[!-~][ -~]{0,60}",
    ];
    proptest::collection::vec((name, value), 0..8)
}

fn bodies() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        "\\{\"(n|id)\":[0-9a-z\"\\[\\]{}:,]{0,40}\\}".prop_map(String::into_bytes),
        "(payload=)?[%A-Za-z0-9=&+]{0,120}".prop_map(String::into_bytes),
    ]
}

#[test]
fn made_up_requests_get_client_errors_or_success_and_the_gateway_serves_on() {
    let gateway = Gateway::custom(&WORKFLOWS);
    let paths: Vec<String> = ["typed", "signed", "stamped", "limited"]
        .iter()
        .map(|id| gateway.path(id))
        .collect();
    let method = prop_oneof![Just("POST"), Just("PUT"), Just("GET"), Just("HEAD")];
    let query = "(\\?[a-z=&%0-9]{0,30})?";
    let strategy = (
        0..paths.len(),
        method,
        query,
        header_pairs(),
        bodies(),
        any::<bool>(),
    );

    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &strategy,
            |(target, method, query, headers, body, test_url)| {
                let base = if test_url {
                    gateway.test_path(["typed", "signed", "stamped", "limited"][target])
                } else {
                    paths[target].clone()
                };
                let mut request = Request::new(method, &format!("{base}{query}")).body(body);
                for (name, value) in &headers {
                    request = request.header(name, value);
                }
                let answer = try_send(gateway.port, &request)
                    .map_err(|error| TestCaseError::fail(format!("{request:?}: {error}")))?;
                prop_assert!(
                    answer.status < 500,
                    "{} {}: {} {}",
                    method,
                    base,
                    answer.status,
                    answer.text()
                );
                Ok(())
            },
        )
        .unwrap();

    let still = gateway.post_json(&paths[0], r#"{"n": 3}"#);
    assert_eq!(still.status, 200, "{}", still.text());
}
