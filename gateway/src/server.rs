//! Wiring a validated configuration into a running Pingora server: the shared gateway state,
//! the webhook service, the admin service and the background run pool.

use crate::admin::AdminApi;
use crate::config::Config;
use crate::edge::Edge;
use crate::forward::backends::{Backends, HealthService};
use crate::routing::{Router, UrlSecret};
use crate::runs::RunPool;
use pingora::proxy::http_proxy_service_with_name;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;
use std::net::TcpListener;
use std::sync::Arc;

/// Everything a request needs, shared by every service.
pub struct GatewayState {
    pub config: Config,
    pub router: Router,
    pub backends: Arc<Backends>,
    pub runs: RunPool,
}

impl GatewayState {
    /// Resolves the URL secret, builds the router and the backend pools, and starts the run
    /// pool. Returns the backends' health check services, which the server must run.
    pub fn new(config: Config) -> Result<(Self, Vec<HealthService>), String> {
        let secret = UrlSecret::resolve(config.url_secret.as_deref(), &config.state_dir)
            .map_err(|error| format!("url secret in {}: {error}", config.state_dir.display()))?;
        let router = Router::new(&config.workflows, &secret);

        let (backends, health_services) = Backends::new(&config.backends)
            .map_err(|error| format!("cannot set up backends: {error}"))?;
        let backends = Arc::new(backends);
        let runs = RunPool::start(
            &config.runs,
            Arc::clone(&config.engine),
            Arc::clone(&backends),
        )
        .map_err(|error| format!("cannot start the run pool: {error}"))?;
        let state = Self {
            config,
            router,
            backends,
            runs,
        };
        Ok((state, health_services))
    }
}

/// Runs the gateway until the process is stopped. Returns only on a start-up failure.
pub fn run(config: Config) -> Result<(), String> {
    // Pingora panics inside its service thread when a bind fails and keeps the process alive
    // without the listener; checking first turns that into a clean start-up error.
    ensure_bindable(&config.server.listen)?;
    if let Some(admin) = &config.admin {
        ensure_bindable(&admin.listen)?;
    }

    let (state, health_services) = GatewayState::new(config)?;
    let state = Arc::new(state);
    let mut server = Server::new_with_opt_and_conf(None, server_conf(&state.config));
    server.bootstrap();
    for service in health_services {
        server.add_service(service);
    }

    let config = &state.config;
    let mut webhooks = http_proxy_service_with_name(
        &server.configuration,
        Edge::new(Arc::clone(&state)),
        "webhooks",
    );
    webhooks.add_tcp(&config.server.listen);
    server.add_service(webhooks);

    match &config.admin {
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

    tracing::info!(
        server.listen = %config.server.listen,
        workflows = config.workflows.len(),
        "gateway started"
    );
    server.run_forever()
}

fn server_conf(config: &Config) -> ServerConf {
    let state_dir = config.state_dir.display();
    ServerConf {
        threads: config.server.threads,
        // Accepted runs are held in memory, so a long drain buys nothing; keep stops quick.
        grace_period_seconds: Some(1),
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
