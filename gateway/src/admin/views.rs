//! The JSON the admin API shows: workflows as an operator sees them, discovered fields, and
//! the run listing's filters.

use super::{parse_run_state, RUN_STATES};
use crate::authoring::fields::{discover, DiscoveryLimits};
use crate::authoring::samples::Sample;
use crate::config::{Limits, ResponseMode, Workflow};
use crate::error::GatewayError;
use crate::runs::RunState;
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
