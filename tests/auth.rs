//! Who may call: unguessable URLs, API keys checked at the edge before the body is read.

use crate::support::*;
use std::io::BufReader;

const ECHO_WORKFLOW: &str = "id: echo\nmapping:\n  name:\n    pointer: /name\n";
const ONLY_OTHER: &str = "id: only-other\ntrigger:\n  api_key:\n    keys: [other]\n";
const OPEN: &str = "id: open\ntrigger:\n  api_key:\n    required: false\n";

fn gateway() -> Gateway {
    Gateway::custom(&[
        ("workflows/echo.yaml", ECHO_WORKFLOW),
        ("workflows/only-other.yaml", ONLY_OTHER),
        ("workflows/open.yaml", OPEN),
    ])
}

#[test]
fn urls_are_unique_unguessable_and_stable_across_restarts() {
    let gateway = gateway();
    let first = gateway.urls();
    let second = gateway.urls();

    let paths: Vec<String> = ["echo", "only-other", "open"]
        .iter()
        .map(|id| gateway.path(id))
        .collect();
    for (id, path) in ["echo", "only-other", "open"].iter().zip(&paths) {
        let token = path
            .strip_prefix(&format!("/hooks/{id}/"))
            .expect("url names the id");
        assert_eq!(token.len(), 32, "128-bit token: {path}");
        assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(
            first[*id]["url"], second[*id]["url"],
            "stable across runs of the cli"
        );
    }
    assert_ne!(paths[0], paths[1]);

    // The id alone, or a wrong token, reaches nothing, and says the same as an unknown id.
    for guess in [
        "/hooks/echo",
        "/hooks/echo/",
        "/hooks/echo/00000000000000000000000000000000",
        "/",
    ] {
        let response = gateway.post_json(guess, "{}");
        assert_eq!(response.status, 404, "{guess}");
        assert_eq!(response.error_code(), "not_found");
    }
}

#[test]
fn restarted_gateway_serves_the_same_url() {
    let kept_state = tempfile::tempdir().unwrap();
    let state = kept_state.path().to_str().unwrap();
    let start = || {
        Start::custom(&[("workflows/echo.yaml", ECHO_WORKFLOW)])
            .env("WEBHOOK_GATEWAY_STATE_DIR", state)
            .run()
    };

    let first = start();
    let path = first.path("echo");
    assert_eq!(first.post_json(&path, "{}").status, 200);
    drop(first);

    let second = start();
    assert_eq!(second.path("echo"), path);
    assert_eq!(second.post_json(&path, "{}").status, 200);
}

#[test]
fn key_is_accepted_from_x_api_key_or_bearer() {
    let gateway = gateway();
    let path = gateway.path("echo");
    let by_header =
        gateway.send(&Request::post(&path, r#"{"name":"a"}"#).header("X-API-Key", TEST_KEY));
    assert_eq!(by_header.status, 200, "{}", by_header.text());

    let bearer = Request::post(&path, r#"{"name":"b"}"#)
        .header("Authorization", &format!("Bearer {TEST_KEY}"));
    let by_bearer = gateway.send(&bearer);
    assert_eq!(by_bearer.status, 200);
    assert_eq!(by_bearer.json()["name"], "b");
}

#[test]
fn missing_wrong_or_unlisted_key_is_401() {
    let gateway = gateway();
    let path = gateway.path("echo");
    let cases = [
        Request::post(&path, "{}"),
        Request::post(&path, "{}").header("x-api-key", "wrong-key"),
        Request::post(&path, "{}").header("authorization", &format!("Basic {TEST_KEY}")),
        Request::post(&path, "{}").header("x-api-key", &TEST_KEY[..TEST_KEY.len() - 1]),
        Request::post(&gateway.path("only-other"), "{}").header("x-api-key", TEST_KEY),
    ];
    for request in cases {
        let response = gateway.send(&request);
        assert_eq!(response.status, 401, "{:?}", request.headers);
        assert_eq!(response.error_code(), "unauthorized");
        assert!(response.header("www-authenticate").is_some());
    }

    let listed = gateway
        .send(&Request::post(&gateway.path("only-other"), "{}").header("x-api-key", OTHER_KEY));
    assert_eq!(listed.status, 200);
    let open = gateway.send(&Request::post(&gateway.path("open"), "{}"));
    assert_eq!(open.status, 200);
}

#[test]
fn missing_key_is_refused_before_the_body_is_read() {
    let gateway = gateway();
    // Announce a body and never send it: a gateway that read the body first would hang.
    let stream = send_head(
        gateway.port,
        &gateway.path("echo"),
        &[("content-length", "5000")],
    );

    let response = read_response(&mut BufReader::new(stream)).expect("an answer without the body");
    assert_eq!(response.status, 401);
}

#[test]
fn keys_never_reach_the_log() {
    let gateway = gateway();
    let path = gateway.path("echo");
    gateway.send(&Request::post(&path, "{}").header("x-api-key", TEST_KEY));
    gateway.send(&Request::post(&path, "{}").header("x-api-key", "a-wrong-key-attempt"));
    gateway
        .send(&Request::post(&path, "{}").header("authorization", &format!("Bearer {OTHER_KEY}")));

    let log = gateway.log();
    assert!(
        log.contains("http.status=200"),
        "requests are logged: {log}"
    );
    for secret in [
        TEST_KEY,
        OTHER_KEY,
        "a-wrong-key-attempt",
        &gateway.admin_token,
    ] {
        assert!(!log.contains(secret), "{secret} leaked into the log");
    }
}

#[test]
fn generated_key_works_once_its_hash_is_configured() {
    let output = std::process::Command::new(BINARY)
        .args(["keys", "generate", "--name", "partner"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let key = stdout
        .lines()
        .find_map(|l| l.strip_prefix("key: "))
        .expect("key line")
        .trim()
        .to_string();
    let config_lines: String = stdout
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("- name:"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        config_lines.contains("name: partner") && config_lines.contains("sha256:"),
        "{stdout}"
    );
    assert!(
        !config_lines.contains(&key),
        "the config line holds only the hash"
    );

    let config = format!("{BASE_CONFIG}{config_lines}");
    let gateway = Gateway::custom(&[
        ("gateway.yaml", &config),
        ("workflows/echo.yaml", ECHO_WORKFLOW),
    ]);
    let response =
        gateway.send(&Request::post(&gateway.path("echo"), "{}").header("x-api-key", &key));
    assert_eq!(response.status, 200, "{}", response.text());
}

#[test]
fn admin_api_requires_its_bearer_token() {
    let gateway = gateway();
    let endpoint = "/api/v1/workflows";
    let no_token = send(gateway.admin_port, &Request::new("GET", endpoint));
    assert_eq!(no_token.status, 401);
    assert_eq!(no_token.error_code(), "unauthorized");

    let wrong = send(
        gateway.admin_port,
        &Request::new("GET", endpoint).header("authorization", "Bearer nope"),
    );
    assert_eq!(wrong.status, 401);
    // The webhook API key is no admin token.
    let api_key = send(
        gateway.admin_port,
        &Request::new("GET", endpoint).header("authorization", &format!("Bearer {TEST_KEY}")),
    );
    assert_eq!(api_key.status, 401);
    assert_eq!(gateway.admin_get(endpoint).status, 200);

    // Probes need no token and learn nothing from the answer.
    for probe in ["/healthz", "/readyz"] {
        let answer = send(gateway.admin_port, &Request::new("GET", probe));
        assert_eq!(answer.status, 200, "{probe}");
    }
}

#[test]
fn without_an_admin_token_the_admin_listener_is_off() {
    let gateway = Start::custom(&[("workflows/echo.yaml", ECHO_WORKFLOW)])
        .without_admin()
        .run();
    assert!(std::net::TcpStream::connect(("127.0.0.1", gateway.admin_port)).is_err());
    assert!(gateway.log().contains("admin api disabled"));
    assert_eq!(gateway.post_json(&gateway.path("echo"), "{}").status, 200);
}
