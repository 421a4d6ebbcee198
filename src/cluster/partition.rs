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

/// After a heal: the sides of started nodes that reach and list each
/// other but do not run together, and the one that stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Each side, its nodes sorted; the sides sorted.
    pub sides: Vec<Vec<String>>,
    /// The side that stays: the most nodes; on a tie, the side with the
    /// lowest ordinal (a 2-node cluster: chat-0's side).
    pub winner: Vec<String>,
}

/// The split this node is part of, if it runs ejabberd on one side of
/// one. Only nodes up for SETTLE_SECS count: a node that has just started
/// may not have met its peers yet.
pub fn split(f: &Facts) -> Option<Split> {
    let me = f.obs.me.as_str();
    let mine = f.obs.node(me)?;
    if mine.state != NodeState::Started {
        return None;
    }
    let members: Vec<&NodeFact> = f
        .obs
        .nodes
        .iter()
        .filter(|n| {
            n.node == me
                || (f.pods.contains(&n.node)
                    && n.state == NodeState::Started
                    && n.reachable
                    && n.uptime >= SETTLE_SECS
                    && mine.lists(&n.node)
                    && n.lists(me))
        })
        .collect();
    let mut sides: Vec<Vec<String>> = members
        .iter()
        .map(|n| {
            let mut side: Vec<String> = members
                .iter()
                .filter(|m| m.node == n.node || n.runs_with(&m.node))
                .map(|m| m.node.clone())
                .collect();
            side.sort();
            side
        })
        .collect();
    sides.sort();
    sides.dedup();
    // Sides that share a node are Mnesia still meeting (one has just
    // started, the other has not seen it yet): no split.
    let disjoint = sides.iter().enumerate().all(|(i, a)| {
        sides[i + 1..]
            .iter()
            .all(|b| a.iter().all(|n| !b.contains(n)))
    });
    if sides.len() < 2 || !disjoint {
        return None;
    }
    let lowest = |s: &Vec<String>| {
        s.iter()
            .map(|n| f.naming.ordinal(n).unwrap_or(u32::MAX))
            .min()
            .unwrap_or(u32::MAX)
    };
    let winner = sides
        .iter()
        .min_by_key(|s| (Reverse(s.len()), lowest(s), s.to_vec()))
        .cloned()?;
    Some(Split { sides, winner })
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
    if s.winner.iter().any(|n| n == me) {
        return Some(plan_of(
            Action::Wait(10),
            format!(
                "partition healed, the sides {sides} run apart: this side stays; the others restart and copy from it"
            ),
        ));
    }
    let from = s.winner.first()?.clone();
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
/// its own copy and serve a second cluster). A node that paused holds
/// until a member with the tables answers, to copy from it, unless every
/// pod answers and none has the tables (all restarted since: Mnesia's down
/// records decide, as after any full stop). None: the usual rules decide.
pub fn boot(f: &Facts) -> Option<Plan> {
    let me = f.obs.me.as_str();
    let q = Quorum::of(f, &f.pods);
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
    if others().any(|n| n.reachable && n.state.has_tables()) {
        return None;
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
