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
//! One long-lived daemon state per configuration (per thread: the server's
//! state is single-threaded) is reused across inputs,
//! as a real daemon's is across connections (remembered names, creation
//! counters); each input leaves it as it found it: only `held` registered.
#![no_main]

use std::rc::Rc;
use std::sync::Arc;

use kube_epmd::codec::{NodeInfo, Request};
use kube_epmd::metrics::Metrics;
use kube_epmd::server::{
    Action, Caller, Config, FrameReader, KillPolicy, MAX_FRAME, Progress, Shared, dispatch,
};
use libfuzzer_sys::fuzz_target;

const HELD: &str = "held";

fn held() -> NodeInfo {
    NodeInfo::erlang_node(HELD, 4200)
}

/// The daemon state for the config bits of `flags` (relaxed, KILL policy).
fn daemon(flags: u8) -> Rc<Shared> {
    thread_local! {
        static DAEMONS: [Rc<Shared>; 4] = std::array::from_fn(|i| {
            let relaxed = i & 1 != 0;
            let sidecar = i & 2 != 0;
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
            Rc::new(Shared::new(config, Arc::new(Metrics::default())))
        });
    }
    let i = usize::from(flags & 1 != 0) | usize::from(flags & 4 != 0) << 1;
    DAEMONS.with(|d| d[i].clone())
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let shared = daemon(flags);
    if shared.state().registry.lookup(HELD).is_none() {
        shared
            .state()
            .register(held(), 1, 7)
            .expect("only held is ever left");
    }
    let peer = Caller {
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
    let (action, _) = dispatch(&shared, request, peer);
    if shared.config.kill == KillPolicy::Survive {
        assert!(
            !matches!(action, Action::ReplyExit(_)),
            "a sidecar must never exit on KILL_REQ"
        );
    }
    if let Action::ReplyKeep(_, Some(name)) = &action {
        assert!(peer.local, "registration from a non-local peer");
        assert!(shared.state().registry.lookup(name).is_some());
        shared.state().registry.unregister(name, peer.conn);
    }
    assert_eq!(
        shared.state().registry.lookup(HELD).is_some(),
        !stops_held,
        "held node registration changed"
    );
});
