//! Hostile and unusual input found by trying to break the gateway: scripts that hog memory or
//! time, secrets with YAML syntax in them, pipelining, broken framing, trickled bodies.

use crate::support::*;
use serde_json::json;
use std::io::{BufReader, Write};
use std::time::{Duration, Instant};

#[test]
fn script_holding_too_much_memory_is_stopped_and_the_gateway_lives_on() {
    // Map keys and closure captures escape Rhai's own size limits; the sandbox counts bytes.
    let hog = "let s = \"\"; s.pad(1000000, 'a');\nlet m = #{};\nfor i in 0..5000 { m[s + i] = i; }\nm.len()";
    let config = format!("{BASE_CONFIG}scripts:\n  max_memory_bytes: 33554432\n  timeout_ms: 20000\n  max_operations: 100000000\n");
    let gateway = Gateway::custom(&[
        ("gateway.yaml", &config),
        ("workflows/hog.yaml", "id: hog\nscript: hog.rhai\n"),
        ("scripts/hog.rhai", hog),
        ("workflows/echo.yaml", "id: echo\n"),
    ]);

    let response = gateway.post_json(&gateway.path("hog"), "{}");
    assert_eq!(response.status, 500);
    assert_eq!(response.error_code(), "script_error");
    assert!(gateway.log().contains("memory limit"), "{}", gateway.log());
    assert_eq!(gateway.post_json(&gateway.path("echo"), "{}").status, 200);
}

#[test]
fn a_slow_script_does_not_hold_up_other_requests() {
    let config = format!("{BASE_CONFIG}scripts:\n  max_operations: 100000000000\n");
    let gateway = Gateway::custom(&[
        ("gateway.yaml", &config),
        (
            "workflows/slow.yaml",
            "id: slow\nscript: slow.rhai\nscript_timeout_ms: 2000\n",
        ),
        ("scripts/slow.rhai", "loop { }"),
        ("workflows/echo.yaml", "id: echo\n"),
    ]);
    assert!(
        config.contains("threads: 1"),
        "one worker thread makes the test meaningful"
    );
    let (slow, echo) = (gateway.path("slow"), gateway.path("echo"));

    let port = gateway.port;
    let spinner = std::thread::spawn(move || {
        let started = Instant::now();
        let response = send(
            port,
            &Request::post(&slow, "{}").header("x-api-key", TEST_KEY),
        );
        (started, Instant::now(), response.status)
    });

    // Keep asking a quick workflow while the slow one spins; each answer must come at once.
    let mut quick = Vec::new();
    while !spinner.is_finished() {
        let started = Instant::now();
        let status = gateway.post_json(&echo, "{}").status;
        quick.push((started, started.elapsed(), status));
    }
    let (spin_start, spin_end, spin_status) = spinner.join().unwrap();
    assert_eq!(spin_status, 504);

    let during: Vec<_> = quick
        .iter()
        .filter(|(at, took, _)| {
            *at > spin_start + Duration::from_millis(200) && *at + *took < spin_end
        })
        .collect();
    assert!(
        !during.is_empty(),
        "no quick request ran while the script spun"
    );
    for (_, took, status) in during {
        assert_eq!(*status, 200);
        assert!(
            *took < Duration::from_millis(1000),
            "a quick request waited {took:?}"
        );
    }
}

#[test]
fn secrets_with_yaml_syntax_in_the_environment_are_used_exactly() {
    let tricky = r#"s3cr3t #tail "q" \x41: 'x'"#;
    let config = BASE_CONFIG.replace("key: \"${OTHER_API_KEY}\"", "key: ${TRICKY_KEY}");
    assert_ne!(config, BASE_CONFIG);
    let gateway = Start::custom(&[
        ("gateway.yaml", &config),
        (
            "workflows/only.yaml",
            "id: only\ntrigger:\n  api_key:\n    keys: [other]\n",
        ),
    ])
    .env("TRICKY_KEY", tricky)
    .run();
    let path = gateway.path("only");
    let exact = gateway.send(&Request::post(&path, "{}").header("x-api-key", tricky));
    assert_eq!(exact.status, 200, "{}", exact.text());
    let cut_at_comment = gateway.send(&Request::post(&path, "{}").header("x-api-key", "s3cr3t"));
    assert_eq!(cut_at_comment.status, 401);
}

#[test]
fn pipelined_requests_are_all_answered_in_order() {
    let gateway = Gateway::custom(&[(
        "workflows/echo.yaml",
        "id: echo\nmapping:\n  n: { pointer: /n }\n",
    )]);
    let path = gateway.path("echo");
    let mut bytes = Vec::new();
    for n in 1..=3 {
        bytes.extend(
            Request::post(&path, format!("{{\"n\":{n}}}"))
                .header("x-api-key", TEST_KEY)
                .to_bytes(),
        );
    }
    let mut stream = connect(gateway.port);
    stream.write_all(&bytes).unwrap();
    let mut reader = BufReader::new(stream);
    for n in 1..=3 {
        let response = read_response(&mut reader).expect("each pipelined request is answered");
        assert_eq!(response.json(), json!({ "n": n }));
    }
}

#[test]
fn broken_chunked_framing_is_400_and_closes_the_connection() {
    let gateway = Gateway::custom(&[("workflows/echo.yaml", "id: echo\n")]);
    let headers = [("x-api-key", TEST_KEY), ("transfer-encoding", "chunked")];
    let mut stream = send_head(gateway.port, &gateway.path("echo"), &headers);
    stream.write_all(b"3\r\n{}xGARBAGE\r\n").unwrap();
    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader).unwrap();
    assert_eq!(response.status, 400);
    assert_eq!(response.error_code(), "bad_request");
    assert!(
        closed_by_peer(&mut reader),
        "the rest of the bytes must not be read as a request"
    );
}

#[test]
fn a_trickled_body_is_cut_off_at_the_total_deadline() {
    let config = BASE_CONFIG.replace(
        "body_read_timeout_ms: 2000",
        "body_read_timeout_ms: 2000\n  body_total_timeout_ms: 1000",
    );
    let gateway = Gateway::custom(&[
        ("gateway.yaml", &config),
        ("workflows/echo.yaml", "id: echo\n"),
    ]);
    let headers = [("x-api-key", TEST_KEY), ("content-length", "100")];
    let stream = send_head(gateway.port, &gateway.path("echo"), &headers);
    let mut writer = stream.try_clone().unwrap();
    // One byte every 300 ms: each read is quick, the whole body never arrives in time.
    let dripper = std::thread::spawn(move || {
        for _ in 0..20 {
            if writer.write_all(b" ").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let started = Instant::now();
    let response = read_response(&mut BufReader::new(stream)).unwrap();
    assert_eq!(response.status, 408);
    assert!(started.elapsed() < Duration::from_secs(4));
    let _ = dripper.join();
}

#[test]
fn two_different_api_keys_in_one_request_are_refused() {
    let gateway = Gateway::custom(&[("workflows/echo.yaml", "id: echo\n")]);
    let path = gateway.path("echo");
    for (first, second) in [(TEST_KEY, "wrong"), ("wrong", TEST_KEY)] {
        let request = Request::post(&path, "{}")
            .header("x-api-key", first)
            .header("x-api-key", second);
        assert_eq!(gateway.send(&request).status, 401);
    }
    let empty_then_bearer = Request::post(&path, "{}")
        .header("x-api-key", "")
        .header("authorization", &format!("Bearer {TEST_KEY}"));
    assert_eq!(gateway.send(&empty_then_bearer).status, 200);
}

#[test]
fn shipped_order_schema_bounds_numbers_and_checks_email_format() {
    let gateway = Gateway::shipped();
    let path = gateway.path("order-created");
    for body in [
        r#"{"id":"o","customer":{"email":"a@b.co"},"items":[{"sku":"x","quantity":1,"unit_price":1e400}]}"#,
        r#"{"id":"o","customer":{"email":"a@b.co"},"items":[{"sku":"x","quantity":123456789012345678901234567890,"unit_price":1}]}"#,
        r#"{"id":"o","customer":{"email":"not-an-email"},"items":[{"sku":"x","quantity":1,"unit_price":1}]}"#,
    ] {
        let response = gateway.send(&Request::post(&path, body).header("x-api-key", DEMO_KEY));
        assert_eq!(response.status, 422, "{body}: {}", response.text());
        assert_eq!(response.error_code(), "schema_violation");
    }
}

#[test]
fn keys_generate_refuses_a_name_that_would_break_the_config() {
    for name in ["", "a\"b: c", "with space"] {
        let output = std::process::Command::new(BINARY)
            .args(["keys", "generate", "--name", name])
            .output()
            .unwrap();
        assert!(!output.status.success(), "{name:?}");
    }
}

#[test]
fn an_error_names_the_request_id_a_caller_can_quote() {
    let gateway = Gateway::custom(&[("workflows/echo.yaml", "id: echo\n")]);
    let path = gateway.path("echo");

    let offered = gateway.send(
        &Request::post(&path, "{not json")
            .header("x-api-key", TEST_KEY)
            .header("x-request-id", "ticket-4711"),
    );
    assert_eq!(offered.status, 400);
    assert_eq!(offered.header("x-request-id"), Some("ticket-4711"));
    assert_eq!(offered.json()["error"]["request_id"], "ticket-4711");

    // An id that is not a plain token is replaced by a new one, the same in header and body.
    let replaced =
        gateway.send(&Request::post(&path, "{}").header("x-request-id", "bad id with spaces"));
    assert_eq!(replaced.status, 401);
    let generated = replaced.header("x-request-id").unwrap().to_string();
    assert_ne!(generated, "bad id with spaces");
    assert_eq!(replaced.json()["error"]["request_id"], generated.as_str());
}
