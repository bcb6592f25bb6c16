//! Named backends: each is a Pingora `LoadBalancer` spreading requests round-robin over its
//! addresses, with an active health check run as a task on the gateway's control runtime.
//! The task lives as long as its pool: a reload that replaces a backend ends the old checks,
//! and one that leaves a backend unchanged keeps its pool, health and connections as they are.
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
use pingora::upstreams::peer::HttpPeer;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock, Weak};
use tokio::runtime::Handle;

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
    /// Builds the pool and starts its health checks on `runtime`.
    pub fn new(settings: BackendSettings, runtime: &Handle) -> std::io::Result<Arc<Self>> {
        let sockets: Vec<SocketAddr> = settings.addresses.iter().map(|a| a.socket).collect();
        let mut balancer = LoadBalancer::<RoundRobin>::try_from_iter(sockets.iter().copied())?;

        let suspended = Suspended::default();
        balancer.set_health_check(Box::new(ReinstatingCheck {
            inner: health_check(&settings),
            suspended: Arc::clone(&suspended),
        }));

        let addresses = settings
            .addresses
            .iter()
            .map(|a| (a.socket, a.clone()))
            .collect();
        let pool = Arc::new(Self {
            balancer: Arc::new(balancer),
            settings,
            suspended,
            addresses,
        });
        runtime.spawn(check_health(Arc::downgrade(&pool)));
        Ok(pool)
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

    /// Each address, and whether it takes requests now: its health check passes and it is
    /// not suspended.
    pub fn address_health(&self) -> Vec<(SocketAddr, bool)> {
        let backends = self.balancer.backends();
        let suspended = self.suspended.read().map(|s| s.clone()).unwrap_or_default();
        backends
            .get_backend()
            .iter()
            .filter_map(|backend| {
                let address = socket_of(backend)?;
                Some((
                    address,
                    backends.ready(backend) && !suspended.contains(&address),
                ))
            })
            .collect()
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

/// Checks every address of a pool, then again after each interval, until the pool is gone.
async fn check_health(pool: Weak<BackendPool>) {
    loop {
        let Some(live) = pool.upgrade() else {
            return;
        };
        live.balancer.backends().run_health_check(true).await;
        let interval = live.settings.health_interval;
        drop(live);
        tokio::time::sleep(interval).await;
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

/// Every configured backend, by name.
#[derive(Default)]
pub struct Backends {
    pools: HashMap<String, Arc<BackendPool>>,
}

impl Backends {
    /// Builds every pool, starting health checks on `runtime`. A backend whose settings are
    /// the same as in `previous` keeps its pool.
    pub fn new(
        settings: &[BackendSettings],
        previous: Option<&Backends>,
        runtime: &Handle,
    ) -> std::io::Result<Self> {
        let mut pools = HashMap::new();
        for backend in settings {
            let kept = previous
                .and_then(|previous| previous.get(&backend.name))
                .filter(|pool| pool.settings == *backend);
            let pool = match kept {
                Some(pool) => Arc::clone(pool),
                None => BackendPool::new(backend.clone(), runtime)?,
            };
            pools.insert(backend.name.clone(), pool);
        }
        Ok(Self { pools })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<BackendPool>> {
        self.pools.get(name)
    }

    /// Every pool with its name, in name order.
    pub fn by_name(&self) -> Vec<(&str, &Arc<BackendPool>)> {
        let mut pools: Vec<_> = self.pools.iter().map(|(n, p)| (n.as_str(), p)).collect();
        pools.sort_by_key(|(name, _)| *name);
        pools
    }
}
