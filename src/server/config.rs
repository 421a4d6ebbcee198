//! How the EPMD server is configured: plain data built at the binary's edge
//! (from the command line there), so the server knows nothing of flags.

use std::time::Duration;

/// The default EPMD port, as in OTP.
pub const DEFAULT_PORT: u16 = 4369;

/// An inclusive range of TCP ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.min..=self.max).contains(&port)
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

/// What a local KILL_REQ does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillPolicy {
    /// As epmd: `OK` and exit when no node is registered or checks are relaxed.
    Epmd,
    /// Sidecar: answer as epmd would (`NO` while nodes are registered
    /// unless relaxed, else `OK`) but keep running. `ejabberdctl stopped`
    /// runs `epmd -kill` once no node is left and fails unless it reads
    /// `OK`; the sidecar's life belongs to Kubernetes, which would restart
    /// an exited sidecar at once anyway.
    Survive,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The port NAMES and DUMP report (the one clients reach us on).
    pub port: u16,
    /// epmd's `-packet_timeout`, whole seconds (see connection::idle_limit).
    pub packet_timeout: Duration,
    pub delay_accept: Duration,
    pub delay_write: Duration,
    pub relaxed: bool,
    pub kill: KillPolicy,
    pub dist_range: Option<PortRange>,
    pub max_connections: usize,
    pub debug: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: DEFAULT_PORT,
            packet_timeout: Duration::from_secs(60),
            delay_accept: Duration::ZERO,
            delay_write: Duration::ZERO,
            relaxed: false,
            kill: KillPolicy::Epmd,
            dist_range: None,
            max_connections: 65_536,
            debug: false,
        }
    }
}
