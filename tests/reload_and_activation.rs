//! Activation through the admin API and the CLI, hot reload of changed files, and the admin
//! API's workflow, run and config views.

use crate::support::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const GREET: &str =
    "id: greet\nmapping:\n  name: { pointer: /name, type: string }\nscript: greet.rhai\n";

fn script(word: &str) -> String {
    format!("#{{ greeting: \"{word} \" + name }}")
}

fn gateway() -> Gateway {
    Gateway::custom(&[
        ("workflows/greet.yaml", GREET),
        ("scripts/greet.rhai", &script("hello")),
    ])
}

fn greet(gateway: &Gateway) -> Response {
    gateway.post_json(&gateway.path("greet"), r#"{"name":"ada"}"#)
}

/// Polls until `check` holds, failing after the harness's patience.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}

fn write(gateway: &Gateway, relative: &str, contents: &str) {
    std::fs::write(gateway.config_dir().join(relative), contents).unwrap();
}

#[test]
fn deactivation_is_what_the_url_does_and_survives_a_restart() {
    let mut gateway = gateway();
    assert_eq!(greet(&gateway).status, 200);

    let off = gateway.admin_send("POST", "/api/v1/workflows/greet/deactivate");
    assert_eq!(off.status, 200, "{}", off.text());
    assert_eq!(off.json()["active"], false);
    assert_eq!(off.json()["activation"], "override");
    assert_eq!(greet(&gateway).error_code(), "workflow_inactive");
    let listed = gateway.admin_get("/api/v1/workflows").json();
    assert_eq!(listed["workflows"][0]["active"], false);

    gateway.restart();
    assert_eq!(greet(&gateway).error_code(), "workflow_inactive");
    assert_eq!(
        gateway.admin_get("/api/v1/workflows/greet").json()["active"],
        false
    );

    let on = gateway.remote(&["activate", "greet"]);
    assert!(
        on.status.success(),
        "{}",
        String::from_utf8_lossy(&on.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&on.stdout).trim(),
        "greet is active"
    );
    assert_eq!(greet(&gateway).status, 200);
    let shown = gateway.admin_get("/api/v1/workflows/greet").json();
    assert_eq!(shown["activation"], "file", "back to what the file says");
}

#[test]
fn editing_the_files_active_flag_wins_over_an_older_override() {
    let gateway = gateway();
    let off = gateway.remote(&["deactivate", "greet"]);
    assert!(off.status.success());
    assert_eq!(greet(&gateway).status, 404);

    write(
        &gateway,
        "workflows/greet.yaml",
        &format!("{GREET}active: false\n"),
    );
    assert_eq!(gateway.admin_send("POST", "/api/v1/reload").status, 200);
    let shown = gateway.admin_get("/api/v1/workflows/greet").json();
    assert_eq!(
        (shown["active"].clone(), shown["activation"].clone()),
        (json!(false), json!("file"))
    );

    write(
        &gateway,
        "workflows/greet.yaml",
        &format!("{GREET}active: true\n"),
    );
    assert_eq!(gateway.admin_send("POST", "/api/v1/reload").status, 200);
    assert_eq!(greet(&gateway).status, 200);
}

#[test]
fn activation_of_an_unknown_workflow_is_a_clear_404() {
    let gateway = gateway();
    let answer = gateway.admin_send("POST", "/api/v1/workflows/nope/activate");
    assert_eq!(answer.status, 404);
    assert_eq!(answer.error_code(), "workflow_not_found");
    let cli = gateway.remote(&["activate", "nope"]);
    assert!(!cli.status.success());
    assert!(String::from_utf8_lossy(&cli.stderr).contains("workflow_not_found"));

    let wrong_method = gateway.admin_send("GET", "/api/v1/workflows/greet/activate");
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("POST"));
}

#[test]
fn a_changed_script_is_picked_up_without_a_restart() {
    let gateway = gateway();
    assert_eq!(greet(&gateway).json()["greeting"], "hello ada");

    write(&gateway, "scripts/greet.rhai", &script("welcome"));
    eventually("the watcher reloads the script", || {
        greet(&gateway).json()["greeting"] == "welcome ada"
    });
    let config = gateway.admin_get("/api/v1/config").json();
    assert_eq!(config["last_reload"]["outcome"], "applied");
    assert_eq!(config["last_reload"]["trigger"], "watch");
    assert!(config["config_version"].as_u64().unwrap() >= 2);
}

#[test]
fn sighup_reloads_when_the_watcher_is_off() {
    let config = format!("{BASE_CONFIG}reload:\n  watch: false\n");
    let gateway = Gateway::custom(&[
        ("gateway.yaml", &config),
        ("workflows/greet.yaml", GREET),
        ("scripts/greet.rhai", &script("hello")),
    ]);
    write(&gateway, "scripts/greet.rhai", &script("hey"));
    gateway.signal("HUP");
    eventually("SIGHUP reloads", || {
        greet(&gateway).json()["greeting"] == "hey ada"
    });
    let config = gateway.admin_get("/api/v1/config").json();
    assert_eq!(config["last_reload"]["trigger"], "signal");
    assert_eq!(config["watch"], false);
}

#[test]
fn a_new_workflow_file_appears_and_a_removed_one_goes() {
    let gateway = gateway();
    write(&gateway, "workflows/extra.yaml", "id: extra\n");
    eventually("the new workflow is listed", || {
        gateway.admin_get("/api/v1/workflows/extra").status == 200
    });
    assert_eq!(gateway.post_json(&gateway.path("extra"), "{}").status, 200);

    std::fs::remove_file(gateway.config_dir().join("workflows/extra.yaml")).unwrap();
    eventually("the removed workflow is gone", || {
        gateway.admin_get("/api/v1/workflows/extra").status == 404
    });
}

#[test]
fn a_broken_change_is_refused_and_the_last_good_configuration_keeps_serving() {
    let gateway = gateway();
    // `urls` reads the files, which are about to break; the running gateway keeps its URL.
    let path = gateway.path("greet");
    let greet = |gateway: &Gateway| gateway.post_json(&path, r#"{"name":"ada"}"#);
    write(&gateway, "scripts/greet.rhai", "#{ greeting: ");
    write(
        &gateway,
        "workflows/greet.yaml",
        &GREET.replace("type: string", "type: text"),
    );

    let refused = gateway.admin_send("POST", "/api/v1/reload");
    assert_eq!(refused.status, 422, "{}", refused.text());
    assert_eq!(refused.error_code(), "config_invalid");
    let problems = refused.json()["error"]["reload"]["problems"].clone();
    assert!(!problems.as_array().unwrap().is_empty(), "{problems}");
    assert!(problems.to_string().contains("greet.yaml"), "{problems}");

    assert_eq!(greet(&gateway).json()["greeting"], "hello ada");
    let config = gateway.admin_get("/api/v1/config").json();
    assert_eq!(config["config_version"], 1);
    assert_eq!(config["last_reload"]["outcome"], "refused");
    assert!(gateway.log().contains("reload refused"));

    let cli = gateway.remote(&["reload"]);
    assert!(!cli.status.success());
    assert!(String::from_utf8_lossy(&cli.stderr).contains("greet.yaml"));

    write(&gateway, "workflows/greet.yaml", GREET);
    write(&gateway, "scripts/greet.rhai", &script("hi"));
    let fixed = gateway.remote(&["reload"]);
    assert!(
        fixed.status.success(),
        "{}",
        String::from_utf8_lossy(&fixed.stderr)
    );
    assert_eq!(greet(&gateway).json()["greeting"], "hi ada");
}

#[test]
fn reloads_while_requests_flow_fail_no_request() {
    let gateway = Arc::new(gateway());
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let served = Arc::new(AtomicUsize::new(0));
    let greetings = Arc::new(Mutex::new(std::collections::HashSet::new()));

    let senders: Vec<_> = (0..3)
        .map(|_| {
            let (gateway, stop, failures, served, greetings) = (
                Arc::clone(&gateway),
                Arc::clone(&stop),
                Arc::clone(&failures),
                Arc::clone(&served),
                Arc::clone(&greetings),
            );
            std::thread::spawn(move || {
                let path = gateway.path("greet");
                while !stop.load(Ordering::SeqCst) {
                    let response = gateway.post_json(&path, r#"{"name":"ada"}"#);
                    if response.status == 200 {
                        let greeting = response.json()["greeting"].clone();
                        greetings.lock().unwrap().insert(greeting.to_string());
                        served.fetch_add(1, Ordering::SeqCst);
                    } else {
                        failures.lock().unwrap().push(response.text());
                    }
                }
            })
        })
        .collect();

    for round in 0..6 {
        let before = served.load(Ordering::SeqCst);
        eventually("requests flow between reloads", || {
            served.load(Ordering::SeqCst) > before + 5
        });
        write(
            &gateway,
            "scripts/greet.rhai",
            &script(&format!("v{round}")),
        );
        let reload = gateway.admin_send("POST", "/api/v1/reload");
        assert_eq!(reload.status, 200, "{}", reload.text());
    }
    let before = served.load(Ordering::SeqCst);
    eventually("requests flow after the last reload", || {
        served.load(Ordering::SeqCst) > before + 5
    });
    stop.store(true, Ordering::SeqCst);
    for sender in senders {
        sender.join().unwrap();
    }

    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    let greetings = greetings.lock().unwrap();
    assert!(greetings.contains("\"v5 ada\""), "{greetings:?}");
    assert!(
        greetings.len() >= 3,
        "several versions served: {greetings:?}"
    );
}

#[test]
fn admin_api_lists_workflows_with_urls_state_and_counters() {
    let gateway = gateway();
    assert_eq!(greet(&gateway).status, 200);
    assert_eq!(gateway.post_json(&gateway.path("greet"), "{").status, 400);

    let listed = gateway.admin_get("/api/v1/workflows").json();
    let greet = &listed["workflows"][0];
    assert_eq!(greet["id"], "greet");
    let urls = gateway.urls();
    assert_eq!(greet["url"], urls["greet"]["url"]);
    assert_eq!(greet["test_url"], urls["greet"]["test_url"]);
    assert_eq!(greet["variables"], json!(["name"]));
    let counters = &greet["counters"];
    assert_eq!(counters["requests"], 2, "{counters}");
    assert_eq!(counters["in_flight"], 0, "every request was answered");
    assert_eq!(counters["by_status_class"]["2xx"], 1);
    assert_eq!(counters["by_status_class"]["4xx"], 1);
    assert!(counters["last_request_at"].is_string());

    let workflows = gateway.remote(&["workflows"]);
    assert!(String::from_utf8_lossy(&workflows.stdout).contains("greet"));
}

#[test]
fn admin_api_lists_runs_by_workflow_and_state() {
    let gateway = Gateway::custom(&[
        ("workflows/later.yaml", "id: later\nresponse: accept\n"),
        ("workflows/greet.yaml", GREET),
        ("scripts/greet.rhai", &script("hello")),
    ]);
    let run_id = gateway.post_json(&gateway.path("later"), "{}").json()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    gateway.wait_for_run(&run_id);

    let runs = gateway
        .admin_get("/api/v1/runs?workflow=later&state=succeeded")
        .json();
    assert_eq!(runs["count"], 1, "{runs}");
    assert_eq!(runs["runs"][0]["run_id"], run_id.as_str());
    let none = gateway.admin_get("/api/v1/runs?workflow=greet").json();
    assert_eq!(none["count"], 0);

    let bad = gateway.admin_get("/api/v1/runs?state=sleeping");
    assert_eq!(bad.status, 400);
    assert_eq!(bad.error_code(), "invalid_parameter");
    assert_eq!(gateway.admin_get("/api/v1/runs?limit=0").status, 400);
    assert_eq!(
        gateway.admin_get("/api/v1/runs/unknown").error_code(),
        "run_not_found"
    );
    assert_eq!(
        gateway.admin_get("/api/v1/nothing").error_code(),
        "not_found"
    );
}

#[test]
fn the_openapi_document_describes_every_endpoint() {
    let gateway = gateway();
    let served = send(
        gateway.admin_port,
        &Request::new("GET", "/api/v1/openapi.json"),
    );
    assert_eq!(served.status, 200);
    let document: Value = served.json();
    let on_disk: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("docs/openapi.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        document, on_disk,
        "the served document is docs/openapi.json"
    );

    let paths = document["paths"].as_object().unwrap();
    let expected = [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/api/v1/workflows", "get"),
        ("/api/v1/workflows/{id}", "get"),
        ("/api/v1/workflows/{id}/activate", "post"),
        ("/api/v1/workflows/{id}/deactivate", "post"),
        ("/api/v1/workflows/{id}/samples", "get"),
        ("/api/v1/workflows/{id}/samples", "delete"),
        ("/api/v1/workflows/{id}/fields", "get"),
        ("/api/v1/workflows/{id}/samples/{sample_id}/replay", "post"),
        ("/api/v1/workflows/{id}/dead-letters/replay", "post"),
        ("/api/v1/runs", "get"),
        ("/api/v1/runs", "delete"),
        ("/api/v1/runs/{run_id}", "get"),
        ("/api/v1/runs/{run_id}/replay", "post"),
        ("/api/v1/config", "get"),
        ("/api/v1/reload", "post"),
        ("/api/v1/openapi.json", "get"),
    ];
    for (path, method) in expected {
        assert!(
            paths.get(path).and_then(|item| item.get(method)).is_some(),
            "{method} {path} is not documented"
        );
    }
    assert_eq!(paths.len(), 17, "no undocumented or stale paths");
}

#[test]
fn an_activation_outlives_its_file_being_away_for_a_moment() {
    let gateway = gateway();
    assert!(gateway.remote(&["deactivate", "greet"]).status.success());
    let path = gateway.path("greet");
    let (file, away) = (
        gateway.config_dir().join("workflows/greet.yaml"),
        gateway.config_dir().join("greet.yaml.away"),
    );

    std::fs::rename(&file, &away).unwrap();
    assert_eq!(gateway.admin_send("POST", "/api/v1/reload").status, 200);
    assert_eq!(gateway.admin_get("/api/v1/workflows/greet").status, 404);
    std::fs::rename(&away, &file).unwrap();
    assert_eq!(gateway.admin_send("POST", "/api/v1/reload").status, 200);

    let answer = gateway.post_json(&path, r#"{"name":"ada"}"#);
    assert_eq!(answer.error_code(), "workflow_inactive");
    assert_eq!(
        gateway.admin_get("/api/v1/workflows/greet").json()["activation"],
        "override"
    );
}

#[test]
fn editor_lock_files_do_not_block_a_reload_and_ids_may_be_percent_encoded() {
    let gateway = gateway();
    write(&gateway, "workflows/.#greet.yaml", "not: [a workflow");
    write(&gateway, "scripts/greet.rhai", &script("hallo"));
    let reload = gateway.admin_send("POST", "/api/v1/reload");
    assert_eq!(reload.status, 200, "{}", reload.text());
    assert_eq!(greet(&gateway).json()["greeting"], "hallo ada");

    let encoded = gateway.admin_get("/api/v1/workflows/gr%65et");
    assert_eq!(encoded.status, 200);
    assert_eq!(encoded.json()["id"], "greet");
}
