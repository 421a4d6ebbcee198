//! Cluster decisions for a StatefulSet of Mnesia nodes (ejabberd): what
//! the ejabberd container's entrypoint does next, decided here as one pure
//! function over observed facts, so that every decision that can lose data
//! is unit-tested and model-checked instead of living in shell.
//!
//! Data flows one way:
//! - the entrypoint's Erlang probe (`deploy/base/ejabberd/cluster-probe.erl`,
//!   run by the image's own erts on a short-lived hidden node) reads every
//!   pod's Mnesia and POSTs an [`facts::Observation`] to the sidecar's
//!   `/cluster/plan` (loopback only);
//! - the admin endpoint adds what the sidecar knows of the pods (peer
//!   table, the StatefulSet's replicas) to make [`facts::Facts`];
//! - [`plan::plan`] turns them into one [`plan::Plan`]: an action and why;
//! - the entrypoint carries the action out (start ejabberd, join, ...) and
//!   asks again.
//!
//! Nothing here keeps state between calls: every timer is a fact (seconds
//! since the entrypoint started, since its phase began, a node's uptime).

pub mod facts;
pub mod nodes;
pub mod partition;
pub mod plan;

#[cfg(test)]
mod cases;
