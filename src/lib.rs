//! kube-epmd: an Erlang Port Mapper Daemon that speaks OTP's EPMD protocol
//! byte for byte and, in Kubernetes mode, makes peer pods' node names
//! resolvable for the local Erlang VM without DNS.
//!
//! Data flows one way:
//! - sockets → [`codec`] → [`server`] (policy) → [`registry`] → replies;
//! - (Kubernetes mode) API events → [`kubernetes`] → [`peers`] table →
//!   [`files`] (rendered, then replaced on disk); [`admin`] reads both
//!   sides over HTTP.

pub mod admin;
pub mod admin_client;
pub mod background;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod codec;
pub mod files;
pub mod kubernetes;
pub mod log_line;
pub mod logging;
pub mod metrics;
pub mod peers;
pub mod process;
pub mod registry;
pub mod server;
pub mod tls;
