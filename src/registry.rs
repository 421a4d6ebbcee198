//! The node registry: which names are alive on which port, and the creation
//! numbers of names seen before. Plain data behind a small API, owned by
//! the EPMD server's one thread (no lock: nothing else touches it); the
//! server decides who may call what.
//!
//! Semantics follow `node_reg2` in OTP's epmd_srv.c:
//! - a name is registered at most once; a second ALIVE2 for it fails;
//! - a name never seen gets creation `now + 1` (never below 4), a name
//!   remembered from an earlier registration gets its old counter + 1;
//! - nodes with HighestVersion < 6 see `counter % 3 + 1` (creations 1..3);
//! - up to 1000 unregistered names are remembered (5 when debugging), oldest
//!   forgotten first.

use std::collections::VecDeque;
use std::collections::hash_map::Entry;
use std::time::{SystemTime, UNIX_EPOCH};

use rustc_hash::FxHashMap;
use thiserror::Error;

use crate::codec::{NodeInfo, X_RESP_MIN_VERSION};

/// A table keyed by node name, hashed by FxHash (rustc-hash), not the
/// standard SipHash: several name hashes per registration made SipHash a
/// tenth of a registration's instructions. A keyed hash guards a table
/// against keys chosen to collide; the keys here are registered names, and
/// only local clients can register (ALIVE2 from another host is refused),
/// while lookups from anywhere only probe, adding nothing.
type ByName<V> = FxHashMap<String, V>;

/// Identifies the connection that holds a registration.
pub type ConnId = u64;

/// Names remembered after unregistration, as epmd's MAX_UNREG_COUNT.
pub const MAX_UNREG: usize = 1000;
/// The same limit when running with `-d`, as epmd's DEBUG_MAX_UNREG_COUNT.
pub const DEBUG_MAX_UNREG: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RegisterError {
    #[error("node name {0:?} is already registered")]
    AlreadyRegistered(String),
}

/// A live registration.
#[derive(Debug, Clone)]
pub struct Node {
    pub info: NodeInfo,
    pub conn: ConnId,
    /// The holding socket's file descriptor, shown by DUMP as epmd does.
    pub fd: i32,
    counter: u32,
    /// Registration order, newest highest: NAMES and DUMP list newest first.
    seq: u64,
}

impl Node {
    /// The creation this node was given, as the wire reply carries it.
    pub fn creation(&self) -> u32 {
        creation_for(self.counter, self.info.highest_version)
    }
}

fn creation_for(counter: u32, highest_version: u16) -> u32 {
    if highest_version >= X_RESP_MIN_VERSION {
        counter
    } else {
        counter % 3 + 1
    }
}

/// What is left of a registration that ended: its name and details moved
/// to the remembered names (no copy of the name is made).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone {
    pub conn: ConnId,
    pub port: u16,
}

/// A remembered, no longer registered name (the name is its key).
#[derive(Debug, Clone)]
pub struct OldName {
    pub port: u16,
    pub fd: i32,
    counter: u32,
    /// When it was remembered: tells its current entry in `order` apart
    /// from stale ones left by an earlier unregistration.
    stamp: u64,
}

#[derive(Debug, Default)]
struct Unregistered {
    /// (stamp, name), oldest first. Re-registering a name only removes it
    /// from `by_name` (constant time; a node restarting must not scan a
    /// thousand names): its entry here goes stale and is skipped.
    order: VecDeque<(u64, String)>,
    by_name: ByName<OldName>,
    next_stamp: u64,
}

impl Unregistered {
    fn is_current(&self, stamp: u64, name: &str) -> bool {
        self.by_name.get(name).is_some_and(|o| o.stamp == stamp)
    }
}

#[derive(Debug)]
pub struct Registry {
    live: ByName<Node>,
    old: Unregistered,
    max_unreg: usize,
    seq: u64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(MAX_UNREG)
    }
}

fn bump(counter: u32) -> u32 {
    counter.wrapping_add(1).max(4)
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

impl Registry {
    pub fn new(max_unreg: usize) -> Self {
        Registry {
            live: ByName::default(),
            old: Unregistered::default(),
            max_unreg,
            seq: 0,
        }
    }

    /// Register `info` for connection `conn`; returns the creation to report.
    pub fn register(
        &mut self,
        info: NodeInfo,
        conn: ConnId,
        fd: i32,
    ) -> Result<u32, RegisterError> {
        let old = &mut self.old;
        match self.live.entry(info.name.clone()) {
            Entry::Occupied(_) => Err(RegisterError::AlreadyRegistered(info.name)),
            Entry::Vacant(slot) => {
                let counter = match old.by_name.remove(&info.name) {
                    Some(prev) => bump(prev.counter),
                    None => bump(unix_now()),
                };
                let seq = self.seq;
                self.seq += 1;
                let node = Node {
                    info,
                    conn,
                    fd,
                    counter,
                    seq,
                };
                let creation = node.creation();
                slot.insert(node);
                Ok(creation)
            }
        }
    }

    /// Forget the registration held by `conn` for `name`, if that is still it.
    pub fn unregister(&mut self, name: &str, conn: ConnId) -> Option<Gone> {
        // One lookup in the usual case; the name held by another connection
        // (re-registered after a STOP) is rare and put back.
        let (key, node) = self.live.remove_entry(name)?;
        if node.conn != conn {
            self.live.insert(key, node);
            return None;
        }
        Some(self.remember(key, node))
    }

    /// Forget `name` whoever holds it (STOP_REQ); the caller closes its socket.
    pub fn unregister_name(&mut self, name: &str) -> Option<Gone> {
        let (key, node) = self.live.remove_entry(name)?;
        Some(self.remember(key, node))
    }

    /// Remember `node`, registered as `key` (its map key and its own copy
    /// of the name are both reused, not copied).
    fn remember(&mut self, key: String, node: Node) -> Gone {
        let max_unreg = self.max_unreg;
        let old = &mut self.old;
        // epmd keeps at most max_unreg + 1 entries before stealing the oldest.
        while old.by_name.len() > max_unreg {
            let Some((stamp, gone)) = old.order.pop_front() else {
                break;
            };
            if old.is_current(stamp, &gone) {
                old.by_name.remove(&gone);
            }
        }
        // Stale entries are dropped in bulk once they outnumber the live
        // ones, so `order` stays within a constant factor of the limit.
        if old.order.len() > 2 * (max_unreg + 1) + 16 {
            let by_name = &old.by_name;
            old.order
                .retain(|(stamp, n)| by_name.get(n).is_some_and(|o| o.stamp == *stamp));
        }
        let stamp = old.next_stamp;
        old.next_stamp += 1;
        let gone = Gone {
            conn: node.conn,
            port: node.info.port,
        };
        old.by_name.insert(
            key,
            OldName {
                port: node.info.port,
                fd: node.fd,
                counter: node.counter,
                stamp,
            },
        );
        old.order.push_back((stamp, node.info.name));
        gone
    }

    pub fn lookup(&self, name: &str) -> Option<NodeInfo> {
        self.live.get(name).map(|n| n.info.clone())
    }

    /// The node registered as `name`, borrowed.
    pub fn get(&self, name: &str) -> Option<&NodeInfo> {
        self.live.get(name).map(|n| &n.info)
    }

    /// Live nodes, newest registration first (borrowed: NAMES formats them
    /// straight into its reply).
    pub fn nodes(&self) -> Vec<&Node> {
        let mut v: Vec<&Node> = self.live.values().collect();
        v.sort_unstable_by_key(|n| std::cmp::Reverse(n.seq));
        v
    }

    /// Remembered names, oldest first (DUMP's order).
    pub fn old_names(&self) -> impl Iterator<Item = (&str, &OldName)> {
        self.old.order.iter().filter_map(|(stamp, n)| {
            self.old
                .by_name
                .get(n)
                .filter(|o| o.stamp == *stamp)
                .map(|o| (n.as_str(), o))
        })
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, port: u16, hv: u16) -> NodeInfo {
        NodeInfo {
            highest_version: hv,
            ..NodeInfo::erlang_node(name, port)
        }
    }

    #[test]
    fn names_are_unique_and_newest_first() {
        let mut r = Registry::default();
        r.register(info("a", 1, 6), 1, 10).unwrap();
        r.register(info("b", 2, 6), 2, 11).unwrap();
        assert_eq!(
            r.register(info("a", 3, 6), 3, 12),
            Err(RegisterError::AlreadyRegistered("a".into()))
        );
        let names: Vec<_> = r
            .nodes()
            .into_iter()
            .map(|n| n.info.name.as_str())
            .collect();
        assert_eq!(names, ["b", "a"]);
        assert_eq!(r.lookup("a").map(|n| n.port), Some(1));
    }

    #[test]
    fn creation_starts_at_time_and_bumps_on_reregistration() {
        let mut r = Registry::default();
        let before = unix_now();
        let c1 = r.register(info("a", 1, 6), 1, 10).unwrap();
        assert!(c1 > before && c1 <= unix_now() + 1, "c1={c1}");
        assert!(r.unregister("a", 1).is_some());
        let c2 = r.register(info("a", 1, 6), 2, 10).unwrap();
        assert_eq!(c2, c1 + 1);
        // an old-protocol node sees the 1..3 form
        r.unregister("a", 2);
        let c3 = r.register(info("a", 1, 5), 3, 10).unwrap();
        assert_eq!(c3, (c1 + 2) % 3 + 1);
    }

    #[test]
    fn unregister_needs_the_holding_connection() {
        let mut r = Registry::default();
        r.register(info("a", 1, 6), 1, 10).unwrap();
        assert!(r.unregister("a", 2).is_none());
        assert_eq!(r.len(), 1);
        assert!(r.unregister_name("a").is_some());
        assert!(r.is_empty());
    }

    #[test]
    fn reregistered_names_leave_the_remembered_list_in_order() {
        let mut r = Registry::new(3);
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            r.register(info(n, 1, 6), i as u64, 10).unwrap();
            r.unregister(n, i as u64);
        }
        // b comes back, then goes again: it is now the newest old name.
        r.register(info("b", 1, 6), 10, 10).unwrap();
        let names = |r: &Registry| {
            r.old_names()
                .map(|(n, _)| n.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&r), ["a", "c"]);
        r.unregister("b", 10);
        assert_eq!(names(&r), ["a", "c", "b"]);
        // Churning one name many times keeps the bookkeeping bounded.
        for i in 0..1000u64 {
            r.register(info("b", 1, 6), 100 + i, 10).unwrap();
            r.unregister("b", 100 + i);
        }
        assert_eq!(names(&r), ["a", "c", "b"]);
        assert!(r.old.order.len() <= 2 * 4 + 16);
    }

    #[test]
    fn remembers_a_bounded_number_of_old_names() {
        let mut r = Registry::new(5);
        for i in 0..20u64 {
            let n = format!("n{i}");
            r.register(info(&n, 1, 6), i, 10).unwrap();
            r.unregister(&n, i);
        }
        let old: Vec<_> = r.old_names().collect();
        assert_eq!(old.len(), 6);
        assert_eq!(old.last().map(|(n, _)| *n), Some("n19"));
    }
}
