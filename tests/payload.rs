//! The body: size caps, media types, JSON syntax and depth, schema validation, exact numbers,
//! and the connection behaviour around them.

use crate::support::*;
use std::io::{BufReader, Write};

const RAW_WORKFLOW: &str =
    "id: raw\ntrigger:\n  methods: [POST, PUT]\nmapping:\n  body:\n    pointer: \"\"\n";
const SMALL_LIMIT: &str = "id: small\nmax_body_bytes: 1024\nmapping:\n  body:\n    pointer: \"\"\n";
const NUMBERS: &str = r#"
id: numbers
schema:
  type: object
  properties:
    id: { type: integer }
    big: { type: integer }
mapping:
  id: { pointer: /id, type: integer, required: true }
  big: { pointer: /big }
  neg: { pointer: /neg }
  f: { pointer: /f }
  id_text: { pointer: /id, type: string }
script: numbers.rhai
"#;
const NUMBERS_SCRIPT: &str = "#{ id: id, id_plus_one: id + 1, big: big, neg: neg, f: f, id_text: id_text, event_id: event.id }";
const SCHEMA_WORKFLOW: &str = r#"
id: strict
schema:
  type: object
  required: [id, qty]
  properties:
    id: { type: string }
    qty: { type: integer, minimum: 1 }
    tags: { type: array, items: { type: string } }
"#;

fn gateway() -> Gateway {
    Gateway::custom(&[
        ("workflows/raw.yaml", RAW_WORKFLOW),
        ("workflows/small.yaml", SMALL_LIMIT),
        ("workflows/numbers.yaml", NUMBERS),
        ("scripts/numbers.rhai", NUMBERS_SCRIPT),
        ("workflows/strict.yaml", SCHEMA_WORKFLOW),
    ])
}

fn json_array_of_size(bytes: usize) -> String {
    let item = "\"abcdefghijklmnopqrstuvwxyz012345\",";
    let mut body = String::from("[");
    while body.len() + item.len() + 4 < bytes {
        body.push_str(item);
    }
    body.push_str("\"end\"]");
    body
}

#[test]
fn body_up_to_the_default_one_mib_is_accepted() {
    let gateway = gateway();
    let body = json_array_of_size(1024 * 1024 - 16);
    let response = gateway.post_json(&gateway.path("raw"), &body);
    assert_eq!(response.status, 200, "{}", response.error_code());
    assert_eq!(
        response.json()["body"].as_array().unwrap().last().unwrap(),
        "end"
    );
}

#[test]
fn declared_length_over_the_limit_is_413_before_reading_and_closes() {
    let gateway = gateway();
    let headers = [("x-api-key", TEST_KEY), ("content-length", "2048")];
    let stream = send_head(gateway.port, &gateway.path("small"), &headers);

    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader).expect("answered without reading the body");
    assert_eq!(response.status, 413);
    assert_eq!(response.error_code(), "payload_too_large");
    assert!(response.text().contains("1024"));
    assert!(
        closed_by_peer(&mut reader),
        "the unread body is not buffered: the connection closes"
    );
}

#[test]
fn chunked_body_over_the_limit_is_413() {
    let gateway = gateway();
    let headers = [("x-api-key", TEST_KEY), ("transfer-encoding", "chunked")];
    let mut stream = send_head(gateway.port, &gateway.path("small"), &headers);
    let chunk = "x".repeat(700);
    for _ in 0..2 {
        stream
            .write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
            .unwrap();
    }

    let response = read_response(&mut BufReader::new(stream)).expect("an answer");
    assert_eq!(response.status, 413);
    assert_eq!(response.error_code(), "payload_too_large");
}

#[test]
fn chunked_body_under_the_limit_is_read_whole() {
    let gateway = gateway();
    let body = r#"{"sent": "in", "two": "chunks"}"#;
    let (a, b) = body.split_at(10);
    let raw = format!(
        "POST {} HTTP/1.1\r\nhost: x\r\nx-api-key: {TEST_KEY}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        gateway.path("small"),
        a.len(),
        b.len()
    );
    let response = send_raw(gateway.port, raw.as_bytes()).unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["body"]["two"], "chunks");
}

#[test]
fn limit_of_25_mib_is_reachable_by_config() {
    let config = format!("{BASE_CONFIG}limits:\n  max_body_bytes: 26214400\n");
    let gateway = Gateway::custom(&[
        ("gateway.yaml", &config),
        ("workflows/raw.yaml", RAW_WORKFLOW),
    ]);
    let body = json_array_of_size(25 * 1024 * 1024 - 64);
    let response = gateway.post_json(&gateway.path("raw"), &body);
    assert_eq!(response.status, 200, "{}", response.text());

    // Past the limit the gateway answers on the headers alone and closes.
    let over = Request::post(&gateway.path("raw"), "")
        .header("x-api-key", TEST_KEY)
        .header("content-length", "26214401");
    assert_eq!(gateway.send(&over).status, 413);
}

#[test]
fn invalid_json_is_400_with_a_position() {
    let gateway = gateway();
    for bad in [
        "{",
        "{\"a\": }",
        "[1, 2,]",
        "nul",
        "{} {}",
        "\"unterminated",
    ] {
        let response = gateway.post_json(&gateway.path("raw"), bad);
        assert_eq!(response.status, 400, "{bad}");
        assert_eq!(response.error_code(), "invalid_json", "{bad}");
        assert!(response.text().contains("line 1"), "{}", response.text());
    }
}

#[test]
fn nesting_beyond_the_limit_is_400_and_the_gateway_keeps_serving() {
    let gateway = gateway();
    let hostile = format!("{{\"x\":{}0{}}}", "[".repeat(10_000), "]".repeat(10_000));
    let response = gateway.post_json(&gateway.path("raw"), &hostile);
    assert_eq!(response.status, 400);
    assert_eq!(response.error_code(), "json_too_deep");
    assert!(response.text().contains("256"), "{}", response.text());

    let deep_but_allowed = format!("{}0{}", "[".repeat(200), "]".repeat(200));
    assert_eq!(
        gateway
            .post_json(&gateway.path("raw"), &deep_but_allowed)
            .status,
        200
    );
}

#[test]
fn schema_violation_is_422_listing_each_path_and_message() {
    let gateway = gateway();
    let response = gateway.post_json(
        &gateway.path("strict"),
        r#"{"id": 5, "qty": 0, "tags": ["a", 2]}"#,
    );
    assert_eq!(response.status, 422);
    assert_eq!(response.error_code(), "schema_violation");

    let body = response.json();
    let violations = body["error"]["violations"].as_array().unwrap();
    let paths: Vec<&str> = violations
        .iter()
        .map(|v| v["instance_path"].as_str().unwrap())
        .collect();
    for expected in ["/id", "/qty", "/tags/1"] {
        assert!(paths.contains(&expected), "{expected} in {paths:?}");
    }
    assert!(violations
        .iter()
        .all(|v| !v["message"].as_str().unwrap().is_empty()));

    let missing = gateway.post_json(&gateway.path("strict"), "{}");
    assert_eq!(missing.status, 422);
    let messages = missing.json()["error"]["violations"].to_string();
    assert!(messages.contains("is a required property"), "{messages}");
    assert_eq!(
        gateway
            .post_json(&gateway.path("strict"), r#"{"id":"a","qty":1}"#)
            .status,
        200
    );
}

#[test]
fn integers_beyond_2_53_and_64_bits_survive_exactly() {
    let gateway = gateway();
    let body = r#"{"id":1497549923779084388,"big":9223372036854775808,"neg":-9223372036854775809,"f":0.1}"#;
    let response = gateway.post_json(&gateway.path("numbers"), body);
    assert_eq!(response.status, 200, "{}", response.text());

    // Compare the bytes: a JSON parser in the test could itself round the numbers.
    let text = response.text();
    for exact in [
        "\"id\":1497549923779084388",
        "\"id_plus_one\":1497549923779084389",
        "\"event_id\":1497549923779084388",
        "\"id_text\":\"1497549923779084388\"",
        "\"f\":0.1",
    ] {
        assert!(text.contains(exact), "{exact} in {text}");
    }
    // Beyond 64 bits, scripts see the exact digits as text.
    assert!(text.contains("\"big\":\"9223372036854775808\""), "{text}");
    assert!(text.contains("\"neg\":\"-9223372036854775809\""), "{text}");
}

#[test]
fn json_media_types_are_matched_loosely_and_others_are_415() {
    let gateway = gateway();
    let path = gateway.path("raw");
    let typed = |content_type: &str| {
        Request::post(&path, "{}")
            .without_header("content-type")
            .header("content-type", content_type)
            .header("x-api-key", TEST_KEY)
    };
    for accepted in [
        "application/json",
        "APPLICATION/JSON; charset=UTF-8",
        "application/cloudevents+json",
    ] {
        assert_eq!(gateway.send(&typed(accepted)).status, 200, "{accepted}");
    }
    for refused in [
        "text/plain",
        "application/xml",
        "multipart/form-data; boundary=x",
    ] {
        let response = gateway.send(&typed(refused));
        assert_eq!(response.status, 415, "{refused}");
        assert_eq!(response.error_code(), "unsupported_media_type");
    }
}

#[test]
fn empty_body_is_a_null_event_not_an_error() {
    let gateway = gateway();
    let response = gateway.post_json(&gateway.path("raw"), "");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["body"], serde_json::Value::Null);

    let strict = gateway.post_json(&gateway.path("strict"), "");
    assert_eq!(
        strict.status, 422,
        "a schema that needs an object refuses null"
    );
}

#[test]
fn method_not_in_the_trigger_is_405_with_allow() {
    let gateway = gateway();
    let path = gateway.path("raw");
    let put = Request::post(&path, "{}").header("x-api-key", TEST_KEY);
    let put = Request {
        method: "PUT".into(),
        ..put
    };
    assert_eq!(gateway.send(&put).status, 200);

    for method in ["GET", "DELETE", "PATCH"] {
        let request = Request::new(method, &path).header("x-api-key", TEST_KEY);
        let response = gateway.send(&request);
        assert_eq!(response.status, 405, "{method}");
        assert_eq!(response.error_code(), "method_not_allowed");
        assert_eq!(response.header("allow"), Some("POST, PUT"));
    }
}

#[test]
fn answers_keep_the_connection_alive() {
    let gateway = gateway();
    let path = gateway.path("raw");
    let stream = connect(gateway.port);
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);

    let requests = [
        Request::post(&path, r#"{"n":1}"#).header("x-api-key", TEST_KEY),
        Request::post(&path, "{").header("x-api-key", TEST_KEY),
        Request::post(&path, json_array_of_size(100 * 1024)).header("x-api-key", TEST_KEY),
        Request::post(&path, r#"{"n":4}"#).header("x-api-key", TEST_KEY),
    ];
    let statuses: Vec<u16> = requests
        .iter()
        .map(|request| {
            writer.write_all(&request.to_bytes()).unwrap();
            read_response(&mut reader).expect("same connection").status
        })
        .collect();
    assert_eq!(statuses, vec![200, 400, 200, 200]);
}

#[test]
fn every_refusal_is_json_with_a_code_and_message() {
    let gateway = gateway();
    let responses = [
        gateway.send(&Request::new("GET", "/")),
        gateway.send(&Request::new("POST", "/hooks/../../etc/passwd")),
        gateway.send(&Request::new("DELETE", "/hooks/raw/not-a-token?x=1")),
    ];
    for response in responses {
        assert!(
            response.status >= 400 && response.status < 500,
            "{}",
            response.status
        );
        assert!(!response.error_code().is_empty());
    }
}

#[test]
fn stalled_body_is_408_not_a_hang() {
    let gateway = gateway();
    // The test configuration allows 2 s per body read; send part of the body, then stall.
    let headers = [("x-api-key", TEST_KEY), ("content-length", "100")];
    let mut stream = send_head(gateway.port, &gateway.path("raw"), &headers);
    stream.write_all(br#"{"partial":"#).unwrap();

    let response =
        read_response(&mut BufReader::new(stream)).expect("an answer after the read timeout");
    assert_eq!(response.status, 408);
    assert_eq!(response.error_code(), "request_timeout");
    assert_eq!(gateway.post_json(&gateway.path("raw"), "{}").status, 200);
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn gzip_bodies_are_expanded_under_the_body_limit() {
    let workflow = "id: zipped\nmax_body_bytes: 1000\nmapping:\n  n: { pointer: /n }\n";
    let gateway = Gateway::custom(&[("workflows/zipped.yaml", workflow)]);
    let zipped = |body: Vec<u8>| {
        let request = Request::post(&gateway.path("zipped"), body)
            .header("content-encoding", "gzip")
            .header("x-api-key", TEST_KEY);
        gateway.send(&request)
    };

    let small = zipped(gzip(br#"{"n": 7}"#));
    assert_eq!(small.status, 200, "{}", small.text());
    assert_eq!(small.json(), serde_json::json!({"n": 7}));

    let padded = format!(r#"{{"n": 1, "pad": "{}"}}"#, " ".repeat(5_000));
    let bomb = gzip(padded.as_bytes());
    assert!(bomb.len() < 1000, "compressed it fits the limit");
    let refused = zipped(bomb);
    assert_eq!(
        (refused.status, refused.error_code()),
        (413, "payload_too_large".into())
    );

    let corrupt = zipped(gzip(br#"{"n": 7}"#)[..12].to_vec());
    assert_eq!(
        (corrupt.status, corrupt.error_code()),
        (400, "bad_request".into())
    );
}

#[test]
fn plain_text_is_one_string_where_the_workflow_accepts_it() {
    let workflow = "id: notes\ntrigger:\n  formats: [text]\nscript: notes.rhai\n";
    let gateway = Gateway::custom(&[
        ("workflows/notes.yaml", workflow),
        ("scripts/notes.rhai", "#{ words: event.split(\" \").len() }"),
    ]);
    let request = Request::post(&gateway.path("notes"), "three little words")
        .without_header("content-type")
        .header("content-type", "text/plain; charset=utf-8")
        .header("x-api-key", TEST_KEY);
    let answer = gateway.send(&request);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json(), serde_json::json!({"words": 3}));
    assert_eq!(
        gateway.post_json(&gateway.path("notes"), "{}").status,
        415,
        "json is not listed"
    );
}

#[test]
fn text_that_is_not_utf8_is_invalid_json_whether_or_not_a_tree_is_built() {
    // `plain` reads nothing of the body, so its syntax is checked without building a tree;
    // `mapped` builds one. Both must refuse the same body.
    let gateway = Gateway::custom(&[
        ("workflows/plain.yaml", "id: plain\n"),
        (
            "workflows/mapped.yaml",
            "id: mapped\nmapping:\n  a: { pointer: /a }\n",
        ),
    ]);
    for workflow in ["plain", "mapped"] {
        let request = Request::post(&gateway.path(workflow), b"{\"a\":\"\xff\xfe\"}".to_vec())
            .header("x-api-key", TEST_KEY);
        let response = gateway.send(&request);
        assert_eq!(response.status, 400, "{workflow}: {}", response.text());
        assert_eq!(response.error_code(), "invalid_json", "{workflow}");
    }
}
