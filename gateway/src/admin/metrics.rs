//! `GET /metrics`: the gateway's counters in the Prometheus text format. Labels are bounded:
//! workflow ids come from the configuration, status classes are five; no path, key or
//! client address is ever a label.

use crate::http_reply::Reply;
use crate::server::GatewayState;
use std::fmt::Write as _;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub fn render(state: &GatewayState) -> Reply {
    let snapshot = state.snapshot();
    let mut text = String::new();

    family(
        &mut text,
        "webhook_gateway_requests_total",
        "counter",
        "Requests answered on a workflow's URLs (production and test), by status class.",
    );
    let workflows: Vec<_> = snapshot
        .config
        .workflows
        .iter()
        .filter_map(|workflow| {
            Some((
                workflow.id.as_str(),
                state.registry.get(&workflow.id)?.counters.read(),
            ))
        })
        .collect();
    for (id, values) in &workflows {
        for (class, count) in CLASSES.iter().zip(values.by_class) {
            let _ = writeln!(
                text,
                "webhook_gateway_requests_total{{workflow=\"{id}\",class=\"{class}\"}} {count}"
            );
        }
    }
    family(
        &mut text,
        "webhook_gateway_test_requests_total",
        "counter",
        "Requests answered on a workflow's test URL.",
    );
    for (id, values) in &workflows {
        let _ = writeln!(
            text,
            "webhook_gateway_test_requests_total{{workflow=\"{id}\"}} {}",
            values.test_requests
        );
    }
    family(
        &mut text,
        "webhook_gateway_script_failures_total",
        "counter",
        "Requests whose script failed (kind=\"error\") or ran out of time or operations (kind=\"timeout\"); accepted runs are not counted here.",
    );
    for (id, values) in &workflows {
        let failures = [
            ("error", values.script_errors),
            ("timeout", values.script_timeouts),
        ];
        for (kind, count) in failures {
            let _ = writeln!(
                text,
                "webhook_gateway_script_failures_total{{workflow=\"{id}\",kind=\"{kind}\"}} {count}"
            );
        }
    }
    family(
        &mut text,
        "webhook_gateway_requests_in_flight",
        "gauge",
        "Requests routed to a workflow and not yet answered.",
    );
    for (id, values) in &workflows {
        let _ = writeln!(
            text,
            "webhook_gateway_requests_in_flight{{workflow=\"{id}\"}} {}",
            values.in_flight
        );
    }

    let gauges = [
        (
            "webhook_gateway_runs_unfinished",
            "Accepted runs written to the journal and not yet ended (the queue's depth).",
            state.runs.unfinished() as u64,
        ),
        (
            "webhook_gateway_runs_capacity",
            "Accepted runs that may be unfinished at once (runs.queue_capacity).",
            state.runs.capacity() as u64,
        ),
        (
            "webhook_gateway_config_version",
            "Version of the configuration in force: 1 at start, one more per applied reload.",
            snapshot.version,
        ),
        (
            "webhook_gateway_workflows",
            "Workflows loaded.",
            snapshot.config.workflows.len() as u64,
        ),
    ];
    for (name, help, value) in gauges {
        family(&mut text, name, "gauge", help);
        let _ = writeln!(text, "{name} {value}");
    }

    Reply {
        status: 200,
        headers: vec![(
            "content-type",
            "text/plain; version=0.0.4; charset=utf-8".to_string(),
        )],
        body: bytes::Bytes::from(text),
    }
}

fn family(text: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(text, "# HELP {name} {help}");
    let _ = writeln!(text, "# TYPE {name} {kind}");
}
