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

/// The addresses `pid`'s network namespace has TCP listeners on for
/// `port` (whoever owns them), from /proc/PID/net/tcp and tcp6.
pub fn listen_addrs(pid: u32, port: u16) -> std::collections::BTreeSet<std::net::IpAddr> {
    let mut out = std::collections::BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (f.get(1), f.get(3)) else {
                continue;
            };
            let Some((ip, p)) = local.rsplit_once(':') else {
                continue;
            };
            if *state != "0A" || u16::from_str_radix(p, 16).ok() != Some(port) {
                continue;
            }
            if let Some(ip) = parse_proc_ip(ip) {
                out.insert(ip);
            }
        }
    }
    out
}

/// /proc/net/tcp* print addresses as 32-bit words in host byte order.
fn parse_proc_ip(hex: &str) -> Option<std::net::IpAddr> {
    let words: Option<Vec<u32>> = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect();
    let bytes: Vec<u8> = words?.iter().flat_map(|w| w.to_ne_bytes()).collect();
    match bytes.len() {
        4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}
