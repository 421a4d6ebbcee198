//! Network namespaces as pods.
//!
//! Layout of one test's network, all of it private to namespaces the test
//! creates (nothing is added to the host's own namespace, so parallel tests
//! and other users of the machine never see each other's addresses):
//!
//! ```text
//!   <prefix>-hub   bridge br0 10.233.0.1/24  (the test API server listens here)
//!      ├─ vK ══ veth ══ eth0 in <prefix>-pK   10.233.0.(10+K)/24
//!      └─ ...
//! ```
//!
//! Every namespace name carries the test process's pid, so a later run can
//! tell leftovers of a dead run (removed at start) from a live parallel run
//! (left alone). Dropping a [`Netns`] kills every process inside it and
//! deletes it, so a failing or panicking test cleans up after itself.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::sync::Once;

/// All namespaces of this suite start with this.
pub const PREFIX: &str = "kee2e";
/// The subnet every test uses inside its own hub; the bridge takes `.1`.
pub const SUBNET: &str = "10.233.0";

/// Run `ip` with `args`; error text includes stderr.
pub fn ip(args: &[&str]) -> Result<Output, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// One network namespace, deleted (with everything running in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: String) -> Result<Netns, String> {
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> args...`
    pub fn ip(&self, args: &[&str]) -> Result<Output, String> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        ip(&a)
    }

    /// A command that runs inside this namespace (`ip netns exec`, which
    /// execs the program: the child's pid is the program's pid).
    pub fn command(&self, program: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Run `f` on a thread that has entered this namespace: sockets it
    /// creates (listeners included) belong to the namespace for good, so
    /// the test process can talk to pods without any route on the host.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: a valid namespace fd; CLONE_NEWNET only changes
                // this thread's network namespace, which ends with it.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Netns {
    /// SIGKILL every process inside (what the container runtime does at
    /// the end of a pod's grace period); the namespace stays.
    pub fn kill_all(&self) {
        kill_inside(&self.name);
    }

    /// SIGSTOP every process inside: with several namespaces frozen before
    /// any is killed, none of their processes sees another go (a machine
    /// losing power). SIGKILL still ends them.
    pub fn freeze_all(&self) {
        signal_inside(&self.name, libc::SIGSTOP);
    }

    /// SIGCONT every process inside: the frozen pod runs on.
    pub fn thaw_all(&self) {
        signal_inside(&self.name, libc::SIGCONT);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        destroy(&self.name);
    }
}

fn pids_in(name: &str) -> Vec<i32> {
    ip(&["netns", "pids", name])
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kill everything inside `name` (it is ours), then delete it. Bounded:
/// processes get SIGKILL, and we wait at most ~2 s for them to go.
fn destroy(name: &str) {
    kill_inside(name);
    let _ = ip(&["netns", "del", name]);
}

/// Send `sig` to every process inside `name` (ours); false if none was.
fn signal_inside(name: &str, sig: i32) -> bool {
    let pids = pids_in(name);
    for &p in &pids {
        // SAFETY: plain kill(2) on a pid that lives in our namespace.
        unsafe {
            libc::kill(p, sig);
        }
    }
    !pids.is_empty()
}

fn kill_inside(name: &str) {
    for round in 0..20 {
        if !signal_inside(name, libc::SIGKILL) {
            break;
        }
        if round > 0 {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// Remove namespaces left by earlier runs of this suite whose process is
/// gone (a run killed before its Drop guards ran). Once per process.
pub fn remove_leftovers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(out) = ip(&["netns", "list"]) else {
            return;
        };
        let list = String::from_utf8_lossy(&out.stdout).to_string();
        for line in list.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if is_dead_run(pid) {
                crate::report!("removing leftover namespace {name} of dead run {pid}");
                destroy(name);
            }
        }
        // Their scratch directories (see `scratch_prefix`).
        let tmp = std::env::temp_dir();
        for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if is_dead_run(pid) && std::env::var_os("E2E_KEEP").is_none() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    });
}

fn is_dead_run(pid: u32) -> bool {
    pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Prefix of a test's scratch directory under the temp dir: carries the
/// pid, so leftovers of dead runs can be found.
pub fn scratch_prefix(tag: &str) -> String {
    format!("{PREFIX}-{}-{tag}-", std::process::id())
}

/// The hub of one test: a namespace holding the bridge the pods plug into.
pub struct Hub {
    pub ns: Netns,
    prefix: String,
}

impl Hub {
    /// `tag` tells this test's namespaces apart from the other tests'.
    pub fn create(tag: &str) -> Result<Hub, String> {
        remove_leftovers();
        let prefix = format!("{PREFIX}-{}-{tag}", std::process::id());
        let ns = Netns::create(format!("{prefix}-hub"))?;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["addr", "add", &format!("{SUBNET}.1/24"), "dev", "br0"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        Ok(Hub { ns, prefix })
    }

    /// The bridge address, where test services for the pods listen.
    pub fn ip(&self) -> String {
        format!("{SUBNET}.1")
    }

    /// A new pod namespace plugged into the bridge with address `ip`.
    /// `slot` names the veth; it must be unique within this hub.
    pub fn add_pod(&self, slot: usize, ip: &str) -> Result<Netns, String> {
        let pod = Netns::create(format!("{}-p{slot}", self.prefix))?;
        let veth = format!("v{slot}");
        // Created straight into the two namespaces: no interface ever
        // appears in the host's namespace.
        self.ns.ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
        ])?;
        self.ns.ip(&["link", "set", &veth, "master", "br0", "up"])?;
        pod.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        pod.ip(&["link", "set", "eth0", "up"])?;
        Ok(pod)
    }
}
