//! Runs: their ids, the records that `GET /api/v1/runs/{id}` shows, and the bounded pool of
//! worker threads that executes accepted (202) runs.
//!
//! Records live in a moka cache bounded by count and time. Accepted runs wait in a bounded
//! queue; when it is full the caller gets 503 `overloaded` instead of a silent drop. The queue
//! is in memory: accepted runs that have not finished when the process stops are lost.

use crate::config::{RunSettings, Workflow};
use crate::error::GatewayError;
use crate::pipeline::{self, Prepared};
use crate::script::ScriptEngine;
use moka::sync::Cache;
use serde::Serialize;
use serde_json::Value;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// A run's id: a UUIDv7, so ids sort by creation time.
pub fn new_run_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

    fn put(&self, record: RunRecord) {
        self.records.insert(record.run_id.clone(), Arc::new(record));
    }
}

/// One accepted run waiting for a worker.
struct Job {
    run_id: String,
    workflow: Arc<Workflow>,
    prepared: Prepared,
    accepted_at: String,
}

/// The background pool for accepted runs.
pub struct RunPool {
    queue: SyncSender<Job>,
    store: RunStore,
}

impl RunPool {
    /// Starts `settings.workers` threads sharing a queue of `settings.queue_capacity` runs.
    pub fn start(
        settings: &RunSettings,
        engine: Arc<ScriptEngine>,
        store: RunStore,
    ) -> std::io::Result<Self> {
        let (queue, receiver) = mpsc::sync_channel(settings.queue_capacity);
        let receiver = Arc::new(Mutex::new(receiver));

        for index in 0..settings.workers {
            let worker = Worker {
                receiver: Arc::clone(&receiver),
                engine: Arc::clone(&engine),
                store: store.clone(),
            };
            std::thread::Builder::new()
                .name(format!("run-worker-{index}"))
                .spawn(move || worker.work())?;
        }
        Ok(Self { queue, store })
    }

    pub fn store(&self) -> &RunStore {
        &self.store
    }

    /// Queues a run, or refuses with `overloaded` when the queue is full.
    pub fn submit(
        &self,
        run_id: &str,
        workflow: Arc<Workflow>,
        prepared: Prepared,
    ) -> Result<(), GatewayError> {
        let record = RunRecord {
            run_id: run_id.to_string(),
            workflow_id: workflow.id.clone(),
            state: RunState::Accepted,
            accepted_at: now(),
            started_at: None,
            finished_at: None,
            result: None,
            error: None,
        };
        let job = Job {
            run_id: run_id.to_string(),
            accepted_at: record.accepted_at.clone(),
            workflow,
            prepared,
        };

        // The record goes in first so that a fast worker never overwrites a later state.
        self.store.put(record);
        match self.queue.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                self.store.records.invalidate(&job.run_id);
                Err(GatewayError::Overloaded {
                    retry_after_seconds: 1,
                })
            }
        }
    }
}

struct Worker {
    receiver: Arc<Mutex<Receiver<Job>>>,
    engine: Arc<ScriptEngine>,
    store: RunStore,
}

impl Worker {
    fn work(self) {
        loop {
            let next = match self.receiver.lock() {
                Ok(receiver) => receiver.recv(),
                Err(_) => return,
            };
            let Ok(job) = next else {
                return;
            };
            self.execute(job);
        }
    }

    fn execute(&self, job: Job) {
        let started_at = now();
        let mut record = RunRecord {
            run_id: job.run_id.clone(),
            workflow_id: job.workflow.id.clone(),
            state: RunState::Running,
            accepted_at: job.accepted_at.clone(),
            started_at: Some(started_at),
            finished_at: None,
            result: None,
            error: None,
        };
        self.store.put(record.clone());

        let outcome = pipeline::execute(&self.engine, &job.workflow, &job.prepared, &job.run_id);
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
                });
            }
        }
        tracing::info!(
            workflow.id = %job.workflow.id,
            run.id = %job.run_id,
            run.state = ?record.state,
            "run finished"
        );
        self.store.put(record);
    }
}
