//! Runs: their ids, the records that `GET /api/v1/runs/{id}` shows, and the bounded pool that
//! executes accepted (202) runs: the script first, then, for forwarding workflows, delivery to
//! the backend with retries.
//!
//! The pool has its own Tokio runtime. At most `runs.workers` runs execute at once (scripts on
//! blocking threads, deliveries as tasks) and at most `runs.queue_capacity` wait; past that the
//! caller gets 503 `overloaded` instead of a silent drop. Records live in a moka cache bounded
//! by count and age. The queue is in memory: runs not finished when the process stops are lost.

use crate::config::{RunSettings, Workflow};
use crate::error::GatewayError;
use crate::forward::backends::Backends;
use crate::forward::client::{self, ForwardError, UpstreamRequest};
use crate::forward::{build_request, RequestIds};
use crate::pipeline::{self, Prepared};
use crate::script::ScriptEngine;
use bytes::Bytes;
use moka::sync::Cache;
use pingora::connectors::http::Connector;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, Semaphore};

/// Longest wait a backend's `Retry-After` can impose between two attempts.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Most bytes of a backend's answer kept in a run record.
const RECORDED_BODY_BYTES: usize = 64 * 1024;

/// A run's id: a UUIDv7, so ids sort by creation time.
pub fn new_run_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Accepted,
    Running,
    Succeeded,
    /// The script ended the run with `reject()`.
    Rejected,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunError {
    pub code: &'static str,
    pub message: String,
    /// The status a synchronous caller would have received.
    pub status: u16,
}

/// One try at delivering a run to its backend.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub number: u32,
    pub started_at: String,
    pub duration_ms: f64,
    /// The backend's status, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the admin API shows of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub run_id: String,
    pub workflow_id: String,
    pub state: RunState,
    pub accepted_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Run records, bounded in count and age.
#[derive(Clone)]
pub struct RunStore {
    records: Cache<String, Arc<RunRecord>>,
}

impl RunStore {
    pub fn new(settings: &RunSettings) -> Self {
        let records = Cache::builder()
            .max_capacity(settings.max_records)
            .time_to_live(settings.record_ttl)
            .build();
        Self { records }
    }

    pub fn get(&self, run_id: &str) -> Option<Arc<RunRecord>> {
        self.records.get(run_id)
    }

    /// Records matching the filters, newest first (run ids sort by creation time).
    pub fn list(
        &self,
        workflow_id: Option<&str>,
        state: Option<RunState>,
        limit: usize,
    ) -> Vec<Arc<RunRecord>> {
        let mut matching: Vec<Arc<RunRecord>> = self
            .records
            .iter()
            .map(|(_, record)| record)
            .filter(|record| workflow_id.is_none_or(|id| record.workflow_id == id))
            .filter(|record| state.is_none_or(|wanted| record.state == wanted))
            .collect();
        matching.sort_by(|a, b| b.run_id.cmp(&a.run_id));
        matching.truncate(limit);
        matching
    }

    fn put(&self, record: &RunRecord) {
        self.records
            .insert(record.run_id.clone(), Arc::new(record.clone()));
    }
}

/// One accepted run waiting for its turn.
pub struct Job {
    pub run_id: String,
    pub request_id: String,
    pub workflow: Arc<Workflow>,
    pub prepared: Prepared,
    /// The body as received, for workflows that forward it unchanged.
    pub body: Bytes,
    pub caller_method: String,
    /// The script engine and backends of the configuration the run was accepted under, so a
    /// reload in the meantime does not change what the run does.
    pub engine: Arc<ScriptEngine>,
    pub backends: Arc<Backends>,
}

/// What every run task shares.
struct RunContext {
    store: RunStore,
    connector: Connector,
}

/// The background pool for accepted runs.
pub struct RunPool {
    queue: mpsc::Sender<(Job, RunRecord)>,
    store: RunStore,
    _runtime: tokio::runtime::Runtime,
}

impl RunPool {
    pub fn start(settings: &RunSettings) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("runs")
            .enable_all()
            .build()?;
        let store = RunStore::new(settings);
        let context = Arc::new(RunContext {
            store: store.clone(),
            connector: Connector::new(None),
        });

        let (queue, receiver) = mpsc::channel(settings.queue_capacity);
        let slots = Arc::new(Semaphore::new(settings.workers));
        runtime.spawn(dispatch(receiver, slots, context));
        Ok(Self {
            queue,
            store,
            _runtime: runtime,
        })
    }

    pub fn store(&self) -> &RunStore {
        &self.store
    }

    /// Queues a run, or refuses with `overloaded` when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), GatewayError> {
        let record = RunRecord {
            run_id: job.run_id.clone(),
            workflow_id: job.workflow.id.clone(),
            state: RunState::Accepted,
            accepted_at: now(),
            started_at: None,
            finished_at: None,
            result: None,
            error: None,
            attempts: Vec::new(),
        };

        // The record goes in first so that a fast worker never overwrites a later state.
        self.store.put(&record);
        let run_id = job.run_id.clone();
        self.queue.try_send((job, record)).map_err(|_| {
            self.store.records.invalidate(&run_id);
            GatewayError::Overloaded {
                retry_after_seconds: 1,
            }
        })
    }
}

/// Starts queued runs as slots free up. A run holds its slot until it ends, so at most
/// `workers` run at once and the rest wait in the bounded queue.
async fn dispatch(
    mut receiver: mpsc::Receiver<(Job, RunRecord)>,
    slots: Arc<Semaphore>,
    context: Arc<RunContext>,
) {
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Some((job, record)) = receiver.recv().await else {
            return;
        };
        let context = Arc::clone(&context);
        tokio::spawn(async move {
            execute(&context, job, record).await;
            drop(slot);
        });
    }
}

async fn execute(context: &Arc<RunContext>, job: Job, mut record: RunRecord) {
    record.state = RunState::Running;
    record.started_at = Some(now());
    context.store.put(&record);

    let outcome = match run_script(&job).await {
        Ok(result) => match &job.workflow.forward {
            Some(_) => deliver(context, &job, result.as_ref(), &mut record).await,
            None => Ok(result.unwrap_or(Value::Null)),
        },
        Err(error) => Err(error),
    };

    finish(&mut record, outcome);
    tracing::info!(
        workflow.id = %job.workflow.id,
        run.id = %job.run_id,
        run.state = ?record.state,
        run.attempts = record.attempts.len(),
        "run finished"
    );
    context.store.put(&record);
}

fn finish(record: &mut RunRecord, outcome: Result<Value, GatewayError>) {
    record.finished_at = Some(now());
    match outcome {
        Ok(result) => {
            record.state = RunState::Succeeded;
            record.result = Some(result);
        }
        Err(error) => {
            record.state = match error {
                GatewayError::Rejected { .. } => RunState::Rejected,
                _ => RunState::Failed,
            };
            record.error = Some(RunError {
                code: error.code(),
                message: error.to_string(),
                status: error.status(),
            });
        }
    }
}

/// Runs the script on a blocking thread; `Ok(None)` for a workflow without one. A workflow
/// without a script or forward has the mapped variables as its result.
async fn run_script(job: &Job) -> Result<Option<Value>, GatewayError> {
    if job.workflow.script.is_none() {
        let variables = Value::Object(job.prepared.variables.clone());
        return Ok(job.workflow.forward.is_none().then_some(variables));
    }

    let engine = Arc::clone(&job.engine);
    let workflow = Arc::clone(&job.workflow);
    let prepared = job.prepared.clone();
    let run_id = job.run_id.clone();
    tokio::task::spawn_blocking(move || pipeline::execute(&engine, &workflow, &prepared, &run_id))
        .await
        .map_err(|_| GatewayError::ScriptError)?
        .map(Some)
}

/// Delivers the run to its backend, retrying connection failures, timeouts, 429 and 5xx with
/// exponential backoff (honouring `Retry-After`), and never other 4xx. Every attempt is recorded.
async fn deliver(
    context: &Arc<RunContext>,
    job: &Job,
    script_result: Option<&Value>,
    record: &mut RunRecord,
) -> Result<Value, GatewayError> {
    let forward = job
        .workflow
        .forward
        .as_ref()
        .ok_or(GatewayError::Internal)?;
    let pool = job
        .backends
        .get(&forward.backend)
        .ok_or(GatewayError::Internal)?;
    let ids = RequestIds {
        run_id: &job.run_id,
        workflow_id: &job.workflow.id,
        request_id: &job.request_id,
    };
    let request = build_request(
        forward,
        &job.caller_method,
        &job.prepared,
        &job.body,
        script_result,
        &ids,
    );

    let mut number = 1;
    loop {
        let started = Instant::now();
        let started_at = now();
        let outcome = attempt(context, pool, &request).await;
        record.attempts.push(Attempt {
            number,
            started_at,
            duration_ms: started.elapsed().as_micros() as f64 / 1000.0,
            status: outcome.as_ref().ok().map(|answer| answer.status),
            error: outcome.as_ref().err().map(ForwardError::describe),
        });
        context.store.put(record);

        let retry_after = match outcome {
            Ok(answer) if answer.status < 400 => return Ok(answer.into_result()),
            Ok(answer) if answer.status != 429 && answer.status < 500 => {
                return Err(rejected_by_backend(&forward.backend, &answer));
            }
            Ok(answer) if number >= forward.retry.max_attempts => {
                return Err(rejected_by_backend(&forward.backend, &answer));
            }
            Err(error) if number >= forward.retry.max_attempts => {
                return Err(error.into_gateway_error(&forward.backend));
            }
            Ok(answer) => answer.retry_after,
            Err(_) => None,
        };

        number += 1;
        let backoff = forward.retry.backoff(number);
        // A backend's Retry-After wins over the backoff schedule, up to an hour.
        let wait = retry_after.map_or(backoff, |asked| asked.min(MAX_RETRY_AFTER).max(backoff));
        tokio::time::sleep(wait).await;
    }
}

/// A backend's whole answer, as far as a run record keeps it.
struct Answer {
    status: u16,
    body: Bytes,
    truncated: bool,
    retry_after: Option<Duration>,
}

impl Answer {
    fn into_result(self) -> Value {
        let body = serde_json::from_slice::<Value>(&self.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()));
        json!({ "status": self.status, "body": body, "body_truncated": self.truncated })
    }
}

fn rejected_by_backend(backend: &str, answer: &Answer) -> GatewayError {
    GatewayError::BackendRejected {
        backend: backend.to_string(),
        status: answer.status,
    }
}

async fn attempt(
    context: &Arc<RunContext>,
    pool: &Arc<crate::forward::backends::BackendPool>,
    request: &UpstreamRequest,
) -> Result<Answer, ForwardError> {
    // The whole exchange, answer body included, stays within the backend's total timeout.
    let work = exchange_whole(context, pool, request);
    client::within(pool.settings.total_timeout, "whole answer", work).await
}

async fn exchange_whole(
    context: &Arc<RunContext>,
    pool: &Arc<crate::forward::backends::BackendPool>,
    request: &UpstreamRequest,
) -> Result<Answer, ForwardError> {
    let mut exchange = client::start(&context.connector, pool, request).await?;
    let status = exchange.status();
    let retry_after = exchange
        .response_header()
        .and_then(|header| header.headers.get("retry-after"))
        .and_then(|value| value.to_str().ok())
        .and_then(parse_retry_after);

    let (body, truncated) = client::read_all(&mut exchange, RECORDED_BODY_BYTES).await?;
    exchange.finish(&context.connector).await;
    Ok(Answer {
        status,
        body,
        truncated,
        retry_after,
    })
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(120);
        let parsed = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(parsed > Duration::from_secs(100) && parsed <= Duration::from_secs(120));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
