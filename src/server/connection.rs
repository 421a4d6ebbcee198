//! One EPMD connection: read exactly one length-prefixed request (byte by
//! byte if it comes that way), answer it, and either close or — for a
//! registration — hold the socket until the node goes away.
//!
//! One path, two drivers. [`Conn::advance`] does the work — read, decode,
//! dispatch, write — with non-blocking I/O until the socket would block.
//! Right after accept, [`serve_now`] runs it without a task or the event
//! loop: nodes send their request as soon as they are connected, so it is
//! usually there already and answered at once (accept, read, write, close:
//! no epoll registration at all; a registration goes straight to the held
//! set, see held.rs). Whatever cannot finish at once — a request not
//! (fully) there yet, a reply the socket will not take whole — continues in
//! [`serve_later`], an async task that waits for the socket and calls the
//! same `advance` again.

use std::io::{self, ErrorKind, Read, Write};
use std::rc::Rc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;
use tracing::debug;

use super::Shared;
use super::dispatch::{Action, Caller, dispatch};
use super::held;
use super::reader::{FrameReader, Progress};
use crate::registry::ConnId;

/// Whether the daemon should stop after this connection (KILL accepted).
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    Continue,
    Exit,
}

/// Non-blocking socket I/O, from a plain socket (inline, right after
/// accept) or a tokio one (in a task, after waiting for readiness).
trait Io {
    fn read_some(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn write_some(&self, buf: &[u8]) -> io::Result<usize>;
}

impl Io for std::net::TcpStream {
    fn read_some(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
    fn write_some(&self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }
}

impl Io for TcpStream {
    // try_* clear tokio's readiness on WouldBlock, so the next wait is real.
    fn read_some(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.try_read(buf)
    }
    fn write_some(&self, buf: &[u8]) -> io::Result<usize> {
        self.try_write(buf)
    }
}

#[derive(Debug)]
enum Stage {
    /// Receiving the request.
    Read(FrameReader),
    /// The answer is decided; `written` bytes of its reply have been sent.
    Write { action: Action, written: usize },
    /// Nothing left to do (the outcome has been returned).
    Finished,
}

/// Where [`Conn::advance`] stopped.
#[derive(Debug)]
enum Step {
    /// Close the connection.
    Done(After),
    /// The request is not complete and the socket has no more bytes yet.
    NeedRead,
    /// The socket will not take more of the reply yet.
    NeedWrite,
    /// The answer is decided; `-delay_write` asks for a pause before it.
    Delay,
    /// The reply is sent: hold the connection (a registration under
    /// `name`, or a refused one, which epmd keeps open too).
    Hold(Option<String>),
}

/// One connection's progress through its single request.
#[derive(Debug)]
struct Conn {
    caller: Caller,
    stage: Stage,
    /// Successful reads so far: each restarts the idle timer.
    reads: u64,
}

impl Conn {
    fn new(caller: Caller) -> Self {
        Conn {
            caller,
            stage: Stage::Read(FrameReader::new()),
            reads: 0,
        }
    }

    /// Read, decode, dispatch and write until done or the socket would block.
    fn advance(&mut self, io: &impl Io, shared: &Shared) -> Step {
        let conn = self.caller.conn;
        loop {
            match &mut self.stage {
                Stage::Read(reader) => {
                    let mut scratch = shared.scratch();
                    let room = reader.room();
                    let n = match io.read_some(&mut scratch[..room]) {
                        Ok(0) => {
                            if reader.received() > 0 {
                                shared.metrics.dropped("partial");
                            }
                            debug!(
                                conn,
                                got = reader.received(),
                                "closing: peer closed before a full packet"
                            );
                            return self.finish(Step::Done(After::Continue));
                        }
                        Ok(n) => n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::NeedRead,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => {
                            shared.metrics.dropped("read_error");
                            debug!(conn, error = %e, "closing: read error");
                            return self.finish(Step::Done(After::Continue));
                        }
                    };
                    self.reads += 1;
                    let progress = reader.feed(&scratch[..n]);
                    drop(scratch);
                    match progress {
                        Progress::More => {}
                        Progress::Request(req) => {
                            let kind = req.kind();
                            let (action, outcome) = dispatch(shared, req, self.caller);
                            shared.metrics.request(kind, outcome);
                            self.stage = Stage::Write { action, written: 0 };
                            if shared.config.delay_write > Duration::ZERO {
                                return Step::Delay;
                            }
                        }
                        Progress::Reject(r) => {
                            shared.metrics.dropped(r.reason());
                            debug!(conn, reason = ?r, "closing: bad request");
                            return self.finish(Step::Done(After::Continue));
                        }
                    }
                }
                Stage::Write { action, written } => {
                    let reply = reply_bytes(action);
                    let mut failed = false;
                    while *written < reply.len() {
                        match io.write_some(&reply[*written..]) {
                            Ok(0) => failed = true,
                            Ok(n) => *written += n,
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::NeedWrite,
                            Err(_) => failed = true,
                        }
                        if failed {
                            break;
                        }
                    }
                    let Stage::Write { action, .. } =
                        std::mem::replace(&mut self.stage, Stage::Finished)
                    else {
                        // Only reached from the Write stage just matched.
                        return Step::Done(After::Continue);
                    };
                    return match action {
                        Action::Close | Action::ReplyClose(_) => Step::Done(After::Continue),
                        // As epmd: an accepted KILL stops the daemon even if
                        // the client left before reading OK.
                        Action::ReplyExit(_) => Step::Done(After::Exit),
                        // A node that cannot be told it is registered is not.
                        Action::ReplyKeep(_, name) if failed => {
                            release(self.caller, shared, name);
                            Step::Done(After::Continue)
                        }
                        Action::ReplyKeep(_, name) => Step::Hold(name),
                    };
                }
                Stage::Finished => return Step::Done(After::Continue),
            }
        }
    }

    fn finish(&mut self, step: Step) -> Step {
        self.stage = Stage::Finished;
        step
    }

    /// The connection is given up before its reply is out: a registration
    /// it made must not outlive it.
    fn abandon(self, shared: &Shared) {
        if let Stage::Write {
            action: Action::ReplyKeep(_, name),
            ..
        } = self.stage
        {
            release(self.caller, shared, name);
        }
    }
}

/// The outcome of [`serve_now`].
#[derive(Debug)]
pub(super) enum Now {
    Done(After),
    /// Answered: hold the connection (a registration under the name, or a
    /// refused one).
    Hold(std::net::TcpStream, Option<String>),
    Later(Later),
}

/// What is left to do for a connection [`serve_now`] could not finish.
#[derive(Debug)]
pub(super) struct Later {
    stream: std::net::TcpStream,
    conn: Conn,
    step: Step,
    /// The connection's place on the eviction list, taken before its task
    /// first runs so that eviction at the limit always finds the oldest
    /// waiting connection.
    idle: Option<IdleGuard>,
}

/// Serve a just-accepted (non-blocking) connection as far as it goes now.
pub(super) fn serve_now(stream: std::net::TcpStream, caller: Caller, shared: &Rc<Shared>) -> Now {
    let mut conn = Conn::new(caller);
    let step = conn.advance(&stream, shared);
    let idle = match step {
        Step::Done(after) => return Now::Done(after),
        Step::Hold(name) => return Now::Hold(stream, name),
        Step::NeedRead => Some(IdleGuard::new(shared, caller.conn)),
        _ => None,
    };
    Now::Later(Later {
        stream,
        conn,
        step,
        idle,
    })
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

/// Finish what [`serve_now`] left over, as an async task. None when the
/// connection ends up held: it is open still, and `permit` goes with it.
pub(super) async fn serve_later(
    later: Later,
    shared: Rc<Shared>,
    permit: OwnedSemaphorePermit,
) -> Option<After> {
    let Later {
        stream,
        mut conn,
        mut step,
        mut idle,
    } = later;
    let stream = match TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => {
            shared.metrics.dropped("register_error");
            debug!(conn = conn.caller.conn, error = %e, "closing: cannot watch the socket");
            conn.abandon(&shared);
            return Some(After::Continue);
        }
    };
    let id = conn.caller.conn;
    let limit = idle_limit(shared.config.packet_timeout);
    let mut deadline = Instant::now() + limit;
    let mut reads = conn.reads;
    loop {
        step = match step {
            Step::Done(after) => return Some(after),
            Step::NeedRead => {
                let evicted = idle.as_ref().map(|g| g.evict.clone());
                tokio::select! {
                    r = tokio::time::timeout_at(deadline, stream.readable()) => match r {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            shared.metrics.dropped("read_error");
                            debug!(conn = id, error = %e, "closing: read error");
                            return Some(After::Continue);
                        }
                        Err(_) => {
                            shared.metrics.dropped("timeout");
                            debug!(conn = id, "closing: timed out on receive");
                            return Some(After::Continue);
                        }
                    },
                    _ = wait(evicted) => {
                        shared.metrics.connections_evicted.inc();
                        debug!(conn = id, "idle connection evicted at the connection limit");
                        return Some(After::Continue);
                    }
                    _ = shared.stopped() => {
                        shared.metrics.dropped("shutdown");
                        debug!(conn = id, "closing: shutting down before a request");
                        return Some(After::Continue);
                    }
                }
                let next = conn.advance(&stream, &shared);
                if conn.reads != reads {
                    // As in epmd, the idle timer restarts on every read.
                    reads = conn.reads;
                    deadline = Instant::now() + limit;
                }
                next
            }
            Step::Delay => {
                idle = None;
                tokio::time::sleep(shared.config.delay_write).await;
                conn.advance(&stream, &shared)
            }
            Step::NeedWrite => {
                idle = None;
                // Shutdown lets a reply in progress finish (within the
                // drain period), so no shutdown branch here.
                if let Err(e) = stream.writable().await {
                    debug!(conn = id, error = %e, "closing: write error");
                    conn.abandon(&shared);
                    return Some(After::Continue);
                }
                conn.advance(&stream, &shared)
            }
            Step::Hold(name) => {
                drop(idle);
                // Back to a plain socket: the held set watches it from here.
                return match stream.into_std() {
                    Ok(s) => {
                        held::hold(&shared, s, conn.caller, name, permit);
                        None
                    }
                    Err(e) => {
                        shared.metrics.dropped("register_error");
                        debug!(conn = id, error = %e, "closing: cannot take the socket back");
                        release(conn.caller, &shared, name);
                        Some(After::Continue)
                    }
                };
            }
        };
        if !matches!(step, Step::NeedRead) {
            idle = None;
        }
    }
}

/// Wait for `n` if there is one, else forever.
async fn wait(n: Option<Rc<Notify>>) {
    match n {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

/// A connection's place on the eviction list. However the connection stops
/// waiting for its request (answered, timeout, EOF, bad length, dropped
/// task), the entry goes: a leftover would make eviction pick a ghost.
#[derive(Debug)]
struct IdleGuard {
    shared: Rc<Shared>,
    conn: ConnId,
    evict: Rc<Notify>,
}

impl IdleGuard {
    fn new(shared: &Rc<Shared>, conn: ConnId) -> Self {
        IdleGuard {
            shared: shared.clone(),
            conn,
            evict: shared.watch_idle(conn),
        }
    }
}

impl Drop for IdleGuard {
    fn drop(&mut self) {
        self.shared.forget_idle(self.conn);
    }
}

fn reply_bytes(action: &Action) -> &[u8] {
    match action {
        Action::Close => &[],
        Action::ReplyClose(b) | Action::ReplyExit(b) | Action::ReplyKeep(b, _) => b,
    }
}

/// The registration held by this connection (if any) ends.
pub(super) fn release(caller: Caller, shared: &Shared, name: Option<String>) {
    let Some(name) = name else { return };
    let gone = shared.state().release(&name, caller.conn);
    if let Some(gone) = gone {
        shared.metrics.registered_nodes.dec();
        tracing::info!(node = %name, port = gone.port, "node unregistered");
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
