//! The model's state: pods, containers, VMs, volumes and the clock, and the
//! canonical key that deduplicates states.

use std::sync::OnceLock;

use kube_epmd::cluster::facts::{Phase, Timing};
use kube_epmd::cluster::nodes::Naming;
use kube_epmd::cluster::plan::{SETTLE_SECS, STALE_SECS};

/// A set of nodes by ordinal (at most 8).
pub type Mask = u8;

pub const fn bit(k: usize) -> Mask {
    1 << k
}

pub fn members(m: Mask) -> impl Iterator<Item = usize> {
    (0..8).filter(move |k| m & bit(*k) != 0)
}

pub const MAX_NODES: usize = 5;

/// Node `k`'s Erlang name, as the StatefulSet `chat` gives it.
pub fn name(k: usize) -> &'static str {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    &NAMES.get_or_init(|| {
        (0..MAX_NODES)
            .map(|k| format!("ejabberd@chat-{k}.xmpp-internal-svc"))
            .collect()
    })[k]
}

/// The ordinal of a node name the plan gave back.
pub fn ordinal(node: &str) -> usize {
    (0..MAX_NODES)
        .find(|&k| name(k) == node)
        .unwrap_or_else(|| panic!("plan named {node:?}, not a model node"))
}

pub fn naming() -> &'static Naming {
    static N: OnceLock<Naming> = OnceLock::new();
    N.get_or_init(|| Naming::new(name(0), "chat-0").expect("model naming"))
}

/// The ejabberd VM of a container.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Vm {
    Off,
    /// VM up, Mnesia not started yet.
    Starting,
    /// Mnesia runs and waits for another node's tables.
    Waiting,
    /// Tables loaded, ejabberd application not started yet.
    Loaded,
    Started,
}

impl Vm {
    pub fn mnesia_runs(self) -> bool {
        matches!(self, Vm::Waiting | Vm::Loaded | Vm::Started)
    }
    pub fn has_tables(self) -> bool {
        matches!(self, Vm::Loaded | Vm::Started)
    }
}

/// What the database volume holds once Mnesia created a schema there.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Volume {
    /// The schema cookie (an id; a fresh schema gets a new one).
    pub cookie: u16,
    /// The schema's nodes (db_nodes).
    pub db: Mask,
    /// The last acknowledged write this copy holds (0: none).
    pub version: u32,
    /// Nodes this node's Mnesia saw go down and has not met since.
    pub down: Mask,
}

/// Why the entrypoint last started this node's ejabberd (from the plan's
/// reason): classifies an orphan load that discards newer data.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StartWhy {
    Other,
    /// hold_lowest: "every other node waits"; `saw_me`: a waiting peer had
    /// this node in its down records (this copy is older than that peer's).
    HoldWaiters {
        saw_me: bool,
    },
    /// hold_lowest: CLUSTER_HOLD_MAX ran out.
    HoldMax,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub pod: bool,
    pub phase: Phase,
    pub vm: Vm,
    pub vol: Option<Volume>,
    /// The marker file on the volume ("clustered").
    pub marker: bool,
    /// Which load event the loaded tables come from (meaningful while the
    /// tables are loaded): an own load starts a lineage, a copy inherits.
    pub lineage: u16,
    /// Entrypoint start (since_start), phase start, VM start (uptime).
    pub t_start: u64,
    pub t_phase: u64,
    pub t_vm: u64,
    /// When the entrypoint / Mnesia next acts.
    pub next_ep: u64,
    pub next_mn: u64,
    pub start_why: StartWhy,
}

impl Node {
    fn absent() -> Node {
        Node {
            pod: false,
            phase: Phase::Boot,
            vm: Vm::Off,
            vol: None,
            marker: false,
            lineage: 0,
            t_start: 0,
            t_phase: 0,
            t_vm: 0,
            next_ep: 0,
            next_mn: 0,
            start_why: StartWhy::Other,
        }
    }

    pub fn cookie(&self) -> Option<u16> {
        self.vol.map(|v| v.cookie)
    }
}

#[derive(Clone, Debug)]
pub struct World {
    pub nodes: Vec<Node>,
    pub now: u64,
    /// The newest acknowledged write.
    pub acked: u32,
    pub replicas: usize,
    /// Source of new cookie and lineage ids.
    pub next_id: u16,
    /// A node went down after others joined it but before it wrote its
    /// marker (the join window): violations after it are classified.
    pub window: bool,
}

impl World {
    pub fn n(&self) -> usize {
        self.nodes.len()
    }

    pub fn fresh_id(&mut self) -> u16 {
        self.next_id += 1;
        self.next_id
    }

    /// Every pod created at once, empty volumes (first start, Parallel).
    pub fn first_start(n: usize) -> World {
        let mut w = World {
            nodes: vec![Node::absent(); n],
            now: 0,
            acked: 0,
            replicas: n,
            next_id: 0,
            window: false,
        };
        for k in 0..n {
            w.create_pod(k);
        }
        w
    }

    /// A full cluster in its steady state.
    pub fn steady(n: usize) -> World {
        let mut w = World::first_start(n);
        let all = (1 << n) as Mask - 1;
        for node in &mut w.nodes {
            node.phase = Phase::Running;
            node.vm = Vm::Started;
            node.marker = true;
            node.vol = Some(Volume {
                cookie: 0,
                db: all,
                version: 0,
                down: 0,
            });
        }
        w
    }

    pub fn vol(&self, k: usize) -> Volume {
        self.nodes[k]
            .vol
            .unwrap_or_else(|| panic!("chat-{k} has no schema"))
    }

    /// The nodes whose Mnesia `k`'s Mnesia is connected to: running, same
    /// schema cookie, one in the other's schema (no partitions here).
    pub fn connected(&self, k: usize) -> Mask {
        let Some(v) = self.nodes[k].vol else {
            return 0;
        };
        let mut m = 0;
        for (j, nj) in self.nodes.iter().enumerate() {
            if j == k || !nj.pod || !nj.vm.mnesia_runs() {
                continue;
            }
            let Some(vj) = nj.vol else { continue };
            // One listing the other is enough: Mnesia connects to every
            // node of its schema, and the two merge their schemas.
            if vj.cookie == v.cookie && (vj.db & bit(k) != 0 || v.db & bit(j) != 0) {
                m |= bit(j);
            }
        }
        m
    }

    pub fn cluster_of(&self, k: usize) -> Mask {
        bit(k) | self.connected(k)
    }

    pub fn create_pod(&mut self, k: usize) {
        let now = self.now;
        let node = &mut self.nodes[k];
        node.pod = true;
        node.vm = Vm::Off;
        self.restart_container(k);
        self.nodes[k].next_ep = now + 1;
    }

    /// The container (re)starts: the entrypoint begins in Boot.
    pub fn restart_container(&mut self, k: usize) {
        let now = self.now;
        let node = &mut self.nodes[k];
        node.phase = Phase::Boot;
        node.t_start = now;
        node.t_phase = now;
        node.next_ep = now + 1;
        node.start_why = StartWhy::Other;
    }

    /// The newest version on any volume that still exists.
    pub fn newest_surviving(&self) -> u32 {
        self.nodes
            .iter()
            .filter_map(|n| n.vol.map(|v| v.version))
            .max()
            .unwrap_or(0)
    }

    pub fn acked_survives(&self) -> bool {
        self.acked == 0 || self.newest_surviving() == self.acked
    }

    /// Only what the plan can tell apart, plus the structural state: time
    /// is reduced to which side of each threshold the plan compares with
    /// (CLUSTER_JOIN_TIMEOUT, HOLD_MAX, LOAD_GRACE, STALE_SECS, SETTLE_SECS)
    /// each age is, and only where the plan reads it; ids are renumbered
    /// in order of appearance and versions replaced by their rank.
    pub fn key(&self) -> Vec<u8> {
        let mut cookies: Vec<u16> = Vec::new();
        let mut lineages: Vec<u16> = Vec::new();
        let mut versions: Vec<u32> = self
            .nodes
            .iter()
            .filter_map(|n| n.vol.map(|v| v.version))
            .chain([self.acked])
            .collect();
        versions.sort_unstable();
        versions.dedup();
        let rank = |v: u32| versions.binary_search(&v).expect("ranked") as u8;
        let mut key = Vec::with_capacity(2 + 7 * self.n());
        key.push(self.replicas as u8);
        key.push(rank(self.acked) | (self.window as u8) << 7);
        for n in &self.nodes {
            key.push(
                n.pod as u8
                    | (n.phase as u8) << 1
                    | (n.vm as u8) << 3
                    | (n.marker as u8) << 6
                    | (n.vol.is_some() as u8) << 7,
            );
            if let Some(v) = n.vol {
                key.extend([
                    intern(&mut cookies, v.cookie),
                    v.db,
                    rank(v.version),
                    v.down,
                ]);
            } else {
                key.extend([0, 0, 0, 0]);
            }
            let lineage = if n.vm.has_tables() {
                intern(&mut lineages, n.lineage)
            } else {
                0
            };
            key.push(lineage);
            key.push(self.buckets(n));
        }
        key
    }

    fn buckets(&self, n: &Node) -> u8 {
        if !n.pod {
            return 0;
        }
        let t = Timing::default();
        let age = |t0: u64| self.now - t0;
        let mut b = 0;
        if n.phase != Phase::Running && !n.marker && age(n.t_start) >= t.join_timeout {
            b |= 1;
        }
        let sp = age(n.t_phase);
        let phase = match (n.phase, n.marker) {
            (Phase::Boot, true) => sp >= t.hold_max,
            (Phase::Boot, false) => sp >= t.load_grace,
            (Phase::Joining, _) => sp >= STALE_SECS,
            (Phase::Running, _) => false,
        };
        b |= (phase as u8) << 1;
        if n.vm == Vm::Waiting {
            let up = age(n.t_vm);
            let ub = if up >= t.load_grace {
                2
            } else if up >= SETTLE_SECS {
                1
            } else {
                0
            };
            b |= ub << 2;
        }
        b
    }

    /// One line per pod: what a human would look at in a trace.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "t={} acked=v{} replicas={}",
            self.now, self.acked, self.replicas
        );
        for (k, n) in self.nodes.iter().enumerate() {
            let vol = match n.vol {
                None => "no volume".to_string(),
                Some(v) => format!(
                    "cookie#{} db={:?} v{} down={:?}",
                    v.cookie,
                    members(v.db).collect::<Vec<_>>(),
                    v.version,
                    members(v.down).collect::<Vec<_>>()
                ),
            };
            s += &format!(
                "\n    chat-{k}: {} {:?} vm={:?} marker={} {vol}",
                if n.pod { "pod" } else { "NO POD" },
                n.phase,
                n.vm,
                n.marker
            );
        }
        s
    }
}

fn intern(seen: &mut Vec<u16>, x: u16) -> u8 {
    match seen.iter().position(|&y| y == x) {
        Some(i) => i as u8 + 1,
        None => {
            seen.push(x);
            seen.len() as u8
        }
    }
}
