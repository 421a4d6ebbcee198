//! The EPMD server: listening sockets, the accept loop, the connection
//! limit and its eviction of idle connections, and shutdown.

mod connection;
mod dispatch;
mod listen;
mod reader;

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::os::fd::AsRawFd;

use dashmap::DashMap;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tracing::{debug, error, warn};

pub use connection::{After, Later, Now, serve_later, serve_now};
pub use dispatch::{Action, Peer, dispatch};
pub use listen::{BindError, bind_all, from_systemd};
pub use reader::{FrameReader, MAX_FRAME, Progress, Reject};

use crate::cli::PortRange;
use crate::metrics::Metrics;
use crate::registry::{ConnId, DEBUG_MAX_UNREG, MAX_UNREG, Registry};

/// What a local KILL_REQ does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillPolicy {
    /// As epmd: `OK` and exit when no node is registered or checks are relaxed.
    Epmd,
    /// Sidecar: answer as epmd would (`NO` while nodes are registered
    /// unless relaxed, else `OK`) but keep running. `ejabberdctl stopped`
    /// runs `epmd -kill` once no node is left and fails unless it reads
    /// `OK`; the sidecar's life belongs to Kubernetes, which would restart
    /// an exited sidecar at once anyway.
    Survive,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The port NAMES and DUMP report (the one clients reach us on).
    pub port: u16,
    /// epmd's `-packet_timeout`, whole seconds (see connection::idle_limit).
    pub packet_timeout: Duration,
    pub delay_accept: Duration,
    pub delay_write: Duration,
    pub relaxed: bool,
    pub kill: KillPolicy,
    pub dist_range: Option<PortRange>,
    pub max_connections: usize,
    pub debug: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: crate::cli::DEFAULT_PORT,
            packet_timeout: Duration::from_secs(60),
            delay_accept: Duration::ZERO,
            delay_write: Duration::ZERO,
            relaxed: false,
            kill: KillPolicy::Epmd,
            dist_range: None,
            max_connections: 65_536,
            debug: false,
        }
    }
}

/// State every connection task sees.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    /// Connections still waiting for their request, oldest first: the ones
    /// evicted when the limit is reached, so a flood of idle or half-sent
    /// connections can never lock out registrations and lookups.
    idle: Mutex<BTreeMap<ConnId, Arc<Notify>>>,
    /// Registration connections, to close one on STOP_REQ.
    registered: DashMap<ConnId, Arc<Notify>>,
    /// Connection ids increase with accept order across all listeners.
    next_conn: AtomicU64,
}

impl Shared {
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Self {
        let max_unreg = if config.debug {
            DEBUG_MAX_UNREG
        } else {
            MAX_UNREG
        };
        Shared {
            config,
            registry: Registry::new(max_unreg),
            metrics,
            idle: Mutex::new(BTreeMap::new()),
            registered: DashMap::new(),
            next_conn: AtomicU64::new(1),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, BTreeMap<ConnId, Arc<Notify>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn watch_idle(&self, conn: ConnId) -> Arc<Notify> {
        let n = Arc::new(Notify::new());
        self.idle().insert(conn, n.clone());
        n
    }

    fn forget_idle(&self, conn: ConnId) {
        self.idle().remove(&conn);
    }

    /// Close the oldest connection that has not sent its request yet.
    fn evict_oldest_idle(&self) -> bool {
        match self.idle().pop_first() {
            Some((_, n)) => {
                n.notify_one();
                true
            }
            None => false,
        }
    }

    fn watch_registered(&self, conn: ConnId) -> Arc<Notify> {
        let n = Arc::new(Notify::new());
        self.registered.insert(conn, n.clone());
        n
    }

    fn forget_registered(&self, conn: ConnId) {
        self.registered.remove(&conn);
    }

    /// Close the registration connection `conn` (STOP_REQ).
    fn kick(&self, conn: ConnId) {
        if let Some(n) = self.registered.get(&conn) {
            n.notify_one();
        }
    }
}

/// IPv4-mapped IPv6 addresses compared as the IPv4 address they carry.
fn canon(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// A loopback peer is always local (the first half of [`is_local_peer`]).
pub fn is_loopback_peer(peer: SocketAddr) -> bool {
    canon(peer.ip()).is_loopback()
}

/// epmd's rule for commands only local clients may send: a loopback peer,
/// or a peer whose address is the socket's own.
pub fn is_local_peer(peer: SocketAddr, local: SocketAddr) -> bool {
    is_loopback_peer(peer) || canon(peer.ip()) == canon(local.ip())
}

/// Serve on `listeners` until `shutdown` flips to true or a KILL_REQ is
/// accepted. Returns when the daemon should exit.
pub async fn serve(
    listeners: Vec<TcpListener>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(shared.config.max_connections));
    let (exit_tx, mut exit_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for l in listeners {
        tasks.spawn(accept_loop(
            l,
            shared.clone(),
            permits.clone(),
            exit_tx.clone(),
        ));
    }
    tokio::select! {
        _ = shutdown.wait_for(|s| *s) => debug!("shutdown requested"),
        _ = exit_rx.wait_for(|s| *s) => debug!("KILL_REQ accepted"),
    }
    tasks.abort_all();
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    exit: watch::Sender<bool>,
) {
    // Accept with accept4() ourselves, so a connection is not registered
    // with the event loop unless it has to wait (see connection::serve_now).
    let watched = listener.into_std().and_then(|l| {
        // SAFETY: the std listener owns its descriptor and keeps it open,
        // unchanged, for as long as the AsyncFd owns the listener.
        unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }.map_err(io::Error::from)
    });
    let listener = match watched {
        Ok(l) => l,
        Err(e) => {
            error!(error = %e, "cannot watch a listening socket");
            return;
        }
    };
    let mut backoff = Duration::from_millis(5);
    loop {
        if shared.config.delay_accept > Duration::ZERO {
            tokio::time::sleep(shared.config.delay_accept).await;
        }
        let accepted = match listener.readable().await {
            Ok(mut ready) => match ready.try_io(|l| listen::accept_nonblocking(l.get_ref())) {
                Ok(r) => r,
                Err(_would_block) => continue,
            },
            Err(e) => Err(e),
        };
        let (stream, peer_addr) = match accepted {
            Ok(s) => {
                backoff = Duration::from_millis(5);
                s
            }
            Err(e) => {
                shared.metrics.accept_errors.inc();
                if is_connection_error(&e) {
                    continue;
                }
                // Out of descriptors (EMFILE/ENFILE) or memory: wait for
                // connections to close rather than spin or die.
                error!(error = %e, retry_in = ?backoff, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        shared.metrics.connections_accepted.inc();
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // At the limit: make room by closing the oldest connection
                // that has not sent its request, then wait briefly for it.
                if !shared.evict_oldest_idle() {
                    warn!(peer = %peer_addr, "connection limit reached; refusing connection");
                    continue;
                }
                match tokio::time::timeout(Duration::from_secs(1), permits.clone().acquire_owned())
                    .await
                {
                    Ok(Ok(p)) => p,
                    _ => {
                        warn!(peer = %peer_addr, "connection limit reached; refusing connection");
                        continue;
                    }
                }
            }
        };
        let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        // A loopback peer is local whatever the socket's own address, so
        // the getsockname() is only paid for the rare non-loopback client.
        let local = is_loopback_peer(peer_addr)
            || stream
                .local_addr()
                .map(|l| is_local_peer(peer_addr, l))
                .unwrap_or(false);
        let peer = Peer {
            conn,
            fd: stream.as_raw_fd(),
            local,
        };
        shared.metrics.connections_open.inc();
        let later = match connection::serve_now(stream, peer, &shared) {
            Now::Done(after) => {
                closed(&shared, &exit, after);
                continue;
            }
            Now::Later(later) => later,
        };
        let shared = shared.clone();
        let exit = exit.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let after = connection::serve_later(later, peer, shared.clone()).await;
            closed(&shared, &exit, after);
        });
    }
}

/// Bookkeeping when a connection ends, whichever path served it.
fn closed(shared: &Shared, exit: &watch::Sender<bool>, after: After) {
    shared.metrics.connections_open.dec();
    if after == After::Exit {
        let _ = exit.send(true);
    }
}

/// Errors that concern one pending connection, not the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_peer_rule() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(is_local_peer(a("127.0.0.1:5"), a("127.0.0.1:4369")));
        assert!(is_local_peer(a("127.9.9.9:5"), a("10.0.0.1:4369")));
        assert!(is_local_peer(a("[::1]:5"), a("[::1]:4369")));
        assert!(is_local_peer(a("10.0.0.1:5"), a("10.0.0.1:4369")));
        assert!(is_local_peer(a("[::ffff:127.0.0.1]:5"), a("[::1]:4369")));
        assert!(!is_local_peer(a("10.0.0.2:5"), a("10.0.0.1:4369")));
        assert!(is_loopback_peer(a("[::ffff:127.0.0.2]:5")));
        assert!(!is_loopback_peer(a("10.0.0.1:5")));
    }
}
