//! One EPMD connection: read exactly one length-prefixed request (byte by
//! byte if it comes that way), answer it, and either close or — for a
//! registration — hold the socket until the node goes away.
//!
//! Two halves with the same rules. [`serve_now`] runs right after accept,
//! without a task or the event loop: nodes send their request as soon as
//! they are connected, so usually it is already there and is answered at
//! once (accept, read, write, close: no epoll registration at all).
//! Whatever cannot finish at once — a request not (fully) there yet, a
//! reply the socket will not take whole, a registration to hold — becomes a
//! [`Later`] that [`serve_later`] finishes as an async task.

use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tracing::debug;

use super::Shared;
use super::dispatch::{Action, Peer, dispatch};
use super::reader::{FrameReader, MAX_FRAME, Progress};
use crate::codec::Request;
use crate::registry::ConnId;

/// Whether the daemon should stop after this connection (KILL accepted).
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    Continue,
    Exit,
}

/// What is left to do for a connection [`serve_now`] could not finish.
#[derive(Debug)]
pub struct Later {
    stream: std::net::TcpStream,
    state: Pending,
}

#[derive(Debug)]
enum Pending {
    /// The request is not complete yet. The connection is already on the
    /// eviction list (before its task first runs, so that eviction at the
    /// limit always finds the oldest waiting connection).
    Read(FrameReader, IdleGuard),
    /// The answer is decided; `written` bytes of its reply have been sent.
    Write { action: Action, written: usize },
}

/// The outcome of [`serve_now`].
#[derive(Debug)]
pub enum Now {
    Done(After),
    Later(Later),
}

/// Try to serve a just-accepted (non-blocking) connection on the spot.
pub fn serve_now(stream: std::net::TcpStream, peer: Peer, shared: &Arc<Shared>) -> Now {
    let later = |stream, state| Now::Later(Later { stream, state });
    let wait = |reader| Pending::Read(reader, IdleGuard::new(shared, peer.conn));
    if shared.config.delay_write > Duration::ZERO {
        // The -delay_write test aid sleeps before replying: async only.
        return later(stream, wait(FrameReader::new()));
    }
    let mut reader = FrameReader::new();
    let mut scratch = [0u8; MAX_FRAME];
    let n = match (&stream).read(&mut scratch[..reader.room()]) {
        Ok(0) => {
            debug!(conn = peer.conn, "closing: peer closed before sending");
            return Now::Done(After::Continue);
        }
        Ok(n) => n,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
            return later(stream, wait(reader));
        }
        Err(e) => {
            shared.metrics.dropped("read_error");
            debug!(conn = peer.conn, error = %e, "closing: read error");
            return Now::Done(After::Continue);
        }
    };
    let req = match reader.feed(&scratch[..n]) {
        Progress::More => return later(stream, wait(reader)),
        Progress::Request(r) => r,
        Progress::Reject(r) => {
            shared.metrics.dropped(r.reason());
            debug!(conn = peer.conn, reason = ?r, "closing: bad request");
            return Now::Done(After::Continue);
        }
    };
    let action = decide(shared, req, peer);
    let reply = reply_bytes(&action);
    let mut written = 0;
    while written < reply.len() {
        match (&stream).write(&reply[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            // As in the async path: a failed reply just closes (and a
            // registration is dropped by serve_later).
            Err(_) => break,
        }
    }
    match action {
        Action::Close | Action::ReplyClose(_) if written == reply.len() => {
            Now::Done(After::Continue)
        }
        Action::ReplyExit(_) if written == reply.len() => Now::Done(After::Exit),
        action => later(stream, Pending::Write { action, written }),
    }
}

/// Finish what [`serve_now`] left over, as an async task.
pub async fn serve_later(later: Later, peer: Peer, shared: Arc<Shared>) -> After {
    let Later { stream, state } = later;
    let stream = match TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => {
            shared.metrics.dropped("register_error");
            debug!(conn = peer.conn, error = %e, "closing: cannot watch the socket");
            if let Pending::Write {
                action: Action::ReplyKeep(_, name),
                ..
            } = state
            {
                release(peer, &shared, name);
            }
            return After::Continue;
        }
    };
    match state {
        Pending::Read(reader, idle) => serve(stream, peer, shared, reader, idle).await,
        Pending::Write { action, written } => finish(stream, peer, &shared, action, written).await,
    }
}

/// The async path for a connection whose request is still (partly) to come.
async fn serve(
    stream: TcpStream,
    peer: Peer,
    shared: Arc<Shared>,
    reader: FrameReader,
    idle: IdleGuard,
) -> After {
    let request = match read_request(&stream, peer, &shared, &idle.kick, reader).await {
        Some(r) => r,
        None => return After::Continue,
    };
    drop(idle);
    let action = decide(&shared, request, peer);
    if shared.config.delay_write > Duration::ZERO {
        tokio::time::sleep(shared.config.delay_write).await;
    }
    finish(stream, peer, &shared, action, 0).await
}

/// A connection's place on the eviction list. However the connection stops
/// waiting for its request (answered, timeout, EOF, bad length, dropped
/// task), the entry goes: a leftover would make eviction pick a ghost.
#[derive(Debug)]
struct IdleGuard {
    shared: Arc<Shared>,
    conn: ConnId,
    kick: Arc<Notify>,
}

impl IdleGuard {
    fn new(shared: &Arc<Shared>, conn: ConnId) -> Self {
        IdleGuard {
            shared: shared.clone(),
            conn,
            kick: shared.watch_idle(conn),
        }
    }
}

impl Drop for IdleGuard {
    fn drop(&mut self) {
        self.shared.forget_idle(self.conn);
    }
}

/// How long a connection may stay silent before it is closed, for epmd's
/// `-packet_timeout` of `timeout` (whole seconds, as the flag takes them).
///
/// OTP's epmd (erts/epmd/src/epmd_srv.c, `run`) stamps each read with
/// `time(NULL)` and closes a waiting connection only when, at one of its
/// checks, `mod_time + packet_timeout < now` on that whole-second clock. It
/// checks whenever its select() returns; with nothing else happening that
/// is every second while the timeout is under IDLE_TIMEOUT (5 s), else every
/// 5 s, counted from the last read. The first such check that sees more than
/// `timeout` whole seconds is `period * (timeout / period + 1)` seconds after
/// the read, whatever the sub-second phase of the clock: that is when we
/// close. So a client pausing exactly `timeout` seconds between bytes (OTP's
/// epmd_SUITE `slow_get_port_nr`: 1 s pauses against `-packet_timeout 1`) is
/// never cut, and a silent one goes at the moment an idle epmd would let it
/// go. (A busy epmd checks more often and may close from `timeout` + the
/// rest of the current second onwards; waiting for the idle schedule only
/// ever keeps a connection that epmd could also have kept.)
pub fn idle_limit(timeout: Duration) -> Duration {
    const IDLE_TIMEOUT: u64 = 5;
    let t = timeout.as_secs();
    let period = if t < IDLE_TIMEOUT { 1 } else { IDLE_TIMEOUT };
    Duration::from_secs(period * (t / period + 1))
}

/// Read one request. As in epmd, the idle timer restarts on every read.
/// None: the connection is to be closed without an answer.
async fn read_request(
    stream: &TcpStream,
    peer: Peer,
    shared: &Shared,
    kick: &Notify,
    mut reader: FrameReader,
) -> Option<Request> {
    let limit = idle_limit(shared.config.packet_timeout);
    let mut deadline = tokio::time::Instant::now() + limit;
    loop {
        // Wait for bytes without holding a buffer: a connection that has
        // sent nothing yet costs only its task, not a 3 KiB frame buffer.
        let ready = tokio::select! {
            r = tokio::time::timeout_at(deadline, stream.readable()) => r,
            _ = kick.notified() => {
                shared.metrics.connections_evicted.inc();
                debug!(conn = peer.conn, "idle connection evicted at the connection limit");
                return None;
            }
        };
        match ready {
            Err(_) => {
                shared.metrics.dropped("timeout");
                debug!(
                    conn = peer.conn,
                    got = reader.received(),
                    "closing: timed out on receive"
                );
                return None;
            }
            Ok(Err(e)) => {
                shared.metrics.dropped("read_error");
                debug!(conn = peer.conn, error = %e, "closing: read error");
                return None;
            }
            Ok(Ok(())) => {}
        }
        let mut scratch = [0u8; MAX_FRAME];
        let room = reader.room();
        let n = match stream.try_read(&mut scratch[..room]) {
            Ok(0) => {
                if reader.received() > 0 {
                    shared.metrics.dropped("partial");
                }
                debug!(
                    conn = peer.conn,
                    got = reader.received(),
                    "closing: peer closed before a full packet"
                );
                return None;
            }
            Ok(n) => n,
            // Spurious readiness: wait again.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                shared.metrics.dropped("read_error");
                debug!(conn = peer.conn, error = %e, "closing: read error");
                return None;
            }
        };
        deadline = tokio::time::Instant::now() + limit;
        match reader.feed(&scratch[..n]) {
            Progress::More => {}
            Progress::Request(r) => return Some(r),
            Progress::Reject(r) => {
                shared.metrics.dropped(r.reason());
                debug!(conn = peer.conn, reason = ?r, "closing: bad request");
                return None;
            }
        }
    }
}

/// Dispatch a request and count it.
fn decide(shared: &Shared, req: Request, peer: Peer) -> Action {
    let kind = req.kind();
    let (action, outcome) = dispatch(shared, req, peer);
    shared.metrics.request(kind, outcome);
    action
}

fn reply_bytes(action: &Action) -> &[u8] {
    match action {
        Action::Close => &[],
        Action::ReplyClose(b) | Action::ReplyExit(b) | Action::ReplyKeep(b, _) => b,
    }
}

/// Send the rest of the reply (from byte `written`), then close, exit or
/// hold the registration.
async fn finish(
    mut stream: TcpStream,
    peer: Peer,
    shared: &Shared,
    action: Action,
    written: usize,
) -> After {
    let rest = reply_bytes(&action).get(written..).unwrap_or_default();
    let sent = stream.write_all(rest).await.is_ok();
    match action {
        Action::Close | Action::ReplyClose(_) => After::Continue,
        Action::ReplyExit(_) => After::Exit,
        Action::ReplyKeep(_, name) => {
            hold_registration(stream, peer, shared, name, sent).await;
            After::Continue
        }
    }
}

/// A registration lives as long as its socket: EOF, an error, any further
/// byte, a STOP_REQ for its name or daemon shutdown ends it.
async fn hold_registration(
    mut stream: TcpStream,
    peer: Peer,
    shared: &Shared,
    name: Option<String>,
    written: bool,
) {
    let kick = shared.watch_registered(peer.conn);
    if written {
        let mut byte = [0u8; 1];
        tokio::select! {
            r = stream.read(&mut byte) => match r {
                Ok(0) => debug!(conn = peer.conn, "registration connection closed"),
                Ok(_) => debug!(conn = peer.conn, "more bytes on a registration connection: unregistering"),
                Err(e) => debug!(conn = peer.conn, error = %e, "registration connection failed"),
            },
            _ = kick.notified() => debug!(conn = peer.conn, "registration connection stopped"),
        }
    }
    shared.forget_registered(peer.conn);
    release(peer, shared, name);
}

/// The registration held by this connection (if any) ends.
fn release(peer: Peer, shared: &Shared, name: Option<String>) {
    if let Some(name) = name
        && let Some(node) = shared.registry.unregister(&name, peer.conn)
    {
        shared.metrics.registered_nodes.dec();
        tracing::info!(node = %name, port = node.info.port, "node unregistered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_limit_is_the_first_idle_check_past_the_timeout() {
        let s = Duration::from_secs;
        // Under 5 s epmd checks every second: T + 1.
        assert_eq!(idle_limit(s(1)), s(2));
        assert_eq!(idle_limit(s(4)), s(5));
        // From 5 s on it checks every 5 s: the next multiple above T.
        assert_eq!(idle_limit(s(5)), s(10));
        assert_eq!(idle_limit(s(7)), s(10));
        assert_eq!(idle_limit(s(60)), s(65));
        // A pause of exactly T whole seconds is always kept.
        for t in 1..200 {
            assert!(idle_limit(s(t)) > s(t), "T={t}");
        }
    }
}
