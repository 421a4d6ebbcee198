//! kube-epmd: an Erlang Port Mapper Daemon that speaks OTP's EPMD protocol
//! byte for byte and, in Kubernetes mode, makes peer pods' node names
//! resolvable for the local Erlang VM without DNS.
//!
//! Data flows one way:
//! - sockets → [`codec`] → [`server`] (policy) → [`registry`] → replies;
//! - (Kubernetes mode) API events → [`kubernetes`] → [`peers`] table →
//!   [`resolver`] files; [`admin`] reads both sides over HTTP.

pub mod admin;
pub mod admin_client;
pub mod cli;
pub mod client;
pub mod codec;
pub mod kubernetes;
pub mod log_line;
pub mod metrics;
pub mod peers;
pub mod process;
pub mod registry;
pub mod resolver;
pub mod server;
pub mod telemetry;
