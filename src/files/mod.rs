//! The files kube-epmd keeps in its output directory: the hosts file and
//! inetrc the Erlang VM resolves peers from, and the replicas file the
//! cluster entrypoint reads. Data flows one way: peer table → [`render`]
//! (text, no I/O) → [`disk`] (atomic replace), driven by the [`writer`]
//! task.

pub mod disk;
pub mod render;
pub mod writer;

pub const HOSTS_FILE: &str = "hosts";
pub const INETRC_FILE: &str = "inetrc";
pub const REPLICAS_FILE: &str = "replicas";
