//! Who runs and who listens inside a pod's network namespace, read from
//! /proc: the proof that no OTP `epmd` ever appears in a pod and that 4369
//! belongs to the kube-epmd the test started.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;

/// Inode of the named network namespace, as `/proc/PID/ns/net` names it.
pub fn netns_inode(name: &str) -> Result<u64, String> {
    let path = format!("/var/run/netns/{name}");
    std::fs::metadata(&path)
        .map(|m| m.ino())
        .map_err(|e| format!("stat {path}: {e}"))
}

/// One process seen in /proc.
pub struct Proc {
    pub pid: u32,
    pub comm: String,
    /// argv joined by spaces.
    pub cmdline: String,
}

impl Proc {
    /// OTP's C epmd, under whatever path it was started.
    pub fn is_epmd(&self) -> bool {
        let argv0 = self.cmdline.split(' ').next().unwrap_or("");
        self.comm == "epmd" || argv0.rsplit('/').next() == Some("epmd")
    }
}

/// Every process whose network namespace is one of `ns_inodes`, with the
/// index of its namespace in that list; one pass over /proc. Processes
/// that exit while being read are skipped.
pub fn processes_in(ns_inodes: &[u64]) -> Vec<(usize, Proc)> {
    let want: Vec<String> = ns_inodes.iter().map(|i| format!("net:[{i}]")).collect();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(link) = std::fs::read_link(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        let Some(k) = want
            .iter()
            .position(|w| link.to_string_lossy() == w.as_str())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        out.push((
            k,
            Proc {
                pid,
                comm: comm.trim_end().to_string(),
                cmdline: String::from_utf8_lossy(&cmdline)
                    .trim_end_matches('\0')
                    .replace('\0', " "),
            },
        ));
    }
    out
}

/// Inodes of the TCP sockets listening on `port` in the network namespace
/// of process `pid` (IPv4 and IPv6).
pub fn tcp_listeners(pid: u32, port: u16) -> Result<Vec<u64>, String> {
    let want_port = format!("{port:04X}");
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/{pid}/net/{table}");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when
        // retrnsmt uid timeout inode ...; st 0A is LISTEN.
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            if f[1].rsplit(':').next() != Some(want_port.as_str()) {
                continue;
            }
            let inode = f[9]
                .parse()
                .map_err(|e| format!("{path}: inode {:?}: {e}", f[9]))?;
            out.push(inode);
        }
    }
    Ok(out)
}

/// Inodes of the sockets process `pid` holds open.
pub fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}
