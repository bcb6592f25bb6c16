//! Forwarding workflows to real backends on loopback: what the backend receives, byte for
//! byte, what the caller gets back, retries of accepted runs, and failing backends.

use crate::support::backend::{Backend, Received, Reply};
use crate::support::*;
use serde_json::{json, Value};
use std::time::Duration;

fn config(backends: &[(&str, Vec<String>)], extra: &str) -> String {
    let mut config = format!("{BASE_CONFIG}backends:\n");
    for (name, urls) in backends {
        let list = urls
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ");
        config.push_str(&format!(
            "  {name}:\n    addresses: [{list}]\n    connect_timeout_ms: 500\n    read_timeout_ms: 800\n    total_timeout_ms: 2000\n    health_check:\n      path: /health\n      interval_ms: 200\n"
        ));
    }
    config.push_str(extra);
    config
}

const TICKETS: &str = r#"
id: tickets
mapping:
  subject: { pointer: /subject, type: string, required: true }
  team: { pointer: /team, type: string, default: "first line" }
forward:
  backend: svc
  method: PUT
  path: /teams/{team}/tickets
  body: variables
  headers:
    pass: [X-Trace, Content-Type]
    add: { X-Source: gateway }
"#;

const ORIGINAL: &str = "id: original\nmax_body_bytes: 2097152\nforward:\n  backend: svc\n  path: /raw\n  body: original\n";
const SCRIPTED: &str = "id: scripted\nmapping:\n  n: { pointer: /n, type: integer, required: true }\nscript: double.rhai\nforward:\n  backend: svc\n  path: /computed\n";
const ASYNC: &str = "id: later\nresponse: accept\nmapping:\n  n: { pointer: /n }\nforward:\n  backend: svc\n  path: /deliveries\n  retry:\n    max_attempts: 3\n    initial_backoff_ms: 50\n    max_backoff_ms: 2000\n";

fn gateway_for(backend: &Backend) -> Gateway {
    let config = config(&[("svc", vec![backend.url()])], "");
    Gateway::custom(&[
        ("gateway.yaml", &config),
        ("workflows/tickets.yaml", TICKETS),
        ("workflows/original.yaml", ORIGINAL),
        ("workflows/scripted.yaml", SCRIPTED),
        ("scripts/double.rhai", "#{ doubled: n * 2, by: \"script\" }"),
        ("workflows/later.yaml", ASYNC),
    ])
}

fn only(requests: Vec<Received>) -> Received {
    assert_eq!(requests.len(), 1, "{requests:?}");
    requests.into_iter().next().unwrap()
}

#[test]
fn mapped_variables_reach_the_backend_and_its_answer_comes_back() {
    let backend = Backend::start(|_, _| {
        Reply::Respond(
            201,
            vec![
                ("content-type".into(), "application/json".into()),
                ("x-ticket".into(), "T-7".into()),
                ("connection".into(), "keep-alive, x-private".into()),
                ("x-private".into(), "hop".into()),
            ],
            br#"{"ticket":"T-7"}"#.to_vec(),
        )
    });
    let gateway = gateway_for(&backend);
    let request = Request::post(
        &gateway.path("tickets"),
        r#"{"subject":"Printer on fire","team":"ops/2"}"#,
    )
    .header("x-api-key", TEST_KEY)
    .header("x-trace", "trace-1")
    .header("x-request-id", "req-abc.1")
    .header("x-hub-signature-256", "sha256=00");
    let response = gateway.send(&request);

    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.text(), r#"{"ticket":"T-7"}"#);
    assert_eq!(response.header("x-ticket"), Some("T-7"));
    assert_eq!(
        response.header("x-private"),
        None,
        "headers named by Connection are hop-by-hop"
    );
    let run_id = response.header("x-run-id").expect("run id").to_string();

    let received = only(backend.wait_for(1));
    assert_eq!(received.method, "PUT");
    assert_eq!(received.path, "/teams/ops%2F2/tickets");
    assert_eq!(
        received.body,
        br#"{"subject":"Printer on fire","team":"ops/2"}"#
    );
    assert_eq!(received.header("content-type"), Some("application/json"));
    assert_eq!(received.header("x-trace"), Some("trace-1"));
    assert_eq!(received.header("x-source"), Some("gateway"));
    assert_eq!(received.header("x-run-id"), Some(run_id.as_str()));
    assert_eq!(received.header("idempotency-key"), Some(run_id.as_str()));
    assert_eq!(received.header("x-workflow-id"), Some("tickets"));
    assert_eq!(received.header("x-request-id"), Some("req-abc.1"));
    for secret in ["x-api-key", "authorization", "x-hub-signature-256"] {
        assert_eq!(
            received.header(secret),
            None,
            "{secret} must not be forwarded"
        );
    }
}

#[test]
fn original_body_of_one_mib_arrives_byte_for_byte() {
    let backend = Backend::ok();
    let gateway = gateway_for(&backend);
    // Well above Pingora's 64 KiB replay buffer, with multi-byte characters and odd spacing.
    let mut body = String::from("{ \"items\" : [");
    while body.len() < 1024 * 1024 {
        body.push_str("\"ünïcödé ✓ \\u00e9\" ,\n");
    }
    body.push_str("\"end\"] }");
    let request = Request::post(&gateway.path("original"), body.clone())
        .header("x-api-key", TEST_KEY)
        .without_header("content-type")
        .header("content-type", "application/vnd.acme+json; charset=utf-8");
    let response = gateway.send(&request);
    assert_eq!(response.status, 200, "{}", response.text());

    let received = only(backend.wait_for(1));
    assert_eq!(received.body.len(), body.len());
    assert!(received.body == body.as_bytes(), "body changed on the way");
    assert_eq!(
        received.header("content-type"),
        Some("application/vnd.acme+json; charset=utf-8")
    );
}

#[test]
fn a_repeated_content_type_is_forwarded_as_the_one_the_body_was_decoded_by() {
    let backend = Backend::ok();
    let gateway = gateway_for(&backend);
    let request = Request::post(&gateway.path("original"), r#"{"n": 1}"#)
        .header("x-api-key", TEST_KEY)
        .header("content-type", "text/plain");
    let response = gateway.send(&request);
    assert_eq!(response.status, 200, "{}", response.text());

    let received = only(backend.wait_for(1));
    assert_eq!(received.header("content-type"), Some("application/json"));
}

#[test]
fn script_result_is_what_gets_forwarded() {
    let backend = Backend::ok();
    let gateway = gateway_for(&backend);
    let response = gateway.post_json(&gateway.path("scripted"), r#"{"n": 21}"#);
    assert_eq!(response.status, 200);
    assert_eq!(response.json(), json!({ "ok": true }));
    let received = only(backend.wait_for(1));
    assert_eq!(
        serde_json::from_slice::<Value>(&received.body).unwrap(),
        json!({ "doubled": 42, "by": "script" })
    );
}

#[test]
fn large_chunked_answer_is_relayed_whole() {
    let payload: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let expected = payload.clone();
    let backend = Backend::start(move |_, _| Reply::Chunked(200, payload.clone(), 64 * 1024));
    let gateway = gateway_for(&backend);
    let response = gateway.post_json(&gateway.path("scripted"), r#"{"n": 1}"#);
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), expected.len());
    assert!(response.body == expected);
}

#[test]
fn accepted_run_is_retried_until_the_backend_succeeds() {
    let backend = Backend::start(|_, before| match before {
        0 | 1 => Reply::json(503, r#"{"busy":true}"#),
        _ => Reply::json(200, r#"{"stored":true}"#),
    });
    let gateway = gateway_for(&backend);
    let response = gateway.post_json(&gateway.path("later"), r#"{"n": 5}"#);
    assert_eq!(response.status, 202);
    let run_id = response.json()["run_id"].as_str().unwrap().to_string();

    let record = gateway.wait_for_run(&run_id);
    assert_eq!(record["state"], "succeeded", "{record}");
    let statuses: Vec<&Value> = record["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["status"])
        .collect();
    assert_eq!(statuses, vec![&json!(503), &json!(503), &json!(200)]);
    assert_eq!(record["result"]["status"], 200);
    assert_eq!(record["result"]["body"], json!({ "stored": true }));

    let received = backend.wait_for(3);
    assert!(received
        .iter()
        .all(|r| r.header("idempotency-key") == Some(run_id.as_str())));
    assert!(
        received.iter().all(|r| r.body == received[0].body),
        "every attempt sends the same body"
    );
}

#[test]
fn retry_after_is_honoured_and_other_4xx_are_not_retried() {
    let backend = Backend::start(|request, before| {
        let n: Value = serde_json::from_slice(&request.body).unwrap();
        match (n["n"].as_i64(), before) {
            (Some(429), 0) => Reply::Respond(429, vec![("retry-after".into(), "1".into())], vec![]),
            (Some(429), _) => Reply::json(200, "{}"),
            _ => Reply::json(422, r#"{"error":"bad"}"#),
        }
    });
    let gateway = gateway_for(&backend);

    let limited = gateway
        .post_json(&gateway.path("later"), r#"{"n": 429}"#)
        .json();
    let record = gateway.wait_for_run(limited["run_id"].as_str().unwrap());
    assert_eq!(record["state"], "succeeded", "{record}");
    let received = backend.wait_for(2);
    let waited = received[1].at - received[0].at;
    assert!(
        waited >= Duration::from_millis(900),
        "retried after {waited:?}, not after Retry-After: 1"
    );

    let refused = gateway
        .post_json(&gateway.path("later"), r#"{"n": 1}"#)
        .json();
    let record = gateway.wait_for_run(refused["run_id"].as_str().unwrap());
    assert_eq!(record["state"], "failed");
    assert_eq!(record["attempts"].as_array().unwrap().len(), 1, "{record}");
    assert_eq!(record["error"]["code"], "backend_rejected");
    assert_eq!(record["error"]["status"], 422);
}

#[test]
fn run_that_exhausts_its_attempts_is_dead_lettered() {
    let backend = Backend::start(|_, _| Reply::json(500, "{}"));
    let gateway = gateway_for(&backend);
    let accepted = gateway.post_json(&gateway.path("later"), "{}").json();
    let record = gateway.wait_for_run(accepted["run_id"].as_str().unwrap());
    assert_eq!(record["state"], "dead_lettered", "{record}");
    assert_eq!(record["error"]["code"], "backend_rejected");
    assert_eq!(record["attempts"].as_array().unwrap().len(), 3);
    assert_eq!(backend.requests().len(), 3);
}

#[test]
fn backend_that_never_answers_is_504_and_the_gateway_keeps_serving() {
    let backend = Backend::start(|request, _| match request.path.as_str() {
        "/computed" => Reply::Hang,
        _ => Reply::json(200, "{}"),
    });
    let gateway = gateway_for(&backend);
    let started = std::time::Instant::now();
    let response = gateway.post_json(&gateway.path("scripted"), r#"{"n": 1}"#);
    assert_eq!(response.status, 504);
    assert_eq!(response.error_code(), "backend_timeout");
    assert!(started.elapsed() < Duration::from_secs(10));

    let other = gateway.post_json(&gateway.path("original"), "{}");
    assert_eq!(other.status, 200, "{}", other.text());
}

#[test]
fn dead_backend_is_502_then_503_until_its_health_check_passes_again() {
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = config(&[("svc", vec![format!("http://{dead}")])], "");
    let gateway = Gateway::custom(&[
        ("gateway.yaml", &config),
        ("workflows/tickets.yaml", TICKETS),
    ]);
    let path = gateway.path("tickets");

    let first = gateway.post_json(&path, r#"{"subject":"a"}"#);
    assert!(matches!(first.status, 502 | 503), "{}", first.status);
    assert_eq!(first.error_code(), "backend_unavailable");
    let second = gateway.post_json(&path, r#"{"subject":"a"}"#);
    assert_eq!(second.status, 503, "a failed address is out of rotation");
    assert!(second.header("retry-after").is_some());

    // Bring the address back; the health check runs every 200 ms.
    let backend = Backend::start_on(dead, |_, _| Reply::json(200, r#"{"back":true}"#));
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let response = gateway.post_json(&path, r#"{"subject":"a"}"#);
        if response.status == 200 {
            assert_eq!(response.json(), json!({ "back": true }));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "address never came back: {}",
            response.status
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!backend.requests().is_empty());
}

#[test]
fn requests_are_spread_round_robin_and_skip_a_dead_address() {
    let one = Backend::ok();
    let two = Backend::ok();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let config = config(&[("svc", vec![one.url(), two.url(), dead])], "");
    let gateway = Gateway::custom(&[
        ("gateway.yaml", &config),
        ("workflows/tickets.yaml", TICKETS),
    ]);
    let path = gateway.path("tickets");

    for _ in 0..6 {
        let response = gateway.post_json(&path, r#"{"subject":"s"}"#);
        assert_eq!(
            response.status,
            200,
            "a dead address costs no failed request: {}",
            response.text()
        );
    }
    let (a, b) = (one.requests().len(), two.requests().len());
    assert_eq!(a + b, 6);
    assert!(a >= 2 && b >= 2, "spread {a} / {b}");
}

#[test]
fn shipped_support_ticket_workflow_forwards_to_its_backend() {
    let backend = Backend::start(|_, _| Reply::json(201, r#"{"id":"T-1"}"#));
    let gateway = Start::shipped()
        .env("SUPPORT_BACKEND_URL", &backend.url())
        .run();
    let body = r#"{"subject":"VPN down","description":"since 9am","requester":{"email":"ada@example.com"},"priority":"high"}"#;
    let request =
        Request::post(&gateway.path("support-ticket"), body).header("x-api-key", DEMO_KEY);
    let response = gateway.send(&request);
    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.json(), json!({ "id": "T-1" }));

    let received = only(backend.wait_for(1));
    assert_eq!(
        (received.method.as_str(), received.path.as_str()),
        ("POST", "/tickets")
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&received.body).unwrap(),
        json!({ "subject": "VPN down", "description": "since 9am", "requester_email": "ada@example.com", "priority": "high" })
    );
}

/// A TLS backend: Python's HTTP server with a certificate for 127.0.0.1 signed by an authority
/// made for the test, which the gateway trusts through `SSL_CERT_FILE`.
struct TlsBackend {
    child: std::process::Child,
    port: u16,
    /// The test authority's certificate, for the gateway to trust.
    authority: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsBackend {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        let (authority, certificate, key) = (path("ca.pem"), path("cert.pem"), path("key.pem"));
        std::fs::write(
            path("leaf.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        // A test authority, and a certificate for 127.0.0.1 that it signs.
        let steps: [Vec<String>; 3] = [
            [
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=test-ca",
                "-keyout",
                &path("ca.key"),
                "-out",
                &authority,
            ]
            .map(String::from)
            .to_vec(),
            [
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                &key,
                "-out",
                &path("leaf.csr"),
            ]
            .map(String::from)
            .to_vec(),
            [
                "x509",
                "-req",
                "-in",
                &path("leaf.csr"),
                "-CA",
                &authority,
                "-CAkey",
                &path("ca.key"),
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &path("leaf.ext"),
                "-out",
                &certificate,
            ]
            .map(String::from)
            .to_vec(),
        ];
        for step in steps {
            let made = std::process::Command::new("openssl")
                .args(&step)
                .output()
                .expect("openssl is installed by .ci/prereqs");
            assert!(
                made.status.success(),
                "{}",
                String::from_utf8_lossy(&made.stderr)
            );
        }
        let certificate = std::path::PathBuf::from(certificate);
        let authority = std::path::PathBuf::from(authority);

        let server = r#"
import http.server, ssl, sys
class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_PUT = do_POST
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg(server)
            .arg(&certificate)
            .arg(&key)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 is installed by .ci/prereqs");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let port = line
            .trim()
            .parse()
            .expect("the backend prints its port once it listens");
        Self {
            child,
            port,
            authority,
            _dir: dir,
        }
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn https_backend_is_reached_with_a_verified_certificate() {
    let backend = TlsBackend::start();
    let config = config(
        &[("svc", vec![format!("https://127.0.0.1:{}", backend.port)])],
        "",
    );
    let files = [
        ("gateway.yaml", config.as_str()),
        ("workflows/tickets.yaml", TICKETS),
    ];

    let trusted = Start::custom(&files)
        .env("SSL_CERT_FILE", backend.authority.to_str().unwrap())
        .run();
    let response = trusted.post_json(&trusted.path("tickets"), r#"{"subject":"over tls"}"#);
    assert_eq!(
        response.status,
        200,
        "{}\n{}",
        response.text(),
        trusted.log()
    );
    assert_eq!(
        response.json(),
        json!({ "subject": "over tls", "team": "first line" })
    );

    // Without the certificate trusted, the gateway refuses to talk to the backend.
    let untrusted = Start::custom(&files)
        .env("SSL_CERT_FILE", "/nonexistent")
        .run();
    let refused = untrusted.post_json(&untrusted.path("tickets"), r#"{"subject":"x"}"#);
    assert!(matches!(refused.status, 502 | 503), "{}", refused.text());
    assert_eq!(refused.error_code(), "backend_unavailable");
}

#[test]
fn interim_answers_are_skipped_and_the_final_one_relayed() {
    let backend =
        Backend::start(|_, _| Reply::AfterInterim(Box::new(Reply::json(201, r#"{"final":true}"#))));
    let gateway = gateway_for(&backend);
    let response = gateway.post_json(&gateway.path("scripted"), r#"{"n": 1}"#);
    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.json(), json!({ "final": true }));

    let accepted = gateway.post_json(&gateway.path("later"), "{}").json();
    let record = gateway.wait_for_run(accepted["run_id"].as_str().unwrap());
    assert_eq!(record["state"], "succeeded", "{record}");
    assert_eq!(record["result"]["status"], 201);
}

#[test]
fn backend_slower_than_its_read_timeout_is_504_and_an_accepted_run_retries() {
    // read_timeout_ms is 800 in this configuration; a hung answer is cut there.
    let backend = Backend::start(|request, before| match (request.path.as_str(), before) {
        ("/deliveries", 0) | ("/computed", _) => Reply::Hang,
        _ => Reply::json(200, r#"{"late":false}"#),
    });
    let gateway = gateway_for(&backend);

    let accepted = gateway.post_json(&gateway.path("later"), "{}").json();
    let record = gateway.wait_for_run(accepted["run_id"].as_str().unwrap());
    assert_eq!(record["state"], "succeeded", "{record}");
    let attempts = record["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{record}");
    assert!(
        attempts[0]["error"].as_str().unwrap().contains("timed out"),
        "{record}"
    );

    let started = std::time::Instant::now();
    let response = gateway.post_json(&gateway.path("scripted"), r#"{"n": 1}"#);
    assert_eq!(response.status, 504);
    assert_eq!(response.error_code(), "backend_timeout");
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "read timeout, not total: {:?}",
        started.elapsed()
    );
}
