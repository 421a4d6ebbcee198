//! One EPMD connection: read exactly one length-prefixed request (byte by
//! byte if it comes that way), answer it, and either close or — for a
//! registration — hold the socket until the node goes away.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use super::Shared;
use super::dispatch::{Action, Peer, dispatch};
use crate::codec::{self, MAX_PAYLOAD};

/// Whether the daemon should stop after this connection (KILL accepted).
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    Continue,
    Exit,
}

/// epmd reads into a buffer of 3 * MAXSYMLEN bytes; a packet that fills it
/// is refused, so a frame is at most this long.
const MAX_FRAME: usize = MAX_PAYLOAD + 2;

pub async fn serve(mut stream: TcpStream, peer: Peer, shared: Arc<Shared>) -> After {
    let timeout = shared.config.packet_timeout;
    let mut buf = [0u8; MAX_FRAME];
    let mut got = 0usize;
    let mut want: Option<usize> = None;
    let kick = shared.watch_idle(peer.conn);
    // Whatever way this connection stops waiting for its request (timeout,
    // EOF, bad length...), it must leave the eviction list: otherwise the
    // list grows without bound and eviction at the limit picks ghosts.
    let idle = IdleGuard {
        shared: &shared,
        conn: peer.conn,
    };

    // Read one request. As in epmd, the idle timer restarts on every read.
    let request = loop {
        let limit = want.unwrap_or(MAX_FRAME);
        let read = tokio::select! {
            r = tokio::time::timeout(timeout, stream.read(&mut buf[got..limit])) => r,
            _ = kick.notified() => {
                shared.metrics.connections_evicted.inc();
                debug!(conn = peer.conn, "idle connection evicted at the connection limit");
                return After::Continue;
            }
        };
        let n = match read {
            Err(_) => {
                shared.metrics.dropped("timeout");
                debug!(conn = peer.conn, got, "closing: timed out on receive");
                return After::Continue;
            }
            Ok(Err(e)) => {
                shared.metrics.dropped("read_error");
                debug!(conn = peer.conn, error = %e, "closing: read error");
                return After::Continue;
            }
            Ok(Ok(0)) => {
                if got > 0 {
                    shared.metrics.dropped("partial");
                }
                debug!(
                    conn = peer.conn,
                    got, "closing: peer closed before a full packet"
                );
                return After::Continue;
            }
            Ok(Ok(n)) => n,
        };
        got += n;
        if want.is_none() && got >= 2 {
            match codec::payload_len([buf[0], buf[1]]) {
                Ok(len) if got <= len + 2 => want = Some(len + 2),
                Ok(len) => {
                    shared.metrics.dropped("trailing_bytes");
                    debug!(
                        conn = peer.conn,
                        got, len, "closing: more bytes than the packet length"
                    );
                    return After::Continue;
                }
                Err(e) => {
                    shared.metrics.dropped("bad_length");
                    debug!(conn = peer.conn, error = %e, "closing");
                    return After::Continue;
                }
            }
        }
        if Some(got) == want {
            break codec::decode_frame(&buf[..got]);
        }
    };
    drop(idle);

    let req = match request {
        Ok(r) => r,
        Err(e) => {
            shared.metrics.dropped("malformed");
            debug!(conn = peer.conn, error = %e, "closing: malformed request");
            return After::Continue;
        }
    };
    let kind = req.kind();
    let (action, outcome) = dispatch(&shared, req, peer);
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
            hold_registration(stream, peer, &shared, name, written).await;
            After::Continue
        }
    }
}

struct IdleGuard<'a> {
    shared: &'a Shared,
    conn: crate::registry::ConnId,
}

impl Drop for IdleGuard<'_> {
    fn drop(&mut self) {
        self.shared.forget_idle(self.conn);
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
