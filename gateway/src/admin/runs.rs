//! The runs part of the admin API: listing and showing journaled runs (inputs redacted),
//! replaying one run or a workflow's dead letters, and purging ended runs by age.

use super::views::RunFilter;
use crate::authoring::samples::redacted_query;
use crate::error::GatewayError;
use crate::http_reply::Reply;
use crate::journal::{Resumable, RunInput};
use crate::server::GatewayState;
use serde_json::{json, Value};

/// Most runs one listing returns.
const MAX_LISTED_RUNS: usize = 1_000;

fn journal_failed(error: String) -> GatewayError {
    tracing::error!(journal.error = %error, "journal read failed");
    GatewayError::JournalUnavailable
}

pub fn list(state: &GatewayState, query: Option<&str>) -> Result<Reply, GatewayError> {
    let filter = RunFilter::parse(query, MAX_LISTED_RUNS)?;
    let runs = state
        .shared
        .journal()
        .list(filter.workflow.as_deref(), filter.state, filter.limit)
        .map_err(journal_failed)?;
    Ok(Reply::json(
        200,
        &json!({ "count": runs.len(), "runs": runs }),
    ))
}

/// One run with its attempts and the input it was accepted with, credentials redacted.
pub fn show(state: &GatewayState, run_id: &str) -> Result<Reply, GatewayError> {
    let journal = state.shared.journal();
    let record = journal
        .get(run_id)
        .map_err(journal_failed)?
        .ok_or_else(|| GatewayError::UnknownRun(run_id.to_string()))?;
    let mut body = json!(record);
    if let Some(input) = journal.input(run_id).map_err(journal_failed)? {
        body["input"] = redacted_input(&input);
    }
    Ok(Reply::json(200, &body))
}

fn redacted_input(input: &RunInput) -> Value {
    // A repeated header shows its values joined with ", ", as the run itself saw them.
    let mut headers = serde_json::Map::new();
    for (name, value) in &input.headers {
        let shown = if crate::forward::looks_secret(name) {
            crate::authoring::samples::REDACTED
        } else {
            value.as_str()
        };
        match headers.get_mut(name) {
            Some(Value::String(joined)) => {
                joined.push_str(", ");
                joined.push_str(shown);
            }
            _ => {
                headers.insert(name.clone(), Value::String(shown.to_string()));
            }
        }
    }
    let body = crate::payload::parse_recorded(&input.body)
        .unwrap_or_else(|| Value::String(String::from_utf8_lossy(&input.body).into_owned()));
    json!({
        "method": input.method,
        "headers": headers,
        "query": redacted_query(input.query.as_deref(), None),
        "body": body,
        "body_bytes": input.body.len(),
        "config_version": input.config_version,
        "request_id": input.request_id,
    })
}

/// Puts one ended run back in the queue; its earlier attempts stay in its record.
pub fn replay(state: &GatewayState, run_id: &str) -> Result<Reply, GatewayError> {
    if state.runs.room() == 0 {
        return Err(overloaded());
    }
    let journal = state.shared.journal();
    let replayed = journal
        .replay(&[run_id.to_string()])
        .map_err(journal_failed)?;
    if replayed.is_empty() {
        return Err(match journal.get(run_id).map_err(journal_failed)? {
            Some(_) => GatewayError::RunNotFinished(run_id.to_string()),
            None => GatewayError::UnknownRun(run_id.to_string()),
        });
    }
    resume(state, replayed);
    Ok(Reply::json(
        200,
        &json!({ "run_id": run_id, "state": "accepted" }),
    ))
}

/// Puts every dead-lettered run of a workflow back in the queue.
pub fn replay_dead_letters(state: &GatewayState, workflow_id: &str) -> Result<Reply, GatewayError> {
    if state.snapshot().config.workflow(workflow_id).is_none() {
        return Err(GatewayError::UnknownWorkflow(workflow_id.to_string()));
    }
    // As many as `runs.queue_capacity` has room for; the rest stay for another call.
    let room = state.runs.room();
    if room == 0 {
        return Err(overloaded());
    }
    let journal = state.shared.journal();
    let mut dead = journal.dead_lettered(workflow_id).map_err(journal_failed)?;
    let left = dead.len().saturating_sub(room);
    dead.truncate(room);
    let replayed = journal.replay(&dead).map_err(journal_failed)?;
    let run_ids: Vec<&str> = replayed
        .iter()
        .map(|run| run.input.run_id.as_str())
        .collect();
    let body = json!({
        "workflow_id": workflow_id,
        "replayed": run_ids.len(),
        "run_ids": run_ids,
        "left": left,
    });
    resume(state, replayed);
    Ok(Reply::json(200, &body))
}

/// No room under `runs.queue_capacity` for a replayed run now.
fn overloaded() -> GatewayError {
    GatewayError::Overloaded {
        retry_after_seconds: 1,
    }
}

fn resume(state: &GatewayState, runs: Vec<Resumable>) {
    let snapshot = state.snapshot();
    state
        .runs
        .resume(&snapshot.config, &snapshot.backends, runs);
}

/// `DELETE /api/v1/runs?older_than=<duration>[&workflow=<id>]`: deletes ended runs that
/// finished longer ago than the duration (`90s`, `12h`, `7d`).
pub fn purge(state: &GatewayState, query: Option<&str>) -> Result<Reply, GatewayError> {
    let mut older_than = None;
    let mut workflow = None;
    for (name, value) in crate::pipeline::parse_query(query) {
        match name.as_str() {
            "older_than" => {
                let age = humantime::parse_duration(&value).map_err(|_| {
                    GatewayError::InvalidParameter {
                        name: name.clone(),
                        reason: "must be a duration such as 90s, 12h or 7d".into(),
                    }
                })?;
                older_than = Some(age);
            }
            // A workflow no longer configured may still have runs to purge: any name goes,
            // but an empty one is a mistake, not "every workflow".
            "workflow" if value.is_empty() => {
                return Err(GatewayError::InvalidParameter {
                    name,
                    reason: "must name a workflow; leave it out to purge every workflow".into(),
                })
            }
            "workflow" => workflow = Some(value),
            _ => {
                return Err(GatewayError::InvalidParameter {
                    name,
                    reason: "is not known; use older_than or workflow".into(),
                })
            }
        }
    }
    let older_than = older_than.ok_or_else(|| GatewayError::InvalidParameter {
        name: "older_than".into(),
        reason: "is required, such as 7d".into(),
    })?;
    let purged = state
        .shared
        .journal()
        .purge_older_than(older_than, workflow.as_deref())
        .map_err(journal_failed)?;
    Ok(Reply::json(200, &json!({ "purged": purged })))
}
