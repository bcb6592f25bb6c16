//! Named backends: each is a Pingora `LoadBalancer` spreading requests round-robin over its
//! addresses, with an active health check run as a Pingora background service.
//!
//! An address whose request fails at the connection level is suspended at once, and comes
//! back only when its health check passes again; the health check alone would leave a dead
//! address in rotation until its next round.

use crate::config::{BackendAddress, BackendSettings};
use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, LoadBalancer};
use pingora::services::background::{background_service, GenBackgroundService};
use pingora::upstreams::peer::HttpPeer;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

/// Addresses taken out of rotation after a failed request.
type Suspended = Arc<RwLock<HashSet<SocketAddr>>>;

/// One backend service.
pub struct BackendPool {
    pub settings: BackendSettings,
    balancer: Arc<LoadBalancer<RoundRobin>>,
    suspended: Suspended,
    addresses: HashMap<SocketAddr, BackendAddress>,
}

/// An address chosen for one request.
pub struct Selected {
    pub address: SocketAddr,
    pub peer: HttpPeer,
    /// Value for the `Host` header.
    pub authority: String,
}

impl BackendPool {
    /// Builds the pool and the background service that runs its health checks.
    pub fn new(settings: BackendSettings) -> std::io::Result<(Arc<Self>, HealthService)> {
        let sockets: Vec<SocketAddr> = settings.addresses.iter().map(|a| a.socket).collect();
        let mut balancer = LoadBalancer::<RoundRobin>::try_from_iter(sockets.iter().copied())?;

        let suspended = Suspended::default();
        balancer.set_health_check(Box::new(ReinstatingCheck {
            inner: health_check(&settings),
            suspended: Arc::clone(&suspended),
        }));
        balancer.health_check_frequency = Some(settings.health_interval);
        balancer.parallel_health_check = true;

        let service = background_service(&format!("health check {}", settings.name), balancer);
        let addresses = settings
            .addresses
            .iter()
            .map(|a| (a.socket, a.clone()))
            .collect();
        let pool = Self {
            balancer: service.task(),
            settings,
            suspended,
            addresses,
        };
        Ok((Arc::new(pool), service))
    }

    /// The next healthy, unsuspended address, round-robin; `None` when there is none.
    pub fn select(&self) -> Option<Selected> {
        let suspended = self.suspended.read().ok()?;
        let backend = self.balancer.select_with(b"", 256, |backend, healthy| {
            healthy && socket_of(backend).is_some_and(|s| !suspended.contains(&s))
        })?;
        drop(suspended);

        let address = socket_of(&backend)?;
        let target = self.addresses.get(&address)?;
        Some(Selected {
            address,
            peer: self.peer(target),
            authority: target.authority.clone(),
        })
    }

    /// Takes an address out of rotation until its health check passes again.
    pub fn suspend(&self, address: SocketAddr) {
        if let Ok(mut suspended) = self.suspended.write() {
            if suspended.insert(address) {
                tracing::warn!(backend.name = %self.settings.name, backend.address = %address, "backend address suspended");
            }
        }
    }

    fn peer(&self, target: &BackendAddress) -> HttpPeer {
        let sni = if target.tls {
            target.host.clone()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(target.socket, target.tls, sni);
        let options = &mut peer.options;
        options.connection_timeout = Some(self.settings.connect_timeout);
        options.total_connection_timeout = Some(self.settings.connect_timeout);
        options.read_timeout = Some(self.settings.read_timeout);
        options.write_timeout = Some(self.settings.read_timeout);
        options.idle_timeout = Some(std::time::Duration::from_secs(60));
        peer
    }
}

fn socket_of(backend: &Backend) -> Option<SocketAddr> {
    backend.addr.as_inet().copied()
}

/// The health check of a backend: an HTTP GET of its path, or else a TCP connect.
fn health_check(settings: &BackendSettings) -> Box<dyn HealthCheck + Send + Sync> {
    let first = &settings.addresses[0];
    match &settings.health_path {
        Some(path) => {
            // The name given here is also the TLS server name, so it must not carry the port.
            let mut check = HttpHealthCheck::new(&first.host, first.tls);
            if let Ok(mut request) = RequestHeader::build("GET", path.as_bytes(), None) {
                let _ = request.insert_header("host", first.authority.as_str());
                check.req = request;
            }
            Box::new(check)
        }
        None => {
            if first.tls {
                TcpHealthCheck::new_tls(&first.host)
            } else {
                TcpHealthCheck::new()
            }
        }
    }
}

/// A health check that also lifts the suspension of an address once it passes.
struct ReinstatingCheck {
    inner: Box<dyn HealthCheck + Send + Sync>,
    suspended: Suspended,
}

#[async_trait]
impl HealthCheck for ReinstatingCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        self.inner.check(target).await?;
        if let (Some(address), Ok(mut suspended)) = (socket_of(target), self.suspended.write()) {
            if suspended.remove(&address) {
                tracing::info!(backend.address = %address, "backend address back in rotation");
            }
        }
        Ok(())
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        tracing::info!(backend.address = %target.addr, backend.healthy = healthy, "backend health changed");
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner.health_threshold(success)
    }
}

/// The background service running one backend's health checks.
pub type HealthService = GenBackgroundService<LoadBalancer<RoundRobin>>;

/// Every configured backend, by name.
#[derive(Default)]
pub struct Backends {
    pools: HashMap<String, Arc<BackendPool>>,
}

impl Backends {
    /// Builds every pool; returns the health check services to add to the server.
    pub fn new(settings: &[BackendSettings]) -> std::io::Result<(Self, Vec<HealthService>)> {
        let mut pools = HashMap::new();
        let mut services = Vec::new();
        for backend in settings {
            let (pool, service) = BackendPool::new(backend.clone())?;
            pools.insert(backend.name.clone(), pool);
            services.push(service);
        }
        Ok((Self { pools }, services))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<BackendPool>> {
        self.pools.get(name)
    }
}
