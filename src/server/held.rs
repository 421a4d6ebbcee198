//! Registrations held open without a task each. A registered node keeps its
//! connection to EPMD open for as long as it lives and sends nothing more on
//! it; all EPMD has to notice is that connection ending. A tokio task per
//! registration (spawn, an epoll registration with the runtime, a `select!`
//! over the socket, a STOP closer and shutdown) was most of the instructions
//! a registration cost, so held sockets instead sit in one epoll set of our
//! own, registered once with tokio and watched by one task ([`watch`]):
//! holding a registration is one `epoll_ctl`, and ending it a map removal.
//!
//! The rules are those of a held epmd connection: EOF, an error, or any
//! further byte ends the registration; STOP_REQ for its name and shutdown
//! close the socket. A refused registration (no name) is held the same way
//! until the client closes, as epmd holds it.

use std::collections::hash_map::Entry;
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::rc::Rc;

use rustc_hash::FxHashMap;
use rustix::event::{Timespec, epoll};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, error};

use super::Shared;
use super::connection::release;
use super::dispatch::Caller;
use crate::registry::ConnId;

/// The held connections, part of the server's [`State`](super::State).
#[derive(Debug, Default)]
pub(super) struct Held {
    /// The epoll set; None until [`Held::open`] (the server runs). Shared
    /// with the task that waits on it.
    epoll: Option<Rc<OwnedFd>>,
    /// Every registration from the moment it is made, by connection. Our
    /// own sequential ids: FxHash (rustc-hash) spreads them at the cost of a
    /// multiplication, where a B-tree's removal alone cost more than a whole
    /// lookup here, and SipHash is for keys others choose.
    slots: FxHashMap<ConnId, Slot>,
}

#[derive(Debug)]
enum Slot {
    /// Registered; its connection is still sending the reply (or pausing
    /// for `-delay_write`) and has not reached the hold.
    Pending,
    /// A STOP_REQ named it before its connection reached the hold: the
    /// socket is closed the moment it would be held.
    Stopped,
    /// Held: the socket is in the epoll set.
    Holding(Holder),
}

/// A held connection and what ends with it.
#[derive(Debug)]
pub(super) struct Holder {
    stream: TcpStream,
    caller: Caller,
    /// The registered name; None for a refused registration.
    name: Option<String>,
    /// Its place under the connection limit, given back when it closes.
    _permit: OwnedSemaphorePermit,
}

impl Held {
    /// Make the epoll set; the returned handle is for [`watch`].
    pub(super) fn open(&mut self) -> std::io::Result<Rc<OwnedFd>> {
        let fd = Rc::new(epoll::create(epoll::CreateFlags::CLOEXEC)?);
        self.epoll = Some(fd.clone());
        Ok(fd)
    }

    /// A registration was made on `conn`: it is held once its reply is out.
    pub(super) fn registered(&mut self, conn: ConnId) {
        self.slots.insert(conn, Slot::Pending);
    }

    /// STOP_REQ unregistered the node of `conn`: close its socket now if it
    /// is held (returned, for the caller to drop), else when it would be.
    pub(super) fn stop(&mut self, conn: ConnId) -> Option<Holder> {
        match self.slots.get_mut(&conn)? {
            Slot::Holding(_) => match self.slots.remove(&conn) {
                Some(Slot::Holding(h)) => Some(h),
                _ => None,
            },
            slot => {
                *slot = Slot::Stopped;
                None
            }
        }
    }

    /// The registration of `conn` ends before it was held (its reply could
    /// not be written, or the connection was given up).
    pub(super) fn forget(&mut self, conn: ConnId) {
        if matches!(self.slots.get(&conn), Some(Slot::Pending | Slot::Stopped)) {
            self.slots.remove(&conn);
        }
    }

    /// Every held connection, taken out (shutdown). Registrations still
    /// sending their reply stay: they close when they reach the hold.
    fn take_all(&mut self) -> Vec<Holder> {
        let held = self.slots.extract_if(|_, s| matches!(s, Slot::Holding(_)));
        held.filter_map(|(_, s)| match s {
            Slot::Holding(h) => Some(h),
            _ => None,
        })
        .collect()
    }
}

/// The reply to `caller` is out: hold its connection until it ends. A
/// registration STOPped meanwhile, or one reaching this during shutdown,
/// is closed at once instead.
pub(super) fn hold(
    shared: &Shared,
    stream: TcpStream,
    caller: Caller,
    name: Option<String>,
    permit: OwnedSemaphorePermit,
) {
    let conn = caller.conn;
    let holder = Holder {
        stream,
        caller,
        name,
        _permit: permit,
    };
    let mut state = shared.state();
    let held = &mut state.held;
    // One lookup: a registration has a slot since it registered (replaced
    // in place), a refused one gets a new one.
    let slot = held.slots.entry(conn);
    let stopped = matches!(&slot, Entry::Occupied(o) if matches!(o.get(), Slot::Stopped));
    let why = if stopped {
        "registration connection stopped"
    } else if shared.stopping.get() {
        "registration connection closed: shutting down"
    } else {
        // RDHUP: a peer that shuts down its side is gone even if it leaves
        // the socket open. Errors and hang-ups are always reported.
        let added = match &held.epoll {
            Some(ep) => epoll::add(
                &**ep,
                &holder.stream,
                epoll::EventData::new_u64(conn),
                epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
            )
            .map_err(std::io::Error::from),
            None => Err(std::io::Error::other("no held-connection set")),
        };
        match added {
            Ok(()) => {
                match slot {
                    Entry::Occupied(mut o) => *o.get_mut() = Slot::Holding(holder),
                    Entry::Vacant(v) => {
                        v.insert(Slot::Holding(holder));
                    }
                }
                return;
            }
            Err(e) => {
                shared.metrics.dropped("register_error");
                debug!(conn, error = %e, "closing: cannot watch the registration's socket");
                "registration connection closed"
            }
        }
    };
    if let Entry::Occupied(o) = slot {
        o.remove();
    }
    drop(state);
    debug!(conn, "{why}");
    end(shared, holder);
}

/// Shutdown: close every held connection at once; their nodes notice and
/// re-register elsewhere or later.
pub(super) fn close_all(shared: &Shared) {
    let held = shared.state().held.take_all();
    for h in held {
        debug!(
            conn = h.caller.conn,
            "registration connection closed: shutting down"
        );
        end(shared, h);
    }
}

/// A connection STOP_REQ took out of the set: close it.
pub(super) fn close_stopped(shared: &Shared, h: Holder) {
    debug!(conn = h.caller.conn, "registration connection stopped");
    end(shared, h);
}

/// The held connection closes: its registration (if still its own) ends.
/// Closing the socket also takes it out of the epoll set (nothing else
/// refers to it), so no `epoll_ctl` is spent on that.
fn end(shared: &Shared, h: Holder) {
    let Holder {
        stream,
        caller,
        name,
        _permit,
    } = h;
    drop(stream);
    release(caller, shared, name);
    shared.metrics.connections_open.dec();
}

/// Events taken from the set per wake-up.
const BATCH: usize = 64;

/// The one task that waits for held connections to end. Runs until the
/// server's task set is dropped.
pub(super) async fn watch(shared: Rc<Shared>, epoll_fd: Rc<OwnedFd>) {
    // SAFETY: the Rc keeps the epoll descriptor open, unchanged, for as
    // long as the AsyncFd holds it (the set's own copy in `Held` is never
    // closed or replaced while the server runs); tokio's safe constructor
    // is deprecated for lack of exactly this guarantee.
    let watched = unsafe { AsyncFd::register_with_interest(epoll_fd, Interest::READABLE) };
    let watched = match watched.map_err(std::io::Error::from) {
        Ok(w) => w,
        Err(e) => {
            error!(error = %e, "cannot watch held registrations; they end only by STOP or shutdown");
            return;
        }
    };
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut events: Vec<epoll::Event> = Vec::with_capacity(BATCH);
    loop {
        let mut ready = match watched.readable().await {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "waiting on held registrations failed");
                return;
            }
        };
        events.clear();
        match epoll::wait(
            &**watched.get_ref(),
            rustix::buffer::spare_capacity(&mut events),
            Some(&now),
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                error!(error = %e, "reading held registrations' events failed");
                return;
            }
        }
        // A full batch may leave more: look again before waiting. Readiness
        // that arrives after this wait is kept by tokio (it clears only
        // what it had seen when `readable` returned).
        if events.len() < BATCH {
            ready.clear_ready();
        }
        for ev in &events {
            let flags = ev.flags;
            ended(&shared, ev.data.u64(), flags);
        }
    }
}

/// An event on held connection `conn`: end it unless it was spurious.
fn ended(shared: &Shared, conn: ConnId, flags: epoll::EventFlags) {
    use epoll::EventFlags as F;
    let mut state = shared.state();
    // Gone already (STOP, shutdown): a stale event for a closed socket.
    let Entry::Occupied(slot) = state.held.slots.entry(conn) else {
        return;
    };
    let Slot::Holding(h) = slot.get() else {
        return;
    };
    if flags.intersects(F::ERR) {
        debug!(conn, "registration connection failed");
    } else if flags.intersects(F::HUP | F::RDHUP) {
        debug!(conn, "registration connection closed");
    } else {
        // Readable only: data or EOF; check it is not spurious.
        let mut byte = [0u8; 1];
        match (&h.stream).read(&mut byte) {
            Ok(0) => debug!(conn, "registration connection closed"),
            Ok(_) => debug!(
                conn,
                "more bytes on a registration connection: unregistering"
            ),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                return;
            }
            Err(e) => debug!(conn, error = %e, "registration connection failed"),
        }
    }
    let Slot::Holding(h) = slot.remove() else {
        return;
    };
    drop(state);
    end(shared, h);
}
