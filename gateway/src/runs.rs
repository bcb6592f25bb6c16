//! Runs: their ids, and the pool that executes accepted (202) runs: the script first, then,
//! for forwarding workflows, delivery to the backend, attempt after attempt.
//!
//! A run is written to the journal (see [`crate::journal`]) before the caller hears 202, and
//! each attempt is written before it starts, so a run accepted is a run executed, even across
//! a crash: at start, the runs the journal holds unfinished are queued again. At most
//! `runs.queue_capacity` runs may be unfinished at once; past that the caller gets 503
//! `overloaded`. At most `runs.workers` execute at once, on the pool's own Tokio runtime.

use crate::config::{Config, RunSettings, Workflow};
use crate::error::GatewayError;
use crate::forward::backends::Backends;
use crate::forward::client::{self, ForwardError, UpstreamRequest};
use crate::forward::{build_request, RequestIds};
use crate::journal::{Attempt, JournalError, Outcome, Resumable, RunError, RunInput, RunState};
use crate::pipeline::{self, Prepared, RequestParts};
use crate::script::ScriptEngine;
use crate::shared_state::SharedState;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// One run, ready to execute.
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
    /// Attempts on record, so the next is numbered after them.
    pub attempts_recorded: u32,
    /// Attempts since the last replay, which count against `max_attempts`.
    pub attempts_counted: u32,
    /// The stored idempotency key the run answered, forgotten if the run fails so that a
    /// repeat of the event runs again.
    pub idempotency_key: Option<String>,
}

/// What every run task shares.
struct RunContext {
    shared: Arc<dyn SharedState>,
    connector: Connector,
    /// Runs written and not yet ended.
    unfinished: AtomicUsize,
    /// One per worker: a run holds one while it executes, not while it waits to retry.
    slots: Arc<Semaphore>,
    ended: RunEnds,
    /// Set when the gateway stops: no run starts, and no attempt either.
    stopping: AtomicBool,
    /// Given once the process handles stop signals: until then no run starts, so a stop
    /// during start-up cannot cut a delivery short.
    opened: tokio::sync::Notify,
    /// Runs executing, from their start to their end being handed to the journal, waits to
    /// retry left out: what a stop lets finish.
    busy: AtomicUsize,
}

/// Counts a run as executing while it lives.
struct Busy(Arc<RunContext>);

impl Busy {
    /// `None` when the gateway is stopping: the run must not go on. The count goes up before
    /// the flag is read, and [`RunPool::drain`] sets the flag before it reads the count, so
    /// either the run sees the stop or the drain waits for the run.
    fn start(context: &Arc<RunContext>) -> Option<Self> {
        context.busy.fetch_add(1, Ordering::SeqCst);
        let busy = Self(Arc::clone(context));
        (!context.stopping.load(Ordering::SeqCst)).then_some(busy)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A run left unfinished because the gateway is stopping; the journal still holds it and the
/// next start resumes it.
struct Stopped;

/// How runs ended, per workflow, since the start: for the metrics.
#[derive(Default)]
pub struct RunEnds {
    by_workflow: Mutex<HashMap<String, EndCounts>>,
}

/// Runs ended in each final state, and script failures among them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EndCounts {
    pub succeeded: u64,
    pub failed: u64,
    pub rejected: u64,
    pub dead_lettered: u64,
    pub script_errors: u64,
    pub script_timeouts: u64,
}

impl RunEnds {
    fn count(&self, workflow_id: &str, state: RunState, error_code: Option<&str>) {
        let mut by_workflow = self.by_workflow.lock().unwrap_or_else(|e| e.into_inner());
        // Keyed by the ids of workflows that ran, which the configuration bounds.
        let counts = match by_workflow.get_mut(workflow_id) {
            Some(counts) => counts,
            None => by_workflow.entry(workflow_id.to_string()).or_default(),
        };
        match state {
            RunState::Succeeded => counts.succeeded += 1,
            RunState::Rejected => counts.rejected += 1,
            RunState::DeadLettered => counts.dead_lettered += 1,
            _ => counts.failed += 1,
        }
        match error_code {
            Some("script_error") => counts.script_errors += 1,
            Some("script_timeout") => counts.script_timeouts += 1,
            _ => {}
        }
    }

    /// Every workflow id with ended runs, those of workflows since removed included.
    pub fn workflow_ids(&self) -> Vec<String> {
        let by_workflow = self.by_workflow.lock().unwrap_or_else(|e| e.into_inner());
        by_workflow.keys().cloned().collect()
    }

    /// The counts of one workflow; zeros when none of its runs ended yet.
    pub fn of(&self, workflow_id: &str) -> EndCounts {
        let by_workflow = self.by_workflow.lock().unwrap_or_else(|e| e.into_inner());
        by_workflow.get(workflow_id).copied().unwrap_or_default()
    }
}

/// The background pool for accepted runs.
pub struct RunPool {
    queue: mpsc::UnboundedSender<Job>,
    context: Arc<RunContext>,
    capacity: usize,
    _runtime: tokio::runtime::Runtime,
}

impl RunPool {
    pub fn start(settings: &RunSettings, shared: Arc<dyn SharedState>) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.threads)
            .thread_name("runs")
            .on_thread_start(crate::background::mark_as_batch)
            .enable_all()
            .build()?;
        let context = Arc::new(RunContext {
            shared,
            connector: Connector::new(None),
            unfinished: AtomicUsize::new(0),
            slots: Arc::new(Semaphore::new(settings.workers)),
            ended: RunEnds::default(),
            stopping: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            opened: tokio::sync::Notify::new(),
        });

        // Unbounded because `unfinished` bounds it: a run enters only once it is counted.
        let (queue, receiver) = mpsc::unbounded_channel();
        runtime.spawn(dispatch(receiver, Arc::clone(&context)));
        Ok(Self {
            queue,
            context,
            capacity: settings.queue_capacity,
            _runtime: runtime,
        })
    }

    /// Writes a run to the journal; returns once it is durable. Refuses with `overloaded`
    /// when too many runs are unfinished or the journal is saturated. The run starts only
    /// when [`RunPool::run`] is given its job, so whatever must be settled before it can
    /// end (its idempotency key) is settled first.
    pub async fn record(&self, input: RunInput) -> Result<(), GatewayError> {
        let unfinished = &self.context.unfinished;
        let taken = unfinished.fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| {
            (count < self.capacity).then_some(count + 1)
        });
        if taken.is_err() {
            return Err(GatewayError::Overloaded {
                retry_after_seconds: 1,
            });
        }

        if let Err(error) = self.context.shared.journal().append(input).await {
            unfinished.fetch_sub(1, Ordering::AcqRel);
            return Err(match error {
                JournalError::Saturated => GatewayError::Overloaded {
                    retry_after_seconds: 1,
                },
                JournalError::Failed(reason) => {
                    tracing::error!(journal.error = %reason, "an accepted run could not be written");
                    GatewayError::JournalUnavailable
                }
            });
        }
        Ok(())
    }

    /// Starts a run [`RunPool::record`] wrote.
    pub fn run(&self, job: Job) {
        self.enqueue(job);
    }

    /// How many runs may be unfinished at once (`runs.queue_capacity`).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many more runs may be unfinished now.
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.unfinished())
    }

    /// Queues runs the journal already holds: unfinished ones at start, replayed ones later.
    /// A run whose workflow is gone, or whose input no longer passes it, ends failed.
    pub fn resume(&self, config: &Config, backends: &Arc<Backends>, runs: Vec<Resumable>) {
        for run in runs {
            self.context.unfinished.fetch_add(1, Ordering::AcqRel);
            match rebuild(config, backends, &run) {
                Ok(job) => self.enqueue(job),
                Err(error) => {
                    let failure = Err(RunFailure::Final(error));
                    end(
                        &self.context,
                        &run.input.workflow_id,
                        &run.input.run_id,
                        None,
                        SystemTime::now(),
                        failure,
                    );
                }
            }
        }
    }

    fn enqueue(&self, job: Job) {
        if self.queue.send(job).is_err() {
            tracing::error!("the run pool has stopped; the run stays in the journal");
        }
    }

    /// Lets runs start. Until this is called they wait in the queue (and in the journal).
    pub fn open(&self) {
        self.context.opened.notify_one();
    }

    /// Prepares a stop: starts no more runs or attempts, waits up to `within` for the scripts
    /// and deliveries under way to end, then for the journal to hold everything it was given.
    /// What is left (a delivery still waiting on its backend) ends as a crash would: its
    /// attempt shows as interrupted and the run is tried again at the next start.
    pub async fn drain(&self, within: Duration) {
        self.context.stopping.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + within;
        // Polled: a stop happens once, and a tick of 10 ms is nothing against its deadline.
        while self.context.busy.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = self.context.busy.load(Ordering::SeqCst);
        if let Err(error) = self.context.shared.journal().settled().await {
            tracing::error!(journal.error = %error, "the journal could not be settled before the stop");
        }
        tracing::info!(
            runs.cut_short = left,
            runs.unfinished = self.unfinished(),
            "run pool stopped"
        );
    }

    /// How runs ended, per workflow.
    pub fn ended(&self) -> &RunEnds {
        &self.context.ended
    }

    /// Runs written and not yet ended.
    pub fn unfinished(&self) -> usize {
        self.context.unfinished.load(Ordering::Acquire)
    }
}

/// A journaled run made into a job again, under the configuration in force now.
fn rebuild(
    config: &Config,
    backends: &Arc<Backends>,
    run: &Resumable,
) -> Result<Job, GatewayError> {
    let input = &run.input;
    let workflow = config
        .workflow(&input.workflow_id)
        .cloned()
        .ok_or_else(|| GatewayError::UnknownWorkflow(input.workflow_id.clone()))?;
    let mut headers = http::HeaderMap::new();
    for (name, value) in &input.headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    let parts = RequestParts {
        headers: &headers,
        query: input.query.as_deref(),
        body: &input.body,
    };
    let prepared = pipeline::prepare(&workflow, &config.limits, &parts)?;
    Ok(Job {
        run_id: input.run_id.clone(),
        request_id: input.request_id.clone(),
        workflow,
        prepared,
        body: Bytes::from(input.body.clone()),
        caller_method: input.method.clone(),
        engine: Arc::clone(&config.engine),
        backends: Arc::clone(backends),
        attempts_recorded: run.attempts_recorded,
        attempts_counted: run.attempts_counted,
        idempotency_key: None,
    })
}

/// Starts queued runs as slots free up. A run holds its slot while it executes and gives it
/// back while it waits to retry, so at most `workers` execute at once and a backend that
/// asks for patience holds up none of the other runs.
async fn dispatch(mut receiver: mpsc::UnboundedReceiver<Job>, context: Arc<RunContext>) {
    context.opened.notified().await;
    loop {
        let Ok(slot) = Arc::clone(&context.slots).acquire_owned().await else {
            return;
        };
        let Some(job) = receiver.recv().await else {
            return;
        };
        if context.stopping.load(Ordering::SeqCst) {
            // Left in the journal for the next start.
            continue;
        }
        let context = Arc::clone(&context);
        tokio::spawn(async move {
            execute(&context, job, slot).await;
        });
    }
}

/// A worker slot, held while executing.
type Slot = tokio::sync::OwnedSemaphorePermit;

/// Why an attempt did not succeed.
enum RunFailure {
    /// Another attempt could succeed: a connection failure, a timeout, 429 or 5xx.
    Retryable {
        error: GatewayError,
        retry_after: Option<Duration>,
        /// What went wrong on the wire, when the backend gave no answer.
        detail: Option<String>,
    },
    /// Another attempt would end the same way.
    Final(GatewayError),
}

/// Executes a run and records how it ended.
async fn execute(context: &Arc<RunContext>, job: Job, slot: Slot) {
    let started = SystemTime::now();
    let mut busy = Busy::start(context);
    let outcome = if busy.is_none() {
        Err(Stopped)
    } else if job.workflow.forward.is_none() {
        // One step whose effects stay in the gateway: no attempts to record, and a crash
        // before its end is written only runs the script again.
        let result = run_script(&job).await;
        Ok(result
            .map(|result| result.unwrap_or(Value::Null))
            .map_err(RunFailure::Final))
    } else {
        // Boxed: a delivery's future is tens of kilobytes, which script-only runs would
        // otherwise allocate and copy too.
        Box::pin(deliver_with_retries(context, &job, slot, &mut busy)).await
    };
    let Ok(outcome) = outcome else {
        tracing::info!(workflow.id = %job.workflow.id, run.id = %job.run_id, "run left for the next start");
        return;
    };
    let key = job.idempotency_key.as_deref();
    end(
        context,
        &job.workflow.id,
        &job.run_id,
        key,
        started,
        outcome,
    );
    drop(busy);
}

/// Makes attempts until one succeeds, one fails for good, or the workflow's attempts run
/// out (the run is then dead-lettered). Each attempt is in the journal before it starts.
async fn deliver_with_retries(
    context: &Arc<RunContext>,
    job: &Job,
    slot: Slot,
    busy: &mut Option<Busy>,
) -> Result<Result<Value, RunFailure>, Stopped> {
    let mut slot = Some(slot);
    let journal = context.shared.journal();
    let max_attempts = job
        .workflow
        .forward
        .as_ref()
        .map_or(1, |forward| forward.retry.max_attempts);
    // `counted` decides when attempts run out; `number` is what the journal records.
    let mut counted = job.attempts_counted + 1;
    let mut number = job.attempts_recorded + 1;

    loop {
        if busy.is_none() {
            return Err(Stopped);
        }
        if counted > max_attempts {
            // The last attempt was cut short by a stop: the run is dead-lettered like any
            // other whose attempts ran out, so a replay of dead letters finds it.
            return Ok(Err(RunFailure::Retryable {
                error: GatewayError::AttemptsExhausted {
                    attempts: max_attempts,
                },
                retry_after: None,
                detail: None,
            }));
        }
        if let Err(error) = journal.attempt_started(&job.run_id, number).await {
            // A delivery must be on record before it happens, or a crash could repeat it
            // unnoticed: wait until the journal takes it.
            tracing::error!(run.id = %job.run_id, journal.error = %error, "attempt not recorded; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }

        let started = Instant::now();
        let started_at = now();
        let (outcome, status) = attempt_once(context, job).await;
        let mut attempt = Attempt {
            number,
            started_at,
            duration_ms: Some(started.elapsed().as_micros() as f64 / 1000.0),
            status,
            error: None,
        };
        let failure = match outcome {
            Ok(result) => {
                journal.attempt_ended(&job.run_id, &attempt, false);
                return Ok(Ok(result));
            }
            Err(failure) => failure,
        };
        attempt.error = match &failure {
            RunFailure::Retryable { detail, .. } => detail.clone(),
            RunFailure::Final(_) if status.is_some() => None,
            RunFailure::Final(error) => Some(error.to_string()),
        };
        let retry_after = match failure {
            RunFailure::Retryable { retry_after, .. } if counted < max_attempts => retry_after,
            failure => {
                journal.attempt_ended(&job.run_id, &attempt, false);
                return Ok(Err(failure));
            }
        };
        journal.attempt_ended(&job.run_id, &attempt, true);

        number += 1;
        counted += 1;
        let backoff = job
            .workflow
            .forward
            .as_ref()
            .map_or(Duration::ZERO, |forward| forward.retry.backoff(counted));
        // A backend's Retry-After wins over the backoff schedule, up to an hour.
        let wait = retry_after.map_or(backoff, |asked| asked.min(MAX_RETRY_AFTER).max(backoff));
        drop(slot.take());
        drop(busy.take());
        tokio::time::sleep(wait).await;
        let Ok(again) = Arc::clone(&context.slots).acquire_owned().await else {
            return Ok(Err(RunFailure::Final(GatewayError::Internal)));
        };
        slot = Some(again);
        *busy = Busy::start(context);
    }
}

/// Records how the run ended and gives its place back.
fn end(
    context: &Arc<RunContext>,
    workflow_id: &str,
    run_id: &str,
    idempotency_key: Option<&str>,
    started: SystemTime,
    outcome: Result<Value, RunFailure>,
) {
    if let (Some(key), Err(_)) = (idempotency_key, &outcome) {
        context.shared.forget_run(key, run_id);
    }
    let outcome = match outcome {
        Ok(result) => Outcome {
            state: RunState::Succeeded,
            started,
            result: Some(result),
            error: None,
        },
        Err(failure) => {
            let (state, error) = match failure {
                RunFailure::Retryable { error, .. } => (RunState::DeadLettered, error),
                RunFailure::Final(error @ GatewayError::Rejected { .. }) => {
                    (RunState::Rejected, error)
                }
                RunFailure::Final(error) => (RunState::Failed, error),
            };
            Outcome {
                state,
                started,
                result: None,
                error: Some(RunError {
                    code: error.code().to_string(),
                    message: error.to_string(),
                    status: error.status(),
                }),
            }
        }
    };
    let state = outcome.state;
    let code = outcome.error.as_ref().map(|error| error.code.as_str());
    context.ended.count(workflow_id, state, code);
    log_end(workflow_id, run_id, state, code);
    context.shared.journal().finish(run_id, outcome);
    context.unfinished.fetch_sub(1, Ordering::AcqRel);
}

/// One line per run end: at info for a run that did not succeed, at debug for one that did.
/// A success is in the metrics and the journal already; a line for each would cost about as
/// much as the request's own log line, on the core that serves requests.
fn log_end(workflow_id: &str, run_id: &str, state: RunState, error_code: Option<&str>) {
    if state == RunState::Succeeded {
        tracing::debug!(
            workflow.id = workflow_id,
            run.id = run_id,
            run.state = state.as_str(),
            "run ended"
        );
        return;
    }
    tracing::info!(
        workflow.id = workflow_id,
        run.id = run_id,
        run.state = state.as_str(),
        error.code = error_code.unwrap_or("-"),
        "run ended"
    );
}

/// One attempt: the script, then the delivery. Returns the backend's status when it answered.
async fn attempt_once(
    context: &Arc<RunContext>,
    job: &Job,
) -> (Result<Value, RunFailure>, Option<u16>) {
    let script_result = match run_script(job).await {
        Ok(result) => result,
        Err(error) => return (Err(RunFailure::Final(error)), None),
    };
    if job.workflow.forward.is_none() {
        return (Ok(script_result.unwrap_or(Value::Null)), None);
    }
    deliver(context, job, script_result.as_ref()).await
}

/// Runs the script on a blocking thread; `Ok(None)` for a workflow without one. A workflow
/// without a script or forward has the mapped variables as its result.
async fn run_script(job: &Job) -> Result<Option<Value>, GatewayError> {
    if job.workflow.script.is_none() {
        let variables = Value::Object(job.prepared.variables.clone());
        return Ok(job.workflow.forward.is_none().then_some(variables));
    }

    // Most scripts end within microseconds: they run right here. One still running after
    // the slice starts again on a blocking thread, so the pool's other runs are not held up.
    let started = Instant::now();
    let slice = crate::script::Timing {
        started,
        yield_after: Some(INLINE_SLICE),
    };
    let (engine, workflow) = (&job.engine, &job.workflow);
    if let Some(result) =
        pipeline::execute_timed(engine, workflow, &job.prepared, &job.run_id, slice)?
    {
        return Ok(Some(result));
    }

    let engine = Arc::clone(&job.engine);
    let workflow = Arc::clone(&job.workflow);
    let prepared = job.prepared.clone();
    let run_id = job.run_id.clone();
    let whole = crate::script::Timing {
        started,
        yield_after: None,
    };
    tokio::task::spawn_blocking(move || {
        pipeline::execute_timed(&engine, &workflow, &prepared, &run_id, whole)
    })
    .await
    .map_err(|_| GatewayError::ScriptError)??
    .ok_or(GatewayError::Internal)
    .map(Some)
}

/// How long an accepted run's script may run on a pool thread before it moves to a blocking
/// thread.
const INLINE_SLICE: Duration = Duration::from_millis(2);

/// Delivers the run to its backend once. Connection failures, timeouts, 429 and 5xx may be
/// retried; other 4xx are final.
async fn deliver(
    context: &Arc<RunContext>,
    job: &Job,
    script_result: Option<&Value>,
) -> (Result<Value, RunFailure>, Option<u16>) {
    let (Some(forward), Some(pool)) = (
        job.workflow.forward.as_ref(),
        job.workflow
            .forward
            .as_ref()
            .and_then(|forward| job.backends.get(&forward.backend)),
    ) else {
        return (Err(RunFailure::Final(GatewayError::Internal)), None);
    };
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

    match attempt(context, pool, &request).await {
        Ok(answer) if answer.status < 400 => (Ok(answer.clone_result()), Some(answer.status)),
        Ok(answer) if answer.status != 429 && answer.status < 500 => (
            Err(RunFailure::Final(rejected_by_backend(
                &forward.backend,
                &answer,
            ))),
            Some(answer.status),
        ),
        Ok(answer) => (
            Err(RunFailure::Retryable {
                error: rejected_by_backend(&forward.backend, &answer),
                retry_after: answer.retry_after,
                detail: None,
            }),
            Some(answer.status),
        ),
        Err(error) => (
            Err(RunFailure::Retryable {
                detail: Some(error.describe()),
                error: error.into_gateway_error(&forward.backend),
                retry_after: None,
            }),
            None,
        ),
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
    fn clone_result(&self) -> Value {
        let body = crate::payload::parse_recorded(&self.body)
            .unwrap_or_else(|| Value::String(String::from_utf8_lossy(&self.body).into_owned()));
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
