//! Scenario 9: Debian's `rabbitmq-server`, one broker per pod, with
//! kube-epmd as the only EPMD and no DNS, configured as
//! deploy/examples/rabbitmq configures it (its rabbitmq.conf and its
//! container environment are used as they are, names and paths
//! substituted):
//!
//! - `ERL_INETRC` = the pod's kube-epmd inetrc: node names
//!   `rabbit@chat-K.xmpp-internal-svc` resolve through its hosts file;
//! - `RABBITMQ_DIST_PORT=4200`, `RABBITMQ_CTL_DIST_PORT_MIN/MAX=4201/4210`:
//!   RabbitMQ sets its distribution ports itself (it ignores `-kernel
//!   inet_dist_listen_*`), and kube-epmd refuses ports outside 4200-4210;
//! - `ERL_ZFLAGS="-start_epmd false"`: RabbitMQ's `rabbit_epmd_monitor`
//!   spawns `erl -sname epmd-starter-N` every 60 s, which would start OTP's
//!   C epmd whenever 4369 is free (the sidecar restarting). ERL_ZFLAGS
//!   reaches that child VM; `-start_epmd false` in RabbitMQ's own erl args
//!   does not;
//! - peer discovery by `cluster_formation.classic_config`: the three nodes
//!   form one cluster from empty databases with no `join_cluster`.
//!
//! Every broker and CLI call gets its own HOME (cookie), config, Mnesia and
//! log directories under the test's scratch dir.
//!
//! Scenario 9 over TLS (issue 16): the same brokers configured as
//! deploy/examples/rabbitmq-tls-dist renders (`kubectl kustomize`): every
//! kube-epmd issues its pod's certificate from a test CA, and the broker
//! and the CLI run `inet_tls` with the sidecar's optfile
//! (RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS, RABBITMQ_CTL_ERL_ARGS).

mod procfs;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::cluster::{Cluster, SUBDOMAIN, pod_name};
use crate::erlang::COOKIE;
use crate::exec;
use crate::{report, run};

/// Where Debian installs the real scripts (/usr/sbin's wrappers `su` to
/// the rabbitmq user and force /var/lib/rabbitmq).
const RABBIT_BIN: &str = "/usr/lib/rabbitmq/bin";
const PODS: usize = 3;
/// The configuration the example deploys, used here as is.
const EXAMPLE_CONF: &str = "deploy/examples/rabbitmq/rabbitmq/rabbitmq.conf";
/// The StatefulSet whose rabbitmq container's environment is used here.
const EXAMPLE_STS: &str = "deploy/examples/rabbitmq/statefulset.yaml";
/// The example over mutual TLS, a kustomize overlay of the example.
const TLS_EXAMPLE: &str = "deploy/examples/rabbitmq-tls-dist";
/// Where the example mounts kube-epmd's output directory in the broker's
/// container (the optfile's path in the TLS overlay's erl arguments).
const SIDECAR_DIR: &str = "/var/run/kube-epmd";
/// Bound on one CLI call.
const CTL_LIMIT: Duration = Duration::from_secs(60);
/// Bound on forming the cluster from empty databases (three brokers
/// booting at once on two shared cores).
const FORM_LIMIT: Duration = Duration::from_secs(180);

fn node(k: usize) -> String {
    format!("rabbit@{}.{SUBDOMAIN}", pod_name(k))
}

fn all_nodes() -> BTreeSet<String> {
    (0..PODS).map(node).collect()
}

/// One pod's broker: its directories and, while it runs, its process
/// (the `rabbitmq-server` script, which traps SIGTERM and stops the node).
struct Broker {
    /// The pod slot.
    k: usize,
    home: PathBuf,
    etc: PathBuf,
    mnesia: PathBuf,
    logs: PathBuf,
    stdout: PathBuf,
    /// The example's environment for this pod (see `example_env`).
    env: Vec<(String, String)>,
    child: Option<Child>,
}

fn write(p: &Path, text: &str) -> Result<(), String> {
    std::fs::write(p, text).map_err(|e| format!("write {}: {e}", p.display()))
}

/// The example's rabbitmq.conf, with its StatefulSet's pod and service
/// names replaced by this harness's (`rmq-N.rmq-internal-svc` ->
/// `chat-N.xmpp-internal-svc`).
fn example_conf() -> Result<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(EXAMPLE_CONF);
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let conf = text
        .replace("rmq-internal-svc", SUBDOMAIN)
        .replace("rabbit@rmq-", "rabbit@chat-");
    let listed = conf
        .lines()
        .filter(|l| l.starts_with("cluster_formation.classic_config.nodes."))
        .count();
    if listed != PODS || !(0..PODS).all(|k| conf.contains(&format!(" = {}\n", node(k)))) {
        return Err(format!(
            "{EXAMPLE_CONF} does not list rabbit@rmq-0..2.rmq-internal-svc:\n{text}"
        ));
    }
    Ok(conf)
}

/// The rabbitmq container's environment in the example's StatefulSet, for
/// this harness's pod: values as they are, except the pod and service names
/// in the node name and the paths that live under the test's scratch dir
/// here (kube-epmd's inetrc, HOME, the Mnesia base). A variable this test
/// does not know is an error, so the test follows the manifest.
fn example_env(
    c: &Cluster,
    b: &Broker,
    sts: &serde_json::Value,
) -> Result<Vec<(String, String)>, String> {
    let env = sts["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "rabbitmq"))
        .and_then(|c| c["env"].as_array())
        .ok_or(format!("{EXAMPLE_STS}: no rabbitmq container with env"))?;
    let k = b.k;
    let path_str = |p: &Path| p.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in env {
        let name = e["name"]
            .as_str()
            .ok_or(format!("{EXAMPLE_STS}: env {e}"))?;
        let value = match (name, e["value"].as_str()) {
            ("POD_NAME", None) => pod_name(k),
            ("RABBITMQ_NODENAME", Some(v)) => {
                let n = v
                    .replace("$(POD_NAME)", &pod_name(k))
                    .replace("rmq-internal-svc", SUBDOMAIN);
                if n != node(k) {
                    return Err(format!("{EXAMPLE_STS}: RABBITMQ_NODENAME {v} is not {n}"));
                }
                n
            }
            ("ERL_INETRC", Some(v)) if v.ends_with("/inetrc") => path_str(&c.pods[k].inetrc()),
            ("HOME", Some(_)) => path_str(&b.home),
            ("RABBITMQ_MNESIA_BASE", Some(_)) => path_str(&b.mnesia),
            // The TLS overlay: the optfile in the sidecar's directory,
            // which is the pod's output directory here.
            ("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS" | "RABBITMQ_CTL_ERL_ARGS", Some(v))
                if v.contains("-proto_dist inet_tls") && v.contains(SIDECAR_DIR) =>
            {
                v.replace(SIDECAR_DIR, &path_str(&c.pods[k].out_dir))
            }
            (
                "RABBITMQ_USE_LONGNAME"
                | "RABBITMQ_DIST_PORT"
                | "RABBITMQ_CTL_DIST_PORT_MIN"
                | "RABBITMQ_CTL_DIST_PORT_MAX"
                | "ERL_ZFLAGS",
                Some(v),
            ) => v.to_string(),
            _ => {
                return Err(format!(
                    "{EXAMPLE_STS}: the rabbitmq container sets {e}, which this test does not \
                     apply: teach example_env about it"
                ));
            }
        };
        out.push((name.to_string(), value));
    }
    Ok(out)
}

/// The example's StatefulSet, as its file has it.
fn example_statefulset() -> Result<serde_json::Value, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(EXAMPLE_STS);
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    serde_saphyr::from_str(&text).map_err(|e| format!("{EXAMPLE_STS}: {e}"))
}

/// The StatefulSet of kustomization `dir` as `kubectl kustomize` renders it.
async fn rendered_statefulset(dir: &str) -> Result<serde_json::Value, String> {
    let mut cmd = Command::new("kubectl");
    cmd.arg("kustomize")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = exec::output(cmd, &format!("kubectl kustomize {dir}"), CTL_LIMIT).await?;
    if !out.status.success() {
        return Err(format!(
            "kubectl kustomize {dir}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    for doc in text.split("\n---\n") {
        let v: serde_json::Value =
            serde_saphyr::from_str(doc).map_err(|e| format!("{dir} rendered: {e}"))?;
        if v["kind"] == "StatefulSet" {
            return Ok(v);
        }
    }
    Err(format!("{dir} renders no StatefulSet"))
}

/// Lay out pod `k`'s directories and configuration.
fn prepare(c: &Cluster, k: usize, sts: &serde_json::Value) -> Result<Broker, String> {
    let root = c.path(&format!("pod{k}/rabbitmq"));
    let mut b = Broker {
        k,
        home: root.join("home"),
        etc: root.join("etc"),
        mnesia: root.join("mnesia"),
        logs: root.join("log"),
        stdout: root.join("stdout.log"),
        env: Vec::new(),
        child: None,
    };
    for d in [&b.home, &b.etc, &b.mnesia, &b.logs] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    // The cookie as the example's command leaves it: owner-only, which
    // Erlang insists on.
    let cookie = b.home.join(".erlang.cookie");
    write(&cookie, COOKIE)?;
    crate::cluster::set_mode(&cookie, 0o600)?;
    // Present and empty: keeps /etc/rabbitmq/rabbitmq-env.conf out.
    write(&b.etc.join("rabbitmq-env.conf"), "")?;
    write(&b.etc.join("enabled_plugins"), "[].\n")?;
    write(&b.etc.join("rabbitmq.conf"), &example_conf()?)?;
    b.env = example_env(c, &b, sts)?;
    Ok(b)
}

/// A RabbitMQ program in the broker's pod, with the example's environment
/// (server, CLI and, through inheritance, the `epmd-starter` VMs).
fn rabbit_command(c: &Cluster, b: &Broker, program: &str) -> Command {
    let k = b.k;
    let mut cmd = c.pods[k].ns.command(&format!("{RABBIT_BIN}/{program}"));
    cmd.envs(b.env.iter().map(|(k, v)| (k, v)))
        // Where the image has its files, this host has Debian's: point
        // every other file RabbitMQ reads into the test's dirs.
        .env("LC_ALL", "C.UTF-8")
        .env("RABBITMQ_CONF_ENV_FILE", b.etc.join("rabbitmq-env.conf"))
        .env("RABBITMQ_CONFIG_FILE", b.etc.join("rabbitmq.conf"))
        .env(
            "RABBITMQ_ADVANCED_CONFIG_FILE",
            b.etc.join("advanced.config"),
        )
        .env(
            "RABBITMQ_ENABLED_PLUGINS_FILE",
            b.etc.join("enabled_plugins"),
        )
        .env("RABBITMQ_LOG_BASE", &b.logs)
        .env_remove("ERL_AFLAGS")
        .env_remove("ERL_FLAGS")
        .env_remove("ERL_EPMD_PORT")
        .env_remove("ERL_EPMD_ADDRESS")
        // Crash dumps of short-lived VMs land here, not in the caller's cwd.
        .current_dir(&b.home)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Start the broker in the foreground (as a container would).
fn start(c: &Cluster, b: &mut Broker) -> Result<(), String> {
    let k = b.k;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&b.stdout)
        .map_err(|e| format!("{}: {e}", b.stdout.display()))?;
    let err = out.try_clone().map_err(|e| format!("{e}"))?;
    let child = rabbit_command(c, b, "rabbitmq-server")
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("pod {k}: cannot start rabbitmq-server: {e}"))?;
    b.child = Some(child);
    Ok(())
}

/// Stop the broker as Kubernetes stops a container: SIGTERM, then
/// wait (bounded) for it to exit.
async fn stop(b: &mut Broker) -> Result<(), String> {
    let k = b.k;
    let Some(mut child) = b.child.take() else {
        return Err(format!("pod {k}: broker not running"));
    };
    let pid = child
        .id()
        .ok_or(format!("pod {k}: broker already reaped"))?;
    // SAFETY: kill(2) on the pid of our own child, not yet reaped.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    match tokio::time::timeout(Duration::from_secs(60), child.wait()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("pod {k}: wait for broker: {e}")),
        Err(_) => Err(format!("pod {k}: broker ignored SIGTERM for 60 s")),
    }
}

fn alive(b: &mut Broker) -> bool {
    b.child
        .as_mut()
        .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
}

/// `rabbitmqctl ARGS` against the broker's node, from inside its pod
/// (bounded); returns exit code, stdout, stderr.
async fn ctl(c: &Cluster, b: &Broker, args: &[&str]) -> Result<(i32, String, String), String> {
    let k = b.k;
    let mut cmd = rabbit_command(c, b, "rabbitmqctl");
    cmd.args(args);
    let what = format!("pod {k}: rabbitmqctl {args:?}");
    let out = exec::output(cmd, &what, CTL_LIMIT).await?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// rabbitmqctl must exit 0; returns its stdout.
async fn ctl_ok(c: &Cluster, b: &Broker, args: &[&str]) -> Result<String, String> {
    let (code, out, err) = ctl(c, b, args).await?;
    if code == 0 {
        return Ok(out);
    }
    Err(format!(
        "pod {}: rabbitmqctl {args:?} exited {code}: {out}{err}\n{}",
        b.k,
        log_tail(b)
    ))
}

/// The broker's own log file so far.
fn broker_log(b: &Broker) -> String {
    std::fs::read_to_string(b.logs.join(format!("{}.log", node(b.k)))).unwrap_or_default()
}

/// The last lines of the broker's log, for failure messages.
fn log_tail(b: &Broker) -> String {
    let k = b.k;
    let log = broker_log(b);
    let out = std::fs::read_to_string(&b.stdout).unwrap_or_default();
    let tail = |s: &str| s.lines().rev().take(20).collect::<Vec<_>>().join("\n");
    format!(
        "pod {k} broker log (newest first):\n{}\nstdout (newest first):\n{}",
        tail(&log),
        tail(&out)
    )
}

/// `rabbitmqctl ... --formatter json` parsed.
async fn ctl_json(c: &Cluster, b: &Broker, args: &[&str]) -> Result<serde_json::Value, String> {
    let mut a = args.to_vec();
    a.extend(["--formatter", "json"]);
    let out = ctl_ok(c, b, &a).await?;
    serde_json::from_str(&out).map_err(|e| format!("pod {}: rabbitmqctl {args:?}: {e}: {out}", b.k))
}

/// The nodes this broker reports running in its cluster.
async fn running_nodes(c: &Cluster, b: &Broker) -> Result<BTreeSet<String>, String> {
    let v = ctl_json(c, b, &["cluster_status"]).await?;
    let nodes = v["running_nodes"].as_array().ok_or(format!(
        "pod {}: cluster_status without running_nodes: {v}",
        b.k
    ))?;
    Ok(nodes
        .iter()
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect())
}

/// Wait (bounded) until the broker has booted. `await_startup` fails at
/// once while the node is not up yet, and each call is kept under
/// `CTL_LIMIT`, so it is retried until `limit`.
async fn await_startup(c: &Cluster, b: &Broker, limit: Duration) -> Result<(), String> {
    let k = b.k;
    let t0 = Instant::now();
    loop {
        let left = limit
            .saturating_sub(t0.elapsed())
            .min(CTL_LIMIT - Duration::from_secs(10))
            .as_secs()
            .max(1)
            .to_string();
        let (code, out, err) = ctl(c, b, &["await_startup", "--timeout", &left]).await?;
        if code == 0 {
            return Ok(());
        }
        if t0.elapsed() > limit {
            return Err(format!(
                "pod {k}: not booted after {limit:?}: {out}{err}\n{}",
                log_tail(b)
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Wait (bounded) until each of `brokers` reports exactly `want` running.
async fn await_members(
    c: &Cluster,
    brokers: &[&Broker],
    want: &BTreeSet<String>,
    limit: Duration,
) -> Result<(), String> {
    let t0 = Instant::now();
    loop {
        let mut last = None;
        for b in brokers {
            let got = running_nodes(c, b).await?;
            if &got != want {
                last = Some((b, got));
                break;
            }
        }
        let Some((b, got)) = last else {
            return Ok(());
        };
        if t0.elapsed() > limit {
            return Err(format!(
                "pod {} runs {got:?}, want {want:?} (waited {limit:?})\n{}",
                b.k,
                log_tail(b)
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn users(v: &serde_json::Value) -> Vec<String> {
    let list = v.as_array().cloned().unwrap_or_default();
    list.iter()
        .filter_map(|u| u["user"].as_str().map(str::to_string))
        .collect()
}

fn queues(v: &serde_json::Value) -> Vec<String> {
    let list = v.as_array().cloned().unwrap_or_default();
    list.iter()
        .filter_map(|q| q["name"].as_str().map(str::to_string))
        .collect()
}

/// What the watcher saw in the pods' namespaces.
#[derive(Default)]
struct Seen {
    /// OTP epmd processes: must stay empty.
    epmd: Vec<String>,
    /// `epmd-starter` VMs (RabbitMQ's epmd monitor), per pod, by pid,
    /// with the instant they were first seen.
    starters: Vec<Vec<(u32, Instant)>>,
}

/// Polls every pod's namespace every 50 ms for the whole scenario: any
/// process that is OTP's epmd is recorded, and so is every `epmd-starter`.
struct Watcher {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(c: &Cluster) -> Result<Watcher, String> {
        let inodes = c
            .pods
            .iter()
            .map(|p| procfs::netns_inode(&p.ns.name))
            .collect::<Result<Vec<_>, _>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen {
            epmd: Vec::new(),
            starters: vec![Vec::new(); inodes.len()],
        }));
        let (s, w) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for (k, p) in procfs::processes_in(&inodes) {
                    let mut seen = w.lock().unwrap_or_else(|e| e.into_inner());
                    if p.is_epmd() {
                        let line = format!("pod {k}: pid {} {}", p.pid, p.cmdline);
                        if !seen.epmd.contains(&line) {
                            seen.epmd.push(line);
                        }
                    } else if p.cmdline.contains("epmd-starter")
                        && p.comm.starts_with("beam")
                        && !seen.starters[k].iter().any(|(pid, _)| *pid == p.pid)
                    {
                        seen.starters[k].push((p.pid, Instant::now()));
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Ok(Watcher {
            stop,
            seen,
            thread: Some(thread),
        })
    }

    fn epmd_seen(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .epmd
            .clone()
    }

    /// `epmd-starter` VMs first seen in pod `k` after `since`.
    fn starters_since(&self, k: usize, since: Instant) -> Vec<u32> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.starters[k]
            .iter()
            .filter(|(_, t)| *t >= since)
            .map(|(pid, _)| *pid)
            .collect()
    }

    fn starter_count(&self) -> usize {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.starters.iter().map(Vec::len).sum()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// 4369 in pod `k` is held by the kube-epmd the test started, and only by
/// it; and no epmd process was ever seen in any pod.
fn check_epmd_owner(c: &Cluster, w: &Watcher, k: usize) -> Result<(), String> {
    let pid = c
        .sidecar_pid(k)
        .ok_or(format!("pod {k}: no kube-epmd running"))?;
    let listeners = procfs::tcp_listeners(pid, 4369)?;
    let ours = procfs::socket_inodes(pid);
    if listeners.is_empty() || listeners.iter().any(|i| !ours.contains(i)) {
        return Err(format!(
            "pod {k}: sockets listening on 4369 {listeners:?}, kube-epmd (pid {pid}) holds {ours:?}"
        ));
    }
    let epmd = w.epmd_seen();
    if !epmd.is_empty() {
        return Err(format!("OTP epmd ran in a pod: {epmd:?}"));
    }
    Ok(())
}

/// Formation: all brokers at once, empty databases, no join_cluster; one
/// node starts the cluster and the others join it by peer discovery; each
/// broker is registered at 4200.
async fn form(c: &Cluster, brokers: &mut [Broker], tag: &str) -> Result<(), String> {
    let t_form = Instant::now();
    for b in brokers.iter_mut() {
        start(c, b)?;
    }
    let (r0, r1, r2) = tokio::join!(
        await_startup(c, &brokers[0], FORM_LIMIT),
        await_startup(c, &brokers[1], FORM_LIMIT),
        await_startup(c, &brokers[2], FORM_LIMIT),
    );
    r0.and(r1).and(r2)?;
    let booted = t_form.elapsed();
    await_members(
        c,
        &brokers.iter().collect::<Vec<_>>(),
        &all_nodes(),
        FORM_LIMIT,
    )
    .await?;
    let formed = t_form.elapsed();
    report!("{tag}: 3 brokers booted in {booted:?}, one 3-node cluster on every pod in {formed:?}");
    // Peer discovery did it: one node started the cluster, the other two
    // picked a peer from the classic-config list by themselves.
    let (mut seeds, mut joined) = (Vec::new(), 0);
    for b in brokers.iter() {
        let log = broker_log(b);
        if log.contains("Starting as a blank standalone node") {
            seeds.push(node(b.k));
        }
        if log.contains("selected for auto-clustering") {
            joined += 1;
        }
    }
    if seeds.len() != 1 || joined != PODS - 1 {
        return Err(format!(
            "want one seed and {} auto-clustered nodes, logs show seeds {seeds:?} and {joined} joined",
            PODS - 1
        ));
    }
    report!(
        "{tag}: {} started the cluster, the other two joined it by peer discovery",
        seeds[0]
    );
    for k in 0..PODS {
        let port = c.registered(k, "rabbit")?;
        if port != Some(4200) {
            return Err(format!(
                "pod {k}: rabbit registered at {port:?}, want 4200; NAMES:\n{}",
                c.names(k)?
            ));
        }
    }
    Ok(())
}

/// The real scripts the brokers run (not /usr/sbin's wrappers).
fn rabbit_installed() -> Result<(), String> {
    if Path::new(RABBIT_BIN).join("rabbitmq-server").exists() {
        return Ok(());
    }
    Err(format!(
        "{RABBIT_BIN}/rabbitmq-server missing: install Debian's rabbitmq-server package"
    ))
}

async fn scenario() -> Result<(), String> {
    rabbit_installed()?;
    let t_all = Instant::now();
    let mut c = Cluster::new("rmq", PODS).await?;
    for k in 0..PODS {
        c.publish(k, false);
    }
    for k in 0..PODS {
        c.start_sidecar(k).await?;
    }
    let watcher = Watcher::start(&c)?;
    let sts = example_statefulset()?;
    let mut brokers = (0..PODS)
        .map(|k| prepare(&c, k, &sts))
        .collect::<Result<Vec<_>, _>>()?;

    form(&c, &mut brokers, "rmq").await?;
    for k in 0..PODS {
        check_epmd_owner(&c, &watcher, k)?;
    }

    // A user created on pod 0 and a queue declared on pod 1 are seen on
    // the other pods.
    let before = users(&ctl_json(&c, &brokers[2], &["list_users"]).await?);
    if before.iter().any(|u| u == "alice") {
        return Err(format!("pod 2 lists alice before she exists: {before:?}"));
    }
    ctl_ok(&c, &brokers[0], &["add_user", "alice", "s3cret"]).await?;
    let declare = "rabbit_amqqueue:declare(rabbit_misc:r(<<\"/\">>, queue, <<\"e2e-q\">>), \
                   true, false, [], none, <<\"e2e\">>).";
    let out = ctl_ok(&c, &brokers[1], &["eval", declare]).await?;
    if !out.starts_with("{new,") {
        return Err(format!("pod 1: declaring e2e-q returned {out}"));
    }
    for b in &brokers {
        let u = users(&ctl_json(&c, b, &["list_users"]).await?);
        let q = queues(&ctl_json(&c, b, &["list_queues", "name"]).await?);
        if !u.iter().any(|u| u == "alice") || !q.iter().any(|q| q == "e2e-q") {
            return Err(format!("pod {}: users {u:?}, queues {q:?}", b.k));
        }
    }
    report!("rmq: user alice (added on pod 0) and queue e2e-q (declared on pod 1) on every pod");

    // Node restart: pod 2's broker stops (SIGTERM) and starts again on its
    // database; it rejoins without any command.
    let t = Instant::now();
    stop(&mut brokers[2]).await?;
    let two: BTreeSet<String> = [node(0), node(1)].into();
    await_members(&c, &[&brokers[0]], &two, Duration::from_secs(30)).await?;
    report!(
        "rmq: pod 2 stopped in {:?}; pod 0 runs {two:?}",
        t.elapsed()
    );
    let t = Instant::now();
    start(&c, &mut brokers[2])?;
    await_startup(&c, &brokers[2], Duration::from_secs(120)).await?;
    await_members(
        &c,
        &[&brokers[0], &brokers[2]],
        &all_nodes(),
        Duration::from_secs(60),
    )
    .await?;
    let rejoin = t.elapsed();
    let log = broker_log(&brokers[2]);
    let empty_boots = log.matches("is empty. Assuming we need to join").count();
    if empty_boots != 1 {
        return Err(format!(
            "pod 2: {empty_boots} boots from an empty database (want only the first)"
        ));
    }
    let u = users(&ctl_json(&c, &brokers[2], &["list_users"]).await?);
    let q = queues(&ctl_json(&c, &brokers[2], &["list_queues", "name"]).await?);
    if !u.iter().any(|u| u == "alice") || !q.iter().any(|q| q == "e2e-q") {
        return Err(format!("pod 2 after restart: users {u:?}, queues {q:?}"));
    }
    report!("rmq: pod 2 restarted and rejoined from its own database in {rejoin:?}");
    check_epmd_owner(&c, &watcher, 2)?;

    // Sidecar restart while the brokers run. A process on pod 1's node
    // waits until its EPMD stops answering, then makes RabbitMQ's epmd
    // monitor check at once (as its 60 s timer would): the monitor starts
    // an `epmd-starter` VM, which would start OTP's epmd on the free 4369
    // were it not for ERL_ZFLAGS.
    let arm = "F = fun W(0) -> gave_up; W(N) -> case erl_epmd:names({127,0,0,1}) of \
               {error, _} -> rabbit_epmd_monitor ! check, sent; \
               _ -> timer:sleep(50), W(N - 1) end end, \
               spawn(fun() -> F(600) end), armed.";
    ctl_ok(&c, &brokers[1], &["eval", arm]).await?;
    let t_kill = Instant::now();
    c.kill_sidecar(1).await;
    let broker_pid = brokers[1]
        .child
        .as_ref()
        .and_then(|ch| ch.id())
        .ok_or("pod 1: broker not running")?;
    // The starter runs and exits; meanwhile nothing may listen on 4369.
    let t0 = Instant::now();
    let starter = loop {
        let s = watcher.starters_since(1, t_kill);
        let running = s
            .iter()
            .any(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if let Some(&pid) = s.first()
            && !running
        {
            break pid;
        }
        let held = procfs::tcp_listeners(broker_pid, 4369)?;
        if !held.is_empty() {
            return Err(format!(
                "pod 1: something listens on 4369 with the sidecar dead: {held:?}; epmd seen: {:?}",
                watcher.epmd_seen()
            ));
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "pod 1: no epmd-starter ran and exited within 30 s of the sidecar's death \
                 (starters seen: {s:?})\n{}",
                log_tail(&brokers[1])
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let gap = t_kill.elapsed();
    let held = procfs::tcp_listeners(broker_pid, 4369)?;
    if !held.is_empty() || !watcher.epmd_seen().is_empty() {
        return Err(format!(
            "pod 1: 4369 held by {held:?} after epmd-starter {starter}; epmd seen: {:?}",
            watcher.epmd_seen()
        ));
    }
    report!(
        "rmq: sidecar of pod 1 killed; RabbitMQ's epmd-starter (pid {starter}) ran and exited \
         {gap:?} later, 4369 still free"
    );
    let t = Instant::now();
    let ready = c.start_sidecar(1).await?;
    let rereg = c
        .wait(
            "rabbit re-registered with pod 1's new kube-epmd",
            Duration::from_secs(30),
            |c| c.registered(1, "rabbit").is_ok_and(|p| p == Some(4200)),
        )
        .await?;
    report!(
        "rmq: new sidecar ready in {ready:?}; broker re-registered {:?} after the sidecar \
         started ({rereg:?} after it was ready)",
        t.elapsed()
    );
    check_epmd_owner(&c, &watcher, 1)?;
    for b in &mut brokers {
        if !alive(b) {
            return Err(format!(
                "pod {}: broker exited during the sidecar restart",
                b.k
            ));
        }
    }
    await_members(&c, &[&brokers[1]], &all_nodes(), Duration::from_secs(10)).await?;
    for k in 0..PODS {
        if !c.sidecar_alive(k) {
            return Err(format!("pod {k}: kube-epmd exited:\n{}", c.sidecar_log(k)));
        }
        check_epmd_owner(&c, &watcher, k)?;
    }
    report!(
        "rmq: no OTP epmd in any pod for {:?} ({} epmd-starter VMs seen); total {:?}",
        t_all.elapsed(),
        watcher.starter_count(),
        t_all.elapsed()
    );
    Ok(())
}

/// Scenario 9 over mutual TLS (see the module): the brokers form their
/// cluster and replicate over `inet_tls`, the CLI reaches them over it,
/// and a CLI without the certificate (plain `inet_tcp`, the cookie right)
/// reaches none.
async fn tls_scenario() -> Result<(), String> {
    rabbit_installed()?;
    let t_all = Instant::now();
    let sts = rendered_statefulset(TLS_EXAMPLE).await?;
    // The overlay's sidecar arguments, applied to this harness's sidecar.
    let args: Vec<String> = sts["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "kube-epmd"))
        .and_then(|c| c["args"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .ok_or(format!("{TLS_EXAMPLE}: no kube-epmd sidecar with args"))?;
    let tls_args: Vec<&String> = args.iter().filter(|a| a.starts_with("--tls-")).collect();
    let want = ["--tls-ca-dir=", "--tls-subdomain=rmq-internal-svc"];
    if tls_args.len() != 2 || !want.iter().zip(&tls_args).all(|(w, a)| a.starts_with(w)) {
        return Err(format!(
            "{TLS_EXAMPLE}: sidecar TLS arguments {tls_args:?}, want {want:?}"
        ));
    }
    let mut c = Cluster::new("rmt", PODS).await?;
    let ca = crate::lifecycle::tls::cluster_ca(c.dir.path())?;
    c.sidecar_args = vec![
        format!("--tls-ca-dir={}", ca.display()),
        tls_args[1].replace("rmq-internal-svc", SUBDOMAIN),
    ];
    for k in 0..PODS {
        c.publish(k, false);
    }
    for k in 0..PODS {
        c.start_sidecar(k).await?;
        let opt = c.pods[k].out_dir.join(kube_epmd::tls::OPTFILE);
        if !opt.exists() {
            return Err(format!("pod {k}: ready without {}", opt.display()));
        }
    }
    let mut brokers = (0..PODS)
        .map(|k| prepare(&c, k, &sts))
        .collect::<Result<Vec<_>, _>>()?;
    for b in &brokers {
        for var in [
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
            "RABBITMQ_CTL_ERL_ARGS",
        ] {
            if !b.env.iter().any(|(n, _)| n == var) {
                return Err(format!("{TLS_EXAMPLE}: the rabbitmq container lacks {var}"));
            }
        }
    }
    form(&c, &mut brokers, "rmq tls").await?;
    // The broker's own distribution is TLS (what the CLI just used too).
    let proto = ctl_ok(&c, &brokers[0], &["eval", "init:get_argument(proto_dist)."]).await?;
    if !proto.contains("inet_tls") {
        return Err(format!("pod 0: the broker runs proto_dist {proto}"));
    }
    ctl_ok(&c, &brokers[0], &["add_user", "carol", "s3cret"]).await?;
    for b in &brokers {
        let u = users(&ctl_json(&c, b, &["list_users"]).await?);
        if !u.iter().any(|u| u == "carol") {
            return Err(format!("pod {}: users {u:?} without carol", b.k));
        }
    }
    report!("rmq tls: user carol (added on pod 0 over TLS) listed by every pod's CLI");
    // The CLI without the certificate: the cookie is right, TLS refuses it.
    let t = Instant::now();
    let mut cmd = rabbit_command(&c, &brokers[1], "rabbitmqctl");
    cmd.env_remove("RABBITMQ_CTL_ERL_ARGS").arg("list_users");
    let out = exec::output(cmd, "pod 1: rabbitmqctl list_users, plain", CTL_LIMIT).await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() || text.contains("carol") {
        return Err(format!("a plain-TCP rabbitmqctl was answered: {text}"));
    }
    for b in &mut brokers {
        if !alive(b) {
            return Err(format!("pod {}: broker exited", b.k));
        }
    }
    report!(
        "rmq tls: rabbitmqctl without the certificate (plain inet_tcp, right cookie) refused \
         (exit {:?}, {:?}), brokers unaffected; total {:?}",
        out.status.code(),
        t.elapsed(),
        t_all.elapsed()
    );
    for b in &mut brokers {
        stop(b).await?;
    }
    Ok(())
}

/// Scenario 9: three Debian rabbitmq-server brokers cluster through
/// kube-epmd by classic-config peer discovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_netns, ignore = "needs root and ip netns (KUBE_EPMD_TEST_SKIP)")]
#[cfg_attr(
    skip_rabbitmq,
    ignore = "needs Debian's rabbitmq-server (KUBE_EPMD_TEST_SKIP)"
)]
async fn s9_rabbitmq_cluster() {
    crate::support::prereq::rabbitmq();
    run("s9 rabbitmq cluster", scenario()).await;
}

/// Scenario 9 over mutual TLS, as deploy/examples/rabbitmq-tls-dist runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_netns, ignore = "needs root and ip netns (KUBE_EPMD_TEST_SKIP)")]
#[cfg_attr(
    skip_rabbitmq,
    ignore = "needs Debian's rabbitmq-server (KUBE_EPMD_TEST_SKIP)"
)]
#[cfg_attr(skip_kubectl, ignore = "needs kubectl >= 1.27 (KUBE_EPMD_TEST_SKIP)")]
async fn s9_rabbitmq_cluster_over_tls() {
    crate::support::prereq::rabbitmq();
    crate::support::prereq::kubectl();
    run("s9 rabbitmq cluster over tls", tls_scenario()).await;
}
