//! What the entrypoint's probe observed, and what the sidecar adds: the
//! input of [`super::plan::plan`]. The JSON form of [`Observation`] is what
//! the Erlang probe sends; keep the two in step.

use serde::{Deserialize, Serialize};

use super::nodes::Naming;

/// Where the entrypoint is in its own life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// ejabberd is not running yet in this container.
    Boot,
    /// ejabberd runs on an empty database and has not joined or seeded a
    /// cluster yet (no marker).
    Joining,
    /// ejabberd runs and this node is in the cluster (marker written):
    /// only pruning of scaled-away nodes is left.
    Running,
}

/// A node's state as the probe saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Does not answer a ping.
    Down,
    /// Down, and its pod runs with no database yet (the entrypoint's
    /// `cluster-empty-…` beacon answers): it holds no copy of anything.
    Empty,
    /// The VM answers, Mnesia does not run yet.
    Starting,
    /// Mnesia runs and waits for another node before loading some table.
    Waiting,
    /// Every local table is loaded; ejabberd is not started yet.
    Loaded,
    /// The ejabberd application runs: ejabberdctl commands work.
    Started,
}

impl NodeState {
    /// Mnesia runs on that node (its schema and down records can be read).
    pub fn mnesia_runs(self) -> bool {
        matches!(
            self,
            NodeState::Waiting | NodeState::Loaded | NodeState::Started
        )
    }

    /// The node has the tables: others copy from it.
    pub fn has_tables(self) -> bool {
        matches!(self, NodeState::Loaded | NodeState::Started)
    }
}

/// One node as the probe saw it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFact {
    pub node: String,
    pub state: NodeState,
    /// `mnesia:system_info(db_nodes)`: the nodes of its schema.
    #[serde(default)]
    pub db_nodes: Vec<String>,
    /// `mnesia:system_info(running_db_nodes)`.
    #[serde(default)]
    pub running_db_nodes: Vec<String>,
    /// Seconds the VM has been up (`erlang:statistics(wall_clock)`); 0
    /// when down. How long a waiting node has waited, give or take its
    /// boot.
    #[serde(default)]
    pub uptime: u64,
    /// Of the nodes the probe asked about, those this node's Mnesia saw go
    /// down and has not met since (`mnesia_recover:has_mnesia_down/1`).
    #[serde(default)]
    pub saw_down: Vec<String>,
    /// Its volume holds the entrypoint's marker (in Mnesia's directory):
    /// its database is a cluster's, even if its schema lists only itself
    /// (the others dropped it, or were dropped). False when down.
    #[serde(default)]
    pub clustered: bool,
    /// Its pod answers over the network: its VM does, or else its pod's
    /// EPMD (the kube-epmd sidecar, up before ejabberd and while it is
    /// down) accepts a connection. False for a pod that exists in the API
    /// but that this pod cannot reach: cut off by a network partition.
    #[serde(default = "answers")]
    pub reachable: bool,
}

fn answers() -> bool {
    true
}

impl NodeFact {
    pub fn lists(&self, node: &str) -> bool {
        self.db_nodes.iter().any(|n| n == node)
    }

    pub fn runs_with(&self, node: &str) -> bool {
        self.running_db_nodes.iter().any(|n| n == node)
    }

    pub fn saw_go_down(&self, node: &str) -> bool {
        self.saw_down.iter().any(|n| n == node)
    }
}

/// What a node does about a network partition (CLUSTER_PARTITION_HANDLING;
/// README "Network partitions").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionHandling {
    /// A node that cannot reach a majority of its schema's living pods
    /// stops serving until it can, then copies from the majority: no
    /// acknowledged write is lost; a side without a majority serves
    /// nothing (both halves of a 2-node cluster).
    #[default]
    PauseMinority,
    /// Every side keeps serving; after the heal the smaller side (on a tie
    /// the one without the lowest ordinal) restarts and copies from the
    /// other, discarding what it wrote meanwhile.
    Autoheal,
}

/// The entrypoint's own settings (its CLUSTER_* environment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// CLUSTER_LOAD_GRACE: how long a pod may take to come up before the
    /// others stop waiting for it.
    pub load_grace: u64,
    /// CLUSTER_HOLD_MAX: the longest the lowest node holds back.
    pub hold_max: u64,
    /// CLUSTER_JOIN_TIMEOUT: a node that cannot decide by then exits.
    pub join_timeout: u64,
    /// CLUSTER_PARTITION_HANDLING.
    #[serde(default)]
    pub partition: PartitionHandling,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            load_grace: 15,
            hold_max: 120,
            join_timeout: 300,
            partition: PartitionHandling::default(),
        }
    }
}

/// What the probe sends: the local container's state and every node it
/// asked (this node first, then the other pods', lowest ordinal first).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observation {
    /// This node's name (ERLANG_NODE_ARG).
    #[serde(rename = "self")]
    pub me: String,
    pub phase: Phase,
    /// The database volume says this node joined or seeded a cluster.
    pub marker: bool,
    /// The volume says this node stopped serving because it could not
    /// reach a majority (a partition): its copy is older than the
    /// majority's, it must copy from a member that has the tables.
    #[serde(default)]
    pub paused: bool,
    /// Seconds since the entrypoint started deciding (JOIN_TIMEOUT).
    pub since_start: u64,
    /// Seconds since the current phase began.
    pub since_phase: u64,
    #[serde(default)]
    pub timing: Timing,
    pub nodes: Vec<NodeFact>,
}

impl Observation {
    pub fn node(&self, name: &str) -> Option<&NodeFact> {
        self.nodes.iter().find(|n| n.node == name)
    }
}

/// Everything [`super::plan::plan`] decides on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Facts {
    pub obs: Observation,
    /// How this StatefulSet's node names are formed.
    pub naming: Naming,
    /// The other pods of the StatefulSet that exist (the sidecar's peer
    /// table), as node names, lowest ordinal first.
    pub pods: Vec<String>,
    /// The StatefulSet's desired replicas, when the sidecar knows it.
    pub replicas: Option<u32>,
}
