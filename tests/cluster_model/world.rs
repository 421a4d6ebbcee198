//! The model's state: pods, containers, VMs, volumes and the clock, and the
//! canonical key that deduplicates states.

use std::sync::OnceLock;

use kube_epmd::cluster::facts::{PartitionHandling, Phase, Timing};
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

/// A set of acknowledged writes by id (bit `i`: write `i`); ids are in
/// the order the writes happened (renumbered, order kept, by
/// [`World::compact`]).
pub type Writes = u32;

/// What the database volume holds once Mnesia created a schema there.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Volume {
    /// The schema cookie (an id; a fresh schema gets a new one).
    pub cookie: u16,
    /// The schema's nodes (db_nodes).
    pub db: Mask,
    /// The acknowledged writes this copy holds.
    pub data: Writes,
    /// Nodes this node's Mnesia saw go down and has not met since.
    pub down: Mask,
}

/// What a write was, when it was acknowledged: which losses of it the
/// invariants allow.
#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord, Hash)]
pub enum Tag {
    /// No partition: acknowledged by the whole running cluster.
    Whole,
    /// During a partition (or with the sides still running apart after
    /// the heal), on the side that stays: a majority of the schema's
    /// living nodes (pause_minority), or the side the heal keeps
    /// (autoheal: more nodes, on a tie the lowest ordinal).
    Won,
    /// During the cut, on a side without a majority (pause_minority: the
    /// window between its Mnesia's nodedown and its pause) or on the side
    /// the heal gives up (autoheal).
    Minority,
    /// After the heal, on a side that runs apart and gives way.
    Loser,
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
    /// The entrypoint's paused flag on the volume (`.kube-epmd-paused`):
    /// written by Pause, removed once ejabberd is started again.
    pub paused: bool,
    /// The last stop was a Pause or a Rejoin (until ejabberd is started
    /// again): a copy that then replaces this node's data discards it on
    /// the plan's behalf.
    pub gave_way: bool,
    /// While a cut is in place: the nodes across it that this node's
    /// running Mnesia still counts as running with it (no nodedown yet),
    /// the same incarnation (`hung`) or one that has stopped since
    /// (`ghost`): a commit waits for them.
    pub hung: Mask,
    pub ghost: Mask,
    /// Running Mnesia nodes that a heal brought back into reach but that
    /// did not run together through the cut: nothing reconnects them at
    /// the Mnesia level until one of the two restarts its Mnesia.
    pub apart: Mask,
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
            paused: false,
            gave_way: false,
            hung: 0,
            ghost: 0,
            apart: 0,
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
    /// The newest acknowledged write that must survive (tag Whole or
    /// Won), by id; it is kept even when no volume holds it.
    pub last: Option<u8>,
    /// Every write id's tag: the ids with each tag but Whole.
    pub won: Writes,
    pub minority: Writes,
    pub loser: Writes,
    pub replicas: usize,
    /// Source of new cookie and lineage ids.
    pub next_id: u16,
    /// A node went down after others joined it but before it wrote its
    /// marker (the join window): violations after it are classified.
    pub window: bool,
    /// A network cut: the side that holds chat-0 (the others are on the
    /// other side). Both-way; a one-way cut is the same (module doc).
    pub cut: Option<Mask>,
    /// CLUSTER_PARTITION_HANDLING of every entrypoint.
    pub policy: PartitionHandling,
    /// pause_minority: the majority acknowledged a write while a node cut
    /// off from it still served (its Mnesia had not seen the nodedown that
    /// let the majority commit, and its entrypoint had not paused it yet).
    /// Deployments rule this order out (README "Network partitions": the
    /// pause, within CLUSTER_CHECK_INTERVAL plus a probe, comes before
    /// Mnesia's nodedown at 0.75-1.25 x net_ticktime); the model has no
    /// durations, so violations after it are classified.
    pub late_pause: bool,
    /// A cut came while a node's Mnesia was starting (its start was
    /// decided with every pod in reach): Mnesia then decides its load
    /// across the cut, which no plan sees. Violations after it are
    /// classified (known, open: module doc).
    pub start_in_cut: bool,
    /// A node loaded its own copy by Mnesia's orphan rule after
    /// CLUSTER_HOLD_MAX while a newer copy survived (documented).
    pub hold_max_load: bool,
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
    pub fn first_start(n: usize, policy: PartitionHandling) -> World {
        let mut w = World {
            nodes: vec![Node::absent(); n],
            now: 0,
            last: None,
            won: 0,
            minority: 0,
            loser: 0,
            replicas: n,
            next_id: 0,
            window: false,
            cut: None,
            policy,
            late_pause: false,
            start_in_cut: false,
            hold_max_load: false,
        };
        for k in 0..n {
            w.create_pod(k);
        }
        w
    }

    /// A full cluster in its steady state.
    pub fn steady(n: usize, policy: PartitionHandling) -> World {
        let mut w = World::first_start(n, policy);
        let all = (1 << n) as Mask - 1;
        for node in &mut w.nodes {
            node.phase = Phase::Running;
            node.vm = Vm::Started;
            node.marker = true;
            node.vol = Some(Volume {
                cookie: 0,
                db: all,
                data: 0,
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

    /// The network lets `k` and `j` talk (not on two sides of the cut).
    pub fn reach(&self, k: usize, j: usize) -> bool {
        self.cut
            .is_none_or(|a| (a & bit(k) != 0) == (a & bit(j) != 0))
    }

    /// The nodes on `k`'s side of the cut (every node without one).
    pub fn side_of(&self, k: usize) -> Mask {
        (0..self.n())
            .filter(|&j| self.reach(k, j))
            .fold(0, |m, j| m | bit(j))
    }

    /// The nodes whose Mnesia `k`'s Mnesia is connected to: running, same
    /// schema cookie, one in the other's schema, reachable through the
    /// network and not apart since a heal.
    pub fn connected(&self, k: usize) -> Mask {
        let Some(v) = self.nodes[k].vol else {
            return 0;
        };
        let mut m = 0;
        for (j, nj) in self.nodes.iter().enumerate() {
            if j == k || !nj.pod || !nj.vm.mnesia_runs() {
                continue;
            }
            if !self.reach(k, j) || self.nodes[k].apart & bit(j) != 0 || nj.apart & bit(k) != 0 {
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

    /// `mnesia:system_info(running_db_nodes)` on `k`: the nodes it is
    /// connected to, and those across the cut it has not seen go yet.
    pub fn running_view(&self, k: usize) -> Mask {
        let n = &self.nodes[k];
        self.cluster_of(k) | n.hung | n.ghost
    }

    /// A commit on `k`'s cluster waits for a node across the cut.
    pub fn hangs(&self, k: usize) -> bool {
        members(self.cluster_of(k)).any(|j| self.nodes[j].hung | self.nodes[j].ghost != 0)
    }

    /// The ids that must never be lost (tags Whole and Won).
    /// In autoheal the side that stays is decided at the heal (the most
    /// started nodes then): a write of the side that was bigger when it
    /// was written may be discarded (counted); only what the whole
    /// cluster acknowledged must survive there.
    pub fn durable(&self) -> Writes {
        match self.policy {
            PartitionHandling::PauseMinority => !(self.minority | self.loser),
            PartitionHandling::Autoheal => !(self.minority | self.loser | self.won),
        }
    }

    pub fn tag(&self, id: u8) -> Tag {
        let b = 1 << id;
        if self.minority & b != 0 {
            Tag::Minority
        } else if self.loser & b != 0 {
            Tag::Loser
        } else if self.won & b != 0 {
            Tag::Won
        } else {
            Tag::Whole
        }
    }

    /// A copy's version as the invariants of a single history compare
    /// them: 1 + its newest durable write (0: none). Without partitions
    /// this is the number of the last write it holds.
    pub fn version(&self, data: Writes) -> u32 {
        let d = data & self.durable();
        32 - d.leading_zeros()
    }

    /// Every write some volume holds.
    pub fn held(&self) -> Writes {
        self.nodes
            .iter()
            .filter_map(|n| n.vol.map(|v| v.data))
            .fold(0, |m, d| m | d)
    }

    /// Drop the ids nobody holds (but the last durable one) and renumber
    /// the others in order: done before a write takes the next id.
    pub fn compact(&mut self) {
        let live = self.held() | self.last.map_or(0, |l| 1 << l);
        let map = |m: Writes| -> Writes {
            let mut out = 0;
            let mut j = 0;
            for i in 0..32 {
                if live & (1 << i) != 0 {
                    if m & (1 << i) != 0 {
                        out |= 1 << j;
                    }
                    j += 1;
                }
            }
            out
        };
        for node in &mut self.nodes {
            if let Some(v) = &mut node.vol {
                v.data = map(v.data);
            }
        }
        self.won = map(self.won);
        self.minority = map(self.minority);
        self.loser = map(self.loser);
        self.last = self
            .last
            .map(|l| (live & ((1u32 << l) - 1)).count_ones() as u8);
    }

    /// The id of a new write (after compaction: one past the live ones).
    pub fn next_write(&mut self) -> u8 {
        self.compact();
        let live = self.held() | self.last.map_or(0, |l| 1 << l);
        let id = 32 - live.leading_zeros();
        assert!(id < 32, "more than 32 live writes");
        id as u8
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
        self.version(self.held())
    }

    /// The newest acknowledged durable write is on some volume.
    pub fn acked_survives(&self) -> bool {
        self.last.is_none_or(|l| self.held() & (1 << l) != 0)
    }

    /// Only what the plan can tell apart, plus the structural state: time
    /// is reduced to which side of each threshold the plan compares with
    /// (CLUSTER_JOIN_TIMEOUT, HOLD_MAX, LOAD_GRACE, STALE_SECS, SETTLE_SECS)
    /// each age is, and only where the plan reads it; ids are renumbered
    /// in order of appearance; the writes are listed in order, each by
    /// the volumes that hold it and its tag (ids nobody holds dropped,
    /// but the last durable one).
    pub fn key(&self) -> Vec<u8> {
        let mut cookies: Vec<u16> = Vec::new();
        let mut lineages: Vec<u16> = Vec::new();
        let mut key = Vec::with_capacity(4 + 10 * self.n());
        key.push(self.replicas as u8);
        key.push(
            self.window as u8
                | (self.cut.is_some() as u8) << 1
                | (self.late_pause as u8) << 2
                | (self.start_in_cut as u8) << 3
                | (self.hold_max_load as u8) << 4,
        );
        key.push(self.cut.unwrap_or(0));
        let live = self.held() | self.last.map_or(0, |l| 1 << l);
        for id in 0..32u8 {
            if live & (1 << id) == 0 {
                continue;
            }
            let holders = (0..self.n())
                .filter(|&k| self.nodes[k].vol.is_some_and(|v| v.data & (1 << id) != 0))
                .fold(0, |m, k| m | bit(k));
            key.push(holders);
            key.push(self.tag(id) as u8 | ((self.last == Some(id)) as u8) << 4);
        }
        key.push(0xff);
        for n in &self.nodes {
            key.push(
                n.pod as u8
                    | (n.phase as u8) << 1
                    | (n.vm as u8) << 3
                    | (n.marker as u8) << 6
                    | (n.vol.is_some() as u8) << 7,
            );
            if let Some(v) = n.vol {
                key.extend([intern(&mut cookies, v.cookie), v.db, v.down]);
            } else {
                key.extend([0, 0, 0]);
            }
            key.extend([
                n.paused as u8 | (n.gave_way as u8) << 1,
                n.hung,
                n.ghost,
                n.apart,
            ]);
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
            "t={} last durable write={:?} replicas={} policy={:?}",
            self.now, self.last, self.replicas, self.policy
        );
        if let Some(a) = self.cut {
            s += &format!(
                " CUT {:?} | {:?}",
                members(a).collect::<Vec<_>>(),
                members(!a & ((1u16 << self.n()) - 1) as Mask).collect::<Vec<_>>()
            );
        }
        for (k, n) in self.nodes.iter().enumerate() {
            let vol = match n.vol {
                None => "no volume".to_string(),
                Some(v) => format!(
                    "cookie#{} db={:?} writes={} down={:?}",
                    v.cookie,
                    members(v.db).collect::<Vec<_>>(),
                    self.writes(v.data),
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
            let flags = [(n.paused, "paused"), (n.gave_way, "gave-way")];
            for (on, f) in flags {
                if on {
                    s += &format!(" {f}");
                }
            }
            for (m, f) in [(n.hung, "hung"), (n.ghost, "ghost"), (n.apart, "apart")] {
                if m != 0 {
                    s += &format!(" {f}={:?}", members(m).collect::<Vec<_>>());
                }
            }
        }
        s
    }
}

impl World {
    /// Write ids with their tags, for traces: `w3` (Whole), `w3+` (Won),
    /// `w3-` (Minority), `w3~` (Loser).
    pub fn writes(&self, data: Writes) -> String {
        let ids: Vec<String> = (0..32u8)
            .filter(|&i| data & (1 << i) != 0)
            .map(|i| {
                let t = match self.tag(i) {
                    Tag::Whole => "",
                    Tag::Won => "+",
                    Tag::Minority => "-",
                    Tag::Loser => "~",
                };
                format!("w{i}{t}")
            })
            .collect();
        format!("[{}]", ids.join(" "))
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
