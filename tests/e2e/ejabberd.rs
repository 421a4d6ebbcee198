//! Scenario 2: the Debian `ejabberd` package, one per pod, started and
//! clustered with its own `ejabberdctl`, with kube-epmd as the only EPMD.
//!
//! Each pod gets its own CONFIG_DIR, SPOOL_DIR and LOGS_DIR (owned by the
//! `ejabberd` user, which ejabberdctl `su`s to when run as root).
//! ejabberdctl forces `ERL_INETRC=$CONFIG_DIR/inetrc`: that path is a
//! symlink to the inetrc kube-epmd wrote, as the deploy mounts it.
//! ejabberdctl calls `/usr/bin/epmd -names` / `-kill`, OTP's C client,
//! which talks to whatever holds 127.0.0.1:4369 in the pod: kube-epmd.
//! `-start_epmd false` in ERL_OPTIONS keeps `erl` from starting its own.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, pod_name, set_mode};
use crate::erlang::COOKIE;
use crate::exec::{exec, output};
use crate::{report, run};

const XMPP_HOST: &str = "xmpp.e2e.test";

struct Ejabberd {
    etc: PathBuf,
    spool: PathBuf,
    logs: PathBuf,
}

fn node(k: usize) -> String {
    format!("ejabberd@{}", pod_name(k))
}

/// uid and gid of the `ejabberd` user the package created.
fn ejabberd_user() -> Result<(u32, u32), String> {
    let name = CString::new("ejabberd").unwrap();
    // SAFETY: getpwnam with a valid C string; the result is read at once,
    // before any other call could overwrite the static buffer.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err("no `ejabberd` user: is the ejabberd package installed?".into());
    }
    // SAFETY: non-null result of getpwnam.
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn chown_tree(p: &Path, uid: u32, gid: u32) -> Result<(), String> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
        .map_err(|e| format!("chown {}: {e}", p.display()))?;
    if p.is_dir() && !p.is_symlink() {
        for e in std::fs::read_dir(p).map_err(|e| format!("{e}"))? {
            chown_tree(&e.map_err(|e| format!("{e}"))?.path(), uid, gid)?;
        }
    }
    Ok(())
}

fn write(p: &Path, text: &str) -> Result<(), String> {
    std::fs::write(p, text).map_err(|e| format!("write {}: {e}", p.display()))
}

/// Lay out pod `k`'s ejabberd directories and configuration.
fn prepare(c: &Cluster, k: usize) -> Result<Ejabberd, String> {
    let root = c.path(&format!("pod{k}/ejabberd"));
    let e = Ejabberd {
        etc: root.join("etc"),
        spool: root.join("spool"),
        logs: root.join("logs"),
    };
    for d in [&e.etc, &e.spool, &e.logs] {
        std::fs::create_dir_all(d).map_err(|err| format!("{}: {err}", d.display()))?;
    }
    // A small ejabberd.yml: one virtual host, client listener on the pod
    // address only, no TLS (no certificates here), and the ctl permissions
    // plus mod_admin_extra that `register`/`check_account` need.
    let ip = &c.pods[k].ip;
    write(
        &e.etc.join("ejabberd.yml"),
        &format!(
            "loglevel: info\n\
             hosts:\n  - {XMPP_HOST}\n\
             listen:\n  -\n    port: 5222\n    ip: \"{ip}\"\n    module: ejabberd_c2s\n\
             auth_method: internal\n\
             api_permissions:\n  \"console commands\":\n    from:\n      - ejabberd_ctl\n    \
             who: all\n    what: \"*\"\n\
             modules:\n  mod_admin_extra: {{}}\n"
        ),
    )?;
    // Sourced by ejabberdctl. FIREWALL_WINDOW pins the distribution range
    // kube-epmd enforces; the ctl nodes it starts use the same options.
    write(
        &e.etc.join("ejabberdctl.cfg"),
        &format!(
            "ERLANG_NODE={}\n\
             FIREWALL_WINDOW=4200-4210\n\
             ERL_OPTIONS=\"-start_epmd false -setcookie {COOKIE}\"\n\
             EJABBERD_BYPASS_WARNINGS=true\n",
            node(k)
        ),
    )?;
    let link = e.etc.join("inetrc");
    std::os::unix::fs::symlink(c.pods[k].inetrc(), &link)
        .map_err(|err| format!("symlink {}: {err}", link.display()))?;
    let (uid, gid) = ejabberd_user()?;
    set_mode(&root, 0o755)?;
    set_mode(root.parent().unwrap(), 0o755)?;
    chown_tree(&root, uid, gid)?;
    Ok(e)
}

/// `ejabberdctl ARGS` in pod `k` (bounded); returns exit code and output.
async fn ctl(
    c: &Cluster,
    ej: &[Ejabberd],
    k: usize,
    args: &[&str],
) -> Result<(i32, String), String> {
    let e = &ej[k];
    let mut cmd = c.pods[k].ns.command("ejabberdctl");
    cmd.args(args)
        .env("CONFIG_DIR", &e.etc)
        .env("SPOOL_DIR", &e.spool)
        .env("LOGS_DIR", &e.logs)
        .current_dir("/")
        .stdin(Stdio::null());
    let what = format!("pod {k}: ejabberdctl {args:?}");
    exec(cmd, &what, Duration::from_secs(90)).await
}

/// ejabberdctl must exit 0; returns its output.
async fn ctl_ok(c: &Cluster, ej: &[Ejabberd], k: usize, args: &[&str]) -> Result<String, String> {
    let (code, out) = ctl(c, ej, k, args).await?;
    let e = &ej[k];
    if code == 0 {
        Ok(out)
    } else {
        let log = std::fs::read_to_string(e.logs.join("ejabberd.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        Err(format!(
            "pod {k}: ejabberdctl {args:?} exited {code}: {out}\nlast ejabberd.log lines (newest first):\n{}",
            tail.join("\n")
        ))
    }
}

async fn scenario() -> Result<(), String> {
    let t_all = Instant::now();
    let mut c = Cluster::new("s2", 3).await?;
    // Nobody is Ready before it has joined: the DNS deadlock case.
    for k in 0..3 {
        c.publish(k, false);
    }
    let mut ej = Vec::new();
    for k in 0..3 {
        c.start_sidecar(k).await?;
        ej.push(prepare(&c, k)?);
    }
    for k in 0..3 {
        let t = Instant::now();
        ctl_ok(&c, &ej, k, &["start"]).await?;
        ctl_ok(&c, &ej, k, &["started"]).await?;
        report!("s2: ejabberd in pod {k} started in {:?}", t.elapsed());
        let port = c.registered(k, "ejabberd")?;
        if !port.is_some_and(|p| (4200..=4210).contains(&p)) {
            return Err(format!(
                "pod {k}: ejabberd registered at {port:?}; NAMES:\n{}",
                c.names(k)?
            ));
        }
        let status = ctl_ok(&c, &ej, k, &["status"]).await?;
        if !status.contains(&format!("'{}' is started", node(k))) {
            return Err(format!("pod {k}: status says {status}"));
        }
    }
    c.publish(0, true);
    for k in 1..3 {
        let t = Instant::now();
        ctl_ok(&c, &ej, k, &["join_cluster", &node(0)]).await?;
        report!(
            "s2: pod {k} join_cluster {} in {:?} (pod not Ready)",
            node(0),
            t.elapsed()
        );
        c.publish(k, true);
    }
    for k in 0..3 {
        let list = ctl_ok(&c, &ej, k, &["list_cluster"]).await?;
        for j in 0..3 {
            if !list.contains(&format!("'{}'", node(j))) {
                return Err(format!("pod {k}: list_cluster lacks {}: {list}", node(j)));
            }
        }
    }
    report!("s2: list_cluster shows 3 nodes on every pod");
    ctl_ok(&c, &ej, 1, &["register", "alice", XMPP_HOST, "s3cret"]).await?;
    for k in [0, 2] {
        ctl_ok(&c, &ej, k, &["check_account", "alice", XMPP_HOST]).await?;
        let (code, out) = ctl(&c, &ej, k, &["check_account", "nobody", XMPP_HOST]).await?;
        if code == 0 {
            return Err(format!(
                "pod {k}: check_account of an unknown user succeeded: {out}"
            ));
        }
    }
    report!("s2: user registered on pod 1 exists on pods 0 and 2");
    // `stopped` waits for the node to go, then runs `epmd -kill
    // >/dev/null` once no name is left. In Kubernetes mode kube-epmd answers
    // that KILL as epmd would (OK: nothing registered) but keeps running, so
    // `stopped` must succeed and the sidecar must survive.
    let t = Instant::now();
    ctl_ok(&c, &ej, 2, &["stop"]).await?;
    let t_stopped = Instant::now();
    let (stopped_code, stopped_out) = ctl(&c, &ej, 2, &["stopped"]).await?;
    let waited = t_stopped.elapsed();
    let (code, status) = ctl(&c, &ej, 2, &["status"]).await?;
    if code != 3 {
        return Err(format!(
            "pod 2: status after stopped exited {code} (want 3, not running): {status}"
        ));
    }
    let names = c.names(2)?;
    if names.contains("name ejabberd ") {
        return Err(format!(
            "pod 2: ejabberd still registered after stopped: {names}"
        ));
    }
    let mut kill = c.pods[2].ns.command("epmd");
    kill.arg("-kill").stdin(Stdio::null());
    let kill = output(kill, "pod 2: epmd -kill", Duration::from_secs(30)).await?;
    let kill_out = String::from_utf8_lossy(&kill.stdout).trim().to_string();
    report!(
        "s2: pod 2 stop + stopped in {:?}; `stopped` exit {stopped_code}; `epmd -kill` by \
         hand -> exit {:?}: {kill_out}",
        t.elapsed(),
        kill.status.code()
    );
    if stopped_code != 0 {
        return Err(format!(
            "pod 2: ejabberdctl stopped exited {stopped_code} after {waited:?}: {stopped_out}"
        ));
    }
    if kill.status.code() != Some(0) || kill_out != "Killed" {
        return Err(format!(
            "pod 2: `epmd -kill` with no node registered: exit {:?}: {kill_out}",
            kill.status.code()
        ));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    if !c.sidecar_alive(2) || c.names(2).is_err() {
        return Err(format!(
            "kube-epmd in pod 2 did not survive epmd -kill:\n{}",
            c.sidecar_log(2)
        ));
    }
    // The cluster carries on without pod 2, and pod 2 comes back into it.
    let list = ctl_ok(&c, &ej, 0, &["list_cluster"]).await?;
    report!(
        "s2: list_cluster on pod 0 with pod 2 stopped: {}",
        list.trim().replace('\n', " ")
    );
    let t = Instant::now();
    ctl_ok(&c, &ej, 2, &["start"]).await?;
    ctl_ok(&c, &ej, 2, &["started"]).await?;
    ctl_ok(&c, &ej, 2, &["check_account", "alice", XMPP_HOST]).await?;
    let list = ctl_ok(&c, &ej, 0, &["list_cluster"]).await?;
    if !list.contains(&format!("'{}'", node(2))) {
        return Err(format!(
            "pod 2 did not rejoin: list_cluster on pod 0: {list}"
        ));
    }
    report!(
        "s2: pod 2 restarted and sees the cluster's users again in {:?}",
        t.elapsed()
    );
    for k in 0..3 {
        ctl(&c, &ej, k, &["stop"]).await?;
    }
    report!("s2: total {:?}", t_all.elapsed());
    Ok(())
}

/// Scenario 2: three real ejabberd pods cluster through kube-epmd.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_netns, ignore = "needs root and ip netns (KUBE_EPMD_TEST_SKIP)")]
#[cfg_attr(
    skip_ejabberd,
    ignore = "needs Debian's ejabberd (KUBE_EPMD_TEST_SKIP)"
)]
async fn s2_ejabberd_cluster() {
    crate::support::prereq::ejabberd();
    run("s2 ejabberd cluster", scenario()).await;
}
