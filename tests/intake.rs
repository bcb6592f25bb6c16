//! Intake rules through the real binary: rate and concurrency limits, address allowlists
//! behind trusted proxies, API keys in a query parameter, idempotency keys, and the Twilio
//! and Standard Webhooks signatures, which depend on the URL and on more than one header.

use crate::support::backend::{Backend, Reply};
use crate::support::*;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::json;
use std::io::{BufReader, Write};

fn with_server_lines(lines: &str) -> String {
    BASE_CONFIG.replacen("server:\n", &format!("server:\n{lines}"), 1)
}

/// Runs `webhook-gateway check` on a configuration that must fail; returns what it printed.
fn check_refuses(dir: &ConfigDir) -> String {
    let output = std::process::Command::new(BINARY)
        .args(["check", "--config"])
        .arg(dir.config())
        .env("WEBHOOK_GATEWAY_STATE_DIR", dir.dir.path())
        .env("TEST_API_KEY", TEST_KEY)
        .env("OTHER_API_KEY", OTHER_KEY)
        .output()
        .unwrap();
    assert!(!output.status.success(), "check accepted the configuration");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_workflow_rate_limit_answers_429_with_retry_after() {
    let workflow = "id: limited\nlimits:\n  rate_per_second: 0.001\n  burst: 2\n";
    let gateway = Gateway::custom(&[("workflows/limited.yaml", workflow)]);
    let path = gateway.path("limited");

    assert_eq!(gateway.post_json(&path, "{}").status, 200);
    assert_eq!(gateway.post_json(&path, "{}").status, 200);
    let refused = gateway.post_json(&path, "{}");
    assert_eq!(
        (refused.status, refused.error_code()),
        (429, "rate_limited".into())
    );
    // One token every 1000 s: the wait is whole seconds, rounded up, and near 1000.
    let wait: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((990..=1000).contains(&wait), "retry-after {wait}");
    assert!(refused.text().contains("workflow"), "{}", refused.text());
}

#[test]
fn an_api_key_rate_limit_counts_that_key_over_every_workflow() {
    let config = BASE_CONFIG.replacen(
        "    key: \"${TEST_API_KEY}\"\n",
        "    key: \"${TEST_API_KEY}\"\n    limits:\n      rate_per_second: 0.001\n      burst: 1\n",
        1,
    );
    let gateway = Gateway::custom(&[
        ("gateway.yaml", &config),
        ("workflows/a.yaml", "id: a\n"),
        ("workflows/b.yaml", "id: b\n"),
    ]);
    let send = |id: &str, key: &str| {
        gateway.send(&Request::post(&gateway.path(id), "{}").header("x-api-key", key))
    };

    assert_eq!(send("a", TEST_KEY).status, 200);
    let refused = send("b", TEST_KEY);
    assert_eq!(refused.status, 429, "the same key on another workflow");
    assert!(refused.text().contains("api key"), "{}", refused.text());
    assert!(refused.header("retry-after").is_some());
    assert_eq!(
        send("b", OTHER_KEY).status,
        200,
        "another key is not limited"
    );
    // A request refused before its key was known spends nothing of the key's budget.
    assert_eq!(send("a", "wrong").status, 401);
}

#[test]
fn a_concurrency_limit_refuses_a_request_while_another_is_in_progress() {
    let workflow = "id: single\nlimits:\n  max_concurrent: 1\n";
    let gateway = Gateway::custom(&[("workflows/single.yaml", workflow)]);
    let path = gateway.path("single");
    let body = br#"{"n":1}"#;
    let length = body.len().to_string();

    // The first request holds its place while its body has not arrived.
    let mut slow = send_head(
        gateway.port,
        &path,
        &[("x-api-key", TEST_KEY), ("content-length", &length)],
    );
    wait_until("the first request to arrive", || {
        gateway.admin_get("/api/v1/workflows/single").json()["counters"]["in_flight"] == 1
    });
    let refused = gateway.post_json(&path, "{}");
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.error_code(), "rate_limited");
    assert_eq!(refused.header("retry-after"), Some("1"));

    slow.write_all(body).unwrap();
    let first = read_response(&mut BufReader::new(slow)).unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(
        gateway.post_json(&path, "{}").status,
        200,
        "the place is given back"
    );
}

#[test]
fn allowlists_see_the_caller_behind_a_trusted_proxy_only() {
    let workflow = "id: office\ntrigger:\n  allow_ips: [\"10.0.0.0/8\", \"2001:db8::/32\"]\n";
    let direct = Gateway::custom(&[("workflows/office.yaml", workflow)]);
    let forwarded_for = |gateway: &Gateway, chain: &str| {
        gateway.send(
            &Request::post(&gateway.path("office"), "{}")
                .header("x-api-key", TEST_KEY)
                .header("x-forwarded-for", chain),
        )
    };
    let probe = direct.send(&Request::new("HEAD", &direct.path("office")));
    assert_eq!(probe.status, 403, "not even a probe learns the url is live");
    let refused = forwarded_for(&direct, "10.1.2.3");
    assert_eq!(
        (refused.status, refused.error_code()),
        (403, "address_not_allowed".into()),
        "loopback is not a trusted proxy here, so its X-Forwarded-For is ignored"
    );

    let config = with_server_lines("  trusted_proxies: [\"127.0.0.1\", \"::1\"]\n");
    let proxied = Gateway::custom(&[
        ("gateway.yaml", &config),
        ("workflows/office.yaml", workflow),
    ]);
    assert_eq!(forwarded_for(&proxied, "10.1.2.3").status, 200);
    assert_eq!(forwarded_for(&proxied, "2001:db8::9").status, 200);
    // The caller wrote 10.9.9.9 itself; the proxy appended the address it really saw.
    assert_eq!(forwarded_for(&proxied, "10.9.9.9, 192.0.2.7").status, 403);
    let no_header = proxied.post_json(&proxied.path("office"), "{}");
    assert_eq!(
        no_header.status, 403,
        "the proxy itself is not in the allowlist"
    );
}

#[test]
fn an_api_key_in_the_query_is_accepted_and_shown_nowhere() {
    let workflow = "id: legacy\ntrigger:\n  api_key:\n    query: token\nsamples:\n  production: true\nmapping:\n  page: { query: page }\n";
    let gateway = Gateway::custom(&[("workflows/legacy.yaml", workflow)]);
    let path = gateway.path("legacy");

    let answer = gateway.send(&Request::post(
        &format!("{path}?page=2&token={TEST_KEY}"),
        "{}",
    ));
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json(), json!({"page": "2"}));
    let wrong = gateway.send(&Request::post(&format!("{path}?token=nope"), "{}"));
    assert_eq!(wrong.status, 401);
    let elsewhere = gateway.send(&Request::post(&format!("{path}?key={TEST_KEY}"), "{}"));
    assert_eq!(elsewhere.status, 401, "only the named parameter counts");

    let samples = gateway.admin_get("/api/v1/workflows/legacy/samples").json();
    assert_eq!(samples["samples"][0]["query"]["token"], "[redacted]");
    assert_eq!(samples["samples"][0]["query"]["page"], "2");
    let trace = gateway.send(&Request::post(
        &format!("{}?token={TEST_KEY}", gateway.test_path("legacy")),
        "{}",
    ));
    assert_eq!(trace.status, 200, "{}", trace.text());
    assert!(!trace.text().contains(TEST_KEY), "{}", trace.text());
    assert!(!gateway.log().contains(TEST_KEY), "the key reached the log");
}

#[test]
fn mapping_the_key_parameter_is_refused_at_load() {
    let dir = ConfigDir::new(&[(
        "workflows/leaky.yaml",
        "id: leaky\ntrigger:\n  api_key:\n    query: token\nmapping:\n  t: { query: token }\n",
    )]);
    let problems = check_refuses(&dir);
    assert!(problems.contains("mapping.t.query"), "{problems}");
}

#[test]
fn a_repeated_event_is_answered_once_and_a_failed_one_can_be_retried() {
    // The backend first holds its answer past the gateway's read timeout, then answers.
    let backend = Backend::start(|_, index| match index {
        0 => Reply::Hang,
        _ => Reply::Respond(
            201,
            vec![
                ("content-type".into(), "application/json".into()),
                ("content-encoding".into(), "identity".into()),
            ],
            br#"{"ticket":"T-1"}"#.to_vec(),
        ),
    });
    let config = format!(
        "{BASE_CONFIG}backends:\n  svc:\n    addresses: [\"{}\"]\n    read_timeout_ms: 3000\n    total_timeout_ms: 5000\n",
        backend.url()
    );
    let workflow = "id: tickets\nidempotency:\n  pointer: /event/id\nforward:\n  backend: svc\n  path: /tickets\n";
    let gateway = Gateway::custom(&[
        ("gateway.yaml", &config),
        ("workflows/tickets.yaml", workflow),
    ]);
    let path = gateway.path("tickets");
    let event = r#"{"event":{"id":"evt_42"},"subject":"printer"}"#;

    std::thread::scope(|scope| {
        let first = scope.spawn(|| gateway.post_json(&path, event));
        backend.wait_for(1);
        let meanwhile = gateway.post_json(&path, event);
        assert_eq!(
            (meanwhile.status, meanwhile.error_code()),
            (409, "duplicate_in_progress".into())
        );
        assert_eq!(meanwhile.header("retry-after"), Some("1"));
        let first = first.join().unwrap();
        assert_eq!(first.status, 504, "{}", first.text());
    });

    // The failed run did not keep the key: the sender's retry runs.
    let retried = gateway.post_json(&path, event);
    assert_eq!(retried.status, 201, "{}", retried.text());
    assert_eq!(retried.header("idempotent-replayed"), None);
    let run_id = retried.header("x-run-id").unwrap().to_string();

    let repeat = gateway.post_json(&path, event);
    assert_eq!(repeat.status, 201);
    assert_eq!(repeat.text(), retried.text());
    assert_eq!(repeat.header("idempotent-replayed"), Some("true"));
    assert_eq!(repeat.header("x-run-id"), Some(run_id.as_str()));
    assert_eq!(repeat.header("content-encoding"), Some("identity"));
    assert_eq!(backend.requests().len(), 2, "the repeat reached no backend");

    let other = gateway.post_json(&path, r#"{"event":{"id":"evt_43"}}"#);
    assert_eq!(other.header("idempotent-replayed"), None);
    assert_eq!(backend.requests().len(), 3);
}

#[test]
fn an_accepted_run_that_fails_frees_its_key_for_a_resend() {
    let workflow = "id: later\nresponse: accept\nidempotency:\n  pointer: /id\nmapping:\n  fail: { pointer: /fail, default: false }\nscript: maybe.rhai\n";
    let script = "if fail { reject(422, \"told to fail\") } #{ ok: true }";
    let gateway = Gateway::custom(&[
        ("workflows/later.yaml", workflow),
        ("scripts/maybe.rhai", script),
    ]);
    let path = gateway.path("later");

    let failing = gateway.post_json(&path, r#"{"id":"e-1","fail":true}"#);
    assert_eq!(failing.status, 202);
    let first = failing.json()["run_id"].as_str().unwrap().to_string();
    assert_eq!(gateway.wait_for_run(&first)["state"], "rejected");
    let resent = gateway.post_json(&path, r#"{"id":"e-1","fail":true}"#);
    assert_eq!(resent.status, 202, "{}", resent.text());
    assert_ne!(
        resent.json()["run_id"],
        first.as_str(),
        "the resend runs anew"
    );

    let good = gateway.post_json(&path, r#"{"id":"e-2"}"#);
    let good_run = good.json()["run_id"].as_str().unwrap().to_string();
    assert_eq!(gateway.wait_for_run(&good_run)["state"], "succeeded");
    let repeat = gateway.post_json(&path, r#"{"id":"e-2"}"#);
    assert_eq!(
        (repeat.status, repeat.json()),
        (200, json!({"run_id": good_run, "status": "duplicate"}))
    );
}

#[test]
fn a_required_idempotency_key_must_be_there() {
    let workflow =
        "id: keyed\nidempotency:\n  header: Idempotency-Key\n  required: true\nmapping:\n  n: { pointer: /n }\n";
    let gateway = Gateway::custom(&[("workflows/keyed.yaml", workflow)]);
    let path = gateway.path("keyed");
    let missing = gateway.post_json(&path, r#"{"n":1}"#);
    assert_eq!(
        (missing.status, missing.error_code()),
        (400, "idempotency_key_missing".into())
    );
    let keyed = |n: u32| {
        gateway.send(
            &Request::post(&path, format!(r#"{{"n":{n}}}"#))
                .header("x-api-key", TEST_KEY)
                .header("idempotency-key", "k-1"),
        )
    };
    assert_eq!(keyed(1).json(), json!({"n": 1}));
    // Same key, other body: the key decides, as with Stripe's and GitHub's retries.
    let again = keyed(2);
    assert_eq!(again.json(), json!({"n": 1}));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
}

fn sign_sha1_base64(secret: &str, message: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

const TWILIO: &str = "id: sms\ntrigger:\n  api_key:\n    required: false\nsignature:\n  preset: twilio\n  secret: twilio_auth_token\nmapping:\n  from: { pointer: /From }\n  body: { pointer: /Body }\n";

#[test]
fn twilio_signatures_cover_the_public_url_and_the_form() {
    let config = with_server_lines(
        "  public_base_url: \"https://gateway.example.com\"\n  trusted_proxies: [\"127.0.0.1\"]\n",
    );
    let gateway = Gateway::custom(&[("gateway.yaml", &config), ("workflows/sms.yaml", TWILIO)]);
    let path = gateway.path("sms");
    let form = "Body=Hello+there&From=%2B15005550006&To=%2B15005550001";
    // Sorted by name, decoded: Body, From, To.
    let parameters = "BodyHello thereFrom+15005550006To+15005550001";
    let send = |signature: &str, extra: &[(&str, &str)]| {
        let mut request = Request::post(&path, form)
            .without_header("content-type")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", signature);
        for (name, value) in extra {
            request = request.header(name, value);
        }
        gateway.send(&request)
    };

    let configured = format!("https://gateway.example.com{path}{parameters}");
    let answer = send(&sign_sha1_base64("twilio_auth_token", &configured), &[]);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        answer.json(),
        json!({"from": "+15005550006", "body": "Hello there"})
    );

    // Behind a trusted proxy, the URL is the one the proxy reports.
    let proxied = format!("https://hooks.example.org{path}{parameters}");
    let forwarded = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "hooks.example.org"),
    ];
    assert_eq!(
        send(&sign_sha1_base64("twilio_auth_token", &proxied), &forwarded).status,
        200
    );
    let refused = send(
        &sign_sha1_base64("twilio_auth_token", &configured),
        &forwarded,
    );
    assert_eq!(refused.error_code(), "invalid_signature");
    assert_eq!(
        send(&sign_sha1_base64("other_token", &configured), &[]).status,
        401
    );
}

#[test]
fn standard_webhooks_signatures_verify_through_the_binary() {
    let workflow = "id: std\ntrigger:\n  api_key:\n    required: false\nsignature:\n  preset: standard_webhooks\n  secrets: [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\nmapping:\n  test: { pointer: /test }\n";
    let gateway = Start::custom(&[("workflows/std.yaml", workflow)])
        .env("WEBHOOK_GATEWAY_SIGNATURE_CLOCK", "1614265400")
        .run();
    let send = |signature: &str| {
        gateway.send(
            &Request::post(&gateway.path("std"), r#"{"test": 2432232314}"#)
                .header("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek")
                .header("webhook-timestamp", "1614265330")
                .header("webhook-signature", signature),
        )
    };
    let answer = send("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json(), json!({"test": 2432232314u64}));
    assert_eq!(send("v1,AAAA").status, 401);

    let broken = ConfigDir::new(&[(
        "workflows/std.yaml",
        &workflow.replace("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "not base64!"),
    )]);
    let problems = check_refuses(&broken);
    assert!(problems.contains("signature.secrets[0]"), "{problems}");
}
