//! What a test needs from the machine, checked at the test's start.
//!
//! The rule (README.md, "Set-up"): a missing prerequisite FAILS the test
//! with a message naming it. The only way to go without one is to say so:
//! `KUBE_EPMD_TEST_SKIP=<name>[,<name>...]` makes build.rs set a cfg under
//! which every test that needs it is `#[ignore]`d, so libtest reports it
//! as ignored, never as passed. A test that needs X carries
//! `#[cfg_attr(skip_X, ignore = "...")]` and calls the check for X here.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Open files a test may need at once (tests/abuse.rs holds 3000 sockets;
/// the daemon under test holds as many plus its own).
pub const NOFILE_NEEDED: u64 = 3200;

fn missing(name: &str, what: &str, fix: &str) -> ! {
    panic!(
        "missing prerequisite `{name}`: {what}\n  fix: {fix}\n  \
         or opt out: KUBE_EPMD_TEST_SKIP={name} cargo test \
         (the tests that need it then show as ignored)"
    )
}

/// Root (network namespaces, veth pairs, running ejabberd as its user).
pub fn root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        missing(
            "root",
            &format!("this test needs root (running as uid {euid})"),
            "run the tests as root (bash scripts/test.sh does all of it)",
        );
    }
}

/// Root and a working `ip netns` (iproute2, a kernel with network
/// namespaces).
pub fn netns() {
    root();
    // Unique per call: tests of one binary run this in parallel.
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = format!("kepmd-probe-{}-{n}", std::process::id());
    let add = Command::new("ip")
        .args(["netns", "add", &probe])
        .stdin(Stdio::null())
        .output();
    match add {
        Ok(o) if o.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).status();
        }
        Ok(o) => missing(
            "netns",
            &format!(
                "`ip netns add` fails here: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            "a kernel and container that allow network namespaces (CAP_SYS_ADMIN)",
        ),
        Err(e) => missing(
            "netns",
            &format!("cannot run `ip`: {e}"),
            "apt-get install iproute2",
        ),
    }
}

/// `erl` on PATH and OTP's C `epmd` (the reference), from erlang-base.
pub fn erl() -> PathBuf {
    let on_path = which("erl").is_some();
    let epmd = c_epmd();
    match (on_path, epmd) {
        (true, Some(p)) => p,
        _ => missing(
            "erl",
            "no `erl` on PATH or no /usr/lib/erlang/erts-*/bin/epmd",
            "apt-get install erlang-base",
        ),
    }
}

/// OTP's C epmd, if erlang-base is installed.
pub fn c_epmd() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/erlang")
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("erts-"))
        .map(|e| e.path().join("bin/epmd"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// Debian's ejabberd package (ejabberdctl and the ejabberd user).
pub fn ejabberd() {
    let ctl = Path::new("/usr/sbin/ejabberdctl").exists();
    let user = Command::new("id")
        .args(["-u", "ejabberd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !(ctl && user) {
        missing(
            "ejabberd",
            "Debian's ejabberd package is not installed (/usr/sbin/ejabberdctl, user ejabberd)",
            "apt-get install ejabberd, with a /usr/sbin/policy-rc.d that exits 101 so the \
             package does not start the service (scripts/test.sh does this)",
        );
    }
}

/// Debian's rabbitmq-server package (the broker and rabbitmqctl).
pub fn rabbitmq() {
    if !(Path::new("/usr/sbin/rabbitmq-server").exists()
        && Path::new("/usr/sbin/rabbitmqctl").exists())
    {
        missing(
            "rabbitmq",
            "Debian's rabbitmq-server package is not installed (/usr/sbin/rabbitmq-server)",
            "apt-get install rabbitmq-server, with a /usr/sbin/policy-rc.d that exits 101 so \
             the package does not start the service (scripts/test.sh does this)",
        );
    }
}

/// kubectl 1.27 or newer (its kustomize v5 renders deploy/).
pub fn kubectl() {
    const FIX: &str = "install kubectl >= 1.27 from the Kubernetes package repository \
        (https://pkgs.k8s.io/core:/stable:/v1.32/deb/, package `kubectl`; see \
        https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/). Debian's own \
        kubernetes-client is 1.20 and cannot render deploy/";
    let out = Command::new("kubectl")
        .args(["version", "--client", "-o", "json"])
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => missing(
            "kubectl",
            &format!(
                "`kubectl version --client -o json` failed (too old?): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            FIX,
        ),
        Err(e) => missing("kubectl", &format!("cannot run kubectl: {e}"), FIX),
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let part = |k: &str| -> Option<u64> {
        v["clientVersion"][k]
            .as_str()?
            .trim_end_matches('+')
            .parse()
            .ok()
    };
    match (part("major"), part("minor")) {
        (Some(1), Some(minor)) if minor >= 27 => {}
        (major, minor) => missing(
            "kubectl",
            &format!("kubectl {major:?}.{minor:?} is older than 1.27"),
            FIX,
        ),
    }
}

/// OTP's ssl application (Debian's erlang-ssl), for distribution over
/// TLS: `erl` must start it.
pub fn erl_ssl() {
    erl();
    let out = Command::new("erl")
        .args([
            "-noshell",
            "-start_epmd",
            "false",
            "-eval",
            "case application:ensure_all_started(ssl) of {ok, _} -> halt(0); _ -> halt(1) end.",
        ])
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .output();
    if !out.is_ok_and(|o| o.status.success()) {
        missing(
            "erl",
            "erl cannot start the ssl application",
            "apt-get install erlang-ssl",
        );
    }
}

/// Root and tcpdump (captures of the distribution traffic).
pub fn tcpdump() -> PathBuf {
    root();
    which("tcpdump")
        .unwrap_or_else(|| missing("tcpdump", "no tcpdump on PATH", "apt-get install tcpdump"))
}

/// BusyBox (the ejabberd image's shell and tools).
pub fn busybox() -> PathBuf {
    which("busybox")
        .unwrap_or_else(|| missing("busybox", "no busybox on PATH", "apt-get install busybox"))
}

/// Where scripts/test.sh builds the forky root (and the fix below says to).
pub const FORKY_ROOT_DEFAULT: &str = "/var/cache/kube-epmd/forky-root";

/// The forky root directory named by `KUBE_EPMD_EJABBERD_ROOT` (made by
/// scripts/forky-root.sh: ejabberd, its Erlang/OTP and busybox from
/// Debian forky), for the ejabberd tests' second flavour.
pub fn forky_root() -> PathBuf {
    let fix = format!(
        "as root: bash scripts/forky-root.sh {FORKY_ROOT_DEFAULT} && \
         export KUBE_EPMD_EJABBERD_ROOT={FORKY_ROOT_DEFAULT} (scripts/test.sh does both; \
         it needs mmdebstrap: apt-get install -y mmdebstrap)"
    );
    let Some(dir) = std::env::var_os("KUBE_EPMD_EJABBERD_ROOT").filter(|d| !d.is_empty()) else {
        missing(
            "forky",
            "KUBE_EPMD_EJABBERD_ROOT is not set (the root directory with forky's ejabberd)",
            &fix,
        )
    };
    let dir = PathBuf::from(dir);
    if !dir.is_absolute() {
        missing(
            "forky",
            &format!(
                "KUBE_EPMD_EJABBERD_ROOT={} is not an absolute path",
                dir.display()
            ),
            &fix,
        );
    }
    for needed in ["usr/sbin/ejabberdctl", "usr/bin/erl", "usr/bin/busybox"] {
        if !dir.join(needed).exists() {
            missing(
                "forky",
                &format!(
                    "KUBE_EPMD_EJABBERD_ROOT={} has no /{needed}: not a root made by \
                     scripts/forky-root.sh",
                    dir.display()
                ),
                &fix,
            );
        }
    }
    dir
}

/// At least [`NOFILE_NEEDED`] open files for this process and the
/// daemons it starts: raises the soft limit to the hard one if needed.
pub fn nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        panic!("getrlimit: {}", std::io::Error::last_os_error());
    }
    if lim.rlim_max < NOFILE_NEEDED {
        missing(
            "nofile",
            &format!(
                "the hard open-file limit is {} (`ulimit -Hn`), this test needs {NOFILE_NEEDED}",
                lim.rlim_max
            ),
            "raise it (as root: `ulimit -Hn 65536` before cargo test, or nofile in \
             /etc/security/limits.conf); scripts/test.sh raises it",
        );
    }
    if lim.rlim_cur < NOFILE_NEEDED {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            panic!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
}

/// The first `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
