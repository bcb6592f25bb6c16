//! Hot reload: picking up changes to `gateway.yaml`, workflow files, schemas and scripts
//! without a restart.
//!
//! A reload loads and validates everything again, exactly as at start. A configuration with
//! any problem is refused whole: the problems are logged and kept for the admin API, and the
//! configuration in force keeps serving. A good one becomes a new snapshot, swapped in at once.
//! Settings bound at start (listen addresses, threads, the admin token, the state folder, the
//! URL secret, the run pool) keep their running values and are reported as needing a restart.
//!
//! The watcher polls file sizes and modification times. Polling costs a few `stat` calls per
//! interval, needs no platform support, and sees editors that replace files by renaming.

use crate::config::{self, Config, ConfigError};
use crate::server::{build_snapshot, GatewayState, Snapshot, StartupSettings};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

/// Most files the watcher looks at under one folder.
const MAX_WATCHED_FILES: usize = 20_000;

/// How deep the watcher looks into the workflows and scripts folders.
const MAX_WATCH_DEPTH: usize = 4;

/// What made a reload happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The watcher saw a file change.
    Watch,
    /// `POST /api/v1/reload`.
    Api,
    /// SIGHUP.
    Signal,
}

impl Trigger {
    pub fn name(self) -> &'static str {
        match self {
            Self::Watch => "watch",
            Self::Api => "api",
            Self::Signal => "signal",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    Refused,
}

/// One problem, as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub file: String,
    pub location: String,
    pub message: String,
}

impl From<&ConfigError> for Problem {
    fn from(error: &ConfigError) -> Self {
        Self {
            file: error.file.display().to_string(),
            location: error.location.clone(),
            message: error.message.clone(),
        }
    }
}

/// The outcome of one reload.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub at: String,
    pub trigger: Trigger,
    pub outcome: Outcome,
    /// The configuration version in force afterwards.
    pub config_version: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
    /// Changed settings that only a restart applies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restart_required: Vec<&'static str>,
    /// What went wrong without refusing the reload.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub workflows: usize,
}

/// Loads the configuration again and puts it in force if it is valid.
pub fn reload(state: &GatewayState, trigger: Trigger) -> ReloadReport {
    let _one_at_a_time = state
        .reloading
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let current = state.snapshot();
    // Taken before reading: a change made while loading is seen by the watcher's next look.
    *lock(&state.watched) = fingerprint(&current);

    let report = match config::load(&current.config.source) {
        Ok(mut config) => {
            let restart_required = keep_startup_settings(&mut config, &state.startup);
            let version = current.version + 1;
            let built = build_snapshot(
                config,
                version,
                Some(&current),
                &state.secret,
                &state.registry,
                state.control.handle(),
            );
            match built {
                Ok(snapshot) => {
                    let workflows = snapshot.config.workflows.len();
                    let warnings = snapshot.warnings.clone();
                    state.install(snapshot);
                    ReloadReport {
                        warnings,
                        ..applied(trigger, version, restart_required, workflows)
                    }
                }
                Err(message) => {
                    let problem = Problem {
                        file: current.config.source.display().to_string(),
                        location: String::new(),
                        message,
                    };
                    refused(trigger, &current, vec![problem])
                }
            }
        }
        Err(errors) => {
            let problems = errors.0.iter().map(Problem::from).collect();
            refused(trigger, &current, problems)
        }
    };

    log(&report);
    *lock(&state.last_reload) = Some(report.clone());
    report
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn applied(
    trigger: Trigger,
    version: u64,
    restart_required: Vec<&'static str>,
    workflows: usize,
) -> ReloadReport {
    ReloadReport {
        at: now(),
        trigger,
        outcome: Outcome::Applied,
        config_version: version,
        problems: Vec::new(),
        restart_required,
        warnings: Vec::new(),
        workflows,
    }
}

fn refused(trigger: Trigger, current: &Snapshot, problems: Vec<Problem>) -> ReloadReport {
    ReloadReport {
        at: now(),
        trigger,
        outcome: Outcome::Refused,
        config_version: current.version,
        problems,
        restart_required: Vec::new(),
        warnings: Vec::new(),
        workflows: current.config.workflows.len(),
    }
}

fn log(report: &ReloadReport) {
    match report.outcome {
        Outcome::Applied => tracing::info!(
            config.version = report.config_version,
            reload.trigger = report.trigger.name(),
            workflows = report.workflows,
            reload.restart_required = %report.restart_required.join(","),
            "configuration reloaded"
        ),
        Outcome::Refused => {
            for problem in &report.problems {
                tracing::warn!(
                    config.file = %problem.file,
                    config.location = %problem.location,
                    error.detail = %problem.message,
                    "configuration problem"
                );
            }
            tracing::warn!(
                config.version = report.config_version,
                reload.trigger = report.trigger.name(),
                problems = report.problems.len(),
                "reload refused; the running configuration stays in force"
            );
        }
    }
}

/// Puts the running values back into the settings bound at start, naming each one that the
/// new files changed.
fn keep_startup_settings(config: &mut Config, startup: &StartupSettings) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if config.server.listen != startup.listen {
        changed.push("server.listen");
        config.server.listen.clone_from(&startup.listen);
    }
    if config.server.threads != startup.threads {
        changed.push("server.threads");
        config.server.threads = startup.threads;
    }
    let admin_changed = match (&config.admin, &startup.admin) {
        (Some(new), Some(old)) => new.listen != old.listen || new.token != old.token,
        (None, None) => false,
        _ => true,
    };
    if admin_changed {
        changed.push("admin");
        config.admin.clone_from(&startup.admin);
    }
    if config.state_dir != startup.state_dir {
        changed.push("paths.state");
        config.state_dir.clone_from(&startup.state_dir);
    }
    if config.url_secret != startup.url_secret {
        changed.push("url_secret");
        config.url_secret.clone_from(&startup.url_secret);
    }
    if config.runs != startup.runs {
        changed.push("runs");
        config.runs = startup.runs.clone();
    }
    if config.idempotency != startup.idempotency {
        changed.push("idempotency");
        config.idempotency = startup.idempotency;
    }
    changed
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Starts the watcher thread and the SIGHUP listener. Both hold the state weakly and end
/// with it.
pub fn watch(state: &Arc<GatewayState>) {
    listen_for_hangup(state);
    let weak = Arc::downgrade(state);
    let started = std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || watch_loop(&weak));
    if let Err(error) = started {
        tracing::warn!(error = %error, "cannot start the configuration watcher");
    }
}

/// Reloads on SIGHUP, as service managers expect (`systemctl reload`).
fn listen_for_hangup(state: &Arc<GatewayState>) {
    use tokio::signal::unix::{signal, SignalKind};

    let weak = Arc::downgrade(state);
    state.control.spawn(async move {
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(error) => {
                tracing::warn!(error = %error, "cannot listen for SIGHUP; reload through the admin api");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            let Some(state) = weak.upgrade() else {
                return;
            };
            // Loading compiles every script: keep it off the runtime's worker.
            let _ = tokio::task::spawn_blocking(move || reload(&state, Trigger::Signal)).await;
        }
    });
}

fn watch_loop(state: &Weak<GatewayState>) {
    match state.upgrade() {
        Some(state) => *lock(&state.watched) = fingerprint(&state.snapshot()),
        None => return,
    }
    loop {
        let interval = match state.upgrade() {
            Some(state) => state.snapshot().config.reload.interval,
            None => return,
        };
        // Polling interval of the watcher, not a synchronisation point.
        std::thread::sleep(interval);

        let Some(state) = state.upgrade() else {
            return;
        };
        if !state.snapshot().config.reload.watch {
            continue;
        }
        let now = fingerprint(&state.snapshot());
        if now != *lock(&state.watched) {
            reload(&state, Trigger::Watch);
        }
    }
}

/// Size and modification time of one file; `None` when it cannot be read.
pub type Stamp = (PathBuf, Option<(u64, SystemTime)>);

/// What the watcher compares between two looks: every file the configuration reads, and
/// every file in the workflows and scripts folders (so that a new or deleted file counts).
fn fingerprint(snapshot: &Snapshot) -> Vec<Stamp> {
    let config = &snapshot.config;
    let mut paths = vec![config.source.clone()];
    list_files(&config.workflows_dir, MAX_WATCH_DEPTH, &mut paths);
    list_files(&config.scripts_dir, MAX_WATCH_DEPTH, &mut paths);
    for workflow in &config.workflows {
        paths.extend(workflow.dependencies.iter().cloned());
    }
    paths.sort();
    paths.dedup();
    paths.into_iter().map(stamp).collect()
}

fn stamp(path: PathBuf) -> Stamp {
    let meta = std::fs::metadata(&path).ok();
    let seen = meta.and_then(|meta| Some((meta.len(), meta.modified().ok()?)));
    (path, seen)
}

/// Lock, swap and backup files editors leave beside what they edit: `.#x.yaml`,
/// `.x.yaml.swp`, `x.yaml~`. None of them is read, so none should cause a reload.
fn is_editor_litter(path: &Path) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.starts_with('.') || name.ends_with('~'))
}

fn list_files(dir: &Path, depth: usize, into: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if into.len() >= MAX_WATCHED_FILES {
            return;
        }
        let path = entry.path();
        if is_editor_litter(&path) {
            continue;
        }
        match entry.file_type() {
            Ok(kind) if kind.is_dir() && depth > 0 => list_files(&path, depth - 1, into),
            Ok(kind) if kind.is_file() || kind.is_symlink() => into.push(path),
            _ => {}
        }
    }
}
