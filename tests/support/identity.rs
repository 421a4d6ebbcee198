//! Is the daemon answering on a port the one this test started?
//!
//! A free port found by probing can be taken by someone else before the
//! daemon binds it; then the test would talk to a stranger (another test
//! run's epmd, a system epmd) and the daemon it started would have exited
//! or be listening elsewhere. Comparing the listening sockets' inodes
//! (/proc/PID/net/tcp*, which shows PID's own network namespace) with the
//! sockets the process holds (/proc/PID/fd) settles it without a word on
//! the wire.

use std::collections::HashSet;

/// Socket inodes of TCP sockets in LISTEN state on `port` in `pid`'s
/// network namespace.
fn listeners(pid: u32, port: u16) -> HashSet<u64> {
    let mut out = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let Some(p) = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            else {
                continue;
            };
            if p == port
                && *state == "0A"
                && let Ok(i) = inode.parse()
            {
                out.insert(i);
            }
        }
    }
    out
}

/// Socket inodes `pid` holds open.
fn sockets_of(pid: u32) -> HashSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    dir.filter_map(|e| {
        let target = std::fs::read_link(e.ok()?.path()).ok()?;
        let t = target.to_str()?;
        t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
    })
    .collect()
}

/// Whether every TCP listener on `port` (in `pid`'s network namespace)
/// belongs to process `pid`, and there is at least one.
pub fn listens_alone(pid: u32, port: u16) -> bool {
    let l = listeners(pid, port);
    !l.is_empty() && l.is_subset(&sockets_of(pid))
}

/// Panic unless `pid` is the one listening on `port`: names who is.
pub fn assert_listens_alone(pid: u32, port: u16, what: &str) {
    assert!(
        listens_alone(pid, port),
        "{what}: port {port} is not (only) held by the process this test started \
         (pid {pid}); another daemon answers there"
    );
}
