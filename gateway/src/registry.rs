//! What the gateway knows about each workflow beyond its file, kept across reloads: whether it
//! is active, its request counters and its samples.
//!
//! Activation starts from the workflow file's `active` flag. Turning a workflow on or off
//! through the admin API records an override in the state folder, so it survives restarts.
//! The override remembers the file's flag at the time; once the file's flag changes, the
//! file is the newer word and the override is dropped. The router reads the same flag the
//! admin API shows, so what the API says is what the URL does.

use crate::authoring::samples::{SampleBudget, SampleRing};
use crate::config::{SampleSettings, Workflow};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

const ACTIVATION_FILE: &str = "activation.json";

/// How long the override of a workflow whose file is missing is kept: long enough for a
/// checkout or an editor that deletes before it writes, short enough that a new workflow
/// created later under the same id starts from its own file's flag.
const MISSING_GRACE_MS: u64 = 10 * 60 * 1000;

/// One workflow's live state.
pub struct LiveWorkflow {
    active: AtomicBool,
    pub counters: Counters,
    /// How long each phase of its requests takes.
    pub latency: crate::metrics::PhaseLatency,
    pub samples: SampleRing,
    /// Requests admitted and not yet answered, for the workflow's concurrency limit.
    pub gauge: Arc<crate::limits::Gauge>,
}

impl LiveWorkflow {
    fn new(active: bool, samples: SampleRing) -> Self {
        Self {
            active: AtomicBool::new(active),
            counters: Counters::default(),
            latency: Default::default(),
            samples,
            gauge: Arc::default(),
        }
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }
}

/// Requests that reached a workflow's URLs, by status class.
#[derive(Default)]
pub struct Counters {
    /// Requests routed to the workflow and not yet answered.
    in_flight: AtomicU64,
    requests: AtomicU64,
    by_class: [AtomicU64; 5],
    test_requests: AtomicU64,
    /// Requests whose script failed (`script_error`) or ran out of time (`script_timeout`).
    script_errors: AtomicU64,
    script_timeouts: AtomicU64,
    last_request_ms: AtomicU64,
}

impl Counters {
    /// Counts a request routed to the workflow; [`Counters::record`] ends it.
    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one answered request, with the error code it ended with, if any.
    pub fn record(&self, status: u16, test: bool, error_code: Option<&str>) {
        let script_failure = match error_code {
            Some("script_error") => Some(&self.script_errors),
            Some("script_timeout") => Some(&self.script_timeouts),
            _ => None,
        };
        if let Some(counter) = script_failure {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let counter = if test {
            &self.test_requests
        } else {
            &self.requests
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(class) = (status / 100).checked_sub(1).map(usize::from) {
            if let Some(slot) = self.by_class.get(class) {
                slot.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.last_request_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// The counts as they stand now.
    pub fn read(&self) -> CounterValues {
        CounterValues {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            test_requests: self.test_requests.load(Ordering::Relaxed),
            by_class: std::array::from_fn(|index| self.by_class[index].load(Ordering::Relaxed)),
            script_errors: self.script_errors.load(Ordering::Relaxed),
            script_timeouts: self.script_timeouts.load(Ordering::Relaxed),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let values = self.read();
        let class = |index: usize| values.by_class[index];
        let last = self.last_request_ms.load(Ordering::Relaxed);
        let last_request_at = (last > 0).then(|| {
            let at = UNIX_EPOCH + std::time::Duration::from_millis(last);
            humantime::format_rfc3339_millis(at).to_string()
        });
        serde_json::json!({
            "in_flight": values.in_flight,
            "requests": values.requests,
            "test_requests": values.test_requests,
            "by_status_class": {
                "1xx": class(0), "2xx": class(1), "3xx": class(2), "4xx": class(3), "5xx": class(4)
            },
            "last_request_at": last_request_at,
        })
    }
}

/// One reading of a workflow's [`Counters`].
#[derive(Debug, Clone, Copy)]
pub struct CounterValues {
    pub in_flight: u64,
    pub requests: u64,
    pub test_requests: u64,
    /// 1xx to 5xx, production and test URLs together.
    pub by_class: [u64; 5],
    pub script_errors: u64,
    pub script_timeouts: u64,
}

/// An activation set through the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Override {
    active: bool,
    /// The workflow file's own flag when the override was made.
    file_active: bool,
    /// Since when (Unix milliseconds) no loaded workflow has this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    missing_since_ms: Option<u64>,
}

/// Where a workflow's activation comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationSource {
    File,
    Override,
}

/// What [`Registry::sync`] hands the new snapshot.
pub struct Synced {
    pub live: HashMap<String, Arc<LiveWorkflow>>,
    /// Set when activation changes could not be saved.
    pub warning: Option<String>,
}

/// The overrides that stand for this set of workflows at `now_ms`.
fn updated_overrides(
    overrides: &BTreeMap<String, Override>,
    workflows: &[Arc<Workflow>],
    now_ms: u64,
) -> BTreeMap<String, Override> {
    let mut updated = BTreeMap::new();
    for (id, kept) in overrides {
        let file_flag = workflows
            .iter()
            .find(|workflow| &workflow.id == id)
            .map(|workflow| workflow.active);
        let kept = match file_flag {
            Some(active) if active != kept.file_active => continue,
            Some(_) => Override {
                missing_since_ms: None,
                ..*kept
            },
            None => {
                let since = kept.missing_since_ms.unwrap_or(now_ms);
                if now_ms.saturating_sub(since) > MISSING_GRACE_MS {
                    continue;
                }
                Override {
                    missing_since_ms: Some(since),
                    ..*kept
                }
            }
        };
        updated.insert(id.clone(), kept);
    }
    updated
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Every workflow's live state, by id.
pub struct Registry {
    path: PathBuf,
    inner: Mutex<Inner>,
    budget: Arc<SampleBudget>,
}

struct Inner {
    live: HashMap<String, Arc<LiveWorkflow>>,
    overrides: BTreeMap<String, Override>,
}

impl Registry {
    /// Reads the activation overrides kept in `state_dir`. A file that cannot be read is an
    /// error: starting without it would silently switch workflows back on or off.
    pub fn open(state_dir: &Path, samples: SampleSettings) -> Result<Self, String> {
        let path = state_dir.join(ACTIVATION_FILE);
        let overrides = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|error| format!("{} is not valid: {error}", path.display()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
        };
        let inner = Inner {
            live: HashMap::new(),
            overrides,
        };
        Ok(Self {
            path,
            inner: Mutex::new(inner),
            budget: Arc::new(SampleBudget::new(samples.max_total_bytes)),
        })
    }

    /// Brings the registry in line with a newly loaded set of workflows and returns each
    /// one's live state. Workflows that are gone lose their samples and counters.
    ///
    /// An override is dropped when its workflow's file flag now differs from the one
    /// recorded, or when its workflow has been missing for longer than [`MISSING_GRACE_MS`].
    /// When the changed overrides cannot be saved, the saved ones stay in force, so a restart
    /// finds what was served; the returned warning says so.
    pub fn sync(&self, workflows: &[Arc<Workflow>], samples: SampleSettings) -> Synced {
        let mut inner = self.lock();
        self.budget.set_limit(samples.max_total_bytes);
        let updated = updated_overrides(&inner.overrides, workflows, now_ms());
        let mut warning = None;
        if updated != inner.overrides {
            match self.persist(&updated) {
                Ok(()) => inner.overrides = updated,
                Err(error) => {
                    tracing::warn!(error = %error, "cannot save workflow activation; the saved activations stay in force");
                    warning = Some(format!(
                        "activation changes could not be saved, so the saved activations stay in force: {error}"
                    ));
                }
            }
        }

        let mut live = HashMap::with_capacity(workflows.len());
        for workflow in workflows {
            let active = inner
                .overrides
                .get(&workflow.id)
                .map_or(workflow.active, |kept| kept.active);
            let entry = inner.live.get(&workflow.id).cloned().unwrap_or_else(|| {
                let ring = SampleRing::new(samples, Arc::clone(&self.budget));
                Arc::new(LiveWorkflow::new(active, ring))
            });
            entry.active.store(active, Ordering::Release);
            entry.samples.resize(samples);
            live.insert(workflow.id.clone(), entry);
        }
        for (id, gone) in &inner.live {
            if !live.contains_key(id) {
                gone.samples.retire();
            }
        }
        inner.live = live.clone();
        Synced { live, warning }
    }

    /// Turns a workflow on or off and saves the choice. Nothing changes when it cannot be
    /// saved, so the gateway never serves a state it would forget on restart.
    pub fn set_active(&self, workflow: &Workflow, active: bool) -> Result<(), String> {
        let mut inner = self.lock();
        let Some(entry) = inner.live.get(&workflow.id).cloned() else {
            return Err(format!("workflow {} is not loaded", workflow.id));
        };

        let mut overrides = inner.overrides.clone();
        if active == workflow.active {
            overrides.remove(&workflow.id);
        } else {
            let kept = Override {
                active,
                file_active: workflow.active,
                missing_since_ms: None,
            };
            overrides.insert(workflow.id.clone(), kept);
        }
        self.persist(&overrides)?;

        inner.overrides = overrides;
        entry.active.store(active, Ordering::Release);
        Ok(())
    }

    /// Whether a workflow's activation is its file's or an override.
    pub fn source_of(&self, workflow_id: &str) -> ActivationSource {
        if self.lock().overrides.contains_key(workflow_id) {
            ActivationSource::Override
        } else {
            ActivationSource::File
        }
    }

    pub fn get(&self, workflow_id: &str) -> Option<Arc<LiveWorkflow>> {
        self.lock().live.get(workflow_id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-written: every change
        // is a whole-value assignment, so the data is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the overrides beside their final name, syncs, then renames over it, so a crash
    /// leaves either the old file or the new one.
    fn persist(&self, overrides: &BTreeMap<String, Override>) -> Result<(), String> {
        let describe = |error: std::io::Error| format!("{}: {error}", self.path.display());
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(describe)?;

        let staged = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(overrides).unwrap_or_default();
        let mut file = std::fs::File::create(&staged).map_err(describe)?;
        file.write_all(&bytes).map_err(describe)?;
        file.sync_all().map_err(describe)?;
        std::fs::rename(&staged, &self.path).map_err(describe)?;
        if let Ok(folder) = std::fs::File::open(dir) {
            let _ = folder.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(file_active: bool, missing_since_ms: Option<u64>) -> Override {
        Override {
            active: !file_active,
            file_active,
            missing_since_ms,
        }
    }

    #[test]
    fn overrides_follow_the_files_flag_and_expire_once_missing_for_long() {
        let now = 1_000 + MISSING_GRACE_MS + 1;
        let overrides = BTreeMap::from([
            ("recent".to_string(), kept(false, Some(now - 5))),
            ("away".to_string(), kept(true, None)),
            ("long-gone".to_string(), kept(true, Some(1_000))),
        ]);
        let workflows: Vec<Arc<Workflow>> = Vec::new();

        let updated = updated_overrides(&overrides, &workflows, now);
        assert_eq!(updated["away"].missing_since_ms, Some(now));
        assert!(!updated.contains_key("long-gone"));
        assert_eq!(
            updated["recent"].missing_since_ms,
            Some(now - 5),
            "missing since then, still within the grace"
        );
    }
}
