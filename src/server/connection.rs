//! One EPMD connection: read exactly one length-prefixed request (byte by
//! byte if it comes that way), answer it, and either close or — for a
//! registration — hold the socket until the node goes away.

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

pub async fn serve(stream: TcpStream, peer: Peer, shared: Arc<Shared>) -> After {
    let kick = shared.watch_idle(peer.conn);
    // Whatever way this connection stops waiting for its request, it must
    // leave the eviction list, or the list grows and eviction picks ghosts.
    let idle = IdleGuard {
        shared: &shared,
        conn: peer.conn,
    };
    let request = match read_request(&stream, peer, &shared, &kick).await {
        Some(r) => r,
        None => return After::Continue,
    };
    drop(idle);
    answer(stream, peer, &shared, request).await
}

struct IdleGuard<'a> {
    shared: &'a Shared,
    conn: ConnId,
}

impl Drop for IdleGuard<'_> {
    fn drop(&mut self) {
        self.shared.forget_idle(self.conn);
    }
}

/// Read one request. As in epmd, the idle timer restarts on every read.
/// None: the connection is to be closed without an answer.
async fn read_request(
    stream: &TcpStream,
    peer: Peer,
    shared: &Shared,
    kick: &Notify,
) -> Option<Request> {
    let timeout = shared.config.packet_timeout;
    let mut reader = FrameReader::new();
    loop {
        // Wait for bytes without holding a buffer: a connection that has
        // sent nothing yet costs only its task, not a 3 KiB frame buffer.
        let ready = tokio::select! {
            r = tokio::time::timeout(timeout, stream.readable()) => r,
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

async fn answer(mut stream: TcpStream, peer: Peer, shared: &Shared, req: Request) -> After {
    let kind = req.kind();
    let (action, outcome) = dispatch(shared, req, peer);
    shared.metrics.request(kind, outcome);

    if shared.config.delay_write > Duration::ZERO {
        tokio::time::sleep(shared.config.delay_write).await;
    }
    match action {
        Action::Close => After::Continue,
        Action::ReplyClose(bytes) => {
            let _ = stream.write_all(&bytes).await;
            After::Continue
        }
        Action::ReplyExit(bytes) => {
            let _ = stream.write_all(&bytes).await;
            After::Exit
        }
        Action::ReplyKeep(bytes, name) => {
            let written = stream.write_all(&bytes).await.is_ok();
            hold_registration(stream, peer, shared, name, written).await;
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
    if let Some(name) = name
        && let Some(node) = shared.registry.unregister(&name, peer.conn)
    {
        shared.metrics.registered_nodes.dec();
        tracing::info!(node = %name, port = node.info.port, "node unregistered");
    }
}
