//! `GET /metrics`: the gateway's counters in the Prometheus text format. Labels are bounded:
//! workflow ids, backend names and backend addresses come from the configuration, status
//! classes, phases and run states are fixed sets; no path, key or client address is ever a
//! label.

use crate::forward::backends::Backends;
use crate::http_reply::Reply;
use crate::metrics::Phase;
use crate::registry::{CounterValues, LiveWorkflow};
use crate::runs::EndCounts;
use crate::server::GatewayState;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A family with samples for every workflow: name, type, help, and, from the workflow's
/// values, each sample's labels after `workflow` with its value.
type PerWorkflow<'a, T> = (
    &'a str,
    &'a str,
    &'a str,
    &'a dyn Fn(&T) -> Vec<(String, u64)>,
);

/// Writes each family with one sample set per workflow of `rows`.
fn per_workflow<T>(text: &mut String, rows: &[(&str, T)], families: &[PerWorkflow<'_, T>]) {
    for (name, kind, help, samples) in families {
        family(text, name, kind, help);
        for (id, values) in rows {
            for (labels, value) in samples(values) {
                let _ = writeln!(text, "{name}{{workflow=\"{id}\"{labels}}} {value}");
            }
        }
    }
}

pub fn render(state: &GatewayState) -> Reply {
    let snapshot = state.snapshot();
    let mut text = String::new();

    let live: Vec<(&str, Arc<LiveWorkflow>)> = snapshot
        .config
        .workflows
        .iter()
        .filter_map(|workflow| Some((workflow.id.as_str(), state.registry.get(&workflow.id)?)))
        .collect();
    let workflows: Vec<(&str, CounterValues)> = live
        .iter()
        .map(|(id, live)| (*id, live.counters.read()))
        .collect();
    let families: [PerWorkflow<CounterValues>; 4] = [
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
    per_workflow(&mut text, &workflows, &families);

    unrouted(&mut text, state);
    latency(&mut text, &live);
    run_ends(&mut text, state, &live);
    journal(&mut text, state);
    backends(&mut text, &snapshot.backends);

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
        single(&mut text, name, "gauge", help, value);
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

fn unrouted(text: &mut String, state: &GatewayState) {
    let help = "Requests to a URL that is no workflow's (404).";
    let count = state.unrouted_requests.load(Ordering::Relaxed);
    single(
        text,
        "webhook_gateway_unrouted_requests_total",
        "counter",
        help,
        count,
    );
}

/// Phase and whole-request latency of production requests, for workflows that have had any.
fn latency(text: &mut String, live: &[(&str, Arc<LiveWorkflow>)]) {
    let phases = "webhook_gateway_phase_duration_seconds";
    family(
        text,
        phases,
        "histogram",
        "Time in each phase of a request: auth (API key), signature, body (reading it), validation (decoding and schema), mapping, script (synchronous runs), forward (until the backend's answer header).",
    );
    for (id, workflow) in live {
        for phase in Phase::STEPS {
            if let Some(histogram) = workflow.latency.get(phase) {
                let labels = format!("workflow=\"{id}\",phase=\"{}\",", phase.name());
                histogram.render(text, phases, &labels);
            }
        }
    }

    let whole = "webhook_gateway_request_duration_seconds";
    family(
        text,
        whole,
        "histogram",
        "Time from a production request's first byte to its last answered byte.",
    );
    for (id, workflow) in live {
        if let Some(histogram) = workflow.latency.get(Phase::Total) {
            histogram.render(text, whole, &format!("workflow=\"{id}\","));
        }
    }
}

/// How accepted runs ended, and the script failures among them: for every workflow loaded,
/// and for those removed whose runs still ended (a run journaled before its workflow went
/// ends failed at the next start), so that the sum over workflows counts every run.
fn run_ends(text: &mut String, state: &GatewayState, live: &[(&str, Arc<LiveWorkflow>)]) {
    let mut ids: Vec<String> = live.iter().map(|(id, _)| id.to_string()).collect();
    ids.extend(state.runs.ended().workflow_ids());
    ids.sort();
    ids.dedup();
    let ended: Vec<(&str, EndCounts)> = ids
        .iter()
        .map(|id| (id.as_str(), state.runs.ended().of(id)))
        .collect();

    let families: [PerWorkflow<EndCounts>; 2] = [
        (
            "webhook_gateway_runs_ended_total",
            "counter",
            "Accepted runs that ended, by final state.",
            &|counts| {
                let states = [
                    ("succeeded", counts.succeeded),
                    ("failed", counts.failed),
                    ("rejected", counts.rejected),
                    ("dead_lettered", counts.dead_lettered),
                ];
                let label = |(state, value)| (format!(",state=\"{state}\""), value);
                states.into_iter().map(label).collect()
            },
        ),
        (
            "webhook_gateway_run_script_failures_total",
            "counter",
            "Accepted runs whose script failed (kind=\"error\") or ran out of time or operations (kind=\"timeout\").",
            &|counts| {
                vec![
                    (",kind=\"error\"".to_string(), counts.script_errors),
                    (",kind=\"timeout\"".to_string(), counts.script_timeouts),
                ]
            },
        ),
    ];
    per_workflow(text, &ended, &families);
}

/// How far the journal's writer is behind.
fn journal(text: &mut String, state: &GatewayState) {
    let stats = state.shared.journal().stats();
    single(
        text,
        "webhook_gateway_journal_pending_changes",
        "gauge",
        "Changes handed to the journal's writer and not yet committed (run ends held back to share a commit, and failed writes waiting to be tried again, included).",
        stats.pending(),
    );
    single(
        text,
        "webhook_gateway_journal_commits_total",
        "counter",
        "Transactions the journal's writer committed.",
        stats.commits(),
    );

    let name = "webhook_gateway_journal_lag_seconds";
    family(
        text,
        name,
        "histogram",
        "Time from a change's hand-off to the journal's writer until its commit.",
    );
    stats.lag.render(text, name, "");
}

/// Whether each backend address takes requests: 1 when its health check passes and it is not
/// suspended after a failed request.
fn backends(text: &mut String, backends: &Backends) {
    let name = "webhook_gateway_backend_up";
    family(
        text,
        name,
        "gauge",
        "1 when a backend address takes requests (its health check passes and no failed request suspended it), else 0.",
    );
    for (backend, pool) in backends.by_name() {
        for (address, up) in pool.address_health() {
            let up = u8::from(up);
            let _ = writeln!(
                text,
                "{name}{{backend=\"{backend}\",address=\"{address}\"}} {up}"
            );
        }
    }
}

/// A family of one sample without labels.
fn single(text: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    family(text, name, kind, help);
    let _ = writeln!(text, "{name} {value}");
}

fn family(text: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(text, "# HELP {name} {help}");
    let _ = writeln!(text, "# TYPE {name} {kind}");
}
