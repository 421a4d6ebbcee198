//! The per-connection state machine without sockets: arbitrary chunks go
//! through the real FrameReader exactly as the connection reads them, and a
//! complete request goes through the real dispatch (policy + registry) of a
//! daemon that already holds one registered node.
//!
//! Input: one flags byte (bit 0 relaxed command check, bit 1 local peer,
//! bit 2 sidecar KILL policy), then chunks as [len][len bytes]...
//!
//! Invariants: the reader never asks for zero bytes while it wants more,
//! never accepts more than one frame's worth, and the held node stays
//! registered unless a local, relaxed STOP named it.
//!
//! One long-lived daemon state per configuration is reused across inputs,
//! as a real daemon's is across connections (remembered names, creation
//! counters); each input leaves it as it found it: only `held` registered.
#![no_main]

use std::sync::{Arc, OnceLock};

use kube_epmd::codec::{NodeInfo, Request};
use kube_epmd::metrics::Metrics;
use kube_epmd::server::{
    Action, Config, FrameReader, KillPolicy, MAX_FRAME, Peer, Progress, Shared, dispatch,
};
use libfuzzer_sys::fuzz_target;

const HELD: &str = "held";

fn held() -> NodeInfo {
    NodeInfo::erlang_node(HELD, 4200)
}

/// The daemon state for the config bits of `flags` (relaxed, KILL policy).
fn daemon(flags: u8) -> &'static Shared {
    static DAEMONS: [OnceLock<Shared>; 4] = [const { OnceLock::new() }; 4];
    let relaxed = flags & 1 != 0;
    let sidecar = flags & 4 != 0;
    DAEMONS[usize::from(relaxed) | usize::from(sidecar) << 1].get_or_init(|| {
        let config = Config {
            relaxed,
            kill: if sidecar {
                KillPolicy::Survive
            } else {
                KillPolicy::Epmd
            },
            // epmd -d's short memory of unregistered names (5, not 1000):
            // otherwise every DUMP input formats a thousand lines.
            debug: true,
            ..Config::default()
        };
        Shared::new(config, Arc::new(Metrics::default()))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let shared = daemon(flags);
    if shared.registry.lookup(HELD).is_none() {
        shared
            .registry
            .register(held(), 1, 7)
            .expect("only held is ever left");
    }
    let peer = Peer {
        conn: 2,
        fd: 8,
        local: flags & 2 != 0,
    };

    let mut reader = FrameReader::new();
    let mut fed = 0usize;
    let request = loop {
        let Some((&len, tail)) = rest.split_first() else {
            return; // the client went away mid-request
        };
        let take = (len as usize).min(tail.len());
        let room = reader.room();
        assert!(room > 0 && room <= MAX_FRAME);
        // The connection never reads more than `room` at once.
        let chunk = &tail[..take.min(room)];
        rest = &tail[take..];
        if chunk.is_empty() {
            return; // a zero-byte read is EOF
        }
        fed += chunk.len();
        assert!(fed <= MAX_FRAME);
        match reader.feed(chunk) {
            Progress::More => assert_eq!(reader.received(), fed),
            Progress::Request(r) => break r,
            Progress::Reject(_) => return,
        }
    };

    let stops_held =
        matches!(&request, Request::Stop { name } if name == HELD.as_bytes()) && flags & 3 == 3;
    let (action, _) = dispatch(shared, request, peer);
    if shared.config.kill == KillPolicy::Survive {
        assert!(
            !matches!(action, Action::ReplyExit(_)),
            "a sidecar must never exit on KILL_REQ"
        );
    }
    if let Action::ReplyKeep(_, Some(name)) = &action {
        assert!(peer.local, "registration from a non-local peer");
        assert!(shared.registry.lookup(name).is_some());
        shared.registry.unregister(name, peer.conn);
    }
    assert_eq!(
        shared.registry.lookup(HELD).is_some(),
        !stops_held,
        "held node registration changed"
    );
});
