//! kube-epmd: an Erlang Port Mapper Daemon that speaks OTP's EPMD protocol
//! byte for byte and, in Kubernetes mode, makes peer pods' node names
//! resolvable for the local Erlang VM without DNS.
//!
//! Data flows one way:
//! - sockets → [`codec`] → [`server`] (policy) → [`registry`] → replies;
//! - (Kubernetes mode) API events → peer table → resolver files.

pub mod cli;
pub mod client;
pub mod codec;
pub mod metrics;
pub mod process;
pub mod registry;
pub mod server;
pub mod telemetry;
