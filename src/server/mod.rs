//! The EPMD server: listening sockets, the accept loop, the connection
//! limit and its eviction of idle connections, and shutdown.

mod config;
mod connection;
mod dispatch;
mod held;
mod listen;
mod reader;
mod refusal;

use std::cell::{Cell, RefCell, RefMut};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use socket2::Socket;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::LocalSet;
use tracing::{debug, error, info, warn};

pub use config::{Config, DEFAULT_PORT, KillPolicy, PortRange};
pub use connection::{After, idle_limit};
pub use dispatch::{Action, Caller, dispatch};
pub use listen::{BindError, bind_all, from_systemd};
pub use reader::{FrameReader, MAX_FRAME, Progress, Reject};
pub use refusal::Program;

use crate::metrics::Metrics;
use crate::registry::{ConnId, DEBUG_MAX_UNREG, Gone, MAX_UNREG, Registry};
use connection::Now;

/// How long shutdown waits for connections still being answered (a reply
/// the client is slow to take, a `-delay_write` pause) before dropping them.
pub const DRAIN: Duration = Duration::from_secs(2);

/// State every connection task sees. The server runs on one thread (see
/// [`serve`]), so plain data in a RefCell: no borrow is ever held across an
/// await.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    state: RefCell<State>,
    /// Connection ids increase with accept order across all listeners.
    next_conn: Cell<ConnId>,
    /// Programs (refusal::Program bits) whose refusal has been logged once.
    refusals_logged: Cell<u8>,
    /// Set once shutdown starts; `stop` wakes everyone waiting on it.
    stopping: Cell<bool>,
    stop: Notify,
    /// The read buffer of whichever connection is reading (one at a time on
    /// this thread): zeroed once, not 3 KiB per read.
    scratch: RefCell<Box<[u8; MAX_FRAME]>>,
}

/// The registry and the handles that close connections, changed together.
#[derive(Debug)]
pub struct State {
    pub registry: Registry,
    /// Connections still waiting for their request, oldest first: the ones
    /// evicted when the limit is reached, so a flood of idle or half-sent
    /// connections can never lock out registrations and lookups.
    idle: BTreeMap<ConnId, Rc<Notify>>,
    /// Registrations' connections, from the moment the node registers
    /// (not when its reply is out), so STOP_REQ can always close them.
    held: held::Held,
}

impl State {
    /// Register a node; its connection is held once the reply is out.
    pub fn register(
        &mut self,
        info: crate::codec::NodeInfo,
        conn: ConnId,
        fd: i32,
    ) -> Result<u32, crate::registry::RegisterError> {
        let creation = self.registry.register(info, conn, fd)?;
        self.held.registered(conn);
        Ok(creation)
    }

    /// STOP_REQ: forget `name`. Its connection, if already held, is
    /// returned for the caller to close (outside this borrow); one still
    /// sending its reply is closed the moment it would be held.
    fn stop(&mut self, name: &str) -> Option<(Gone, Option<held::Holder>)> {
        let node = self.registry.unregister_name(name)?;
        let holder = self.held.stop(node.conn);
        Some((node, holder))
    }

    /// The registration made on `conn` ends (its socket closed or stopped).
    fn release(&mut self, name: &str, conn: ConnId) -> Option<Gone> {
        self.held.forget(conn);
        self.registry.unregister(name, conn)
    }
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
            metrics,
            state: RefCell::new(State {
                registry: Registry::new(max_unreg),
                idle: BTreeMap::new(),
                held: held::Held::default(),
            }),
            next_conn: Cell::new(1),
            refusals_logged: Cell::new(0),
            stopping: Cell::new(false),
            stop: Notify::new(),
            scratch: RefCell::new(Box::new([0; MAX_FRAME])),
        }
    }

    /// The registry and connection handles. Never hold across an await.
    pub fn state(&self) -> RefMut<'_, State> {
        self.state.borrow_mut()
    }

    fn scratch(&self) -> RefMut<'_, Box<[u8; MAX_FRAME]>> {
        self.scratch.borrow_mut()
    }

    fn next_conn(&self) -> ConnId {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        id
    }

    fn watch_idle(&self, conn: ConnId) -> Rc<Notify> {
        let n = Rc::new(Notify::new());
        self.state().idle.insert(conn, n.clone());
        n
    }

    fn forget_idle(&self, conn: ConnId) {
        self.state().idle.remove(&conn);
    }

    /// Close the oldest connection that has not sent its request yet.
    fn evict_oldest_idle(&self) -> bool {
        match self.state().idle.pop_first() {
            Some((_, n)) => {
                n.notify_one();
                true
            }
            None => false,
        }
    }

    /// STOP_REQ: unregister `name` and close its connection.
    fn stop_node(&self, name: &str) -> Option<Gone> {
        let (node, holder) = self.state().stop(name)?;
        if let Some(h) = holder {
            held::close_stopped(self, h);
        }
        Some(node)
    }

    /// True the first time a refusal of `program` is to be logged: always
    /// for ordinary nodes, once per daemon for short-lived helpers.
    fn first_refusal(&self, program: Program) -> bool {
        if !program.is_helper() {
            return true;
        }
        let logged = self.refusals_logged.get();
        self.refusals_logged.set(logged | program.bit());
        logged & program.bit() == 0
    }

    /// Start shutdown: every connection waiting on [`Shared::stopped`] ends,
    /// and every held registration is closed.
    fn begin_stop(&self) {
        self.stopping.set(true);
        self.stop.notify_waiters();
        held::close_all(self);
    }

    /// Resolves once shutdown has started.
    async fn stopped(&self) {
        // Created before the check: notify_waiters reaches every Notified
        // that exists when it is called, polled or not.
        let notified = self.stop.notified();
        if self.stopping.get() {
            return;
        }
        notified.await;
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
/// accepted, then shut down cleanly: stop accepting, close registrations
/// (their nodes notice at once and re-register elsewhere or later) and
/// connections still waiting for a request, give replies being written up
/// to [`DRAIN`], and drop what is left. Returns when the daemon should exit.
///
/// Everything runs on the calling thread (a LocalSet): the registry is
/// plain data, and EPMD requests are too small to gain from more threads.
pub async fn serve(
    listeners: Vec<std::net::TcpListener>,
    shared: Shared,
    mut shutdown: watch::Receiver<bool>,
) {
    let shared = Rc::new(shared);
    let tasks = LocalSet::new();
    tasks
        .run_until(async move {
            let max = shared.config.max_connections;
            let permits = Arc::new(Semaphore::new(max));
            let (exit_tx, mut exit_rx) = watch::channel(false);
            let epoll = match shared.state().held.open() {
                Ok(fd) => fd,
                Err(e) => {
                    error!(error = %e, "cannot make the set of held registrations; stopping");
                    return;
                }
            };
            // Ends with the task set, after shutdown closed what it held.
            tokio::task::spawn_local(held::watch(shared.clone(), epoll));
            let mut accepting = tokio::task::JoinSet::new();
            for l in listeners {
                accepting.spawn_local(accept_loop(
                    l,
                    shared.clone(),
                    permits.clone(),
                    exit_tx.clone(),
                ));
            }
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => info!("shutting down"),
                _ = exit_rx.wait_for(|s| *s) => debug!("KILL_REQ accepted"),
            }
            // Stop accepting: the listening sockets close with their loops.
            accepting.abort_all();
            while accepting.join_next().await.is_some() {}
            shared.begin_stop();
            let all = u32::try_from(max).unwrap_or(u32::MAX);
            match tokio::time::timeout(DRAIN, permits.acquire_many(all)).await {
                Ok(_) => debug!("all connections closed"),
                Err(_) => warn!(
                    open = max.saturating_sub(permits.available_permits()),
                    drain = ?DRAIN,
                    "connections still busy after the drain period are dropped"
                ),
            }
        })
        .await;
    // Dropping the LocalSet drops whatever connection task is left.
}

async fn accept_loop(
    listener: std::net::TcpListener,
    shared: Rc<Shared>,
    permits: Arc<Semaphore>,
    exit: watch::Sender<bool>,
) {
    // Accept with accept4() ourselves, so a connection is not registered
    // with the event loop unless it has to wait (see connection.rs).
    // SAFETY: the socket owns its descriptor and keeps it open, unchanged,
    // for as long as the AsyncFd owns the socket (tokio's safe constructor
    // is deprecated for lack of exactly this guarantee; no crate offers a
    // readiness-only listener without it).
    let watched =
        unsafe { AsyncFd::register_with_interest(Socket::from(listener), Interest::READABLE) };
    let listener = match watched.map_err(std::io::Error::from) {
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
        let conn = shared.next_conn();
        // A loopback peer is local whatever the socket's own address, so
        // the getsockname() is only paid for the rare non-loopback client.
        let local = is_loopback_peer(peer_addr)
            || stream
                .local_addr()
                .map(|l| is_local_peer(peer_addr, l))
                .unwrap_or(false);
        let caller = Caller {
            conn,
            fd: stream.as_raw_fd(),
            local,
        };
        shared.metrics.connections_open.inc();
        let later = match connection::serve_now(stream, caller, &shared) {
            Now::Done(after) => {
                closed(&shared, &exit, after);
                continue;
            }
            // The usual registration: answered at once and held, no task.
            Now::Hold(stream, name) => {
                held::hold(&shared, stream, caller, name, permit);
                continue;
            }
            Now::Later(later) => later,
        };
        let shared = shared.clone();
        let exit = exit.clone();
        tokio::task::spawn_local(async move {
            if let Some(after) = connection::serve_later(later, shared.clone(), permit).await {
                closed(&shared, &exit, after);
            }
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
