//! The cluster decisions: observed facts in, one action out. Pure: no I/O,
//! no clock, no state kept between calls; the entrypoint asks again after
//! every action. Every rule that can lose data or split the cluster is
//! here, with the reason it holds; `tests/cluster_model.rs` checks them
//! against a model of Mnesia's load rules over every order of events.
//!
//! The three phases of an entrypoint ([`Phase`]):
//! - **boot**, with a database (marker on the volume): if the running
//!   cluster no longer lists this node (it was scaled away and came back
//!   with its retained volume), set that database aside and boot empty
//!   (see [`dropped_by_cluster`]); else start ejabberd;
//!   Mnesia reconnects and loads each table from the node that went down
//!   last. Only the lowest node of the schema holds back (see
//!   [`hold_lowest`]).
//! - **boot**, without one (a new pod, or a lost volume): first have a
//!   running member drop the stale entry of this node, if one lists it;
//!   when the members wait for each other's tables because this node's
//!   copy was among theirs, have the lowest load its own (see
//!   [`stale_self`]); then start ejabberd empty.
//! - **joining**: join the established cluster, or seed it (ordinal 0
//!   only, when every pod is there and none belongs to a cluster), or
//!   wait (see [`join`]). Never a second cluster beside a live one.
//! - **running**: a node cut off from the majority pauses, and after a
//!   heal the side that gives way restarts (see [`partition`]); the lowest
//!   running node removes scaled-away nodes from the schema (see
//!   [`prune`]).

use std::fmt;

use super::facts::{Facts, NodeFact, NodeState, Phase};
use super::partition;

/// What the entrypoint does next.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// Nothing yet: ask again after this many seconds.
    Wait(u64),
    /// Start ejabberd (boot phase).
    Start,
    /// `ejabberdctl --node VIA leave_cluster SELF`: a running member drops
    /// the entry of our lost volume from the schema (Mnesia's
    /// `del_table_copy(schema, SELF)`, allowed while SELF is down).
    DropStale { via: String },
    /// Have NODE's Mnesia load its own copy of every table now.
    ForceLoad { node: String },
    /// Move this node's database (Mnesia's files and the marker) aside on
    /// its volume, never deleting it, and boot again without one: the
    /// cluster dropped this node from its schema (scaled away, then back
    /// with its retained volume), so its copy is stale and Mnesia must
    /// never load or merge it.
    SetAside,
    /// This node (ordinal 0) seeds the cluster: write the marker.
    Seed,
    /// Others joined this node already: write the marker.
    Joined,
    /// `ejabberdctl join_cluster TARGET`, then write the marker.
    Join { target: String },
    /// Stop ejabberd and boot again empty: a member lists this node but it
    /// is not in that member's cluster (a stale entry it can only drop
    /// while this node is down).
    RestartEmpty,
    /// `ejabberdctl leave_cluster NODE`: NODE was scaled away.
    Remove { node: String },
    /// Stop ejabberd and hold (the volume says paused): this node cannot
    /// reach a majority of its schema's living nodes (pause_minority).
    Pause,
    /// Restart ejabberd: after a partition healed, this node is on the
    /// side that gives way; Mnesia then copies every table from FROM's
    /// side (what this side wrote meanwhile is discarded).
    Rejoin { from: String },
    /// Give up: exit non-zero so the container restarts.
    Fail,
    /// Nothing to do until the pods or the replica count change.
    Idle,
}

/// An action and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Plan {
    pub action: Action,
    pub reason: String,
}

/// Seconds a member may list us while we are not in its cluster before the
/// entry is taken for a stale one (a join takes a second or two).
pub const STALE_SECS: u64 = 12;
/// Seconds every member must have been up before we act on "they all wait
/// for each other": long enough that none is still loading.
pub const SETTLE_SECS: u64 = 5;

/// One line each: the action, then the reason. What the entrypoint reads.
impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.action)?;
        writeln!(f, "{}", self.reason.replace('\n', " "))
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())?;
        match self {
            Action::Wait(s) => write!(f, " {s}"),
            Action::DropStale { via: n }
            | Action::ForceLoad { node: n }
            | Action::Join { target: n }
            | Action::Remove { node: n }
            | Action::Rejoin { from: n } => write!(f, " {n}"),
            _ => Ok(()),
        }
    }
}

impl Action {
    /// The action's name, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Wait(_) => "wait",
            Action::Start => "start",
            Action::DropStale { .. } => "drop-stale",
            Action::ForceLoad { .. } => "force-load",
            Action::SetAside => "set-aside",
            Action::Seed => "seed",
            Action::Joined => "joined",
            Action::Join { .. } => "join",
            Action::RestartEmpty => "restart-empty",
            Action::Remove { .. } => "remove",
            Action::Pause => "pause",
            Action::Rejoin { .. } => "rejoin",
            Action::Fail => "fail",
            Action::Idle => "idle",
        }
    }
}

pub(super) fn plan_of(action: Action, reason: impl Into<String>) -> Plan {
    Plan {
        action,
        reason: reason.into(),
    }
}

/// The decision for these facts.
pub fn plan(f: &Facts) -> Plan {
    let o = &f.obs;
    let p = match (o.phase, o.marker) {
        (Phase::Boot, true) => partition::boot(f)
            .or_else(|| dropped_by_cluster(f))
            .unwrap_or_else(|| hold_lowest(f)),
        (Phase::Boot, false) => stale_self(f),
        (Phase::Joining, _) => join(f),
        (Phase::Running, _) => partition::running(f).unwrap_or_else(|| prune(f)),
    };
    // Whoever cannot decide gives up after the join timeout (the container
    // restarts): never guess. A node with a database never does: it starts
    // after the hold and Mnesia waits for its peers.
    let undecided = matches!(
        p.action,
        Action::Wait(_) | Action::DropStale { .. } | Action::ForceLoad { .. }
    );
    if undecided && o.phase != Phase::Running && !o.marker && o.since_start >= o.timing.join_timeout
    {
        return plan_of(
            Action::Fail,
            format!(
                "undecided after {} s (CLUSTER_JOIN_TIMEOUT): {}",
                o.since_start, p.reason
            ),
        );
    }
    p
}

/// The other pods' nodes as the probe saw them (this node excluded).
fn peers(f: &Facts) -> impl Iterator<Item = &NodeFact> {
    let me = f.obs.me.as_str();
    f.obs
        .nodes
        .iter()
        .filter(move |n| n.node != me && f.pods.contains(&n.node))
}

/// The nodes (sorted, once each) in the schema of every peer in `facts`
/// whose schema lists us: the cluster this node's copy belongs to.
fn schema_of_listers<'a>(me: &str, facts: impl Iterator<Item = &'a NodeFact>) -> Vec<String> {
    let mut v: Vec<String> = facts
        .filter(|n| n.lists(me))
        .flat_map(|n| n.db_nodes.iter().cloned())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Boot with a database that the cluster no longer counts: a peer runs
/// ejabberd as a member of the cluster (its marker, or a schema of more
/// than itself) and its schema does not list this node. The lowest running
/// node removed it (scaled away: `whenScaled: Retain` kept its volume) or
/// an operator did. Its copy is older than the cluster's (it was out while
/// the cluster kept writing), and starting Mnesia on it would have it wait
/// for, or merge with, nodes that dropped it: set it aside (kept on the
/// volume, never deleted) and come back empty; [`stale_self`] and [`join`]
/// then bring it in. Only a started member decides: while the cluster
/// itself is down nobody can tell which schema is current.
fn dropped_by_cluster(f: &Facts) -> Option<Plan> {
    let me = f.obs.me.as_str();
    let n = peers(f).find(|n| {
        n.state == NodeState::Started && (n.clustered || n.db_nodes.len() > 1) && !n.lists(me)
    })?;
    Some(plan_of(
        Action::SetAside,
        format!(
            "the cluster dropped {me}: {} runs it with schema [{}] (scaled away and back with its old volume, or removed): this database is set aside and {me} starts empty",
            n.node,
            n.db_nodes.join(",")
        ),
    ))
}

/// Boot with a database. When every node holding a table runs Mnesia and
/// none has it loaded, Mnesia has the lowest node name load its own copy
/// ("orphan" tables), even if another went down later and holds newer
/// data but has not finished loading it (seen with ejabberd 23.01 when all
/// pods start at once: writes made after chat-0 went down were lost). So
/// the lowest node of the schema starts last: once another node has the
/// tables (the one that went down last loads them by itself, and this one
/// then copies from it), or once every other node waits for tables and
/// none of them saw this node go down (each went down before it: this one
/// went down last, or all went down together), or after HOLD_MAX seconds
/// whatever the others do. Every other node starts at once. Nothing is
/// forced.
fn hold_lowest(f: &Facts) -> Plan {
    let o = &f.obs;
    let me = o.me.as_str();
    const STARTING: &str = "clustered before (marker on the volume): Mnesia reconnects by itself";
    if peers(f).next().is_none() {
        return plan_of(Action::Start, format!("{STARTING}; no other pod"));
    }
    // The schema's nodes, as the peers that list us see it; a peer that
    // does not answer yet (or has no Mnesia yet) may be one too. A pod
    // here without a database holds no copy (a lost volume).
    let mut known: Vec<String> = peers(f)
        .filter(|n| matches!(n.state, NodeState::Down | NodeState::Starting))
        .map(|n| n.node.clone())
        .chain(schema_of_listers(
            me,
            peers(f).filter(|n| !matches!(n.state, NodeState::Down | NodeState::Starting)),
        ))
        .filter(|n| {
            !peers(f).any(|p| p.node == *n && p.state == NodeState::Empty) && n.as_str() != me
        })
        .collect();
    known.sort();
    known.dedup();
    // Every other pod is here without a database: no other copy to wait
    // for, and holding only lets the empty pods start first (after
    // LOAD_GRACE) with new schemas this node's Mnesia then refuses (found
    // by tests/cluster_model.rs: chat-0 restarted for ever).
    if known.is_empty() && peers(f).all(|n| n.state == NodeState::Empty) {
        return plan_of(
            Action::Start,
            format!("{STARTING}; every other pod is here without a database"),
        );
    }
    if known.first().is_some_and(|lowest| lowest.as_str() < me) {
        return plan_of(
            Action::Start,
            format!("{STARTING}; not the lowest node of the schema"),
        );
    }
    if let Some(n) = peers(f).find(|n| n.state.has_tables()) {
        return plan_of(
            Action::Start,
            format!("{STARTING}; a peer has the tables loaded ({})", n.node),
        );
    }
    let waiting: Vec<&NodeFact> = known
        .iter()
        .filter_map(|k| peers(f).find(|n| n.node == *k && n.state == NodeState::Waiting))
        .collect();
    if !known.is_empty() && waiting.len() == known.len() {
        let waited = waiting.iter().map(|n| n.uptime).min().unwrap_or(0);
        // A waiting peer that saw this node go down holds a newer copy:
        // starting here would have the orphan rule load this older one
        // (found by tests/cluster_model.rs: a write made after chat-0 was
        // killed, then every container killed, was lost). Have the lowest
        // waiter load its own copy instead when that is what Mnesia would
        // do without this node; else hold (HOLD_MAX still applies).
        if waiting.iter().any(|n| n.saw_go_down(me)) {
            if let Some(first) = lowest_waiter_to_load(f) {
                return plan_of(
                    Action::ForceLoad {
                        node: first.clone(),
                    },
                    format!(
                        "every other node waits for tables and saw {me} go down (this copy is older): {first} loads its own copy, as Mnesia would without {me}"
                    ),
                );
            }
        } else if waited >= SETTLE_SECS {
            // None saw this node go down: each went down before it (or all
            // at once, when any copy is as good), so this copy is the
            // newest and Mnesia's orphan rule loading it is right. A node
            // that went down after us would hold a down record of us.
            return plan_of(
                Action::Start,
                format!(
                    "{STARTING}; every other node waits for tables ({waited} s) and none saw this one go down: it went down last (or all at once)"
                ),
            );
        }
    }
    if o.since_phase >= o.timing.hold_max {
        return plan_of(
            Action::Start,
            format!(
                "{STARTING}; not every node of the schema is up after {} s (CLUSTER_HOLD_MAX)",
                o.timing.hold_max
            ),
        );
    }
    plan_of(
        Action::Wait(2),
        "lowest node of the schema: waiting for a peer to load the tables first",
    )
}

/// Boot without a database. A member that still lists us (we came back
/// with an empty volume) drops the stale entry while our node is not
/// running. A listed pod whose node does not answer yet (or has no Mnesia
/// yet) may be a member too (all pods recreated at once): our empty
/// ejabberd must not run when it starts Mnesia (its Mnesia would refuse to
/// merge our new schema: "Incompatible schema cookies"). It gets
/// LOAD_GRACE seconds before we start without asking it; [`join`] catches
/// an entry found later. A pod here without a database too (`empty`) holds
/// nothing: no need to wait for it.
fn stale_self(f: &Facts) -> Plan {
    let o = &f.obs;
    let me = o.me.as_str();
    let mut via = None;
    let mut booting = false;
    let mut unsure = false;
    for n in peers(f) {
        match n.state {
            NodeState::Empty => continue,
            NodeState::Down => unsure = true,
            NodeState::Starting if !n.lists(me) => unsure = true,
            NodeState::Started if n.lists(me) => {
                via.get_or_insert(n.node.clone());
            }
            _ if n.lists(me) => booting = true, // waits for its tables at boot
            _ => {}
        }
    }
    if let Some(via) = via {
        // The schema is the cluster's: one member removing us is enough.
        return plan_of(
            Action::DropStale { via: via.clone() },
            format!("{via} still lists {me} (empty volume): removing the stale entry there"),
        );
    }
    if booting {
        if let Some(first) = lowest_waiter_to_load(f) {
            return plan_of(
                Action::ForceLoad {
                    node: first.clone(),
                },
                format!(
                    "the members wait for each other's tables, none for {me} (each saw it go down) and none went down last: {first} loads its own copy, as Mnesia would with {me} back"
                ),
            );
        }
        return plan_of(
            Action::Wait(3),
            format!("a member that lists {me} waits for its tables"),
        );
    }
    if unsure && o.since_phase < o.timing.load_grace {
        return plan_of(
            Action::Wait(1),
            "a pod does not answer yet: it may list this node",
        );
    }
    plan_of(
        Action::Start,
        format!("no running member lists {me}: starting empty"),
    )
}

/// All members came back while our volume was lost, and they wait for each
/// other's tables (they went down together, none saw another go): Mnesia
/// would have the lowest of all load its own copy once every holder runs
/// ("orphan" tables), but our empty node never comes back as a holder.
/// Some(lowest member) when every other node of their schema answers and
/// has waited SETTLE_SECS, each saw us go down before it (our lost copy was
/// not the newest), and none saw all the others go (that one would load
/// its own copy by itself: it went down last). Then loading the lowest
/// member's copy is what Mnesia itself would do. If a member did not see
/// us go, we may have gone down last with data no one else has: that is
/// force-load's case, for a human.
fn lowest_waiter_to_load(f: &Facts) -> Option<String> {
    let me = f.obs.me.as_str();
    let waiters: Vec<String> = schema_of_listers(me, peers(f))
        .into_iter()
        .filter(|n| n != me)
        .collect();
    let facts: Vec<&NodeFact> = waiters
        .iter()
        .map(|w| peers(f).find(|n| n.node == *w && n.state == NodeState::Waiting))
        .collect::<Option<_>>()?;
    for n in &facts {
        if n.uptime < SETTLE_SECS || !n.saw_go_down(me) {
            return None;
        }
        let saw_all_others = waiters.iter().all(|m| *m == n.node || n.saw_go_down(m));
        if saw_all_others {
            return None;
        }
    }
    waiters.into_iter().next()
}

/// Joining: ejabberd runs empty. Join a member of the established cluster
/// (a node whose schema has more nodes than itself); only ordinal 0 seeds
/// a new cluster, and only when every other pod answers, every pod the
/// replica count asks for is among them, and none belongs to a cluster;
/// the others join ordinal 0 once it has (its marker is written). Whoever cannot decide waits (and fails
/// after the join timeout): never a second cluster beside a live one.
fn join(f: &Facts) -> Plan {
    let o = &f.obs;
    let me = o.me.as_str();
    if let Some(mine) = o.node(me)
        && mine.state != NodeState::Down
        && mine.running_db_nodes.len() > 1
    {
        return plan_of(
            Action::Joined,
            format!(
                "{} joined {me}: in the cluster",
                mine.running_db_nodes.join(",")
            ),
        );
    }
    let mut target = None;
    let mut seed_ok = true;
    let mut listed_by = None;
    for n in peers(f) {
        if matches!(n.state, NodeState::Down | NodeState::Empty) {
            seed_ok = false;
        } else if n.lists(me) {
            // It lists us but we are not in its cluster: it is joining us
            // right now, or it still has the entry of our lost volume (it
            // came up after the boot phase looked). Only the second keeps
            // us out of its running nodes for long.
            seed_ok = false;
            if !n.runs_with(me) {
                listed_by.get_or_insert(n.node.as_str());
            }
        } else if n.db_nodes.len() > 1 || n.clustered {
            // Its schema has more nodes than itself, or its volume says it
            // seeded or joined a cluster: it is the cluster, even alone
            // (found by tests/cluster_model.rs: it joined us before we
            // wrote our marker, we restarted and had it drop our entry; or
            // the others were pruned).
            seed_ok = false;
            if n.state == NodeState::Started {
                target.get_or_insert(n.node.clone());
            }
        }
    }
    if let Some(by) = listed_by
        && o.since_phase >= STALE_SECS
    {
        return plan_of(
            Action::RestartEmpty,
            format!(
                "{by} still lists {me} but we are not in its cluster: stopping {me} to drop the stale entry"
            ),
        );
    }
    // A new cluster also needs every pod the StatefulSet wants to answer,
    // when the sidecar says how many: a pod not created yet may hold the
    // cluster.
    if seed_ok && let Some(want) = f.replicas {
        // This node is here (its ejabberd runs).
        let here = |i: u32| {
            f.naming.ordinal(me) == Some(i)
                || peers(f).any(|n| {
                    f.naming.ordinal(&n.node) == Some(i)
                        && !matches!(n.state, NodeState::Down | NodeState::Empty)
                })
        };
        if !(1..want).all(here) {
            seed_ok = false;
        }
    }
    // Only ordinal 0 seeds. The others join it once it has (its marker
    // says so: the branch above), never before: a node joined before it
    // decided would have no marker to come back with (found by
    // tests/cluster_model.rs: killed in that window, ordinal 0 restarted
    // empty while its joiner waited for its tables for ever).
    if target.is_none() && seed_ok && f.naming.ordinal(me) == Some(0) {
        return plan_of(
            Action::Seed,
            format!("no other node belongs to a cluster: {me} seeds a new cluster"),
        );
    }
    if let Some(target) = target {
        // One join at a time, lowest ordinal first: two nodes joining at
        // once can leave one of them waiting for a table for ever (seen with
        // ejabberd 23.01: `passwd` never loaded on chat-2 while chat-1 and
        // chat-2 joined chat-0 together). So wait while a lower pod that is
        // here is not a member yet; it never waits for a higher one.
        let mine = f.naming.ordinal(me);
        if let Some(lower) = peers(f).find(|n| {
            n.node != target
                && f.naming.ordinal(&n.node) < mine
                && n.state != NodeState::Down
                && !n.clustered
                && n.db_nodes.len() <= 1
        }) {
            return plan_of(
                Action::Wait(2),
                format!("{} joins first (one join at a time)", lower.node),
            );
        }
        return plan_of(
            Action::Join {
                target: target.clone(),
            },
            format!("joining {target}"),
        );
    }
    plan_of(Action::Wait(3), "no cluster to join yet; retrying")
}

/// Running: remove from the schema every node of this StatefulSet whose
/// ordinal is >= the desired replica count, that Mnesia does not see
/// running and whose pod is gone: scaled away. Without a replica count
/// nobody is removed. Only the lowest running ordinal does it, one node at
/// a time.
fn prune(f: &Facts) -> Plan {
    let o = &f.obs;
    let me = o.me.as_str();
    let Some(replicas) = f.replicas else {
        return plan_of(Action::Idle, "no replica count: nothing to prune");
    };
    // Scaled to 0 every pod stops, this one too, and all come back with
    // their volumes (whenScaled: Retain): a pause, not a shrink. Pruning
    // the pods that are already gone would leave each volume with another
    // schema.
    if replicas == 0 {
        return plan_of(
            Action::Idle,
            "replicas 0: every pod stops and keeps its volume; nobody leaves the schema",
        );
    }
    let Some(mine) = o.node(me).filter(|n| n.state == NodeState::Started) else {
        return plan_of(Action::Wait(10), "ejabberd is not started here");
    };
    let lowest = mine
        .running_db_nodes
        .iter()
        .filter_map(|n| f.naming.ordinal(n))
        .min();
    if lowest != f.naming.ordinal(me) {
        return plan_of(Action::Idle, "not the lowest running node: another prunes");
    }
    let mut pending = false;
    for n in &mine.db_nodes {
        let Some(ord) = f.naming.ordinal(n) else {
            continue;
        };
        if ord < replicas {
            continue;
        }
        if mine.runs_with(n) || f.pods.contains(n) {
            pending = true; // still running or its pod still exists
            continue;
        }
        return plan_of(
            Action::Remove { node: n.clone() },
            format!(
                "{n} (ordinal {ord} >= replicas {replicas}, pod gone) leaves the cluster's schema"
            ),
        );
    }
    if pending {
        return plan_of(
            Action::Wait(10),
            "a scaled-away node still runs or has its pod",
        );
    }
    plan_of(Action::Idle, "the schema holds no scaled-away node")
}
