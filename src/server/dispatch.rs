//! What the daemon answers to one decoded request: policy (who may ask what,
//! the pinned distribution range, KILL in a sidecar) on top of the registry.
//! No sockets here; the connection carries out the returned [`Action`].

use bytes::BytesMut;
use tracing::{debug, info, warn};

use super::{KillPolicy, Program, Shared};
use crate::codec::{Alive2, NodeInfo, Request, Response, validate_alive2};
use crate::metrics::Outcome;
use crate::registry::ConnId;

/// Who is asking: the connection a request came on and what its remote
/// address allows (not a Kubernetes peer: those are in crate::peers).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub conn: ConnId,
    pub fd: i32,
    /// Loopback, or the same address as the socket's own (epmd's rule).
    pub local: bool,
}

/// What the connection does next.
#[derive(Debug)]
pub enum Action {
    /// Write the bytes and close.
    ReplyClose(BytesMut),
    /// Close at once, writing nothing.
    Close,
    /// Write the reply and hold the connection: the node is registered as
    /// `name` until it closes (or, on refusal, `name` is None).
    ReplyKeep(BytesMut, Option<String>),
    /// Write the reply, close, then stop the daemon (KILL accepted).
    ReplyExit(BytesMut),
}

pub fn dispatch(shared: &Shared, req: Request, caller: Caller) -> (Action, Outcome) {
    let local_only = matches!(
        req,
        Request::Alive2(_) | Request::Dump | Request::Kill | Request::Stop { .. }
    );
    if local_only && !caller.local {
        warn!(
            kind = req.kind().as_str(),
            conn = caller.conn,
            "request from non-local address refused"
        );
        return (Action::Close, Outcome::Dropped);
    }
    match req {
        Request::Alive2(a) => alive2(shared, a, caller),
        Request::PortPlease2 { name } => port_please2(shared, &name),
        Request::Names => {
            let mut out = BytesMut::with_capacity(256);
            Response::PortHeader(shared.config.port).encode(&mut out);
            let state = shared.state();
            for n in state.registry.nodes() {
                Response::NameLine {
                    name: &n.info.name,
                    port: n.info.port,
                }
                .encode(&mut out);
            }
            (Action::ReplyClose(out), Outcome::Ok)
        }
        Request::Dump => {
            let mut out = BytesMut::with_capacity(256);
            Response::PortHeader(shared.config.port).encode(&mut out);
            let state = shared.state();
            for n in state.registry.nodes() {
                Response::DumpActive {
                    name: &n.info.name,
                    port: n.info.port,
                    fd: n.fd,
                }
                .encode(&mut out);
            }
            for (name, o) in state.registry.old_names() {
                Response::DumpOld {
                    name,
                    port: o.port,
                    fd: o.fd,
                }
                .encode(&mut out);
            }
            (Action::ReplyClose(out), Outcome::Ok)
        }
        Request::Kill => kill(shared),
        Request::Stop { name } => stop(shared, &name),
    }
}

fn alive2(shared: &Shared, a: Alive2, caller: Caller) -> (Action, Outcome) {
    let hv = a.highest_version;
    let refuse = |reason, program: Program| {
        shared.metrics.refused(reason, program.as_str());
        let reply = Response::Alive2 {
            ok: false,
            creation: 99,
            highest_version: hv,
        }
        .to_bytes();
        (Action::ReplyKeep(reply, None), Outcome::Refused)
    };
    let name = match validate_alive2(&a) {
        Ok(n) => n.to_owned(),
        Err(e) => {
            warn!(error = %e, "registration refused");
            return refuse("invalid", Program::Erlang);
        }
    };
    let program = Program::of(&name);
    if let Some(range) = shared.config.dist_range
        && !range.contains(a.port)
    {
        if shared.first_refusal(program) {
            let then = if program.is_helper() {
                "; further refusals of this program are only counted \
                 (kube_epmd_registrations_refused_total)"
            } else {
                ""
            };
            warn!(
                node = %name,
                port = a.port,
                range = %range,
                program = program.as_str(),
                "registration refused: distribution port outside the pinned range {range}; {}{then}",
                program.advice(range)
            );
        } else {
            debug!(node = %name, port = a.port, "registration refused: port outside the range");
        }
        return refuse("port_outside_range", program);
    }
    let info = NodeInfo {
        port: a.port,
        node_type: a.node_type,
        protocol: a.protocol,
        highest_version: a.highest_version,
        lowest_version: a.lowest_version,
        name: name.clone(),
        extra: a.extra,
    };
    let registered = shared.state().register(info, caller.conn, caller.fd);
    match registered {
        Ok(creation) => {
            info!(node = %name, port = a.port, creation, "node registered");
            shared.metrics.registered_nodes.inc();
            let reply = Response::Alive2 {
                ok: true,
                creation,
                highest_version: hv,
            }
            .to_bytes();
            (Action::ReplyKeep(reply, Some(name)), Outcome::Ok)
        }
        Err(e) => {
            warn!(error = %e, "registration refused");
            refuse("name_in_use", program)
        }
    }
}

fn port_please2(shared: &Shared, name: &[u8]) -> (Action, Outcome) {
    // The codec has checked the name is UTF-8; a name that is not cannot be
    // registered either, so it is a miss.
    let name = std::str::from_utf8(name).unwrap_or_default();
    match shared.state().registry.get(name) {
        Some(info) => (
            Action::ReplyClose(Response::Port2Hit(info).to_bytes()),
            Outcome::Ok,
        ),
        None => (
            Action::ReplyClose(Response::Port2Miss.to_bytes()),
            Outcome::Miss,
        ),
    }
}

fn kill(shared: &Shared) -> (Action, Outcome) {
    let reg = shared.state().registry.len();
    let no = || {
        (
            Action::ReplyClose(Response::Kill { ok: false }.to_bytes()),
            Outcome::Refused,
        )
    };
    if reg > 0 && !shared.config.relaxed {
        warn!(registered = reg, "KILL_REQ refused: live nodes registered");
        return no();
    }
    match shared.config.kill {
        KillPolicy::Survive => {
            warn!(
                "KILL_REQ answered OK but not obeyed: a sidecar keeps running \
                 (its lifecycle belongs to Kubernetes; --allow-kill to exit)"
            );
            (
                Action::ReplyClose(Response::Kill { ok: true }.to_bytes()),
                Outcome::Ok,
            )
        }
        KillPolicy::Epmd => {
            info!("KILL_REQ accepted: stopping");
            (
                Action::ReplyExit(Response::Kill { ok: true }.to_bytes()),
                Outcome::Ok,
            )
        }
    }
}

fn stop(shared: &Shared, name: &[u8]) -> (Action, Outcome) {
    if !shared.config.relaxed {
        warn!("STOP_REQ refused: relaxed command check is off");
        return (Action::Close, Outcome::Dropped);
    }
    let name = String::from_utf8_lossy(name);
    // Unregister and close the holder's connection in one step: its place
    // in the held set exists from the moment it registered, so a STOP that
    // arrives before its reply is out still closes it.
    let stopped = shared.stop_node(&name);
    match stopped {
        Some(_) => {
            info!(node = %name, "node unregistered by STOP_REQ");
            shared.metrics.registered_nodes.dec();
            (
                Action::ReplyClose(Response::Stopped.to_bytes()),
                Outcome::Ok,
            )
        }
        None => (
            Action::ReplyClose(Response::StopNoExist.to_bytes()),
            Outcome::Refused,
        ),
    }
}
