//! Mnesia's rules as the model has them: going down is recorded by the
//! connected nodes, a start loads from a peer, from its own disc (went
//! down last, or the orphan rule, or a forced load) or waits, and a node
//! that meets a schema node running a different cookie stops.

use super::world::{Mask, StartWhy, Vm, Volume, World, bit, members};

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

/// What happened during one transition, for the invariants and traces.
#[derive(Default)]
pub struct Notes {
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
                version: 0,
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
    w.nodes[k].vol = Some(Volume {
        db: src.db,
        version: src.version,
        ..mine
    });
    w.nodes[k].lineage = w.nodes[j].lineage;
    w.nodes[k].vm = Vm::Loaded;
    notes.say(w.now, || {
        format!(
            "chat-{k} mnesia: copies the tables from chat-{j} (v{}, had v{})",
            src.version, mine.version
        )
    });
}

/// `k` loads its own disc copy: a new lineage. Checked here: does a newer
/// copy of the same schema survive on some volume (it will be overwritten
/// when that node copies from this one)?
pub fn own_load(w: &mut World, k: usize, cause: Cause, notes: &mut Notes) {
    let v = w.vol(k);
    let newer = (0..w.n())
        .filter(|&j| j != k)
        .filter_map(|j| w.nodes[j].vol.map(|x| (j, x)))
        .filter(|(_, x)| x.cookie == v.cookie && x.version > v.version)
        .map(|(j, x)| (j, x.version))
        .max_by_key(|&(_, ver)| ver);
    let blame = newer.map(|_| match cause {
        Cause::ForceLoad => Blame::Plan,
        Cause::Orphan => match w.nodes[k].start_why {
            StartWhy::HoldWaiters { saw_me: true } => Blame::Plan,
            StartWhy::HoldMax => Blame::HoldMax,
            _ => Blame::Mnesia,
        },
        Cause::Fresh | Cause::LastDown => Blame::Mnesia,
    });
    w.nodes[k].lineage = w.fresh_id();
    w.nodes[k].vm = Vm::Loaded;
    notes.say(w.now, || {
        let lost = match newer {
            Some((j, ver)) => format!(" DISCARDS v{ver} held by chat-{j} ({blame:?})"),
            None => String::new(),
        };
        format!(
            "chat-{k} mnesia: loads its own copy ({cause:?}) v{}{lost}",
            v.version
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
                nx.pod && nx.vm.mnesia_runs() && nx.cookie() != Some(v.cookie)
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
