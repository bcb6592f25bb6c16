//! `GET /metrics`: the gateway's counters in the Prometheus text format. Labels are bounded:
//! workflow ids come from the configuration, status classes are five; no path, key or
//! client address is ever a label.

use crate::http_reply::Reply;
use crate::registry::CounterValues;
use crate::server::GatewayState;
use std::fmt::Write as _;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A family with samples for every workflow: name, type, help, and each sample's labels
/// after `workflow` with its value.
type PerWorkflow<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a dyn Fn(&CounterValues) -> Vec<(String, u64)>,
);

pub fn render(state: &GatewayState) -> Reply {
    let snapshot = state.snapshot();
    let mut text = String::new();

    let workflows: Vec<(&str, CounterValues)> = snapshot
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
    let families: [PerWorkflow; 4] = [
        (
            "webhook_gateway_requests_total",
            "counter",
            "Requests answered on a workflow's URLs (production and test), by status class.",
            &|values| {
                CLASSES
                    .iter()
                    .zip(values.by_class)
                    .map(|(class, count)| (format!(",class=\"{class}\""), count))
                    .collect()
            },
        ),
        (
            "webhook_gateway_test_requests_total",
            "counter",
            "Requests answered on a workflow's test URL.",
            &|values| vec![(String::new(), values.test_requests)],
        ),
        (
            "webhook_gateway_script_failures_total",
            "counter",
            "Requests whose script failed (kind=\"error\") or ran out of time or operations (kind=\"timeout\"); accepted runs are not counted here.",
            &|values| {
                vec![
                    (",kind=\"error\"".to_string(), values.script_errors),
                    (",kind=\"timeout\"".to_string(), values.script_timeouts),
                ]
            },
        ),
        (
            "webhook_gateway_requests_in_flight",
            "gauge",
            "Requests routed to a workflow and not yet answered.",
            &|values| vec![(String::new(), values.in_flight)],
        ),
    ];
    for (name, kind, help, samples) in families {
        family(&mut text, name, kind, help);
        for (id, values) in &workflows {
            for (labels, value) in samples(values) {
                let _ = writeln!(text, "{name}{{workflow=\"{id}\"{labels}}} {value}");
            }
        }
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
