//! Accepted runs are never lost: the journal through the real binary, with SIGKILL and a
//! restart part-way through a load, dead letters and their replay, retention, purging, and
//! back-pressure.

use crate::support::backend::{Backend, Reply};
use crate::support::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

fn config_with(backend: &Backend, runs: &str) -> String {
    format!(
        "{BASE_CONFIG}runs:\n{runs}backends:\n  svc:\n    addresses: [\"{}\"]\n    connect_timeout_ms: 500\n    read_timeout_ms: 3000\n    total_timeout_ms: 5000\n",
        backend.url()
    )
}

const DELIVER: &str = "id: deliver\nresponse: accept\nmapping:\n  n: { pointer: /n }\nforward:\n  backend: svc\n  path: /events\n  retry:\n    max_attempts: 3\n    initial_backoff_ms: 50\n    max_backoff_ms: 200\n";

fn run_ids_in(gateway: &Gateway, query: &str) -> Vec<String> {
    let answer = gateway.admin_get(&format!("/api/v1/runs?{query}"));
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer.json()["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["run_id"].as_str().unwrap().to_string())
        .collect()
}

/// A backend that takes `delay` over every request, then answers 200.
fn slow_backend(delay: Duration) -> Backend {
    Backend::start(move |_, _| {
        std::thread::sleep(delay);
        Reply::json(200, r#"{"ok":true}"#)
    })
}

/// How many times the backend received each run, by its `Idempotency-Key` (the run id).
fn deliveries_by_run(backend: &Backend) -> HashMap<String, usize> {
    let mut deliveries: HashMap<String, usize> = HashMap::new();
    for request in backend.requests().iter().filter(|r| r.path == "/events") {
        let key = request.header("idempotency-key").unwrap().to_string();
        *deliveries.entry(key).or_default() += 1;
    }
    deliveries
}

#[test]
fn every_acknowledged_run_completes_after_a_sigkill_and_restart() {
    // A slow backend keeps runs waiting in the journal when the gateway is killed.
    let backend = slow_backend(Duration::from_millis(15));
    let config = config_with(&backend, "  workers: 1\n  queue_capacity: 10000\n");
    let mut gateway = Gateway::custom(&[
        ("gateway.yaml", &config),
        ("workflows/deliver.yaml", DELIVER),
    ]);
    let path = gateway.path("deliver");
    let port = gateway.port;

    let acknowledged = Mutex::new(Vec::<String>::new());
    let count = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for sender in 0..4 {
            let (path, acknowledged, count, stop) = (&path, &acknowledged, &count, &stop);
            scope.spawn(move || {
                for n in 0..150 {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let body = format!(r#"{{"n":{}}}"#, sender * 1000 + n);
                    let request = Request::post(path, body).header("x-api-key", TEST_KEY);
                    // Once the gateway is killed, requests fail: they were never acknowledged.
                    let Ok(answer) = try_send(port, &request) else {
                        return;
                    };
                    if answer.status == 202 {
                        let run_id = answer.json()["run_id"].as_str().unwrap().to_string();
                        acknowledged.lock().unwrap().push(run_id);
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
        let deadline = std::time::Instant::now() + PATIENCE;
        while count.load(Ordering::SeqCst) < 120 {
            assert!(
                std::time::Instant::now() < deadline,
                "the load never got going"
            );
            std::thread::yield_now();
        }
        gateway.signal("KILL");
        stop.store(true, Ordering::SeqCst);
    });
    let acknowledged = acknowledged.into_inner().unwrap();
    let delivered_before = backend.requests().len();
    assert!(
        delivered_before < acknowledged.len(),
        "the kill came after every run was delivered; nothing was left to resume"
    );

    gateway.restart();
    assert!(
        gateway
            .log()
            .contains("resuming runs accepted before the last stop"),
        "{}",
        gateway.log()
    );
    let mut records = HashMap::new();
    for run_id in &acknowledged {
        let record = gateway.wait_for_run(run_id);
        assert_eq!(record["state"], "succeeded", "{record}");
        records.insert(run_id.clone(), record);
    }

    // Each acknowledged run reached the backend, and any run the backend saw more than once
    // has as many attempts on record: nothing ran twice unnoticed.
    let deliveries = deliveries_by_run(&backend);
    for run_id in &acknowledged {
        let delivered = deliveries.get(run_id).copied().unwrap_or(0);
        let attempts = records[run_id]["attempts"].as_array().unwrap().len();
        assert!(delivered >= 1, "run {run_id} never reached the backend");
        assert!(
            attempts >= delivered,
            "run {run_id} reached the backend {delivered} times with {attempts} attempts recorded"
        );
    }
}

#[test]
fn a_stop_lets_deliveries_under_way_finish_and_starts_no_new_ones() {
    let backend = slow_backend(Duration::from_millis(50));
    let config = config_with(&backend, "  workers: 2\n  queue_capacity: 10000\n");
    let mut gateway = Gateway::custom(&[
        ("gateway.yaml", &config),
        ("workflows/deliver.yaml", DELIVER),
    ]);
    let path = gateway.path("deliver");
    let mut acknowledged = Vec::new();
    for n in 0..60 {
        let answer = gateway.post_json(&path, &format!(r#"{{"n":{n}}}"#));
        assert_eq!(answer.status, 202, "{}", answer.text());
        acknowledged.push(answer.json()["run_id"].as_str().unwrap().to_string());
    }

    // Two workers at 50 ms a delivery need 1.5 s for all 60: stop while they are under way.
    backend.wait_for(4);
    gateway.signal("TERM");
    assert!(gateway.wait_exit().success());
    let log = gateway.log();
    assert!(log.contains("run pool stopped"), "{log}");
    assert!(log.contains("runs.cut_short=0"), "{log}");
    let delivered_before = backend.requests().len();
    assert!(
        delivered_before < acknowledged.len(),
        "every run was delivered before the stop; nothing was left to resume"
    );

    gateway.restart();
    for run_id in &acknowledged {
        let record = gateway.wait_for_run(run_id);
        assert_eq!(record["state"], "succeeded", "{record}");
        let attempts = record["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "no attempt was cut short: {record}");
    }
    let deliveries = deliveries_by_run(&backend);
    for run_id in &acknowledged {
        assert_eq!(deliveries.get(run_id), Some(&1), "run {run_id}");
    }
}

#[test]
fn dead_letters_are_kept_and_replayed_on_request() {
    let healthy = AtomicBool::new(false);
    let healthy: &'static AtomicBool = Box::leak(Box::new(healthy));
    let backend = Backend::start(move |_, _| {
        if healthy.load(Ordering::SeqCst) {
            Reply::json(200, r#"{"stored":true}"#)
        } else {
            Reply::json(503, r#"{"busy":true}"#)
        }
    });
    let config = config_with(&backend, "  workers: 2\n");
    let gateway = Gateway::custom(&[
        ("gateway.yaml", &config),
        ("workflows/deliver.yaml", DELIVER),
    ]);
    let path = gateway.path("deliver");

    let mut dead = Vec::new();
    for n in 0..2 {
        let accepted = gateway.post_json(&path, &format!(r#"{{"n":{n}}}"#));
        let run_id = accepted.json()["run_id"].as_str().unwrap().to_string();
        let record = gateway.wait_for_run(&run_id);
        assert_eq!(record["state"], "dead_lettered", "{record}");
        assert_eq!(record["attempts"].as_array().unwrap().len(), 3);
        dead.push(run_id);
    }
    assert_eq!(
        run_ids_in(&gateway, "workflow=deliver&state=dead_lettered").len(),
        2
    );

    let shown = gateway
        .admin_get(&format!("/api/v1/runs/{}", dead[0]))
        .json();
    assert_eq!(shown["input"]["body"], json!({"n": 0}));
    assert_eq!(shown["input"]["headers"].get("x-api-key"), None, "{shown}");

    healthy.store(true, Ordering::SeqCst);
    let one = gateway.admin_send("POST", &format!("/api/v1/runs/{}/replay", dead[0]));
    assert_eq!(one.status, 200, "{}", one.text());
    let record = gateway.wait_for_run(&dead[0]);
    assert_eq!(record["state"], "succeeded", "{record}");
    assert_eq!(record["replays"], 1);
    assert_eq!(
        record["attempts"].as_array().unwrap().len(),
        4,
        "earlier attempts stay"
    );

    let output = gateway.remote(&["runs", "replay-dead", "deliver"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("1 dead-lettered run(s)"), "{stdout}");
    assert_eq!(gateway.wait_for_run(&dead[1])["state"], "succeeded");

    let running = gateway.admin_send("POST", "/api/v1/runs/no-such-run/replay");
    assert_eq!(running.error_code(), "run_not_found");
    let listed = gateway.remote(&["runs", "list", "--workflow", "deliver"]);
    let table = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(table.matches("succeeded").count(), 2, "{table}");
}

#[test]
fn the_journal_keeps_only_what_retention_allows_and_purges_on_request() {
    let backend = Backend::start(|_, _| Reply::json(200, "{}"));
    let runs = "  max_records: 3\n  retention_interval_ms: 50\n";
    let config = config_with(&backend, runs);
    let gateway = Gateway::custom(&[
        ("gateway.yaml", &config),
        ("workflows/deliver.yaml", DELIVER),
    ]);
    let path = gateway.path("deliver");

    let mut accepted = Vec::new();
    for n in 0..6 {
        let answer = gateway.post_json(&path, &format!(r#"{{"n":{n}}}"#));
        let run_id = answer.json()["run_id"].as_str().unwrap().to_string();
        gateway.wait_for_run(&run_id);
        accepted.push(run_id);
    }
    wait_until("retention to run", || {
        run_ids_in(&gateway, "workflow=deliver").len() <= 3
    });
    let mut newest: Vec<String> = accepted[3..].to_vec();
    newest.reverse();
    assert_eq!(
        run_ids_in(&gateway, "workflow=deliver"),
        newest,
        "the newest are kept"
    );

    let missing = gateway.admin_send("DELETE", "/api/v1/runs");
    assert_eq!(missing.error_code(), "invalid_parameter");
    let no_workflow = gateway.admin_send("DELETE", "/api/v1/runs?older_than=0s&workflow=");
    assert_eq!(
        (no_workflow.status, no_workflow.error_code()),
        (400, "invalid_parameter".into())
    );
    assert_eq!(
        run_ids_in(&gateway, "workflow=deliver").len(),
        3,
        "nothing purged"
    );
    let ages_ago = gateway.admin_send("DELETE", "/api/v1/runs?older_than=300000000y");
    assert_eq!(
        ages_ago.json(),
        json!({"purged": 0}),
        "an age past the epoch deletes nothing"
    );
    let output = gateway.remote(&["runs", "purge", "--older-than", "0s"]);
    assert!(output.status.success());
    assert!(run_ids_in(&gateway, "workflow=deliver").is_empty());
}

#[test]
fn a_full_queue_answers_503_and_loses_nothing_already_accepted() {
    let backend = Backend::start(|_, _| Reply::Hang);
    let config = config_with(&backend, "  workers: 1\n  queue_capacity: 2\n");
    let once = DELIVER.replace("max_attempts: 3", "max_attempts: 1");
    let gateway = Gateway::custom(&[("gateway.yaml", &config), ("workflows/deliver.yaml", &once)]);
    let path = gateway.path("deliver");

    let first = gateway.post_json(&path, r#"{"n":1}"#);
    let second = gateway.post_json(&path, r#"{"n":2}"#);
    assert_eq!((first.status, second.status), (202, 202));
    let refused = gateway.post_json(&path, r#"{"n":3}"#);
    assert_eq!(
        (refused.status, refused.error_code()),
        (503, "overloaded".into())
    );
    assert_eq!(refused.header("retry-after"), Some("1"));
    let replay = gateway.admin_send("POST", "/api/v1/workflows/deliver/dead-letters/replay");
    assert_eq!(
        (replay.status, replay.error_code()),
        (503, "overloaded".into()),
        "replays wait for room too"
    );

    // Both accepted runs end (their backend never answers: dead letters), then room is back.
    for answer in [&first, &second] {
        let record: Value = gateway.wait_for_run(answer.json()["run_id"].as_str().unwrap());
        assert_eq!(record["state"], "dead_lettered", "{record}");
    }
    assert_eq!(gateway.post_json(&path, r#"{"n":4}"#).status, 202);
}

#[test]
fn a_run_whose_last_attempt_a_crash_cut_short_is_dead_lettered() {
    let backend = Backend::start(|_, _| Reply::Hang);
    let config = config_with(&backend, "  workers: 1\n");
    let once = DELIVER.replace("max_attempts: 3", "max_attempts: 1");
    let mut gateway =
        Gateway::custom(&[("gateway.yaml", &config), ("workflows/deliver.yaml", &once)]);
    let accepted = gateway.post_json(&gateway.path("deliver"), r#"{"n":1}"#);
    let run_id = accepted.json()["run_id"].as_str().unwrap().to_string();
    backend.wait_for(1);
    gateway.signal("KILL");

    gateway.restart();
    let record = gateway.wait_for_run(&run_id);
    assert_eq!(record["state"], "dead_lettered", "{record}");
    assert_eq!(record["error"]["code"], "attempts_exhausted");
    let attempt = &record["attempts"][0];
    assert!(
        attempt["error"].as_str().unwrap().contains("interrupted"),
        "{record}"
    );
    assert_eq!(
        backend.requests().len(),
        1,
        "no attempt beyond the last one"
    );
}

#[test]
fn a_run_waiting_to_retry_leaves_its_worker_to_others() {
    let backend = Backend::start(|_, _| {
        Reply::Respond(429, vec![("retry-after".into(), "600".into())], Vec::new())
    });
    let config = config_with(&backend, "  workers: 1\n");
    let quick = "id: quick\nresponse: accept\nmapping:\n  n: { pointer: /n }\n";
    let gateway = Gateway::custom(&[
        ("gateway.yaml", &config),
        ("workflows/deliver.yaml", DELIVER),
        ("workflows/quick.yaml", quick),
    ]);
    let patient = gateway.post_json(&gateway.path("deliver"), r#"{"n":1}"#);
    backend.wait_for(1);
    let answer = gateway.post_json(&gateway.path("quick"), r#"{"n":2}"#);
    let record = gateway.wait_for_run(answer.json()["run_id"].as_str().unwrap());
    assert_eq!(record["state"], "succeeded", "{record}");
    let waiting = gateway.admin_get(&format!(
        "/api/v1/runs/{}",
        patient.json()["run_id"].as_str().unwrap()
    ));
    assert_eq!(waiting.json()["state"], "retrying");
}

#[test]
fn a_second_gateway_cannot_take_a_state_folder_in_use() {
    let gateway = Gateway::custom(&[("workflows/quick.yaml", "id: quick\n")]);
    let output = std::process::Command::new(BINARY)
        .args(["run", "--config"])
        .arg(gateway.config_dir().join("gateway.yaml"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .env("WEBHOOK_GATEWAY_STATE_DIR", gateway.state_dir())
        .env("WEBHOOK_GATEWAY_ADMIN_TOKEN", "")
        .env("TEST_API_KEY", TEST_KEY)
        .env("OTHER_API_KEY", OTHER_KEY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("in use by another running gateway"),
        "{stderr}"
    );
    assert_eq!(gateway.post_json(&gateway.path("quick"), "{}").status, 200);
}
