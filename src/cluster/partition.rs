//! Network partitions: who still has a majority, and which side gives way
//! after a heal. Pure, like the rest of the planner; [`super::plan::plan`]
//! asks these rules first in the phases they concern.
//!
//! What Mnesia does on its own, and why these rules exist: a node cut off
//! from its peers past net_ticktime sees them go down, and they see it go
//! down; each side keeps serving its own copy (writes on both sides), and
//! after the heal nothing reconnects them or merges the copies: the
//! cluster stays split for good ("running partitioned network").
//!
//! Two facts decide (README "Network partitions"):
//! - **reach**: the probe, run in this pod, asks every pod of the
//!   StatefulSet; a pod that exists in the API and answers neither with
//!   its VM nor with its EPMD (the sidecar listens before and while
//!   ejabberd runs) is cut off from this one. Unlike Mnesia's nodedown this
//!   is seen within one probe round, not after net_ticktime, so a minority
//!   stops before Mnesia on either side gives up on the other: until then
//!   a transaction on either side waits for the other's answer and
//!   acknowledges nothing.
//! - **running together**: after the heal every node answers again, but
//!   two started nodes that list each other in their schemas and do not
//!   run together (`running_db_nodes`) are on two sides.

use std::cmp::Reverse;

use super::facts::{Facts, NodeFact, NodeState, PartitionHandling};
use super::plan::{Action, Plan, SETTLE_SECS, plan_of};

/// Of a set of nodes (this node's schema, or the StatefulSet's pods):
/// those whose pod exists (the living: a node whose pod is gone from the
/// API is down for sure, it cannot be serving on another side) and, of
/// those, the ones this pod cannot reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quorum {
    pub living: Vec<String>,
    pub unreachable: Vec<String>,
}

impl Quorum {
    /// `among` always counts this node itself, living and reached.
    pub fn of<'a>(f: &Facts, among: impl IntoIterator<Item = &'a String>) -> Quorum {
        let me = f.obs.me.as_str();
        let mut living = vec![me.to_string()];
        let mut unreachable = Vec::new();
        for n in among {
            if n == me || living.contains(n) || !f.pods.contains(n) {
                continue;
            }
            living.push(n.clone());
            if f.obs.node(n).is_some_and(|x| !x.reachable) {
                unreachable.push(n.clone());
            }
        }
        Quorum {
            living,
            unreachable,
        }
    }

    /// This node and the ones it reaches are more than half the living.
    pub fn has_majority(&self) -> bool {
        2 * (self.living.len() - self.unreachable.len()) > self.living.len()
    }

    fn describe(&self) -> String {
        format!(
            "reaches {} of the {} living nodes ({} cut off)",
            self.living.len() - self.unreachable.len(),
            self.living.len(),
            self.unreachable.join(",")
        )
    }
}

/// Whether pod `n` may hold a copy of this node's cluster: its schema
/// lists this node, or its schema cannot be read now (it does not answer,
/// or its VM is down). A pod here without a database, or one whose schema
/// (on disc while its Mnesia starts) does not list this node (a new node
/// still joining, with a schema of its own), is no member: its tables are
/// not this cluster's, and it does not count towards a majority (found by
/// tests/cluster_model.rs: a paused node started on a joiner's tables, and
/// a restarted one counted a joiner as its majority).
fn may_be_member(me: &str, n: &NodeFact) -> bool {
    !n.reachable
        || n.state == NodeState::Down
        || n.lists(me)
        || (n.state == NodeState::Starting && n.db_nodes.is_empty())
}

/// A node started and up long enough to have met its peers.
fn settled(n: &NodeFact) -> bool {
    n.state == NodeState::Started && n.uptime >= SETTLE_SECS
}

/// After a heal: the sides, as this node and the members apart from it
/// see them (each node and the members it runs with), and the one that
/// stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Each side, its nodes sorted; the sides sorted.
    pub sides: Vec<Vec<String>>,
    /// The side that stays: the most nodes; on a tie, the side with the
    /// lowest ordinal (a 2-node cluster: chat-0's side).
    pub winner: Vec<String>,
    /// This node stays (it is on the winner and is no bridge).
    pub stays: bool,
    /// A member that runs with this node and with the side it is apart
    /// from (a bridge): it holds writes of both sides and gives way first;
    /// until it has, this node waits, or the evidence of the bridge would
    /// be gone with this node's restart.
    pub bridge: Option<String>,
}

/// The split this node is part of, if it runs ejabberd on one side of
/// one. Decided only once every reachable pod that may be a member is
/// started and settled: a member still starting will run on one side or
/// the other, and that decides the sizes (found by tests/cluster_model.rs:
/// with a member restarting at the heal, the tie went to the side without
/// the majority's acknowledged write). The sides are counted over every
/// settled member of the cluster either side knows, not only the nodes
/// that list this one (a node that joined the other side during the cut
/// is on this node's schema only once it copies: found by the model, both
/// sides stayed).
pub fn split(f: &Facts) -> Option<Split> {
    let me = f.obs.me.as_str();
    let mine = f.obs.node(me)?;
    if mine.state != NodeState::Started {
        return None;
    }
    let pods = || {
        f.obs
            .nodes
            .iter()
            .filter(|n| n.node != me && f.pods.contains(&n.node) && n.reachable)
    };
    // A VM that is down waits for no one here: it may be a node stopped
    // for the partition itself, which starts only once the sides are one.
    let starting = |n: &NodeFact| n.state != NodeState::Down && !settled(n);
    if pods().any(|n| starting(n) && (may_be_member(me, n) || mine.lists(&n.node))) {
        return None;
    }
    let in_cluster = |n: &NodeFact| n.clustered || n.db_nodes.len() > 1;
    let members: Vec<&NodeFact> = std::iter::once(mine)
        .chain(
            pods().filter(|n| settled(n) && in_cluster(n) && (n.lists(me) || mine.lists(&n.node))),
        )
        .collect();
    // What each member runs with, itself included.
    let view = |n: &NodeFact| -> Vec<String> {
        let mut v: Vec<String> = members
            .iter()
            .filter(|m| m.node == n.node || n.runs_with(&m.node))
            .map(|m| m.node.clone())
            .collect();
        v.sort();
        v
    };
    // The members that this node does not run with, neither way. A member
    // running with both sides (it restarted during a short cut) is apart
    // from nobody: it is the bridge case below.
    let apart_from = |a: &NodeFact, b: &NodeFact| !a.runs_with(&b.node) && !b.runs_with(&a.node);
    let apart: Vec<&&NodeFact> = members
        .iter()
        .filter(|m| m.node != me && apart_from(mine, m))
        .collect();
    let lowest = |s: &Vec<String>| {
        s.iter()
            .map(|n| f.naming.ordinal(n).unwrap_or(u32::MAX))
            .min()
            .unwrap_or(u32::MAX)
    };
    let rank = |s: &Vec<String>| (Reverse(s.len()), lowest(s), s.clone());
    if apart.is_empty() {
        // A bridge: this node runs with two members that do not run
        // together (it restarted during a short cut). It holds writes of
        // both sides, so it gives way too, to the stronger of the two
        // (found by tests/cluster_model.rs: the loser's write stayed on
        // the bridge only).
        let others: Vec<&&NodeFact> = members.iter().filter(|m| m.node != me).collect();
        let pair = others.iter().enumerate().find_map(|(i, a)| {
            others[i + 1..]
                .iter()
                .find(|b| apart_from(a, b))
                .map(|b| (*a, *b))
        })?;
        let mut sides = vec![view(pair.0), view(pair.1)];
        sides.sort();
        let winner = sides.iter().min_by_key(|s| rank(s)).cloned()?;
        return Some(Split {
            sides,
            winner,
            stays: false,
            bridge: None,
        });
    }
    let mut sides: Vec<Vec<String>> = std::iter::once(view(mine))
        .chain(apart.iter().map(|m| view(m)))
        .collect();
    sides.sort();
    sides.dedup();
    let mine_view = view(mine);
    let winner = sides.iter().min_by_key(|s| rank(s)).cloned()?;
    // This node stays when no node apart from it runs a stronger side.
    let stays = rank(&mine_view) <= rank(&winner);
    let winner = if stays { mine_view } else { winner };
    let bridge = members
        .iter()
        .find(|b| {
            b.node != me
                && (mine.runs_with(&b.node) || b.runs_with(me))
                && apart
                    .iter()
                    .any(|x| b.runs_with(&x.node) || x.runs_with(&b.node))
        })
        .map(|b| b.node.clone());
    Some(Split {
        sides,
        winner,
        stays,
        bridge,
    })
}

/// Running (ejabberd started, in the cluster): pause when this node
/// cannot reach a majority (pause_minority), give way after a heal when it
/// is on the losing side (both modes). None: no partition concerns it.
pub fn running(f: &Facts) -> Option<Plan> {
    let me = f.obs.me.as_str();
    let mine = f.obs.node(me)?;
    if mine.state != NodeState::Started {
        return None;
    }
    if f.obs.timing.partition == PartitionHandling::PauseMinority {
        let q = Quorum::of(f, &mine.db_nodes);
        if !q.has_majority() {
            return Some(plan_of(
                Action::Pause,
                format!(
                    "partitioned: {me} {}: no majority, ejabberd stops until one is back (CLUSTER_PARTITION_HANDLING=pause_minority)",
                    q.describe()
                ),
            ));
        }
    }
    let s = split(f)?;
    let sides = s
        .sides
        .iter()
        .map(|side| format!("[{}]", side.join(",")))
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(b) = &s.bridge {
        return Some(plan_of(
            Action::Wait(5),
            format!(
                "partition healed, the sides {sides} run apart: {b} runs with both and gives way first"
            ),
        ));
    }
    if s.stays {
        return Some(plan_of(
            Action::Wait(10),
            format!(
                "partition healed, the sides {sides} run apart: this side stays; the others restart and copy from it"
            ),
        ));
    }
    let from = s.winner.iter().find(|n| *n != me)?.clone();
    Some(plan_of(
        Action::Rejoin { from: from.clone() },
        format!(
            "partition healed, the sides {sides} run apart: [{}] stays (more nodes, or on a tie the lowest ordinal); {me} restarts and copies every table from {from}, discarding what this side wrote during the partition",
            s.winner.join(",")
        ),
    ))
}

/// Boot with a database: in pause_minority a node that cannot reach a
/// majority of the pods holds (its container restarted during a
/// partition: Mnesia, having seen every other node go down, would load
/// its own copy and serve a second cluster). A node that paused or gave
/// way (the volume's flag) holds until the members with the tables answer
/// and run as one side, to copy from them, unless every pod answers and
/// none has the tables (all restarted since: Mnesia's down records decide,
/// as after any full stop). None: the usual rules decide.
pub fn boot(f: &Facts) -> Option<Plan> {
    let me = f.obs.me.as_str();
    let q = Quorum::of(
        f,
        f.pods
            .iter()
            .filter(|p| f.obs.node(p).is_none_or(|n| may_be_member(me, n))),
    );
    if f.obs.timing.partition == PartitionHandling::PauseMinority && !q.has_majority() {
        return Some(plan_of(
            Action::Wait(2),
            format!(
                "partitioned: {me} {}: holding until a majority is back (CLUSTER_PARTITION_HANDLING=pause_minority)",
                q.describe()
            ),
        ));
    }
    if !f.obs.paused {
        return None;
    }
    let others = || {
        f.obs
            .nodes
            .iter()
            .filter(|n| n.node != me && f.pods.contains(&n.node))
    };
    // The members with the tables must run as one side: a node of the side
    // that gave way may still run apart (it gives way at its own next
    // check), and Mnesia could copy from it (found by tests/cluster_model.rs:
    // a loser copied the discarded writes back from its side-mate).
    let holders: Vec<&NodeFact> = others()
        .filter(|n| n.reachable && n.state.has_tables() && n.lists(me))
        .collect();
    let one_side = holders.iter().all(|a| {
        holders
            .iter()
            .all(|b| a.node == b.node || (a.runs_with(&b.node) && b.runs_with(&a.node)))
    });
    if !holders.is_empty() && one_side {
        return None;
    }
    if !one_side {
        return Some(plan_of(
            Action::Wait(2),
            format!(
                "stopped for a partition: {me} waits until the nodes with the tables run as one side (the side giving way is still stopping)"
            ),
        ));
    }
    if q.unreachable.is_empty() {
        return None;
    }
    Some(plan_of(
        Action::Wait(2),
        format!(
            "paused after a partition: {me} waits for a member with the tables to copy from ({})",
            q.describe()
        ),
    ))
}

/// What the sidecar's gauges show for these facts and this plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    /// A pod of the StatefulSet is cut off from this one, or the cluster
    /// runs in sides after a heal.
    pub partitioned: bool,
    /// This node does not serve because of a partition.
    pub paused: bool,
}

pub fn status(f: &Facts, p: &Plan) -> Status {
    let cut_off = !Quorum::of(f, &f.pods).unreachable.is_empty();
    let holding = f.obs.paused && p.action != Action::Start;
    Status {
        partitioned: cut_off || split(f).is_some(),
        paused: p.action == Action::Pause || holding,
    }
}
