//! The JSON the admin API shows: workflows as an operator sees them, discovered fields, and
//! the run listing's filters.

use super::{parse_run_state, RUN_STATES};
use crate::authoring::fields::{discover, DiscoveryLimits};
use crate::authoring::samples::Sample;
use crate::authoring::trace::{self, Arrived};
use crate::config::{Limits, ResponseMode, Workflow};
use crate::error::GatewayError;
use crate::journal::RunState;
use crate::registry::LiveWorkflow;
use crate::server::{GatewayState, Snapshot};
use serde_json::{json, Value};
use std::sync::Arc;

/// One workflow: its URLs, activation, counters and samples.
pub fn workflow(state: &GatewayState, snapshot: &Snapshot, workflow: &Workflow) -> Value {
    let base = &snapshot.config.server.public_base_url;
    let router = &snapshot.router;
    let live = state.registry.get(&workflow.id);
    let active = live.as_ref().is_some_and(|live| live.is_active());
    let activation = state.registry.source_of(&workflow.id);

    json!({
        "id": workflow.id,
        "description": workflow.description,
        "active": active,
        "activation": activation,
        "file_active": workflow.active,
        "url": router.path_of(&workflow.id).map(|path| format!("{base}{path}")),
        "test_url": router.test_path_of(&workflow.id).map(|path| format!("{base}{path}")),
        "methods": workflow.methods,
        "response": response_name(workflow.response),
        "forward": workflow.forward.as_ref().map(|forward| json!({ "backend": forward.backend })),
        "script": workflow.script.as_ref().map(|script| script.file.display().to_string()),
        "schema": workflow.schema.is_some(),
        "variables": workflow.mapping.rules().iter().map(|rule| rule.name.as_str()).collect::<Vec<_>>(),
        "source": workflow.source.display().to_string(),
        "samples": {
            "count": live.as_ref().map_or(0, |live| live.samples.len()),
            "production": workflow.sample_production,
        },
        "counters": live.as_ref().map(|live| live.counters.to_json()),
    })
}

pub fn response_name(mode: ResponseMode) -> &'static str {
    match mode {
        ResponseMode::ReturnResults => "return_results",
        ResponseMode::Accept => "accept",
    }
}

/// Fields discovered over a workflow's samples (given newest first), read oldest first so
/// fields and examples appear in the order they arrived. Samples whose body was cut, or is
/// not JSON, are counted and left out.
pub fn fields(workflow_id: &str, samples: &[Arc<Sample>], limits: &Limits) -> Value {
    let mut events = Vec::with_capacity(samples.len());
    let mut skipped = 0;
    for sample in samples.iter().rev() {
        let parsed = (!sample.body_truncated)
            .then(|| crate::payload::parse_json(&sample.raw, limits.max_json_depth).ok())
            .flatten();
        match parsed {
            Some(event) => events.push(event),
            None => skipped += 1,
        }
    }

    let discovery = discover(&events, &DiscoveryLimits::default());
    let mut body = json!(discovery);
    body["workflow_id"] = json!(workflow_id);
    body["skipped_samples"] = json!(skipped);
    body
}

/// The sample `sample_id` names (`latest` for the newest), if it can be replayed.
pub fn find_sample(samples: &[Arc<Sample>], sample_id: &str) -> Result<Arc<Sample>, GatewayError> {
    let found = if sample_id == "latest" {
        samples.first()
    } else {
        samples.iter().find(|sample| sample.id == sample_id)
    };
    let sample = found.ok_or_else(|| GatewayError::UnknownSample(sample_id.to_string()))?;
    if sample.body_truncated {
        return Err(GatewayError::SampleTruncated(sample.id.clone()));
    }
    Ok(Arc::clone(sample))
}

/// The trace of a sample run again through the workflow as configured now: its method and
/// size are checked against the workflow's current rules first, as production would. Its
/// redacted headers stay redacted: a mapping that reads one sees `[redacted]`.
pub fn replay(
    snapshot: &Snapshot,
    workflow: &Workflow,
    live: &LiveWorkflow,
    sample: &Sample,
) -> Value {
    let query = sample_query(sample);
    let arrived = Arrived {
        method: &sample.method,
        headers: &sample.headers,
        query: query.as_deref(),
        body: &sample.raw,
    };
    let run_id = crate::runs::new_run_id();
    let active = live.is_active();
    let traced = match refusal(workflow, sample) {
        Some(error) => trace::refused(workflow, active, &arrived, &error),
        None => trace::run_steps(&snapshot.config, workflow, active, &arrived, &run_id),
    };

    let mut trace = traced.trace;
    if traced.result.is_some() {
        trace.skip("forward", "replays reach no backend");
    }
    trace.skip_rest("an earlier step failed");
    let mut extra = traced.extra;
    extra.insert("run_id".into(), json!(run_id));
    extra.insert(
        "replayed".into(),
        json!({ "sample_id": sample.id, "received_at": sample.received_at, "config_version": snapshot.version }),
    );
    trace.finish(extra)
}

/// What production would refuse about a sample before reading its body.
fn refusal(workflow: &Workflow, sample: &Sample) -> Option<GatewayError> {
    if !workflow.allows_method(&sample.method) {
        return Some(GatewayError::MethodNotAllowed {
            method: sample.method.clone(),
            allowed: workflow.methods.join(", "),
        });
    }
    (sample.body_bytes > workflow.max_body_bytes).then_some(GatewayError::PayloadTooLarge {
        limit_bytes: workflow.max_body_bytes,
    })
}

fn sample_query(sample: &Sample) -> Option<String> {
    if sample.query.is_empty() {
        return None;
    }
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in &sample.query {
        query.append_pair(name, value.as_str().unwrap_or_default());
    }
    Some(query.finish())
}

/// `?workflow=<id>&state=<state>&limit=<n>` of `GET /api/v1/runs`.
pub struct RunFilter {
    pub workflow: Option<String>,
    pub state: Option<RunState>,
    pub limit: usize,
}

impl RunFilter {
    pub fn parse(query: Option<&str>, max_limit: usize) -> Result<Self, GatewayError> {
        let mut filter = Self {
            workflow: None,
            state: None,
            limit: 100,
        };
        for (name, value) in crate::pipeline::parse_query(query) {
            match name.as_str() {
                "workflow" => filter.workflow = Some(value),
                "state" => {
                    let state = parse_run_state(&value)
                        .ok_or_else(|| invalid("state", format!("must be one of {RUN_STATES}")))?;
                    filter.state = Some(state);
                }
                "limit" => {
                    filter.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|limit| (1..=max_limit).contains(limit))
                        .ok_or_else(|| invalid("limit", format!("must be 1 to {max_limit}")))?;
                }
                _ => {
                    return Err(invalid(
                        &name,
                        "is not known; use workflow, state or limit".into(),
                    ))
                }
            }
        }
        Ok(filter)
    }
}

fn invalid(name: &str, reason: String) -> GatewayError {
    GatewayError::InvalidParameter {
        name: name.to_string(),
        reason,
    }
}
