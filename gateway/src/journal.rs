//! The run journal: every accepted (202) run, written to SQLite before the caller hears 202,
//! with each attempt and the outcome.
//!
//! One writer thread owns the write connection. Callers hand it changes over a bounded
//! channel; it takes everything waiting, writes it in one transaction and commits once, then
//! tells every caller. Concurrent requests therefore share one fsync (group commit), and a
//! caller told "written" knows its run survives a crash: the database is in WAL mode with
//! `synchronous = FULL`. Reads (the admin API, recovery at start) use their own connection,
//! which WAL lets run beside the writer.

use crate::metrics::Histogram;
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// Most changes one transaction takes; more wait for the next one.
const MOST_PER_COMMIT: usize = 1024;

/// How a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Written, waiting for a worker.
    Accepted,
    Running,
    /// Between two attempts.
    Retrying,
    Succeeded,
    /// The script ended the run with `reject()`.
    Rejected,
    /// Ended by an error that a retry would not change.
    Failed,
    /// Every attempt failed; kept until replayed or purged.
    DeadLettered,
}

impl RunState {
    pub const ALL: [RunState; 7] = [
        RunState::Accepted,
        RunState::Running,
        RunState::Retrying,
        RunState::Succeeded,
        RunState::Rejected,
        RunState::Failed,
        RunState::DeadLettered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Accepted => "accepted",
            RunState::Running => "running",
            RunState::Retrying => "retrying",
            RunState::Succeeded => "succeeded",
            RunState::Rejected => "rejected",
            RunState::Failed => "failed",
            RunState::DeadLettered => "dead_lettered",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == text)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Rejected | RunState::Failed | RunState::DeadLettered
        )
    }
}

/// A journaled run to be queued again, with the attempts it already has.
#[derive(Debug, Clone)]
pub struct Resumable {
    pub input: RunInput,
    /// Every attempt on record, so the next one is numbered after them.
    pub attempts_recorded: u32,
    /// Those since the last replay, which count against the workflow's `max_attempts`.
    pub attempts_counted: u32,
}

/// What a run needs to be executed again after a restart: the request as the workflow saw it.
#[derive(Debug, Clone)]
pub struct RunInput {
    pub run_id: String,
    pub workflow_id: String,
    pub config_version: u64,
    pub request_id: String,
    pub method: String,
    /// Without credentials (API keys, authorization, cookies).
    pub headers: Vec<(String, String)>,
    /// Without the parameter that carries the API key.
    pub query: Option<String>,
    /// The body as decoded from its content coding.
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunError {
    pub code: String,
    pub message: String,
    /// The status a synchronous caller would have received.
    pub status: u16,
}

/// One try at a run: its script and, for forwarding workflows, its delivery.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub number: u32,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
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
    /// Times the run was replayed by an operator.
    pub replays: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub state: RunState,
    /// When its execution began; the first attempt's start counts when there were attempts.
    pub started: SystemTime,
    pub result: Option<Value>,
    pub error: Option<RunError>,
}

/// A change to the journal.
enum Change {
    Append(Box<RunInput>),
    Started {
        run_id: String,
        number: u32,
    },
    AttemptEnded {
        run_id: String,
        number: u32,
        duration_ms: f64,
        status: Option<u16>,
        error: Option<String>,
        retrying: bool,
    },
    Finished {
        run_id: String,
        outcome: Box<Outcome>,
    },
    /// Writes nothing: waiting for it waits for every change sent before.
    Barrier,
    /// A retention slice: a `DELETE` and its parameters. Done by the writer like any other
    /// change, so that it shares a commit with runs being accepted instead of competing with
    /// them for SQLite's lock.
    Delete {
        sql: String,
        values: Vec<rusqlite::types::Value>,
    },
}

struct Command {
    change: Change,
    /// Told the rows the change deleted (for a [`Change::Delete`]; 0 otherwise).
    written: Option<oneshot::Sender<Result<usize, String>>>,
    /// When it was handed to the writer.
    sent: Instant,
}

/// How far the writer is behind, for the metrics: changes handed to it and not yet written
/// (held back or failed ones included), and how long each waited from hand-off to commit.
#[derive(Default)]
pub struct JournalStats {
    pending: AtomicU64,
    pub lag: Histogram,
    commits: AtomicU64,
}

impl JournalStats {
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

/// Why a change could not be written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("the journal has more waiting than it takes")]
    Saturated,
    #[error("the journal could not be written: {0}")]
    Failed(String),
}

/// The journal: a writer thread behind a bounded channel, and a read connection.
pub struct Journal {
    path: PathBuf,
    changes: SyncSender<Command>,
    reader: Mutex<Connection>,
    /// Held by whoever writes: the writer thread for each batch, the read connection for
    /// each of its few writes (a replay slice, marking interrupted attempts at start; the
    /// deletes of retention go through the writer). Without it the two
    /// collide in SQLite's lock, and the loser sleeps in the busy handler's growing steps,
    /// which under steady load starved the writer for up to seconds.
    write_turn: Arc<Mutex<()>>,
    stats: Arc<JournalStats>,
    /// Dropped with the journal, which ends the checkpoint thread.
    _stop_checkpoints: mpsc::Sender<()>,
}

fn millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

fn now_ms() -> i64 {
    millis(SystemTime::now())
}

fn rfc3339(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    config_version INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    state TEXT NOT NULL,
    accepted_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    result TEXT,
    error TEXT,
    replays INTEGER NOT NULL DEFAULT 0,
    attempt_base INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_by_workflow ON runs(workflow_id, run_id);
-- No index on end times: it cost every run's end an index insert inside the writer's commit,
-- while retention, its only reader, runs once a minute off the request path and reads the
-- table instead. Journals written with one have it dropped.
DROP INDEX IF EXISTS runs_by_finish;
DROP INDEX IF EXISTS runs_ended_by_finish;
-- The first journals also indexed states, which cost every state change an index write.
DROP INDEX IF EXISTS runs_by_state;
-- What a run was accepted with, apart from its state: rows of `runs` stay small, so the
-- updates of a run's state and end rewrite a few hundred bytes, not the whole body. Journals
-- that kept these columns in `runs` have them moved here when opened.
CREATE TABLE IF NOT EXISTS run_inputs (
    run_id TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    headers TEXT NOT NULL,
    query TEXT,
    body BLOB NOT NULL
);
-- A trigger rather than a foreign key: the key would cost every append a lookup of its run.
CREATE TRIGGER IF NOT EXISTS run_inputs_go_with_their_run AFTER DELETE ON runs
BEGIN
    DELETE FROM run_inputs WHERE run_id = old.run_id;
END;
CREATE TABLE IF NOT EXISTS attempts (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    duration_ms REAL,
    status INTEGER,
    error TEXT,
    PRIMARY KEY (run_id, number)
);
";

/// Journals written before `run_inputs` existed kept each run's input in `runs`: moves it
/// there, in one transaction, once.
fn move_inputs_out_of_runs(db: &mut Connection) -> rusqlite::Result<()> {
    let keeps_inputs = db
        .prepare("SELECT 1 FROM pragma_table_info('runs') WHERE name = 'body'")?
        .exists([])?;
    if !keeps_inputs {
        return Ok(());
    }
    let transaction = db.transaction()?;
    transaction.execute_batch(
        "INSERT OR REPLACE INTO run_inputs (run_id, method, headers, query, body)
             SELECT run_id, method, headers, query, body FROM runs;
         ALTER TABLE runs DROP COLUMN method;
         ALTER TABLE runs DROP COLUMN headers;
         ALTER TABLE runs DROP COLUMN query;
         ALTER TABLE runs DROP COLUMN body;",
    )?;
    transaction.commit()
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(Duration::from_secs(5))?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    Ok(connection)
}

/// The journal as the rest of the gateway uses it; [`Journal`] is the embedded SQLite one.
#[async_trait]
pub trait RunJournal: Send + Sync {
    /// Writes an accepted run; returns once it is durable.
    async fn append(&self, input: RunInput) -> Result<(), JournalError>;

    /// Records that attempt `number` starts; returns once that is durable, so a run is never
    /// executed without a trace of it, even if the process dies during the attempt.
    async fn attempt_started(&self, run_id: &str, number: u32) -> Result<(), JournalError>;

    /// Records how an attempt went. Not waited for: losing it in a crash only means the
    /// attempt shows as interrupted.
    fn attempt_ended(&self, run_id: &str, attempt: &Attempt, retrying: bool);

    /// Records a run's end. Not waited for: a run whose end a crash loses runs again after
    /// the restart, and its interrupted attempt is on record.
    fn finish(&self, run_id: &str, outcome: Outcome);

    /// How far the writer is behind.
    fn stats(&self) -> &JournalStats;

    /// Waits until every change sent before is committed, held-back ones included.
    async fn settled(&self) -> Result<(), JournalError>;

    fn get(&self, run_id: &str) -> Result<Option<RunRecord>, String>;

    /// The input a run was accepted with.
    fn input(&self, run_id: &str) -> Result<Option<RunInput>, String>;

    /// Runs matching the filters, newest first, without their attempts.
    fn list(
        &self,
        workflow_id: Option<&str>,
        state: Option<RunState>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, String>;

    /// Runs that have not ended, oldest first, with the attempts they already made.
    fn unfinished(&self) -> Result<Vec<Resumable>, String>;

    /// How many runs have not ended.
    fn unfinished_count(&self) -> Result<usize, String>;

    /// The number of the attempt a run makes next, counting from its last replay.
    fn attempts_made(&self, run_id: &str) -> Result<u32, String>;

    /// Marks attempts that started and never ended (the process stopped during them).
    fn close_interrupted_attempts(&self) -> Result<usize, String>;

    /// Puts finished runs back in the queue as accepted, their earlier attempts kept; returns
    /// the runs that were put back.
    fn replay(&self, run_ids: &[String]) -> Result<Vec<Resumable>, String>;

    /// Ids of a workflow's dead-lettered runs, oldest first.
    fn dead_lettered(&self, workflow_id: &str) -> Result<Vec<String>, String>;

    /// Deletes ended runs that finished more than `age` ago (of one workflow, or all);
    /// returns how many went. Runs that have not ended are never deleted.
    fn purge_older_than(&self, age: Duration, workflow_id: Option<&str>) -> Result<usize, String>;

    /// Keeps at most `keep` ended runs, deleting the oldest; returns how many went.
    fn trim_to(&self, keep: u64) -> Result<usize, String>;
}

impl Journal {
    /// Opens (or creates) the journal at `path`; `capacity` bounds the changes waiting for
    /// the writer.
    pub fn open(path: &Path, capacity: usize) -> Result<Self, String> {
        Self::open_checkpointing_every(path, capacity, CHECKPOINT_EVERY)
    }

    /// [`Journal::open`] with the background checkpoints `every` apart.
    fn open_checkpointing_every(
        path: &Path,
        capacity: usize,
        every: Duration,
    ) -> Result<Self, String> {
        let describe = |error: rusqlite::Error| format!("{}: {error}", path.display());
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|error| format!("{}: {error}", parent.display()))?;
        }
        let mut writer = open_connection(path).map_err(describe)?;
        writer.execute_batch(SCHEMA).map_err(describe)?;
        move_inputs_out_of_runs(&mut writer).map_err(describe)?;
        // Checkpoints run on their own thread, not inside the writer's commits. But the log
        // starts again from its beginning only when a write finds it wholly copied, which
        // under steady load the background pass, always a few commits behind, never
        // achieves: past `RESTART_LOG_AFTER_FRAMES` the writer copies the few frames left
        // itself after a commit, and the next write restarts the log.
        writer
            .pragma_update(None, "wal_autocheckpoint", RESTART_LOG_AFTER_FRAMES)
            .map_err(describe)?;
        // A log that grew in a burst (or while a long read held it) is cut back when it
        // restarts, instead of keeping its largest size on disk.
        writer
            .pragma_update(None, "journal_size_limit", LOG_KEPT_BYTES)
            .map_err(describe)?;
        let reader = open_connection(path).map_err(describe)?;
        let checkpointer = open_connection(path).map_err(describe)?;
        let (stop_checkpoints, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("journal-checkpoint".into())
            .spawn(move || {
                crate::background::mark_as_batch();
                checkpoint_loop(checkpointer, stopped, every)
            })
            .map_err(|error| format!("cannot start the journal checkpointer: {error}"))?;

        let (changes, receiver) = mpsc::sync_channel(capacity);
        let stats = Arc::new(JournalStats::default());
        let writer_stats = Arc::clone(&stats);
        let write_turn = Arc::new(Mutex::new(()));
        let writer_turn = Arc::clone(&write_turn);
        std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || {
                crate::background::mark_as_batch();
                write_loop(writer, receiver, &writer_stats, &writer_turn)
            })
            .map_err(|error| format!("cannot start the journal writer: {error}"))?;
        Ok(Self {
            path: path.to_path_buf(),
            changes,
            reader: Mutex::new(reader),
            write_turn,
            stats,
            _stop_checkpoints: stop_checkpoints,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn send(
        &self,
        change: Change,
        written: Option<oneshot::Sender<Result<usize, String>>>,
    ) -> Result<(), JournalError> {
        // Counted before the hand-off: the writer may take it off the count at once.
        self.stats.pending.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        let command = Command {
            change,
            written,
            sent,
        };
        self.changes.try_send(command).map_err(|error| {
            self.stats.pending.fetch_sub(1, Ordering::Relaxed);
            match error {
                TrySendError::Full(_) => JournalError::Saturated,
                TrySendError::Disconnected(_) => {
                    JournalError::Failed("the journal writer has stopped".into())
                }
            }
        })
    }

    /// Writes a change and waits until it is committed.
    async fn write(&self, change: Change) -> Result<(), JournalError> {
        let (written, committed) = oneshot::channel();
        self.send(change, Some(written))?;
        committed
            .await
            .map_err(|_| JournalError::Failed("the journal writer has stopped".into()))?
            .map(drop)
            .map_err(JournalError::Failed)
    }

    /// Writes a change from a thread that may block, waiting for room in the channel and
    /// then for the commit; returns the rows it deleted.
    fn write_and_wait(&self, change: Change) -> Result<usize, String> {
        let (written, committed) = oneshot::channel();
        if !self.hand_over_blocking(change, Some(written)) {
            return Err("the journal writer has stopped".into());
        }
        committed
            .blocking_recv()
            .map_err(|_| "the journal writer has stopped".to_string())?
    }

    /// A change that must not be dropped when the channel is momentarily full.
    fn write_blocking(&self, change: Change) {
        if !self.hand_over_blocking(change, None) {
            tracing::error!("the journal writer has stopped; a change was not recorded");
        }
    }

    /// Hands a change to the writer, waiting for room in the channel; false if the writer
    /// has stopped.
    fn hand_over_blocking(
        &self,
        change: Change,
        written: Option<oneshot::Sender<Result<usize, String>>>,
    ) -> bool {
        let command = Command {
            change,
            written,
            sent: Instant::now(),
        };
        self.stats.pending.fetch_add(1, Ordering::Relaxed);
        let handed = self.changes.send(command).is_ok();
        if !handed {
            self.stats.pending.fetch_sub(1, Ordering::Relaxed);
        }
        handed
    }

    /// A write through the read connection, in turn with the writer thread.
    fn write_aside<T>(
        &self,
        write: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, String> {
        let _turn = self.write_turn.lock().unwrap_or_else(|e| e.into_inner());
        self.read(write)
    }

    fn read<T>(&self, query: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, String> {
        let connection = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        query(&connection).map_err(|error| error.to_string())
    }
}

#[async_trait]
impl RunJournal for Journal {
    fn stats(&self) -> &JournalStats {
        &self.stats
    }

    async fn settled(&self) -> Result<(), JournalError> {
        self.write(Change::Barrier).await
    }

    async fn append(&self, input: RunInput) -> Result<(), JournalError> {
        self.write(Change::Append(Box::new(input))).await
    }

    async fn attempt_started(&self, run_id: &str, number: u32) -> Result<(), JournalError> {
        self.write(Change::Started {
            run_id: run_id.to_string(),
            number,
        })
        .await
    }

    fn attempt_ended(&self, run_id: &str, attempt: &Attempt, retrying: bool) {
        let change = Change::AttemptEnded {
            run_id: run_id.to_string(),
            number: attempt.number,
            duration_ms: attempt.duration_ms.unwrap_or_default(),
            status: attempt.status,
            error: attempt.error.clone(),
            retrying,
        };
        self.write_blocking(change);
    }

    fn finish(&self, run_id: &str, outcome: Outcome) {
        self.write_blocking(Change::Finished {
            run_id: run_id.to_string(),
            outcome: Box::new(outcome),
        });
    }

    fn get(&self, run_id: &str) -> Result<Option<RunRecord>, String> {
        self.read(|db| {
            let record = db
                .query_row(
                    &format!("SELECT {RECORD_COLUMNS} FROM runs WHERE run_id = ?1"),
                    [run_id],
                    record_from_row,
                )
                .optional()?;
            let Some(mut record) = record else {
                return Ok(None);
            };
            record.attempts = attempts_of(db, run_id)?;
            Ok(Some(record))
        })
    }

    fn input(&self, run_id: &str) -> Result<Option<RunInput>, String> {
        self.read(|db| {
            db.query_row(
                &format!("SELECT {INPUT_COLUMNS} FROM {RUNS_WITH_INPUTS} WHERE runs.run_id = ?1"),
                [run_id],
                input_from_row,
            )
            .optional()
        })
    }

    fn list(
        &self,
        workflow_id: Option<&str>,
        state: Option<RunState>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, String> {
        self.read(|db| {
            let mut statement = db.prepare(&format!(
                "SELECT {RECORD_COLUMNS} FROM runs
                 WHERE (?1 IS NULL OR workflow_id = ?1) AND (?2 IS NULL OR state = ?2)
                 ORDER BY run_id DESC LIMIT ?3"
            ))?;
            let rows = statement.query_map(
                params![workflow_id, state.map(RunState::as_str), limit as i64],
                record_from_row,
            )?;
            rows.collect()
        })
    }

    fn unfinished(&self) -> Result<Vec<Resumable>, String> {
        self.read(|db| {
            let mut statement = db.prepare(&format!(
                "SELECT {INPUT_COLUMNS}, attempt_base,
                        (SELECT COUNT(*) FROM attempts a WHERE a.run_id = runs.run_id)
                 FROM {RUNS_WITH_INPUTS} WHERE state IN ('accepted', 'running', 'retrying')
                 ORDER BY runs.run_id"
            ))?;
            let rows = statement.query_map([], |row| {
                let input = input_from_row(row)?;
                let recorded: u32 = row.get(9)?;
                let base: u32 = row.get(8)?;
                Ok(Resumable {
                    input,
                    attempts_recorded: recorded,
                    attempts_counted: recorded.saturating_sub(base),
                })
            })?;
            rows.collect()
        })
    }

    fn unfinished_count(&self) -> Result<usize, String> {
        self.read(|db| {
            db.query_row(
                "SELECT COUNT(*) FROM runs WHERE state IN ('accepted', 'running', 'retrying')",
                [],
                |row| row.get::<_, i64>(0),
            )
        })
        .map(|count| count as usize)
    }

    fn attempts_made(&self, run_id: &str) -> Result<u32, String> {
        self.read(|db| {
            db.query_row(
                "SELECT (SELECT COUNT(*) FROM attempts WHERE run_id = ?1) - attempt_base
                 FROM runs WHERE run_id = ?1",
                [run_id],
                |row| row.get::<_, i64>(0),
            )
        })
        .map(|count| u32::try_from(count).unwrap_or(0))
    }

    fn close_interrupted_attempts(&self) -> Result<usize, String> {
        self.write_aside(|db| {
            db.execute(
                "UPDATE attempts SET error = 'interrupted: the gateway stopped before the attempt''s end was recorded'
                 WHERE duration_ms IS NULL AND error IS NULL AND status IS NULL",
                [],
            )
        })
    }

    fn replay(&self, run_ids: &[String]) -> Result<Vec<Resumable>, String> {
        let mut replayed = Vec::new();
        // A transaction per slice: the writer waits for one slice, never for all of them.
        for slice in run_ids.chunks(MAINTENANCE_SLICE as usize) {
            replayed.extend(self.replay_slice(slice)?);
        }
        Ok(replayed)
    }

    fn dead_lettered(&self, workflow_id: &str) -> Result<Vec<String>, String> {
        self.read(|db| {
            let mut statement = db.prepare(
                "SELECT run_id FROM runs WHERE workflow_id = ?1 AND state = 'dead_lettered'
                 ORDER BY run_id",
            )?;
            let rows = statement.query_map([workflow_id], |row| row.get(0))?;
            rows.collect()
        })
    }

    fn purge_older_than(&self, age: Duration, workflow_id: Option<&str>) -> Result<usize, String> {
        // An age beyond the epoch deletes nothing rather than wrapping around.
        let age = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms().saturating_sub(age);
        self.delete_ended_where(
            "finished_at <= ?3 AND (?4 IS NULL OR workflow_id = ?4)",
            &[cutoff.into(), workflow_id.map(str::to_string).into()],
        )
    }

    fn trim_to(&self, keep: u64) -> Result<usize, String> {
        let ended = self.read(|db| {
            db.query_row(
                &format!("SELECT COUNT(*) FROM runs WHERE {ENDED}"),
                [],
                |row| row.get::<_, i64>(0),
            )
        })?;
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let excess = ended.saturating_sub(keep);
        if excess <= 0 {
            return Ok(0);
        }

        // The newest run to go, by end time then id. Rows lie roughly in end order, so the
        // sort behind the limit throws most of them away at a glance.
        let last_to_go = self.read(|db| {
            db.query_row(
                &format!(
                    "SELECT finished_at, run_id FROM runs WHERE {ENDED}
                     ORDER BY finished_at, run_id LIMIT 1 OFFSET ?1"
                ),
                [excess - 1],
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)),
            )
            .optional()
        })?;
        let Some((finished_at, run_id)) = last_to_go else {
            return Ok(0);
        };
        self.delete_ended_where(
            "(finished_at, run_id) <= (?3, ?4)",
            &[finished_at.into(), run_id.into()],
        )
    }
}

/// What makes a run deletable by retention: it has ended, and no replay reopened it.
const ENDED: &str =
    "finished_at IS NOT NULL AND state IN ('succeeded', 'rejected', 'failed', 'dead_lettered')";

/// Runs one maintenance transaction (a retention or purge slice, a replay slice) touches at
/// most, so that accepting runs waits for a slice, never for a whole pass.
const MAINTENANCE_SLICE: i64 = 250;

impl Journal {
    /// Replays up to a slice of runs in one transaction.
    fn replay_slice(&self, run_ids: &[String]) -> Result<Vec<Resumable>, String> {
        self.write_aside(|db| {
            let transaction = db.unchecked_transaction()?;
            let mut replayed = Vec::new();
            for run_id in run_ids {
                let changed = transaction.execute(
                    "UPDATE runs SET state = 'accepted', finished_at = NULL, result = NULL,
                        error = NULL, replays = replays + 1,
                        attempt_base = (SELECT COUNT(*) FROM attempts WHERE run_id = ?1)
                     WHERE run_id = ?1 AND state IN ('succeeded', 'rejected', 'failed', 'dead_lettered')",
                    [run_id],
                )?;
                if changed == 1 {
                    let resumable = transaction.query_row(
                        &format!(
                            "SELECT {INPUT_COLUMNS}, attempt_base FROM {RUNS_WITH_INPUTS}
                             WHERE runs.run_id = ?1"
                        ),
                        [run_id],
                        |row| {
                            Ok(Resumable {
                                input: input_from_row(row)?,
                                attempts_recorded: row.get(8)?,
                                attempts_counted: 0,
                            })
                        },
                    )?;
                    replayed.push(resumable);
                }
            }
            transaction.commit()?;
            Ok(replayed)
        })
    }

    /// Deletes the ended runs that `condition` also picks (its parameters are `?3` on, bound
    /// to `values`), walking run ids in order a slice at a time: a read here, then a delete of
    /// the slice's id range, which the writer commits along with the runs it is accepting.
    /// The whole walk reads the table once. The delete tests the condition again: a run
    /// replayed between the two stays. Blocks: not for an async task.
    fn delete_ended_where(
        &self,
        condition: &str,
        values: &[rusqlite::types::Value],
    ) -> Result<usize, String> {
        let select = format!(
            "SELECT run_id FROM runs WHERE run_id > ?1 AND {ENDED} AND ({condition})
             ORDER BY run_id LIMIT {MAINTENANCE_SLICE}"
        );
        let delete = format!(
            "DELETE FROM runs WHERE run_id > ?1 AND run_id <= ?2 AND {ENDED} AND ({condition})"
        );
        // Both statements take the same parameters; the read leaves `?2` out and its NULL is
        // never looked at.
        let bound = |after: &str, last: Option<&str>| -> Vec<rusqlite::types::Value> {
            let ids = [after.to_string().into(), last.map(str::to_string).into()];
            ids.into_iter().chain(values.iter().cloned()).collect()
        };

        let mut after = String::new();
        let mut deleted = 0;
        loop {
            let slice: Vec<String> = self.read(|db| {
                let mut statement = db.prepare_cached(&select)?;
                let parameters = rusqlite::params_from_iter(bound(&after, None));
                let ids = statement.query_map(parameters, |row| row.get(0))?;
                ids.collect()
            })?;
            let Some(last) = slice.last() else {
                return Ok(deleted);
            };
            deleted += self.write_and_wait(Change::Delete {
                sql: delete.clone(),
                values: bound(&after, Some(last)),
            })?;
            if slice.len() < MAINTENANCE_SLICE as usize {
                return Ok(deleted);
            }
            after.clone_from(last);
        }
    }
}

const RECORD_COLUMNS: &str =
    "run_id, workflow_id, state, accepted_at, started_at, finished_at, result, error, replays";
/// The columns [`input_from_row`] reads, from [`RUNS_WITH_INPUTS`].
const INPUT_COLUMNS: &str = "runs.run_id, runs.workflow_id, runs.config_version, runs.request_id,
     run_inputs.method, run_inputs.headers, run_inputs.query, run_inputs.body";
const RUNS_WITH_INPUTS: &str = "runs JOIN run_inputs ON run_inputs.run_id = runs.run_id";

fn record_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    let state: String = row.get(2)?;
    let result: Option<String> = row.get(6)?;
    let error: Option<String> = row.get(7)?;
    Ok(RunRecord {
        run_id: row.get(0)?,
        workflow_id: row.get(1)?,
        state: RunState::parse(&state).unwrap_or(RunState::Failed),
        accepted_at: rfc3339(row.get(3)?),
        started_at: row.get::<_, Option<i64>>(4)?.map(rfc3339),
        finished_at: row.get::<_, Option<i64>>(5)?.map(rfc3339),
        // Kept as text if it does not read back as JSON, rather than left out.
        result: result.map(|text| {
            crate::payload::parse_recorded(text.as_bytes()).unwrap_or(Value::String(text))
        }),
        error: error.and_then(|text| {
            let value: Value = serde_json::from_str(&text).ok()?;
            Some(RunError {
                code: value["code"].as_str()?.to_string(),
                message: value["message"].as_str()?.to_string(),
                status: value["status"]
                    .as_u64()
                    .and_then(|s| u16::try_from(s).ok())?,
            })
        }),
        replays: row.get(8)?,
        attempts: Vec::new(),
    })
}

fn input_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunInput> {
    let headers: String = row.get(5)?;
    Ok(RunInput {
        run_id: row.get(0)?,
        workflow_id: row.get(1)?,
        config_version: row.get::<_, i64>(2)? as u64,
        request_id: row.get(3)?,
        method: row.get(4)?,
        headers: serde_json::from_str(&headers).unwrap_or_default(),
        query: row.get(6)?,
        body: row.get(7)?,
    })
}

fn attempts_of(db: &Connection, run_id: &str) -> rusqlite::Result<Vec<Attempt>> {
    let mut statement = db.prepare(
        "SELECT number, started_at, duration_ms, status, error FROM attempts
         WHERE run_id = ?1 ORDER BY number",
    )?;
    let rows = statement.query_map([run_id], |row| {
        Ok(Attempt {
            number: row.get(0)?,
            started_at: rfc3339(row.get(1)?),
            duration_ms: row.get(2)?,
            status: row.get(3)?,
            error: row.get(4)?,
        })
    })?;
    rows.collect()
}

/// Takes every change waiting, writes them in one transaction, commits, then answers each.
///
/// Changes nobody waits for (an attempt's end, a run's end) are held back for up to
/// [`HOLD_UNAWAITED_FOR`] and committed with the next change someone waits for: under load
/// that halves the commits, each of which costs an fsync and a rewrite of the pages it
/// touches. A crash inside that window loses only ends, and a run whose end is lost is run
/// again at the next start, with any attempt it made on record as interrupted.
fn write_loop(
    mut db: Connection,
    changes: Receiver<Command>,
    stats: &JournalStats,
    write_turn: &Mutex<()>,
) {
    // Changes nobody waits for, not yet written: held back, or failed and to be tried again
    // (a full disk gets room again).
    let mut held: Vec<Command> = Vec::new();
    let mut flush_at: Option<Instant> = None;
    loop {
        let next = match flush_at {
            None => changes
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(at) => changes.recv_timeout(at.saturating_duration_since(Instant::now())),
        };
        let mut batch: Vec<Command> = Vec::new();
        match next {
            Ok(command) => batch.push(command),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                write_and_answer(&mut db, std::mem::take(&mut held), stats, write_turn);
                return;
            }
        }
        while batch.len() < MOST_PER_COMMIT {
            match changes.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }

        let awaited = batch.iter().any(|command| command.written.is_some());
        let due = flush_at.is_some_and(|at| at <= Instant::now());
        if !awaited && !due && held.len() + batch.len() < MOST_PER_COMMIT {
            held.append(&mut batch);
            flush_at.get_or_insert_with(|| Instant::now() + HOLD_UNAWAITED_FOR);
            continue;
        }

        held.append(&mut batch);
        let failed = write_and_answer(&mut db, std::mem::take(&mut held), stats, write_turn);
        flush_at = (!failed.is_empty()).then(|| Instant::now() + RETRY_UNWRITTEN_AFTER);
        held = failed;
    }
}

/// Writes a batch, answers whoever waits, and gives back the unawaited changes that failed,
/// to be tried again.
fn write_and_answer(
    db: &mut Connection,
    batch: Vec<Command>,
    stats: &JournalStats,
    write_turn: &Mutex<()>,
) -> Vec<Command> {
    let mut failed = Vec::new();
    if batch.is_empty() {
        return failed;
    }
    let outcomes = {
        let _turn = write_turn.lock().unwrap_or_else(|e| e.into_inner());
        write_batch(db, &batch)
    };
    let committed = Instant::now();
    stats.commits.fetch_add(1, Ordering::Relaxed);
    for (command, outcome) in batch.into_iter().zip(outcomes) {
        if outcome.is_ok() {
            stats.lag.observe(committed.duration_since(command.sent));
        }
        let retried = outcome.is_err() && command.written.is_none();
        if !retried || failed.len() >= MOST_UNWRITTEN {
            stats.pending.fetch_sub(1, Ordering::Relaxed);
        }
        match (outcome, command.written) {
            (outcome, Some(written)) => {
                if let Err(error) = &outcome {
                    tracing::error!(journal.error = %error, "journal write failed");
                }
                let _ = written.send(outcome);
            }
            (Ok(_), None) => {}
            (Err(error), None) if failed.len() < MOST_UNWRITTEN => {
                tracing::warn!(journal.error = %error, "journal write failed; it will be tried again");
                failed.push(Command {
                    change: command.change,
                    written: None,
                    sent: command.sent,
                });
            }
            (Err(error), None) => {
                tracing::error!(journal.error = %error, "journal write failed and dropped: too many wait already");
            }
        }
    }
    failed
}

/// Copies the write-ahead log into the database every `every`, without blocking
/// the writer, so the log stays small and commits never pay for a checkpoint.
fn checkpoint_loop(db: Connection, stop: Receiver<()>, every: Duration) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
        let done = db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            row.get::<_, i64>(0)
        });
        if let Err(error) = done {
            tracing::warn!(journal.error = %error, "journal checkpoint failed");
        }
    }
}

/// Often enough that the frames the writer copies itself when it restarts the log are the
/// few committed since the last pass.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// The log's length, in frames (pages), past which the writer copies the rest itself so
/// that the log restarts: 16 MiB with 4 KiB pages.
const RESTART_LOG_AFTER_FRAMES: i64 = 4_096;

/// Size a restarted log file is cut back to.
const LOG_KEPT_BYTES: i64 = 64 * 1024 * 1024;

/// Longest a change nobody waits for is held back to share a later commit.
const HOLD_UNAWAITED_FOR: Duration = Duration::from_millis(20);

/// How long the writer waits for new changes before trying unwritten ones again.
const RETRY_UNWRITTEN_AFTER: Duration = Duration::from_secs(1);

/// Most failed changes kept for another try.
const MOST_UNWRITTEN: usize = 100_000;

/// One transaction for the whole batch; if it fails, each change alone, so that one bad
/// change (a run id written twice) fails only its own caller.
fn write_batch(db: &mut Connection, batch: &[Command]) -> Vec<Result<usize, String>> {
    let together = db.transaction().and_then(|transaction| {
        let deleted = batch
            .iter()
            .map(|command| apply(&transaction, &command.change))
            .collect::<rusqlite::Result<Vec<usize>>>()?;
        transaction.commit()?;
        Ok(deleted)
    });
    match together {
        Ok(deleted) => return deleted.into_iter().map(Ok).collect(),
        Err(error) if batch.len() == 1 => return vec![Err(error.to_string())],
        Err(_) => {}
    }
    batch
        .iter()
        .map(|command| {
            db.transaction()
                .and_then(|transaction| {
                    let deleted = apply(&transaction, &command.change)?;
                    transaction.commit()?;
                    Ok(deleted)
                })
                .map_err(|error| error.to_string())
        })
        .collect()
}

/// Writes one change; returns the rows it deleted (only a [`Change::Delete`] deletes).
fn apply(db: &Connection, change: &Change) -> rusqlite::Result<usize> {
    let now = now_ms();
    match change {
        Change::Delete { sql, values } => {
            return db
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(values.iter()));
        }
        Change::Append(input) => {
            let headers = serde_json::to_string(&input.headers).unwrap_or_else(|_| "[]".into());
            db.prepare_cached(
                "INSERT INTO runs (run_id, workflow_id, config_version, request_id, state,
                    accepted_at)
                 VALUES (?1, ?2, ?3, ?4, 'accepted', ?5)",
            )?
            .execute(params![
                input.run_id,
                input.workflow_id,
                input.config_version as i64,
                input.request_id,
                now
            ])?;
            db.prepare_cached(
                "INSERT INTO run_inputs (run_id, method, headers, query, body)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                input.run_id,
                input.method,
                headers,
                input.query,
                input.body
            ])?;
        }
        Change::Started { run_id, number } => {
            db.prepare_cached(
                "INSERT OR REPLACE INTO attempts (run_id, number, started_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![run_id, number, now])?;
            db.prepare_cached(
                "UPDATE runs SET state = 'running', started_at = COALESCE(started_at, ?2)
                 WHERE run_id = ?1",
            )?
            .execute(params![run_id, now])?;
        }
        Change::AttemptEnded {
            run_id,
            number,
            duration_ms,
            status,
            error,
            retrying,
        } => {
            db.prepare_cached(
                "UPDATE attempts SET duration_ms = ?3, status = ?4, error = ?5
                 WHERE run_id = ?1 AND number = ?2",
            )?
            .execute(params![run_id, number, duration_ms, status, error])?;
            if *retrying {
                db.prepare_cached("UPDATE runs SET state = 'retrying' WHERE run_id = ?1")?
                    .execute([run_id])?;
            }
        }
        Change::Barrier => {}
        Change::Finished { run_id, outcome } => {
            let result = outcome.result.as_ref().map(Value::to_string);
            let error = outcome.error.as_ref().map(|error| {
                serde_json::json!({
                    "code": error.code, "message": error.message, "status": error.status
                })
                .to_string()
            });
            db.prepare_cached(
                "UPDATE runs SET state = ?2, finished_at = ?3, result = ?4, error = ?5,
                    started_at = COALESCE(started_at, ?6)
                 WHERE run_id = ?1",
            )?
            .execute(params![
                run_id,
                outcome.state.as_str(),
                now,
                result,
                error,
                millis(outcome.started)
            ])?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's end in `state`, starting now, with no result or error.
    fn ended(state: RunState) -> Outcome {
        Outcome {
            state,
            started: SystemTime::now(),
            result: None,
            error: None,
        }
    }

    fn input(run_id: &str) -> RunInput {
        RunInput {
            run_id: run_id.into(),
            workflow_id: "w".into(),
            config_version: 1,
            request_id: "r".into(),
            method: "POST".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            query: Some("a=1".into()),
            body: br#"{"n":1}"#.to_vec(),
        }
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn a_run_survives_reopening_and_its_attempts_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.db");
        {
            let journal = Journal::open(&path, 16).unwrap();
            block_on(journal.append(input("r1"))).unwrap();
            block_on(journal.append(input("r2"))).unwrap();
            block_on(journal.attempt_started("r1", 1)).unwrap();
            journal.finish(
                "r2",
                Outcome {
                    state: RunState::Succeeded,
                    started: SystemTime::now(),
                    result: Some(serde_json::json!({"ok": true})),
                    error: None,
                },
            );
            block_on(journal.settled()).unwrap();
        }

        let journal = Journal::open(&path, 16).unwrap();
        assert_eq!(journal.close_interrupted_attempts().unwrap(), 1);
        let unfinished = journal.unfinished().unwrap();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].input.run_id, "r1");
        assert_eq!(unfinished[0].input.body, br#"{"n":1}"#);
        assert_eq!(
            unfinished[0].attempts_recorded, 1,
            "one attempt already made"
        );
        assert_eq!(unfinished[0].attempts_counted, 1);
        let done = journal.get("r2").unwrap().unwrap();
        assert_eq!(done.state, RunState::Succeeded);
        assert_eq!(done.result, Some(serde_json::json!({"ok": true})));
        let interrupted = journal.get("r1").unwrap().unwrap();
        assert!(interrupted.attempts[0]
            .error
            .as_deref()
            .unwrap()
            .contains("interrupted"));
    }

    #[test]
    fn an_end_nobody_waits_for_is_written_without_a_later_change_and_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.db");
        let succeeded = || ended(RunState::Succeeded);
        let journal = Journal::open(&path, 16).unwrap();
        block_on(journal.append(input("held"))).unwrap();
        journal.finish("held", succeeded());
        let deadline = Instant::now() + Duration::from_secs(10);
        while journal.get("held").unwrap().unwrap().state != RunState::Succeeded {
            assert!(
                Instant::now() < deadline,
                "the held end was never committed"
            );
            std::thread::yield_now();
        }

        // An end still held when the journal closes is written before the writer stops.
        block_on(journal.append(input("closing"))).unwrap();
        journal.finish("closing", succeeded());
        drop(journal);
        let reopened = Journal::open(&path, 16).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while reopened.get("closing").unwrap().unwrap().state != RunState::Succeeded {
            assert!(Instant::now() < deadline, "the held end was lost on close");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_journal_that_kept_inputs_in_runs_has_them_moved_out_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.db");
        // The layout as it was: each run's input in its `runs` row.
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE runs (
                run_id TEXT PRIMARY KEY, workflow_id TEXT NOT NULL,
                config_version INTEGER NOT NULL, request_id TEXT NOT NULL,
                method TEXT NOT NULL, headers TEXT NOT NULL, query TEXT, body BLOB NOT NULL,
                state TEXT NOT NULL, accepted_at INTEGER NOT NULL, started_at INTEGER,
                finished_at INTEGER, result TEXT, error TEXT,
                replays INTEGER NOT NULL DEFAULT 0, attempt_base INTEGER NOT NULL DEFAULT 0);
             CREATE INDEX runs_by_workflow ON runs(workflow_id, run_id);
             INSERT INTO runs (run_id, workflow_id, config_version, request_id, method, headers,
                               query, body, state, accepted_at)
             VALUES ('old', 'w', 1, 'r', 'PUT', '[[\"x-a\",\"1\"]]', 'q=1', X'7B7D', 'accepted', 0);",
        )
        .unwrap();
        drop(old);

        let journal = Journal::open(&path, 16).unwrap();
        let input = journal.input("old").unwrap().expect("the old run's input");
        assert_eq!(
            (
                input.method.as_str(),
                input.query.as_deref(),
                input.body.as_slice()
            ),
            ("PUT", Some("q=1"), b"{}".as_slice())
        );
        assert_eq!(input.headers, vec![("x-a".to_string(), "1".to_string())]);
        assert_eq!(journal.unfinished().unwrap().len(), 1, "still to be run");
        let columns: Vec<String> = journal
            .read(|db| {
                let mut statement = db.prepare("SELECT name FROM pragma_table_info('runs')")?;
                let names = statement.query_map([], |row| row.get(0))?;
                names.collect()
            })
            .unwrap();
        assert!(!columns.contains(&"body".to_string()), "{columns:?}");

        // A run purged takes its input with it.
        journal.finish("old", ended(RunState::Succeeded));
        block_on(journal.settled()).unwrap();
        assert_eq!(journal.purge_older_than(Duration::ZERO, None).unwrap(), 1);
        let inputs_left: i64 = journal
            .read(|db| db.query_row("SELECT COUNT(*) FROM run_inputs", [], |row| row.get(0)))
            .unwrap();
        assert_eq!(inputs_left, 0);
    }

    #[test]
    fn a_journal_with_indexes_of_earlier_versions_has_them_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.db");
        // The schema as it was, with the indexes it has had and no longer has.
        let old_schema = format!(
            "{SCHEMA}
             CREATE INDEX runs_by_finish ON runs(finished_at);
             CREATE INDEX runs_ended_by_finish ON runs(finished_at) WHERE finished_at IS NOT NULL;
             CREATE INDEX runs_by_state ON runs(state);"
        );
        let old = Connection::open(&path).unwrap();
        old.execute_batch(&old_schema).unwrap();
        drop(old);

        let journal = Journal::open(&path, 16).unwrap();
        let indexes: Vec<String> = journal
            .read(|db| {
                let mut statement =
                    db.prepare("SELECT name FROM sqlite_master WHERE type = 'index'")?;
                let names = statement.query_map([], |row| row.get(0))?;
                names.collect()
            })
            .unwrap();
        assert!(
            indexes.contains(&"runs_by_workflow".to_string()),
            "{indexes:?}"
        );
        for dropped in ["runs_by_finish", "runs_ended_by_finish", "runs_by_state"] {
            assert!(!indexes.contains(&dropped.to_string()), "{indexes:?}");
        }
    }

    #[test]
    fn replay_reopens_finished_runs_only_and_counts_attempts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("runs.db"), 16).unwrap();
        block_on(journal.append(input("dead"))).unwrap();
        block_on(journal.append(input("open"))).unwrap();
        block_on(journal.attempt_started("dead", 1)).unwrap();
        journal.finish("dead", ended(RunState::DeadLettered));
        block_on(journal.settled()).unwrap();
        assert_eq!(
            journal.dead_lettered("w").unwrap(),
            vec!["dead".to_string()]
        );

        let replayed = journal
            .replay(&["dead".to_string(), "open".to_string()])
            .unwrap();
        assert_eq!(replayed.len(), 1, "a run still open is not replayed");
        assert_eq!(
            (replayed[0].attempts_recorded, replayed[0].attempts_counted),
            (1, 0)
        );
        assert_eq!(journal.attempts_made("dead").unwrap(), 0);
        let record = journal.get("dead").unwrap().unwrap();
        assert_eq!((record.state, record.replays), (RunState::Accepted, 1));
        assert_eq!(record.attempts.len(), 1, "earlier attempts are kept");
    }

    #[test]
    fn retention_deletes_only_ended_runs() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("runs.db"), 16).unwrap();
        for id in ["a", "b", "c", "d"] {
            block_on(journal.append(input(id))).unwrap();
        }
        for id in ["a", "b", "c"] {
            journal.finish(id, ended(RunState::Failed));
        }
        block_on(journal.settled()).unwrap();
        assert_eq!(journal.trim_to(1).unwrap(), 2);
        assert_eq!(journal.purge_older_than(Duration::ZERO, None).unwrap(), 1);
        let left: Vec<String> = journal
            .list(None, None, 10)
            .unwrap()
            .into_iter()
            .map(|record| record.run_id)
            .collect();
        assert_eq!(left, vec!["d".to_string()]);
    }

    /// Writes `count` ended runs of workflow `w`, with their inputs, straight into the tables:
    /// ids `r00000` on, the later the id the earlier the end (`count - n` ms after the epoch).
    fn ended_long_ago(journal: &Journal, count: usize) {
        journal
            .read(|db| {
                let transaction = db.unchecked_transaction()?;
                for n in 0..count {
                    transaction.execute(
                        "INSERT INTO runs (run_id, workflow_id, config_version, request_id, state,
                            accepted_at, finished_at)
                         VALUES (?1, 'w', 1, 'q', 'succeeded', 0, ?2)",
                        params![format!("r{n:05}"), (count - n) as i64],
                    )?;
                    transaction.execute(
                        "INSERT INTO run_inputs (run_id, method, headers, query, body)
                         VALUES (?1, 'POST', '[]', NULL, x'7b7d')",
                        [format!("r{n:05}")],
                    )?;
                }
                transaction.commit()
            })
            .unwrap();
    }

    fn run_ids(journal: &Journal) -> Vec<String> {
        journal
            .read(|db| {
                let mut statement = db.prepare("SELECT run_id FROM runs ORDER BY run_id")?;
                let ids = statement.query_map([], |row| row.get(0))?;
                ids.collect()
            })
            .unwrap()
    }

    #[test]
    fn trimming_deletes_the_runs_that_ended_first_over_several_slices() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("runs.db"), 16).unwrap();
        ended_long_ago(&journal, 2_500);
        block_on(journal.append(input("still-open"))).unwrap();

        assert_eq!(journal.trim_to(1_000).unwrap(), 1_500);
        let left = run_ids(&journal);
        assert_eq!(left.len(), 1_001, "1,000 ended runs and the open one");
        assert_eq!(left[0], "r00000", "the run that ended last is kept");
        assert_eq!(left[999], "r00999");
        assert_eq!(left[1_000], "still-open");

        assert_eq!(journal.trim_to(10).unwrap(), 990);
        let left = run_ids(&journal);
        assert_eq!(left.len(), 11, "{left:?}");
        assert_eq!(left[9], "r00009");
        assert_eq!(journal.trim_to(10).unwrap(), 0, "already within bounds");
    }

    #[test]
    fn purging_by_age_goes_by_workflow_and_spares_a_run_reopened_by_a_replay() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("runs.db"), 16).unwrap();
        ended_long_ago(&journal, 1_200);
        // What a replay leaves of a run, short of its input, which these runs lack.
        journal
            .read(|db| {
                db.execute(
                    "UPDATE runs SET state = 'accepted', finished_at = NULL WHERE run_id = 'r00007'",
                    [],
                )
            })
            .unwrap();

        let an_hour = Duration::from_secs(3_600);
        assert_eq!(journal.purge_older_than(an_hour, Some("other")).unwrap(), 0);
        assert_eq!(journal.purge_older_than(an_hour, Some("w")).unwrap(), 1_199);
        assert_eq!(run_ids(&journal), vec!["r00007".to_string()]);
    }

    #[test]
    fn the_log_restarts_and_stays_bounded_while_writes_never_pause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.db");
        // No background pass in the test's lifetime: the writer alone must restart the log.
        let journal =
            Journal::open_checkpointing_every(&path, 16, Duration::from_secs(3_600)).unwrap();

        // Each append is a commit of at least four frames (two tables, two key indexes), so
        // 3,000 of them write three times the frames after which the log must restart.
        let body = vec![b'x'; 1_024];
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for n in 0..3_000 {
            let mut run = input(&format!("r{n:05}"));
            run.body.clone_from(&body);
            runtime.block_on(journal.append(run)).unwrap();
        }

        let log = std::fs::read(format!("{}-wal", path.display())).unwrap();
        let frame_bytes = 24 + 4_096;
        let most = 32 + (RESTART_LOG_AFTER_FRAMES as usize + 16) * frame_bytes;
        assert!(log.len() <= most, "the log is {} bytes", log.len());
        // The header counts the log's restarts (its checkpoint sequence number).
        let restarts = u32::from_be_bytes(log[12..16].try_into().unwrap());
        assert!(restarts >= 2, "the log restarted {restarts} times");
        assert_eq!(journal.unfinished_count().unwrap(), 3_000, "nothing lost");
    }

    #[test]
    fn a_replay_of_more_runs_than_a_slice_replays_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("runs.db"), 16).unwrap();
        ended_long_ago(&journal, 2_500);
        let ids = run_ids(&journal);

        let replayed = journal.replay(&ids).unwrap();
        assert_eq!(replayed.len(), 2_500);
        assert_eq!(replayed[2_499].input.run_id, "r02499");
        assert_eq!(journal.unfinished_count().unwrap(), 2_500);
        assert_eq!(
            journal.replay(&ids).unwrap().len(),
            0,
            "none has ended since"
        );
    }

    #[test]
    fn a_bad_change_fails_alone_and_its_batch_neighbours_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("runs.db"), 16).unwrap();
        block_on(journal.append(input("once"))).unwrap();
        let outcomes = block_on(async {
            let again = journal.append(input("once"));
            let other = journal.append(input("other"));
            tokio::join!(again, other)
        });
        assert!(outcomes.0.is_err(), "a run id is written once");
        assert!(outcomes.1.is_ok());
        assert!(journal.get("other").unwrap().is_some());
    }
}
