//! Mnesia's rules as the model has them: going down is recorded by the
//! connected nodes, a start loads from a peer, from its own disc (went
//! down last, or the orphan rule, or a forced load) or waits, and a node
//! that meets a schema node running a different cookie stops.

use super::world::{Mask, StartWhy, Tag, Vm, Volume, World, Writes, bit, members};

/// Why a node loaded its own copy instead of copying from a peer.
#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord, Hash)]
pub enum Cause {
    /// A new, empty schema (nothing to lose).
    Fresh,
    /// It saw every other schema node go down: it went down last.
    LastDown,
    /// Every schema node runs Mnesia, none has loaded: the lowest loads.
    Orphan,
    /// The plan had it force-loaded.
    ForceLoad,
}

/// Who is to blame for an own load that discards a newer surviving copy.
#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord, Hash)]
pub enum Blame {
    /// Mnesia's own rule, with nothing the entrypoint could have known.
    Mnesia,
    /// The orphan rule after CLUSTER_HOLD_MAX ran out (documented).
    HoldMax,
    /// A decision of plan.rs (a planned force-load, or the lowest node
    /// released by "every other node waits" although a waiting peer saw
    /// it go down, so its copy was known to be older).
    Plan,
}

#[derive(Clone, Debug)]
pub struct OwnLoad {
    pub cause: Cause,
    /// Set when a newer copy of the same schema survives elsewhere.
    pub blame: Option<Blame>,
}

/// How a write was lost (the last copy holding it replaced).
#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord, Hash)]
pub enum Discard {
    /// A node that paused or rejoined (the plan's doing) copied the tables
    /// over its own.
    GaveWay,
    /// A node restarted otherwise (killed, deleted, its Mnesia's own rule)
    /// copied over its own.
    Restarted,
}

/// What happened during one transition, for the invariants and traces.
#[derive(Default)]
pub struct Notes {
    /// Writes lost by a copy over the last copy holding them: (tag, how).
    pub discards: Vec<(Tag, Discard)>,
    /// A paused node loaded its own copy while another node of its schema
    /// had the tables.
    pub paused_own_load: u32,
    pub own_loads: Vec<OwnLoad>,
    /// (node, it had a database) per Fail action.
    pub fails: Vec<(usize, bool)>,
    pub incompatible: u32,
    pub set_asides: u32,
    /// Set-asides of a copy newer than every other surviving one.
    pub set_aside_newest: u32,
    pub log: Option<Vec<String>>,
}

impl Notes {
    pub fn logging() -> Notes {
        Notes {
            log: Some(Vec::new()),
            ..Notes::default()
        }
    }

    pub fn say(&mut self, now: u64, line: impl FnOnce() -> String) {
        if let Some(log) = &mut self.log {
            log.push(format!("t={now:>4} {}", line()));
        }
    }

    pub fn worst_blame(&self) -> Option<Blame> {
        self.own_loads.iter().filter_map(|l| l.blame).max()
    }
}

/// The nodes in `set` go down at once (stop, kill, machine failure): each
/// running Mnesia connected to one of them, and not going down with it,
/// records it. Nodes in the set record nothing of each other.
///
/// Across a cut nobody hears of it: a node that still counted one of them
/// as running keeps counting it (a ghost) until its own nodedown. Nodes
/// apart since a heal forget the relation (it ends with a restart).
pub fn go_down(w: &mut World, set: Mask) {
    let mut records = vec![0 as Mask; w.n()];
    for k in members(set) {
        if w.nodes[k].vm.mnesia_runs() {
            for j in members(w.connected(k) & !set) {
                records[j] |= bit(k);
            }
        }
    }
    for (j, r) in records.into_iter().enumerate() {
        if let Some(v) = &mut w.nodes[j].vol {
            v.down |= r;
        }
    }
    for node in &mut w.nodes {
        node.ghost |= node.hung & set;
        node.hung &= !set;
        node.apart &= !set;
    }
    for k in members(set) {
        let node = &mut w.nodes[k];
        node.hung = 0;
        node.ghost = 0;
        node.apart = 0;
    }
    // The join window: a node others joined has not written its marker
    // yet, and some node goes down.
    if w.nodes.iter().any(|n| {
        n.pod && n.vm.mnesia_runs() && !n.marker && n.vol.is_some_and(|v| v.db.count_ones() > 1)
    }) {
        w.window = true;
    }
    for k in members(set) {
        w.nodes[k].vm = Vm::Off;
    }
}

/// Two running nodes meet: each forgets it saw the other go down.
fn meet(w: &mut World, k: usize, peers: Mask) {
    for j in members(peers) {
        if let Some(v) = &mut w.nodes[j].vol {
            v.down &= !bit(k);
        }
        if let Some(v) = &mut w.nodes[k].vol {
            v.down &= !bit(j);
        }
    }
}

/// Mnesia starts on `k` (its VM is up): the load decision is made on the
/// down records as they were before meeting anyone.
pub fn start(w: &mut World, k: usize, notes: &mut Notes) {
    match w.nodes[k].vol {
        None => {
            let cookie = w.fresh_id();
            w.nodes[k].vol = Some(Volume {
                cookie,
                db: bit(k),
                data: 0,
                down: 0,
            });
            own_load(w, k, Cause::Fresh, notes);
        }
        Some(v) => {
            let peers = w.connected(k);
            let others = v.db & !bit(k);
            if let Some(j) = members(peers).find(|&j| w.nodes[j].vm.has_tables()) {
                copy(w, k, j, notes);
            } else if v.down & others == others {
                own_load(w, k, Cause::LastDown, notes);
            } else {
                w.nodes[k].vm = Vm::Waiting;
                notes.say(w.now, || format!("chat-{k} mnesia: waits for tables"));
            }
            meet(w, k, peers);
        }
    }
    w.nodes[k].next_mn = w.now + 1;
}

#[derive(Clone, Copy, Debug)]
pub enum Move {
    Copy(usize),
    Orphan,
}

/// What a waiting Mnesia does next, if anything changed for it.
pub fn waiting_move(w: &World, k: usize) -> Option<Move> {
    let v = w.nodes[k].vol?;
    let peers = w.connected(k);
    if let Some(j) = members(peers).find(|&j| w.nodes[j].vm.has_tables()) {
        return Some(Move::Copy(j));
    }
    let others = v.db & !bit(k);
    let lowest = members(v.db).next() == Some(k);
    (others & !peers == 0 && lowest).then_some(Move::Orphan)
}

pub fn apply_move(w: &mut World, k: usize, m: Move, notes: &mut Notes) {
    match m {
        Move::Copy(j) => copy(w, k, j, notes),
        Move::Orphan => own_load(w, k, Cause::Orphan, notes),
    }
    w.nodes[k].next_mn = w.now + 1;
}

fn copy(w: &mut World, k: usize, j: usize, notes: &mut Notes) {
    // The schemas merge: the source's cluster lists this holder too.
    for x in members(w.cluster_of(j)) {
        if let Some(v) = &mut w.nodes[x].vol {
            v.db |= bit(k);
        }
    }
    let src = w.vol(j);
    let mine = w.vol(k);
    // The writes only this copy held are gone with it.
    let elsewhere = (0..w.n())
        .filter(|&x| x != k)
        .filter_map(|x| w.nodes[x].vol.map(|v| v.data))
        .fold(0, |m, d| m | d);
    let lost: Writes = mine.data & !src.data & !elsewhere;
    let how = if w.nodes[k].gave_way {
        Discard::GaveWay
    } else {
        Discard::Restarted
    };
    for id in (0..32u8).filter(|&i| lost & (1 << i) != 0) {
        notes.discards.push((w.tag(id), how));
    }
    w.nodes[k].vol = Some(Volume {
        db: src.db,
        data: src.data,
        ..mine
    });
    w.nodes[k].lineage = w.nodes[j].lineage;
    w.nodes[k].vm = Vm::Loaded;
    notes.say(w.now, || {
        let gone = if lost != 0 {
            format!(" DISCARDS {} ({how:?})", w.writes(lost))
        } else {
            String::new()
        };
        format!(
            "chat-{k} mnesia: copies the tables from chat-{j} ({}, had {}){gone}",
            w.writes(src.data),
            w.writes(mine.data)
        )
    });
}

/// `k` loads its own disc copy: a new lineage. Checked here: does a newer
/// copy of the same schema survive on some volume (it will be overwritten
/// when that node copies from this one)?
pub fn own_load(w: &mut World, k: usize, cause: Cause, notes: &mut Notes) {
    let v = w.vol(k);
    let mine = w.version(v.data);
    let newer = (0..w.n())
        .filter(|&j| j != k)
        .filter_map(|j| w.nodes[j].vol.map(|x| (j, w.version(x.data), x.cookie)))
        .filter(|&(_, ver, cookie)| cookie == v.cookie && ver > mine)
        .map(|(j, ver, _)| (j, ver))
        .max_by_key(|&(_, ver)| ver);
    // Invariant: a paused node never loads its own copy while another
    // node of its schema has the tables (the majority runs).
    let majority_runs = (0..w.n()).any(|j| {
        j != k
            && w.nodes[j].pod
            && w.nodes[j].vm.has_tables()
            && w.nodes[j].cookie() == Some(v.cookie)
    });
    if w.nodes[k].paused && majority_runs {
        notes.paused_own_load += 1;
        notes.say(w.now, || {
            format!("  PAUSED chat-{k} loads its own copy while another node has the tables")
        });
    }
    let blame = newer.map(|_| match cause {
        Cause::ForceLoad => Blame::Plan,
        Cause::Orphan => match w.nodes[k].start_why {
            StartWhy::HoldWaiters { saw_me: true } => Blame::Plan,
            StartWhy::HoldMax => Blame::HoldMax,
            _ => Blame::Mnesia,
        },
        Cause::Fresh | Cause::LastDown => Blame::Mnesia,
    });
    // The documented CLUSTER_HOLD_MAX orphan load (README, "Joining,
    // restarts, scaling"): what it discards is classified, also when the
    // discard completes later, in a liveness run.
    w.hold_max_load |= blame == Some(Blame::HoldMax);
    w.nodes[k].lineage = w.fresh_id();
    w.nodes[k].vm = Vm::Loaded;
    notes.say(w.now, || {
        let lost = match newer {
            Some((j, ver)) => format!(" DISCARDS version {ver} held by chat-{j} ({blame:?})"),
            None => String::new(),
        };
        format!(
            "chat-{k} mnesia: loads its own copy ({cause:?}) {}{lost}",
            w.writes(v.data)
        )
    });
    notes.own_loads.push(OwnLoad { cause, blame });
}

/// What follows at once from a transition: a waiting Mnesia copies the
/// tables as soon as a connected peer has them (Mnesia pushes them within
/// milliseconds, before any client write could land on the loaded node
/// alone), and incompatible cookies stop a node.
pub fn settle(w: &mut World, notes: &mut Notes) {
    loop {
        let copy = (0..w.n()).find_map(|k| {
            let n = &w.nodes[k];
            if !n.pod || n.vm != Vm::Waiting {
                return None;
            }
            match waiting_move(w, k) {
                Some(Move::Copy(j)) => Some((k, j)),
                _ => None,
            }
        });
        let Some((k, j)) = copy else { break };
        apply_move(w, k, Move::Copy(j), notes);
    }
    incompatible(w, notes);
}

/// "Incompatible schema cookies": a running Mnesia with X in its schema
/// that meets X running another cookie stops, and its container exits
/// (restart in place, Boot). Applied after every transition.
fn incompatible(w: &mut World, notes: &mut Notes) {
    loop {
        let bad = (0..w.n()).find(|&m| {
            let nm = &w.nodes[m];
            if !nm.pod || !nm.vm.mnesia_runs() {
                return false;
            }
            let v = w.vol(m);
            members(v.db & !bit(m)).any(|x| {
                let nx = &w.nodes[x];
                nx.pod
                    && nx.vm.mnesia_runs()
                    && nx.cookie() != Some(v.cookie)
                    && w.reach(m, x)
                    && (nm.apart | nm.hung | nm.ghost) & bit(x) == 0
            })
        });
        let Some(m) = bad else { break };
        notes.incompatible += 1;
        notes.say(w.now, || {
            format!("chat-{m} mnesia: incompatible schema cookies: stops, container restarts")
        });
        go_down(w, bit(m));
        w.restart_container(m);
    }
}

/// The network is cut between `side` and the other nodes (both ways; a
/// one-way cut is the same, see the module doc). Mnesia does not notice
/// yet: the nodes that ran together keep counting each other as running
/// (`hung`) until a Nodedown.
pub fn partition(w: &mut World, side: Mask) {
    let before: Vec<Mask> = (0..w.n())
        .map(|k| {
            let n = &w.nodes[k];
            if n.pod && n.vm.mnesia_runs() {
                w.connected(k)
            } else {
                0
            }
        })
        .collect();
    w.cut = Some(side);
    for (k, was) in before.into_iter().enumerate() {
        let across = was & !w.side_of(k);
        w.nodes[k].hung |= across;
    }
}

/// net_ticktime passes on `side`: each running Mnesia there records every
/// node across the cut it still counted as running as down.
pub fn nodedown(w: &mut World, side: Mask) {
    for k in members(side) {
        let node = &mut w.nodes[k];
        let gone = node.hung | node.ghost;
        node.hung = 0;
        node.ghost = 0;
        if let Some(v) = &mut node.vol {
            v.down |= gone;
        }
    }
}

/// The cut is removed. Two nodes that still counted each other as running
/// (no nodedown on either side, the same incarnations) run together again
/// (their commits go through). Every other pair of running Mnesia nodes
/// across the former cut does not reconnect at the Mnesia level ("running
/// partitioned network") until one of them restarts its Mnesia: `apart`.
/// A node that still counted as running a node that stopped, or that had
/// seen go down this node but not vice versa, gets its nodedown now (the
/// old connection is reset).
pub fn heal(w: &mut World) {
    let Some(side) = w.cut else { return };
    let n = w.n();
    let runs = |w: &World, k: usize| w.nodes[k].pod && w.nodes[k].vm.mnesia_runs();
    let mut records = vec![0 as Mask; n];
    let mut apart = vec![0 as Mask; n];
    for k in 0..n {
        let nk = &w.nodes[k];
        records[k] |= nk.ghost;
        for x in members(nk.hung) {
            if w.nodes[x].hung & bit(k) == 0 {
                records[k] |= bit(x);
            }
        }
        if !runs(w, k) {
            continue;
        }
        for x in 0..n {
            let across = (side & bit(k) != 0) != (side & bit(x) != 0);
            let together = nk.hung & bit(x) != 0 && w.nodes[x].hung & bit(k) != 0;
            // Only nodes of one schema ever connect at the Mnesia level.
            let related = match (nk.vol, w.nodes[x].vol) {
                (Some(a), Some(b)) => {
                    a.cookie == b.cookie && (a.db & bit(x) != 0 || b.db & bit(k) != 0)
                }
                _ => false,
            };
            if across && related && runs(w, x) && !together {
                apart[k] |= bit(x);
            }
        }
    }
    for k in 0..n {
        let node = &mut w.nodes[k];
        node.hung = 0;
        node.ghost = 0;
        node.apart |= apart[k];
        if let Some(v) = &mut node.vol {
            v.down |= records[k];
        }
    }
    w.cut = None;
}
