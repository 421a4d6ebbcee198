//! The external events: what Kubernetes, the machines and the clients do.

use std::fmt;

use kube_epmd::cluster::facts::PartitionHandling;

use super::mnesia::{self, Notes, go_down};
use super::world::{Mask, Tag, Vm, World, bit, members};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Event {
    /// The StatefulSet creates pod k (same volume unless lost).
    Create(usize),
    /// Pod k deleted: SIGTERM, `ejabberdctl stop`, pod gone.
    Delete(usize),
    /// Pod k's container killed (SIGKILL), restarted in place.
    Kill(usize),
    /// Every running container killed at once (none sees another go).
    KillAll,
    /// A machine failure: these pods freeze together, then die, pods gone.
    Machine(Mask),
    /// Pod k's volume lost (only while its pod is absent).
    LoseVolume(usize),
    /// A client write on this Ready node, acknowledged by the loaded nodes
    /// its Mnesia runs with (one per distinct cluster: the lowest node).
    Write(usize),
    /// The network is cut between this side (it holds chat-0) and the
    /// other nodes.
    Partition(Mask),
    /// net_ticktime passes on this side of the cut: its Mnesia nodes see
    /// the other side go down.
    Nodedown(Mask),
    /// The cut is removed.
    Heal,
    /// replicas N -> N-1: the last pod deleted; its claim deleted or kept
    /// as the manifest's `whenScaled` says.
    ScaleDown,
    /// replicas N-1 -> N: the last pod created, on its kept volume or a
    /// new, empty one.
    ScaleUp,
    /// replicas N -> 0: the controller deletes every pod (each a `Delete`
    /// event, in any order, the entrypoints acting in between); claims as
    /// `whenScaled` says.
    ScaleToZero,
    /// replicas 0 -> N: every pod created again (`Create` events).
    ScaleBack,
}

impl Event {
    pub fn is_partition(self) -> bool {
        matches!(self, Event::Partition(_) | Event::Nodedown(_) | Event::Heal)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Create(k) => write!(f, "create pod chat-{k}"),
            Event::Delete(k) => write!(f, "delete pod chat-{k}"),
            Event::Kill(k) => write!(f, "kill container chat-{k}"),
            Event::KillAll => write!(f, "kill every container"),
            Event::Machine(m) => write!(
                f,
                "machine failure of {:?} (freeze, kill, pods gone)",
                members(*m).collect::<Vec<_>>()
            ),
            Event::LoseVolume(k) => write!(f, "lose the volume of chat-{k}"),
            Event::Write(k) => write!(f, "write on chat-{k}"),
            Event::Partition(m) => write!(
                f,
                "network cut between {:?} and the others",
                members(*m).collect::<Vec<_>>()
            ),
            Event::Nodedown(m) => write!(
                f,
                "nodedown on {:?} (net_ticktime passed)",
                members(*m).collect::<Vec<_>>()
            ),
            Event::Heal => write!(f, "network healed"),
            Event::ScaleDown => write!(f, "scale down"),
            Event::ScaleUp => write!(f, "scale up"),
            Event::ScaleToZero => write!(f, "scale to 0"),
            Event::ScaleBack => write!(f, "scale back from 0"),
        }
    }
}

/// Which events the model offers.
#[derive(Clone, Debug)]
pub struct Faults {
    /// The sets of pods a machine failure may take.
    pub machine_sets: Vec<Mask>,
    pub scale: bool,
    /// The StatefulSet controller's claim retention on scale-down
    /// (`whenScaled: Retain`): a scaled-away pod keeps its volume.
    pub retain_scaled: bool,
    /// Network cuts (every split), nodedowns and heals.
    pub partitions: bool,
}

/// `persistentVolumeClaimRetentionPolicy.whenScaled` of the StatefulSet in
/// deploy/: the model plays the controller as deploy/ configures it.
pub fn deploy_retains_scaled() -> bool {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/base/statefulset.yaml");
    let yaml = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let policy = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("whenScaled:"))
        .unwrap_or_else(|| panic!("{path}: no whenScaled"))
        .trim();
    match policy {
        "Retain" => true,
        "Delete" => false,
        other => panic!("{path}: whenScaled {other:?}"),
    }
}

/// A node with the cluster's tables that clients reach (Ready).
fn ready(w: &World, k: usize) -> bool {
    let n = &w.nodes[k];
    n.pod && n.vm == Vm::Started && n.marker
}

pub fn enabled(w: &World, faults: &Faults) -> Vec<Event> {
    let n = w.n();
    let mut v = Vec::new();
    for k in 0..n {
        let node = &w.nodes[k];
        if !node.pod && k < w.replicas {
            v.push(Event::Create(k));
        }
        if node.pod {
            v.push(Event::Delete(k));
        }
        if node.pod && node.vm != Vm::Off {
            v.push(Event::Kill(k));
        }
        if !node.pod && (node.vol.is_some() || node.marker) {
            v.push(Event::LoseVolume(k));
        }
    }
    let running = (0..n).filter(|&k| w.nodes[k].pod && w.nodes[k].vm != Vm::Off);
    if running.count() >= 2 {
        v.push(Event::KillAll);
    }
    for &m in &faults.machine_sets {
        if members(m).all(|k| k < n && w.nodes[k].pod) {
            v.push(Event::Machine(m));
        }
    }
    // A write on any Ready node whose commit does not wait for a node
    // across the cut; Ready nodes that run together give the same state:
    // the lowest of each cluster stands for it.
    let mut clusters: Vec<Mask> = Vec::new();
    for k in (0..n).filter(|&k| ready(w, k)) {
        let c = w.cluster_of(k);
        if !w.hangs(k) && !clusters.contains(&c) {
            clusters.push(c);
            v.push(Event::Write(k));
        }
    }
    if faults.partitions {
        match w.cut {
            None => {
                // Every split once: the side that holds chat-0.
                for side in (1..(1u16 << n) - 1).filter(|s| s & 1 != 0) {
                    v.push(Event::Partition(side as Mask));
                }
            }
            Some(a) => {
                let all = ((1u16 << n) - 1) as Mask;
                for side in [a, all & !a] {
                    if members(side).any(|k| w.nodes[k].hung | w.nodes[k].ghost != 0) {
                        v.push(Event::Nodedown(side));
                    }
                }
                v.push(Event::Heal);
            }
        }
    }
    if faults.scale && w.replicas == n {
        v.push(Event::ScaleDown);
        v.push(Event::ScaleToZero);
    }
    if faults.scale && w.replicas + 1 == n {
        v.push(Event::ScaleUp);
    }
    if faults.scale && w.replicas == 0 && w.nodes.iter().all(|node| !node.pod) {
        v.push(Event::ScaleBack);
    }
    v
}

pub fn apply(w: &mut World, e: Event, faults: &Faults, notes: &mut Notes) {
    notes.say(w.now, || format!("== {e}"));
    let n = w.n();
    match e {
        Event::Create(k) => w.create_pod(k),
        Event::Delete(k) => {
            go_down(w, bit(k));
            w.nodes[k].pod = false;
        }
        Event::Kill(k) => {
            go_down(w, bit(k));
            w.restart_container(k);
        }
        Event::KillAll => {
            let set = (0..n)
                .filter(|&k| w.nodes[k].pod && w.nodes[k].vm != Vm::Off)
                .fold(0, |m, k| m | bit(k));
            go_down(w, set);
            for k in members(set) {
                w.restart_container(k);
            }
        }
        Event::Machine(set) => {
            go_down(w, set);
            for k in members(set) {
                w.nodes[k].pod = false;
            }
        }
        Event::LoseVolume(k) => {
            w.nodes[k].vol = None;
            w.nodes[k].marker = false;
            w.nodes[k].paused = false;
        }
        Event::Write(r) => {
            assert!(ready(w, r) && !w.hangs(r), "write on chat-{r}");
            let tag = write_tag(w, r);
            if tag == Tag::Won && w.policy == PartitionHandling::PauseMinority {
                w.late_pause |= (0..n).any(|j| {
                    let nj = &w.nodes[j];
                    !w.reach(r, j) && nj.pod && nj.vm.has_tables() && !nj.paused
                });
            }
            let id = w.next_write();
            let b = 1 << id;
            match (tag, w.policy) {
                (Tag::Whole, _) | (Tag::Won, PartitionHandling::PauseMinority) => w.last = Some(id),
                _ => {}
            }
            match tag {
                Tag::Whole => {}
                Tag::Won => w.won |= b,
                Tag::Minority => w.minority |= b,
                Tag::Loser => w.loser |= b,
            }
            for j in members(w.cluster_of(r)) {
                if w.nodes[j].vm.has_tables()
                    && let Some(v) = &mut w.nodes[j].vol
                {
                    v.data |= b;
                }
            }
            notes.say(w.now, || format!("  acknowledged as w{id} ({tag:?})"));
        }
        Event::Partition(side) => {
            w.start_in_cut |= w
                .nodes
                .iter()
                .any(|x| x.pod && matches!(x.vm, Vm::Starting | Vm::Waiting));
            mnesia::partition(w, side)
        }
        Event::Nodedown(side) => mnesia::nodedown(w, side),
        Event::Heal => mnesia::heal(w),
        Event::ScaleDown => {
            w.replicas = n - 1;
            let k = n - 1;
            if w.nodes[k].pod {
                go_down(w, bit(k));
                w.nodes[k].pod = false;
            }
            if !faults.retain_scaled {
                w.nodes[k].vol = None;
                w.nodes[k].marker = false;
                w.nodes[k].paused = false;
            }
        }
        Event::ScaleUp => {
            w.replicas = n;
            w.create_pod(n - 1);
        }
        Event::ScaleToZero => w.replicas = 0,
        Event::ScaleBack => {
            if !faults.retain_scaled {
                // Every claim went with its pod.
                for node in &mut w.nodes {
                    node.vol = None;
                    node.marker = false;
                    node.paused = false;
                }
            }
            w.replicas = n;
        }
    }
}

/// `a` beats `b` as the heal picks the side that stays: more nodes, on a
/// tie the lowest ordinal.
fn beats(a: Mask, b: Mask) -> bool {
    a.count_ones() > b.count_ones()
        || (a.count_ones() == b.count_ones() && a.trailing_zeros() < b.trailing_zeros())
}

/// What a write on `r` is: see [`Tag`]. During a cut: the side that keeps
/// a majority of the living schema nodes (pause_minority) or that the heal
/// keeps (autoheal) wins. After the heal, with other nodes of the schema
/// holding the tables apart from this cluster: the side the heal keeps.
pub fn write_tag(w: &World, r: usize) -> Tag {
    let v = w.vol(r);
    let loaded = |m: Mask| {
        members(m)
            .filter(|&j| w.nodes[j].pod && w.nodes[j].vm.has_tables())
            .fold(0, |a, j| a | bit(j))
    };
    let mine = loaded(w.cluster_of(r));
    if w.cut.is_some() {
        let living = members(v.db | bit(r))
            .filter(|&j| w.nodes[j].pod)
            .fold(0, |a, j| a | bit(j));
        let reach = living & w.side_of(r);
        let won = match w.policy {
            PartitionHandling::PauseMinority => 2 * reach.count_ones() > living.count_ones(),
            PartitionHandling::Autoheal => beats(reach, living & !reach),
        };
        return if won { Tag::Won } else { Tag::Minority };
    }
    let others: Vec<Mask> = (0..w.n())
        .filter(|&j| {
            mine & bit(j) == 0
                && w.nodes[j].pod
                && w.nodes[j].vm.has_tables()
                && w.nodes[j].cookie() == Some(v.cookie)
        })
        .map(|j| loaded(w.cluster_of(j)))
        .collect();
    if others.is_empty() {
        Tag::Whole
    } else if others.iter().all(|&o| beats(mine, o)) {
        Tag::Won
    } else {
        Tag::Loser
    }
}
