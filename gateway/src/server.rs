//! Wiring a validated configuration into a running Pingora server: the shared gateway state,
//! the webhook service, the admin service, the run pool and the configuration watcher.
//!
//! Requests read the configuration through a [`Snapshot`] taken when they start. A reload
//! builds a whole new snapshot and swaps it in at once, so a request in flight finishes on
//! the configuration it started with and the next one sees the new configuration complete.

use crate::admin::AdminApi;
use crate::config::{AdminSettings, Config, IdempotencySettings, RunSettings};
use crate::edge::Edge;
use crate::forward::backends::Backends;
use crate::journal::{Journal, RunJournal};
use crate::limits::KeyGauges;
use crate::registry::Registry;
use crate::reload::{self, ReloadReport};
use crate::routing::{Router, UrlSecret};
use crate::runs::RunPool;
use crate::shared_state::{Embedded, SharedState};
use arc_swap::ArcSwap;
use pingora::proxy::http_proxy_service_with_name;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// One loaded configuration and everything built from it.
pub struct Snapshot {
    /// 1 for the configuration the gateway started with, then one more per applied reload.
    pub version: u64,
    pub loaded_at: SystemTime,
    pub config: Config,
    pub router: Router,
    pub backends: Arc<Backends>,
    /// What went wrong without stopping the load (an activation that could not be saved).
    pub warnings: Vec<String>,
}

/// Settings that only take effect at start; a reload that changes them is reported as
/// needing a restart, and the running values stay.
#[derive(Clone)]
pub struct StartupSettings {
    pub listen: String,
    pub threads: usize,
    pub admin: Option<AdminSettings>,
    pub state_dir: PathBuf,
    pub url_secret: Option<String>,
    pub runs: RunSettings,
    pub idempotency: IdempotencySettings,
}

impl StartupSettings {
    fn of(config: &Config) -> Self {
        Self {
            listen: config.server.listen.clone(),
            threads: config.server.threads,
            admin: config.admin.clone(),
            state_dir: config.state_dir.clone(),
            url_secret: config.url_secret.clone(),
            runs: config.runs.clone(),
            idempotency: config.idempotency,
        }
    }
}

/// Everything a request needs, shared by every service.
pub struct GatewayState {
    current: ArcSwap<Snapshot>,
    pub startup: StartupSettings,
    pub secret: UrlSecret,
    pub registry: Registry,
    pub runs: RunPool,
    /// Runs health checks and the configuration watcher's reloads.
    pub control: tokio::runtime::Runtime,
    /// Held while a reload runs, so two never interleave.
    pub reloading: Mutex<()>,
    /// The outcome of the last reload, for the admin API.
    pub last_reload: Mutex<Option<ReloadReport>>,
    /// The watched files as the last reload (of any trigger) found them, so the watcher does
    /// not reload again what an explicit reload already read.
    pub watched: Mutex<Vec<reload::Stamp>>,
    /// Idempotency keys and rate-limit buckets.
    pub shared: Arc<dyn SharedState>,
    /// Requests in progress per API key, for their concurrency limits.
    pub key_gauges: KeyGauges,
    /// Requests to a URL that is no workflow's (answered 404).
    pub unrouted_requests: std::sync::atomic::AtomicU64,
    /// Held for the life of the process: one gateway per state folder.
    _state_lock: std::fs::File,
}

impl GatewayState {
    /// Resolves the URL secret, reads the saved activations, builds the first snapshot and
    /// starts the run pool.
    pub fn new(config: Config) -> Result<Arc<Self>, String> {
        let state_lock = lock_state_dir(&config.state_dir)?;
        let secret = UrlSecret::resolve(config.url_secret.as_deref(), &config.state_dir)
            .map_err(|error| format!("url secret in {}: {error}", config.state_dir.display()))?;
        let registry = Registry::open(&config.state_dir, config.samples)?;
        let control = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("control")
            .enable_all()
            .build()
            .map_err(|error| format!("cannot start the control runtime: {error}"))?;
        let journal_path = config.state_dir.join(JOURNAL_FILE);
        let journal_capacity = (config.runs.queue_capacity * 8).max(1024);
        let journal = Journal::open(&journal_path, journal_capacity)?;
        let shared: Arc<dyn SharedState> =
            Arc::new(Embedded::new(journal, config.idempotency.max_bytes));
        let runs = RunPool::start(&config.runs, Arc::clone(&shared))
            .map_err(|error| format!("cannot start the run pool: {error}"))?;

        let startup = StartupSettings::of(&config);
        let snapshot = build_snapshot(config, 1, None, &secret, &registry, control.handle())?;
        resume_unfinished_runs(&runs, shared.journal(), &snapshot)
            .map_err(|error| format!("{}: {error}", journal_path.display()))?;
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(snapshot),
            startup,
            secret,
            registry,
            runs,
            control,
            reloading: Mutex::new(()),
            last_reload: Mutex::new(None),
            watched: Mutex::new(Vec::new()),
            shared,
            key_gauges: KeyGauges::default(),
            unrouted_requests: Default::default(),
            _state_lock: state_lock,
        }))
    }

    /// The configuration in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Puts a new snapshot in force; requests already running keep theirs.
    pub(crate) fn install(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }
}

/// The run journal, in the state folder.
pub const JOURNAL_FILE: &str = "runs.db";

/// Takes the state folder for this process. Two gateways on one folder would each resume and
/// deliver the other's runs; the lock goes with the process, however it ends.
fn lock_state_dir(dir: &std::path::Path) -> Result<std::fs::File, String> {
    let path = dir.join("gateway.lock");
    std::fs::create_dir_all(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|error| format!("{}: {error}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "the state folder {} is in use by another running gateway",
            dir.display()
        )),
        Err(std::fs::TryLockError::Error(error)) => Err(format!("{}: {error}", path.display())),
    }
}

/// Queues again the runs a previous process accepted and did not finish.
fn resume_unfinished_runs(
    runs: &RunPool,
    journal: &dyn RunJournal,
    snapshot: &Snapshot,
) -> Result<(), String> {
    let interrupted = journal.close_interrupted_attempts()?;
    let unfinished = journal.unfinished()?;
    if !unfinished.is_empty() {
        tracing::info!(
            runs.resumed = unfinished.len(),
            runs.interrupted_attempts = interrupted,
            "resuming runs accepted before the last stop"
        );
    }
    runs.resume(&snapshot.config, &snapshot.backends, unfinished);
    Ok(())
}

/// Trims the journal to `runs.max_records` ended runs no older than `runs.record_ttl_seconds`,
/// at start and then every `runs.retention_interval_ms`, for as long as the gateway runs. On a
/// thread of its own at a low priority: a pass reads the whole run table, and under load it
/// must take its time rather than the request threads'.
fn keep_journal_bounded(state: &Arc<GatewayState>) -> Result<(), String> {
    let weak = Arc::downgrade(state);
    let settings = state.startup.runs.clone();
    let retention = move || {
        crate::background::mark_as_maintenance();
        while let Some(state) = weak.upgrade() {
            let started = Instant::now();
            let journal = state.shared.journal();
            let trimmed = journal
                .purge_older_than(settings.record_ttl, None)
                .and_then(|aged| Ok(aged + journal.trim_to(settings.max_records)?));
            drop(state);
            let deleted = match trimmed {
                Ok(0) => 0,
                Ok(count) => {
                    tracing::info!(runs.deleted = count, "journal trimmed");
                    count
                }
                Err(error) => {
                    tracing::warn!(journal.error = %error, "journal trim failed");
                    0
                }
            };

            // A pass that found nothing to delete on a table so large that reading it
            // outlasts the interval would be followed by another at once, and another: such
            // a pass is followed by a pause of nine times its length at least. A pass that
            // deleted is not, or the runs to delete would pile up faster than it goes.
            let pause = if deleted == 0 {
                settings.retention_interval.max(started.elapsed() * 9)
            } else {
                settings.retention_interval
            };
            std::thread::sleep(pause);
        }
    };
    std::thread::Builder::new()
        .name("journal-retention".into())
        .spawn(retention)
        .map(drop)
        .map_err(|error| format!("cannot start the journal's retention: {error}"))
}

/// Builds the router and backends for `config`, reusing unchanged backend pools of
/// `previous`.
pub(crate) fn build_snapshot(
    config: Config,
    version: u64,
    previous: Option<&Snapshot>,
    secret: &UrlSecret,
    registry: &Registry,
    runtime: &tokio::runtime::Handle,
) -> Result<Snapshot, String> {
    let backends = Backends::new(
        &config.backends,
        previous.map(|snapshot| snapshot.backends.as_ref()),
        runtime,
    )
    .map_err(|error| format!("cannot set up backends: {error}"))?;
    let synced = registry.sync(&config.workflows, config.samples);
    let router = Router::new(&config.workflows, secret, &synced.live);
    Ok(Snapshot {
        version,
        loaded_at: SystemTime::now(),
        config,
        router,
        backends: Arc::new(backends),
        warnings: synced.warning.into_iter().collect(),
    })
}

/// Runs the gateway until the process is stopped. Returns only on a start-up failure.
pub fn run(config: Config) -> Result<(), String> {
    // Pingora panics inside its service thread when a bind fails and keeps the process alive
    // without the listener; checking first turns that into a clean start-up error.
    ensure_bindable(&config.server.listen)?;
    if let Some(admin) = &config.admin {
        ensure_bindable(&admin.listen)?;
    }

    exit_when_a_listener_fails();

    let conf = server_conf(&config);
    let state = GatewayState::new(config)?;
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let startup = &state.startup;
    let mut webhooks = http_proxy_service_with_name(
        &server.configuration,
        Edge::new(Arc::clone(&state)),
        "webhooks",
    );
    webhooks.add_tcp(&startup.listen);
    server.add_service(webhooks);

    match &startup.admin {
        Some(admin) => {
            let api = AdminApi::new(Arc::clone(&state), admin.token.clone());
            let mut service = Service::new("admin".to_string(), api);
            service.threads = Some(1);
            service.add_tcp(&admin.listen);
            server.add_service(service);
            tracing::info!(admin.listen = %admin.listen, "admin api enabled");
        }
        None => tracing::info!("admin api disabled: no admin token configured"),
    }

    server.add_service(background_service(
        "run-drain",
        RunDrain {
            state: Arc::clone(&state),
        },
    ));
    reload::watch(&state);
    keep_journal_bounded(&state)?;
    tracing::info!(
        server.listen = %startup.listen,
        workflows = state.snapshot().config.workflows.len(),
        "gateway started"
    );
    let signals = SignalsThenRuns {
        state: Arc::clone(&state),
    };
    server.run(RunArgs {
        shutdown_signal: Box::new(signals),
    });
    std::process::exit(0)
}

/// Pingora's stop signals (SIGTERM graceful, SIGINT at once, SIGQUIT for an upgrade), with one
/// addition: the run pool opens only once they are handled. Pingora listens for them only
/// after every service has started; a SIGTERM before that ends the process on the spot, which
/// must not happen to a gateway already delivering the runs it resumed.
struct SignalsThenRuns {
    state: Arc<GatewayState>,
}

#[async_trait::async_trait]
impl ShutdownSignalWatch for SignalsThenRuns {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let listening = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        let (Ok(mut upgrade), Ok(mut terminate), Ok(mut interrupt)) = listening else {
            // Runs must still run; the process then stops the hard way, like a crash.
            tracing::error!("cannot listen for stop signals; a stop will not drain the runs");
            self.state.runs.open();
            return std::future::pending().await;
        };
        self.state.runs.open();
        tokio::select! {
            _ = upgrade.recv() => ShutdownSignal::GracefulUpgrade,
            _ = terminate.recv() => ShutdownSignal::GracefulTerminate,
            _ = interrupt.recv() => ShutdownSignal::FastShutdown,
        }
    }
}

/// Pingora binds each listener inside its service's thread and, when that fails, panics there
/// while the process runs on without the listener. A port taken by someone else between
/// [`ensure_bindable`] and that bind would leave a gateway that accepts nothing; this makes
/// it exit instead, saying why.
fn exit_when_a_listener_fails() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("Failed to build listeners") {
            eprintln!("error: cannot listen: {message}");
            std::process::exit(1);
        }
        report(info);
    }));
}

/// On a stop (SIGTERM), lets the run pool finish what it is doing and the journal write out
/// what it holds, inside Pingora's grace period, so that only a crash repeats a delivery.
struct RunDrain {
    state: Arc<GatewayState>,
}

#[async_trait::async_trait]
impl BackgroundService for RunDrain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.changed().await.is_err() {
            return;
        }
        self.state.runs.drain(DRAIN_WITHIN).await;
    }
}

/// How long a stop waits for scripts and deliveries under way: less than the grace period
/// ([`GRACE_PERIOD_SECONDS`]), so the journal is settled before the process ends.
const DRAIN_WITHIN: std::time::Duration = std::time::Duration::from_millis(800);

/// How long Pingora keeps running after a SIGTERM before it stops its runtimes. Accepted runs
/// are in the journal and resume at the next start, so stops are kept quick.
const GRACE_PERIOD_SECONDS: u64 = 1;

fn server_conf(config: &Config) -> ServerConf {
    let state_dir = config.state_dir.display();
    ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(GRACE_PERIOD_SECONDS),
        graceful_shutdown_timeout_seconds: Some(5),
        pid_file: format!("{state_dir}/gateway.pid"),
        upgrade_sock: format!("{state_dir}/upgrade.sock"),
        ..ServerConf::default()
    }
}

fn ensure_bindable(address: &str) -> Result<(), String> {
    TcpListener::bind(address)
        .map(drop)
        .map_err(|error| format!("cannot listen on {address}: {error}"))
}
