//! Issue 10: the ejabberd cluster through every lifecycle event, with no
//! human step. The test plays the StatefulSet controller as deploy/
//! configures it (`podManagementPolicy: Parallel`, `RollingUpdate`,
//! `whenScaled: Delete`): pods `chat-N` are network namespaces with
//! kube-epmd (Kubernetes mode, fed by the in-tree API server) and Debian's
//! ejabberd started by deploy/base/ejabberd/cluster-entrypoint.sh under
//! BusyBox sh, with the deploy's own ejabberd.yml and ejabberdctl.cfg.
//! A pod's database directory is its volume: it survives the pod unless
//! the event loses it; its /tmp is an emptyDir, new for every pod.
//!
//! One cluster goes through the events in sequence (start-up is the
//! slowest part, so it is shared): parallel first start in reversed order,
//! one pod deleted, all deleted at once, all stopped one after another with
//! a user registered after chat-0 stopped, all down with chat-0's volume
//! lost (chat-0 first, then a machine failure under chat-1 and chat-2), a
//! rolling update, a lost volume, scale 3 -> 2 -> 3. After each: `list_cluster` on every node lists
//! exactly the expected nodes, the schema (Mnesia `db_nodes`, read by an
//! independent `erl` probe) too, and users registered before exist.
//!
//! Each scenario runs once per ejabberd flavour ([`Flavour`]): the host's
//! packages (bookworm: ejabberd 23.01 on OTP 25), and Debian forky's
//! (ejabberd 26.07 on OTP 29) from the root directory that
//! scripts/forky-root.sh makes and `KUBE_EPMD_EJABBERD_ROOT` names, the
//! container's commands chrooted into it (chroot.rs).

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Child;

use crate::chroot::Root;
use crate::cluster::{Cluster, K8S_NS, SUBDOMAIN, pod_name, set_mode};
use crate::exec::{exec, output};
use crate::support::apiserver::statefulset;
use crate::{check, report, run};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/base/ejabberd/cluster-entrypoint.sh"
);
const CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/base/ejabberd");
/// The tls-dist overlay's ejabberdctl.cfg (ERL_OPTIONS with inet_tls).
const TLS_CTL_CFG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/overlays/tls-dist/ejabberdctl.cfg"
);
/// The optfile path the tls-dist overlay's ERL_OPTIONS names (the shared
/// /var/run/kube-epmd); a pod's own output directory replaces it here.
const TLS_OPTFILE_IN_DEPLOY: &str = "/var/run/kube-epmd/ssl_dist.conf";
const COOKIE: &str = "kube_epmd_lifecycle";
const DOMAIN: &str = "localhost";
/// The issue's target for "all pods recreated -> every node in every
/// list_cluster"; used as the bound of the waits, not as a timed assertion.
const FULL_LIMIT: Duration = Duration::from_secs(180);
/// The container's PATH (both flavours).
const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the ejabberd container's programs come from.
pub enum Flavour {
    /// The host's Debian packages (bookworm: ejabberd 23.01 on OTP 25).
    Host,
    /// A root directory made by scripts/forky-root.sh
    /// (`KUBE_EPMD_EJABBERD_ROOT`; forky: ejabberd 26.07 on OTP 29): every
    /// command of the container (the entrypoint under the root's BusyBox,
    /// `ejabberdctl`, the `erl` probe) runs chrooted into it (see
    /// chroot.rs); the sidecar stays on the host.
    Root(PathBuf),
}

impl Flavour {
    fn name(&self) -> &'static str {
        match self {
            Flavour::Host => "lifecycle",
            Flavour::Root(_) => "lifecycle otp29",
        }
    }

    /// `tag` for this flavour's namespaces and scratch directory.
    fn tag(&self, tag: &str) -> String {
        match self {
            Flavour::Host => tag.to_string(),
            Flavour::Root(_) => format!("{tag}29"),
        }
    }
}

fn node(k: usize) -> String {
    format!("ejabberd@{}.{SUBDOMAIN}", pod_name(k))
}

fn ids() -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Result<u32, String> {
        let out = std::process::Command::new("id")
            .args([flag, "ejabberd"])
            .output()
            .map_err(|e| format!("id: {e}"))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| "no `ejabberd` user: is Debian's ejabberd package installed?".to_string())
    };
    Ok((id("-u")?, id("-g")?))
}

fn host_busybox() -> Result<PathBuf, String> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("busybox"))
        .find(|p| p.exists())
        .ok_or_else(|| {
            "busybox is not installed: the entrypoint runs under BusyBox sh in the image".into()
        })
}

fn sh(cmd: &str) -> Result<(), String> {
    let st = std::process::Command::new("sh")
        .args(["-c", cmd])
        .status()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{cmd}: {st}"))
    }
}

/// The ejabberd container of one pod slot.
struct Container {
    conf: PathBuf,
    spool: PathBuf,
    logs: PathBuf,
    tmp: PathBuf,
    log: PathBuf,
    script: Option<Child>,
}

/// A figure of this test, naming the flavour it ran on.
macro_rules! say {
    ($chat:expr, $($arg:tt)*) => {
        report!("{}: {}", $chat.name, format!($($arg)*))
    };
}

/// The busybox inside a root (forky-root.sh installs it).
const ROOT_BUSYBOX: &str = "/usr/bin/busybox";

/// The StatefulSet `chat` as the controller runs it, over a test cluster.
struct Chat {
    // Field order is drop order: the cluster (every process in its
    // namespaces) goes before the root's mount point.
    c: Cluster,
    /// `Some` for [`Flavour::Root`]: the container runs chrooted there.
    root: Option<Root>,
    /// What the figures it reports start with: the flavour.
    name: &'static str,
    pods: Vec<Container>,
    home: PathBuf,
    uid: u32,
    gid: u32,
    busybox: PathBuf,
    /// StatefulSet object published to the API server (`spec.replicas`).
    replicas: i32,
    /// Distribution over mutual TLS (the tls-dist overlay): every
    /// kube-epmd issues its pod's certificate from this test CA directory.
    tls: Option<PathBuf>,
    /// The controller keeps a scaled-away pod's claim: deploy/'s
    /// `persistentVolumeClaimRetentionPolicy.whenScaled` is Retain.
    retain_scaled: bool,
    /// More of the ejabberd container's environment (CLUSTER_* settings).
    extra_env: Vec<(String, String)>,
}

/// deploy/base/statefulset.yaml's `whenScaled`, as the StatefulSet
/// controller reads it: true for Retain (also when unset, the API's
/// default), false for Delete.
fn deploy_retains_scaled() -> Result<bool, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/base/statefulset.yaml");
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let sts: serde_json::Value =
        serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    match sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"].as_str() {
        None | Some("Retain") => Ok(true),
        Some("Delete") => Ok(false),
        Some(other) => Err(format!("{}: whenScaled {other:?}", path.display())),
    }
}

impl Chat {
    /// `label` names the test's namespaces (one per test in a run).
    async fn new(label: &str, n: usize, flavour: &Flavour) -> Result<Chat, String> {
        Chat::with_dist(label, n, flavour, None).await
    }

    /// [`Chat::new`], the pods as deploy/overlays/tls-dist runs them when
    /// `ca` is a directory with the cluster CA (`ca.crt`, `ca.key`): each
    /// kube-epmd gets `--tls-ca-dir CA --tls-subdomain xmpp-internal-svc`
    /// and each pod the overlay's ejabberdctl.cfg (inet_tls, the optfile
    /// in that pod's output directory).
    async fn with_dist(
        label: &str,
        n: usize,
        flavour: &Flavour,
        ca: Option<PathBuf>,
    ) -> Result<Chat, String> {
        let label = flavour.tag(label);
        let ctl = match flavour {
            Flavour::Host => PathBuf::from("/usr/sbin/ejabberdctl"),
            Flavour::Root(dir) => dir.join("usr/sbin/ejabberdctl"),
        };
        if !ctl.exists() {
            return Err(format!("needs ejabberd ({} is missing)", ctl.display()));
        }
        let mut c = Cluster::new(&label, n).await?;
        let (root, busybox, (uid, gid)) = match flavour {
            Flavour::Host => (None, host_busybox()?, ids()?),
            Flavour::Root(dir) => {
                let root = Root::new(dir, c.dir.path())?;
                let ids = root.ids("ejabberd")?;
                (Some(root), PathBuf::from(ROOT_BUSYBOX), ids)
            }
        };
        // As deploy/: kube-epmd reads the StatefulSet by name, and RBAC
        // allows nothing else (resourceNames: [chat]).
        c.sidecar_args = vec!["--statefulset".into(), "chat".into()];
        c.api.restrict_statefulsets_to(Some(&["chat"]));
        if let Some(ca) = &ca {
            c.sidecar_args.push("--tls-ca-dir".into());
            c.sidecar_args.push(ca.display().to_string());
            c.sidecar_args.push("--tls-subdomain".into());
            c.sidecar_args.push(SUBDOMAIN.into());
        }
        let home = c.path("home");
        std::fs::create_dir_all(&home).map_err(|e| format!("{e}"))?;
        let cookie = home.join(".erlang.cookie");
        std::fs::write(&cookie, COOKIE).map_err(|e| format!("{e}"))?;
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400))
            .map_err(|e| format!("{e}"))?;
        let pem = c.path("server.pem");
        let out = std::process::Command::new("openssl")
            .args(["req", "-x509", "-batch", "-nodes", "-newkey", "rsa:2048"])
            .args(["-days", "2", "-subj", "/CN=localhost", "-keyout"])
            .arg(&pem)
            .arg("-out")
            .arg(&pem)
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("openssl: {e}"))?;
        if !out.success() {
            return Err("openssl could not make a certificate".into());
        }
        let mut chat = Chat {
            c,
            root,
            name: flavour.name(),
            pods: Vec::new(),
            home,
            uid,
            gid,
            busybox,
            replicas: n as i32,
            tls: ca,
            retain_scaled: deploy_retains_scaled()?,
            extra_env: Vec::new(),
        };
        for k in 0..n {
            chat.add_slot(k, &pem)?;
        }
        chat.publish_statefulset();
        let root = chat.c.dir.path().to_path_buf();
        sh(&format!(
            "chown -R {uid}:{gid} {}",
            root.join("home").display()
        ))?;
        sh(&format!("chown {uid}:{gid} {}", pem.display()))?;
        Ok(chat)
    }

    fn add_slot(&mut self, k: usize, pem: &Path) -> Result<(), String> {
        if k >= self.c.pods.len() {
            self.c.add_pod_ns()?;
        }
        let root = self.c.path(&format!("pod{k}/ejabberd"));
        let ct = Container {
            conf: root.join("conf"),
            spool: root.join("database"),
            logs: root.join("logs"),
            tmp: root.join("tmp"),
            log: root.join("entrypoint.log"),
            script: None,
        };
        for d in [&ct.conf, &ct.spool, &ct.logs, &ct.tmp] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let yml = std::fs::read_to_string(Path::new(CONF).join("ejabberd.yml"))
            .map_err(|e| format!("ejabberd.yml: {e}"))?
            .replace("/opt/ejabberd/conf/server.pem", &pem.display().to_string());
        std::fs::write(ct.conf.join("ejabberd.yml"), yml).map_err(|e| format!("{e}"))?;
        if self.tls.is_some() {
            let cfg =
                std::fs::read_to_string(TLS_CTL_CFG).map_err(|e| format!("{TLS_CTL_CFG}: {e}"))?;
            if !cfg.contains(TLS_OPTFILE_IN_DEPLOY) {
                return Err(format!("{TLS_CTL_CFG} names no {TLS_OPTFILE_IN_DEPLOY}"));
            }
            let optfile = self.c.pods[k].out_dir.join(kube_epmd::tls::OPTFILE);
            let cfg = cfg.replace(TLS_OPTFILE_IN_DEPLOY, &optfile.display().to_string());
            std::fs::write(ct.conf.join("ejabberdctl.cfg"), cfg).map_err(|e| format!("{e}"))?;
            // The pod's fsGroup: the shared directory is the ejabberd
            // group's and set-group-ID, so the key kube-epmd writes there
            // (mode 0640) is readable by the ejabberd container.
            let out = &self.c.pods[k].out_dir;
            sh(&format!("chgrp {} {}", self.gid, out.display()))?;
            set_mode(out, 0o2755)?;
        } else {
            std::fs::copy(
                Path::new(CONF).join("ejabberdctl.cfg"),
                ct.conf.join("ejabberdctl.cfg"),
            )
            .map_err(|e| format!("ejabberdctl.cfg: {e}"))?;
        }
        // The deploy mounts kube-epmd's inetrc at $CONFIG_DIR/inetrc.
        std::os::unix::fs::symlink(self.c.pods[k].inetrc(), ct.conf.join("inetrc"))
            .map_err(|e| format!("inetrc link: {e}"))?;
        set_mode(&root, 0o755)?;
        sh(&format!(
            "chown -R {}:{} {}",
            self.uid,
            self.gid,
            root.display()
        ))?;
        if k < self.pods.len() {
            self.pods[k] = ct;
        } else {
            self.pods.push(ct);
        }
        Ok(())
    }

    /// The StatefulSet object (what kube-epmd's `--statefulset chat` reads).
    fn publish_statefulset(&self) {
        self.c
            .api
            .upsert_statefulset(statefulset(K8S_NS, "chat", SUBDOMAIN, Some(self.replicas)));
    }

    /// Wait until kube-epmd in every pod of `ks` wrote `replicas`.
    async fn wait_replicas_file(&self, ks: &[usize], replicas: i32) -> Result<(), String> {
        let want = format!("{replicas}\n");
        self.c
            .wait(
                &format!("kube-epmd writes replicas {replicas} in pods {ks:?}"),
                Duration::from_secs(20),
                |c| {
                    ks.iter().all(|&k| {
                        std::fs::read_to_string(c.pods[k].out_dir.join("replicas"))
                            .is_ok_and(|s| s == want)
                    })
                },
            )
            .await?;
        Ok(())
    }

    fn env(&self, k: usize) -> Vec<(String, String)> {
        let ct = &self.pods[k];
        let d = |p: &Path| p.display().to_string();
        vec![
            ("PATH".into(), PATH.into()),
            ("HOME".into(), d(&self.home)),
            ("POD_NAME".into(), pod_name(k)),
            ("POD_NAMESPACE".into(), K8S_NS.into()),
            ("POD_IP".into(), self.c.pods[k].ip.clone()),
            ("ERLANG_NODE_ARG".into(), node(k)),
            ("ERLANG_COOKIE".into(), COOKIE.into()),
            ("CONFIG_DIR".into(), d(&ct.conf)),
            ("SPOOL_DIR".into(), d(&ct.spool)),
            ("LOGS_DIR".into(), d(&ct.logs)),
            (
                "KUBE_EPMD_HOSTS_FILE".into(),
                d(&self.c.pods[k].hosts_path()),
            ),
            ("CLUSTER_SPOOL_DIR".into(), d(&ct.spool)),
            ("CLUSTER_READY_FLAG".into(), d(&ct.tmp.join("ready"))),
            ("CLUSTER_JOIN_TIMEOUT".into(), "150".into()),
            ("CLUSTER_PRUNE_INTERVAL".into(), "2".into()),
        ]
        .into_iter()
        .chain(self.extra_env.iter().cloned())
        .collect()
    }

    /// Append `line` to every pod's ejabberdctl.cfg (sourced by
    /// ejabberdctl and by the entrypoint's hidden nodes alike).
    fn ctl_cfg_line(&self, line: &str) -> Result<(), String> {
        for ct in &self.pods {
            let cfg = ct.conf.join("ejabberdctl.cfg");
            let mut text =
                std::fs::read_to_string(&cfg).map_err(|e| format!("{}: {e}", cfg.display()))?;
            text.push_str(line);
            text.push('\n');
            std::fs::write(&cfg, text).map_err(|e| format!("{}: {e}", cfg.display()))?;
        }
        Ok(())
    }

    /// `setpriv` to the ejabberd user, then `env -i`: what goes before the
    /// environment and the program of a command the container runs.
    fn as_ejabberd_user(&self) -> Vec<OsString> {
        vec![
            "setpriv".into(),
            format!("--reuid={}", self.uid).into(),
            format!("--regid={}", self.gid).into(),
            "--init-groups".into(),
            "env".into(),
            "-i".into(),
        ]
    }

    /// A command run as the ejabberd user inside pod `k` (what the
    /// container or `kubectl exec` runs), with the container's environment.
    fn command(&self, k: usize, program: &Path) -> tokio::process::Command {
        let mut argv = self.as_ejabberd_user();
        argv.extend(
            self.env(k)
                .into_iter()
                .map(|(key, v)| format!("{key}={v}").into()),
        );
        argv.push(program.into());
        let mut cmd = self.in_pod(k, &argv);
        cmd.current_dir("/").stdin(Stdio::null());
        cmd
    }

    /// `argv` run in pod `k`'s network namespace: on the host, or
    /// chrooted into the flavour's root.
    fn in_pod(&self, k: usize, argv: &[OsString]) -> tokio::process::Command {
        let ns = &self.c.pods[k].ns;
        match &self.root {
            Some(root) => root.command(ns, argv),
            None => {
                let mut cmd = ns.command(&argv[0].to_string_lossy());
                cmd.args(&argv[1..]);
                cmd
            }
        }
    }

    /// `dir` empty and owned by the ejabberd user: a pod's fresh emptyDir,
    /// or a new, empty volume (a lost one, a new claim after a scale-up).
    fn fresh_dir(&self, dir: &Path) -> Result<(), String> {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot empty {}: {e}", dir.display())),
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        sh(&format!(
            "chown {}:{} {}",
            self.uid,
            self.gid,
            dir.display()
        ))
    }

    /// Pod `k` gets a new, empty volume (its spool).
    fn empty_volume(&self, k: usize) -> Result<(), String> {
        self.fresh_dir(&self.pods[k].spool)
    }

    /// `kubectl scale --replicas=TO` as the StatefulSet controller carries
    /// it out (Parallel): down, every pod with an ordinal >= TO deleted at
    /// once, and its claim deleted too unless `whenScaled` is Retain; up,
    /// the missing pods created at once, each on its kept claim or a new,
    /// empty one.
    async fn scale(&mut self, to: usize) -> Result<(), String> {
        let from = self.replicas as usize;
        self.replicas = to as i32;
        self.publish_statefulset();
        if to < from {
            let gone: Vec<usize> = (to..from).collect();
            self.delete(&gone).await?;
            if !self.retain_scaled {
                for k in gone {
                    self.empty_volume(k)?;
                }
            }
        } else {
            let new: Vec<usize> = (from..to).collect();
            self.create(&new).await?;
        }
        Ok(())
    }

    /// The databases the entrypoint set aside on pod `k`'s volume
    /// (`set-aside/<time>/`), each with the files in it.
    fn set_aside(&self, k: usize) -> Vec<(String, Vec<String>)> {
        let dir = self.pods[k].spool.join("set-aside");
        let mut v: Vec<(String, Vec<String>)> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| {
                let mut files: Vec<String> = std::fs::read_dir(e.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|f| f.file_name().to_string_lossy().into_owned())
                    .collect();
                files.sort();
                (e.file_name().to_string_lossy().into_owned(), files)
            })
            .collect();
        v.sort();
        v
    }

    /// All pods down one after another, chat-0 first, each stop followed
    /// by a user registered on the next pod (`users[0]` on chat-1,
    /// `users[1]` on chat-2): chat-2, down last, holds the newest copy.
    async fn stop_in_turn(&mut self, users: [&str; 2]) -> Result<(), String> {
        self.delete(&[0]).await?;
        self.register(1, users[0]).await?;
        self.delete(&[1]).await?;
        self.register(2, users[1]).await?;
        self.delete(&[2]).await
    }

    /// The API shows the pod (with its IP, not Ready), its kube-epmd
    /// starts, then the ejabberd container (the entrypoint).
    async fn sandbox(&mut self, k: usize) -> Result<(), String> {
        self.fresh_dir(&self.pods[k].tmp)?;
        self.c.publish(k, false);
        if !self.c.sidecar_alive(k) {
            self.c.start_sidecar(k).await?;
        }
        Ok(())
    }

    fn start_container(&mut self, k: usize) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.pods[k].log)
            .map_err(|e| format!("{e}"))?;
        let err = log.try_clone().map_err(|e| format!("{e}"))?;
        let mut cmd = self.command(k, &self.busybox.clone());
        cmd.args(["sh", SCRIPT]).stdout(log).stderr(err);
        let child = cmd
            .spawn()
            .map_err(|e| format!("chat-{k}: cannot start the entrypoint: {e}"))?;
        self.pods[k].script = Some(child);
        Ok(())
    }

    /// Create pods `ks` as the Parallel policy does: all at once, in the
    /// order given.
    async fn create(&mut self, ks: &[usize]) -> Result<(), String> {
        for &k in ks {
            self.sandbox(k).await?;
        }
        for &k in ks {
            self.start_container(k)?;
        }
        Ok(())
    }

    /// Wait until pod `k`'s ejabberd container is Ready (the entrypoint's
    /// flag: started and in the cluster), then publish it Ready.
    async fn wait_ready(&mut self, k: usize, limit: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        let flag = self.pods[k].tmp.join("ready");
        while !flag.exists() {
            if let Some(ch) = self.pods[k].script.as_mut()
                && let Ok(Some(st)) = ch.try_wait()
            {
                return Err(format!(
                    "chat-{k}: the entrypoint exited ({st}) before Ready:\n{}",
                    self.log(k)
                ));
            }
            if t0.elapsed() > limit {
                return Err(format!(
                    "chat-{k} not Ready after {limit:?}:\n{}",
                    self.log(k)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.c.publish(k, true);
        Ok(t0.elapsed())
    }

    async fn wait_all_ready(&mut self, ks: &[usize]) -> Result<Duration, String> {
        let t0 = Instant::now();
        for &k in ks {
            let left = FULL_LIMIT.saturating_sub(t0.elapsed());
            self.wait_ready(k, left).await?;
        }
        Ok(t0.elapsed())
    }

    /// Delete pods `ks` at once: SIGTERM to every ejabberd container (tini
    /// forwards it to the entrypoint), wait for them to exit (grace period
    /// 60 s), then the sidecar stops and the pod leaves the API.
    async fn delete(&mut self, ks: &[usize]) -> Result<(), String> {
        for &k in ks {
            self.c.publish(k, false);
            if let Some(pid) = self.pods[k].script.as_ref().and_then(|c| c.id()) {
                // SAFETY: kill(2) on the pid of a child we spawned and
                // have not reaped yet.
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
        }
        for &k in ks {
            if let Some(mut ch) = self.pods[k].script.take() {
                match tokio::time::timeout(Duration::from_secs(60), ch.wait()).await {
                    Ok(Ok(st)) if st.success() => {}
                    Ok(r) => {
                        return Err(format!(
                            "chat-{k}: the entrypoint ended with {r:?} on SIGTERM:\n{}",
                            self.log(k)
                        ));
                    }
                    Err(_) => {
                        return Err(format!(
                            "chat-{k}: still running 60 s after SIGTERM:\n{}",
                            self.log(k)
                        ));
                    }
                }
            }
            self.c.kill_sidecar(k).await;
            // What the runtime does at the end of the grace period.
            self.c.pods[k].ns.kill_all();
            self.c.api.delete_pod(K8S_NS, &pod_name(k));
        }
        Ok(())
    }

    /// Every container of pods `ks` crashes at once (SIGKILL: no `ejabberdctl
    /// stop`); the pods stay, with their IPs and their emptyDirs.
    async fn crash(&mut self, ks: &[usize]) {
        for &k in ks {
            self.c.publish(k, false);
            self.c.pods[k].ns.kill_all();
        }
        for &k in ks {
            if let Some(mut ch) = self.pods[k].script.take() {
                let _ = ch.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(10), ch.wait()).await;
            }
            self.c.kill_sidecar(k).await;
        }
    }

    /// The machine under pods `ks` fails: every process of every pod
    /// stops at the same instant (all frozen first, so no node sees another
    /// go down), then dies; the pods leave the API, to be created again
    /// elsewhere with their volumes.
    async fn machine_failure(&mut self, ks: &[usize]) {
        for &k in ks {
            self.c.pods[k].ns.freeze_all();
        }
        self.crash(ks).await;
        for &k in ks {
            self.c.api.delete_pod(K8S_NS, &pod_name(k));
        }
    }

    /// The kubelet restarts the crashed containers of pods `ks`: the
    /// sidecar first (native sidecar), then ejabberd; /tmp is kept.
    async fn restart_containers(&mut self, ks: &[usize]) -> Result<(), String> {
        for &k in ks {
            self.c.start_sidecar(k).await?;
        }
        for &k in ks {
            self.start_container(k)?;
        }
        Ok(())
    }

    /// Pod `k`'s volume emptied while every pod is down, then all pods
    /// recreated at once: wait for every pod Ready, every node in every
    /// `list_cluster`, the schema of exactly all nodes and `users` on every
    /// node. Returns pod `k`'s log since the recreation, how long the full
    /// cluster took after the last Ready, and since the recreation.
    async fn recreate_all_with_empty_volume(
        &mut self,
        k: usize,
        users: &[String],
    ) -> Result<(String, Duration, Duration), String> {
        self.empty_volume(k)?;
        let seen = self.log(k).len();
        let t = Instant::now();
        self.create(&ALL).await?;
        self.wait_all_ready(&ALL).await?;
        let full = self.wait_full(&ALL, FULL_LIMIT).await?;
        self.schema_is(&ALL).await?;
        self.users_everywhere(&ALL, users).await?;
        let since = self.log(k).get(seen..).unwrap_or_default().to_string();
        Ok((since, full, t.elapsed()))
    }

    fn log(&self, k: usize) -> String {
        std::fs::read_to_string(&self.pods[k].log).unwrap_or_default()
    }

    fn ejabberd_log(&self, k: usize) -> String {
        let log =
            std::fs::read_to_string(self.pods[k].logs.join("ejabberd.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        tail.join("\n")
    }

    /// `ejabberdctl ARGS` in pod `k` as `kubectl exec` runs it (bounded).
    async fn ctl(&self, k: usize, args: &[&str]) -> Result<(i32, String), String> {
        let mut cmd = self.command(k, Path::new("/usr/sbin/ejabberdctl"));
        cmd.args(args);
        let what = format!("chat-{k}: ejabberdctl {args:?}");
        exec(cmd, &what, Duration::from_secs(70)).await
    }

    async fn ctl_ok(&self, k: usize, args: &[&str]) -> Result<String, String> {
        match self.ctl(k, args).await? {
            (0, out) => Ok(out),
            (code, out) => Err(format!(
                "chat-{k}: ejabberdctl {args:?} exited {code}: {out}\nejabberd.log (newest first):\n{}",
                self.ejabberd_log(k)
            )),
        }
    }

    /// `list_cluster` on pod `k` as a set of node names.
    async fn list_cluster(&self, k: usize) -> Result<Vec<String>, String> {
        let out = self.ctl_ok(k, &["list_cluster"]).await?;
        let mut v: Vec<String> = out
            .split_whitespace()
            .map(|w| w.trim_matches('\'').to_string())
            .filter(|w| w.starts_with("ejabberd@"))
            .collect();
        v.sort();
        Ok(v)
    }

    /// An `erl` of the test's own (not the entrypoint's helper) in pod
    /// `k`, as root, resolving through the pod's inetrc: the host's, or in
    /// a root the root's erl (its OTP speaks to the root's ejabberd), with
    /// a clean environment there. Only the arguments are left to add.
    fn erl(&self, k: usize) -> tokio::process::Command {
        let mut cmd = match &self.root {
            None => self.c.pods[k].ns.command("erl"),
            Some(_) => {
                let mut argv: Vec<OsString> = vec!["env".into(), "-i".into(), "-C".into()];
                argv.push(self.c.dir.path().into());
                argv.push(format!("PATH={PATH}").into());
                argv.push("HOME=/root".into());
                argv.push(format!("ERL_INETRC={}", self.c.pods[k].inetrc().display()).into());
                argv.push("erl".into());
                self.in_pod(k, &argv)
            }
        };
        cmd.env("ERL_INETRC", self.c.pods[k].inetrc())
            .current_dir(self.c.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    /// The distribution arguments of pod `k`'s own VMs: the tls-dist
    /// overlay's (inet_tls with the optfile its kube-epmd wrote), or none.
    fn dist_args(&self, k: usize) -> Vec<OsString> {
        match self.tls {
            Some(_) => vec![
                "-proto_dist".into(),
                "inet_tls".into(),
                "-ssl_dist_optfile".into(),
                self.c.pods[k].out_dir.join(kube_epmd::tls::OPTFILE).into(),
            ],
            None => Vec::new(),
        }
    }

    /// Mnesia's `db_nodes` (the schema) of pod `k`'s node, read by a plain
    /// `erl` started by the test (not the entrypoint's helper).
    async fn db_nodes(&self, k: usize) -> Result<Vec<String>, String> {
        let mut cmd = self.erl(k);
        let probe = format!(
            "probe{}-{k}@{}.{SUBDOMAIN}",
            std::process::id(),
            pod_name(k)
        );
        cmd.args(["-name", &probe, "-hidden", "-noinput", "-noshell"])
            .args(["-start_epmd", "false", "-setcookie", COOKIE])
            .args(["-kernel", "inet_dist_listen_min", "4200"])
            .args(["-kernel", "inet_dist_listen_max", "4210"])
            .args(self.dist_args(k))
            .arg("-eval")
            .arg(format!(
                "R = rpc:call('{}', mnesia, system_info, [db_nodes], 10000), \
                 io:format(\"~p~n\", [R]), halt(0).",
                node(k)
            ));
        let what = format!("chat-{k}: erl probe");
        let out = output(cmd, &what, Duration::from_secs(30)).await?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !text.trim_start().starts_with('[') {
            return Err(format!("chat-{k}: db_nodes probe said: {text}"));
        }
        let mut v: Vec<String> = text
            .split(|c: char| c == ',' || c == '[' || c == ']' || c.is_whitespace())
            .map(|w| w.trim_matches('\'').to_string())
            .filter(|w| w.starts_with("ejabberd@"))
            .collect();
        v.sort();
        Ok(v)
    }

    /// Wait until `list_cluster` on every pod of `ks` lists exactly `ks`.
    async fn wait_full(&self, ks: &[usize], limit: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        let mut want: Vec<String> = ks.iter().map(|&k| node(k)).collect();
        want.sort();
        'again: loop {
            for &k in ks {
                let last = match self.list_cluster(k).await {
                    Ok(got) if got == want => continue,
                    Ok(got) => format!("chat-{k} lists {got:?}"),
                    Err(e) => e,
                };
                if t0.elapsed() > limit {
                    return Err(format!(
                        "not every node lists {want:?} after {limit:?}: {last}"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue 'again;
            }
            return Ok(t0.elapsed());
        }
    }

    /// The schema of every pod in `ks` lists exactly `ks`.
    async fn schema_is(&self, ks: &[usize]) -> Result<(), String> {
        let mut want: Vec<String> = ks.iter().map(|&k| node(k)).collect();
        want.sort();
        for &k in ks {
            let got = self.db_nodes(k).await?;
            if got != want {
                return Err(format!("chat-{k}: db_nodes {got:?}, want {want:?}"));
            }
        }
        Ok(())
    }

    /// `cluster-entrypoint.sh ARGS` in pod `k` as `kubectl exec` runs it.
    async fn script(&self, k: usize, args: &[&str]) -> Result<(i32, String), String> {
        let mut cmd = self.command(k, &self.busybox);
        cmd.args(["sh", SCRIPT]).args(args);
        let what = format!("chat-{k}: cluster-entrypoint.sh {args:?}");
        exec(cmd, &what, Duration::from_secs(90)).await
    }

    async fn register(&self, k: usize, user: &str) -> Result<(), String> {
        self.ctl_ok(k, &["register", user, DOMAIN, "s3cret"])
            .await?;
        Ok(())
    }

    /// Every user of `users` exists on every pod of `ks`.
    async fn users_everywhere(&self, ks: &[usize], users: &[String]) -> Result<(), String> {
        for &k in ks {
            let out = self.ctl_ok(k, &["registered_users", DOMAIN]).await?;
            let have: Vec<&str> = out.split_whitespace().collect();
            for u in users {
                if !have.contains(&u.as_str()) {
                    return Err(format!("chat-{k}: user {u} is gone; registered: {have:?}"));
                }
            }
        }
        Ok(())
    }

    /// chat-0 seeded (it never joined anyone; it either logged the seed or
    /// saw the others join it first), the others joined.
    fn one_seed(&self) -> Result<(), String> {
        let zero = self.log(0);
        check(
            !zero.contains("joining ")
                && (zero.contains("seeds a new cluster") || zero.contains(" in the cluster")),
            || format!("chat-0 did not seed:\n{zero}"),
        )?;
        for k in [1, 2] {
            let log = self.log(k);
            check(
                joined_a_cluster(&log) && !log.contains("seeds a new cluster"),
                || format!("chat-{k} did not join:\n{log}"),
            )?;
        }
        Ok(())
    }

    fn logs_contain(&self, ks: &[usize], needle: &str) -> Option<usize> {
        ks.iter().copied().find(|&k| self.log(k).contains(needle))
    }
}

/// The pod's log shows it joined a cluster: `ejabberdctl join_cluster`
/// said so, or it reported a failure and the next plan found the node in
/// the cluster (ejabberd 23.01 restarts its applications inside the join,
/// so the ctl call can end in badrpc although the join happened; seen in
/// CI, and the entrypoint's `joined` action is there for it).
fn joined_a_cluster(log: &str) -> bool {
    log.contains("joined the cluster through")
        || (log.contains("ejabberdctl exited") && log.contains(": in the cluster"))
}

const ALL: [usize; 3] = [0, 1, 2];
const PRUNED: &str = "leaves the cluster's schema";

async fn lifecycle(flavour: Flavour) -> Result<(), String> {
    lifecycle_dist(flavour, None).await
}

/// The lifecycle sequence; over mutual TLS when `ca` is the cluster CA's
/// directory (see [`Chat::with_dist`]).
async fn lifecycle_dist(flavour: Flavour, ca: Option<PathBuf>) -> Result<(), String> {
    let t_all = Instant::now();
    let tls = ca.is_some();
    let mut chat = Chat::with_dist(if tls { "lt" } else { "lc" }, 3, &flavour, ca).await?;
    if tls {
        chat.name = match flavour {
            Flavour::Host => "lifecycle tls",
            Flavour::Root(_) => "lifecycle tls otp29",
        };
    }
    let mut users: Vec<String> = Vec::new();

    // (6) First start on empty volumes, all pods at once, highest first.
    let t = Instant::now();
    chat.create(&[2, 1, 0]).await?;
    chat.wait_all_ready(&ALL).await?;
    let d = chat.wait_full(&ALL, FULL_LIMIT).await?;
    chat.schema_is(&ALL).await?;
    chat.one_seed()?;
    say!(
        chat,
        "first start, 3 pods in parallel (2, 1, 0): one cluster of 3 in {:?} \
         (list_cluster full {d:?} after the last Ready)",
        t.elapsed()
    );
    chat.register(0, "before_all").await?;
    users.push("before_all".into());
    // From here on every pod knows the desired count: the scale-down
    // clean-up is armed for every event below, and must touch nobody.
    chat.wait_replicas_file(&ALL, 3).await?;

    // (2) One pod deleted; the StatefulSet recreates it with its volume.
    let t = Instant::now();
    chat.delete(&[1]).await?;
    let t_recreate = Instant::now();
    chat.create(&[1]).await?;
    chat.wait_ready(1, FULL_LIMIT).await?;
    chat.wait_full(&ALL, FULL_LIMIT).await?;
    chat.users_everywhere(&ALL, &users).await?;
    check(chat.log(1).contains("clustered before"), || chat.log(1))?;
    say!(
        chat,
        "chat-1 deleted: full cluster {:?} after recreation ({:?} with the stop)",
        t_recreate.elapsed(),
        t.elapsed()
    );

    // (1a) All pods deleted at once, recreated at once.
    let t = Instant::now();
    chat.delete(&ALL).await?;
    let t_recreate = Instant::now();
    chat.create(&[0, 1, 2]).await?;
    chat.wait_all_ready(&ALL).await?;
    let d = chat.wait_full(&ALL, FULL_LIMIT).await?;
    chat.users_everywhere(&ALL, &users).await?;
    // Why chat-0 started (which node went down last decides how long it
    // held back): its entrypoint's last start.
    let log0 = chat.log(0);
    let why0 = log0
        .lines()
        .rev()
        .find(|l| l.contains("start: clustered before"))
        .unwrap_or("(no start logged)");
    say!(
        chat,
        "all 3 deleted at once: full cluster {:?} after recreation \
         (list_cluster full {d:?} after the last Ready; {:?} with the stop); chat-0: {why0}",
        t_recreate.elapsed(),
        t.elapsed()
    );

    // (1b) Down one after another, a user registered after chat-0 went:
    // chat-2 went last and holds the newest copy; nothing may force chat-0's.
    let t = Instant::now();
    chat.stop_in_turn(["after_chat0_stopped", "after_chat1_stopped"])
        .await?;
    users.extend(["after_chat0_stopped".into(), "after_chat1_stopped".into()]);
    let t_recreate = Instant::now();
    let seen = chat.log(0).len();
    chat.create(&[0, 1, 2]).await?;
    chat.wait_all_ready(&ALL).await?;
    chat.wait_full(&ALL, FULL_LIMIT).await?;
    chat.users_everywhere(&ALL, &users).await?;
    // chat-0, the lowest node, must have let chat-2 load first: Mnesia
    // would otherwise have it load its own older copy when all are up.
    let since = chat.log(0).get(seen..).unwrap_or_default().to_string();
    check(since.contains("a peer has the tables loaded"), || {
        since.clone()
    })?;
    say!(
        chat,
        "stopped 0, 1, 2 in turn with writes in between: full cluster with every \
         user {:?} after recreation ({:?} with the stops)",
        t_recreate.elapsed(),
        t.elapsed()
    );

    // (1d) All pods down and chat-0's volume lost with them: chat-0 goes
    // first (deleted), a user is registered, then the machine under chat-1
    // and chat-2 fails, taking chat-0's volume too. All three come back at
    // once, chat-0
    // empty. chat-1 and chat-2 hold every user but wait for each other's
    // tables (neither saw the other go), and chat-0 will never come back as
    // a holder: no node may stay waiting, and no manual step.
    let t = Instant::now();
    chat.delete(&[0]).await?;
    chat.register(1, "after_chat0_gone").await?;
    users.push("after_chat0_gone".into());
    // Read back from both first, as a client would have (see (1c)).
    chat.users_everywhere(&[1, 2], &users).await?;
    chat.machine_failure(&[1, 2]).await;
    let (since, d, back) = chat.recreate_all_with_empty_volume(0, &users).await?;
    check(
        since.contains("loads its own copy")
            && since.contains("removing the stale entry")
            && joined_a_cluster(&since)
            && !since.contains("seeds a new cluster"),
        || format!("chat-0 (empty volume) did not get the others loaded and join:\n{since}"),
    )?;
    say!(
        chat,
        "chat-0 deleted, then chat-1 and chat-2 lost at once with chat-0's volume: \
         full cluster with every user {:?} after recreation (list_cluster full {d:?} after the \
         last Ready; {:?} with the stops)",
        back,
        t.elapsed()
    );

    // (1c) Every container crashes at the same moment (no clean stop); the
    // kubelet restarts them in place.
    // Mnesia writes its logs without fsync and through a short write cache:
    // what was committed in the last moment before every node dies at once
    // can be lost on every node. The user is read back from every node
    // first (a few seconds), as a client would have seen it.
    chat.register(1, "before_crash").await?;
    users.push("before_crash".into());
    chat.users_everywhere(&ALL, &users).await?;
    let t = Instant::now();
    chat.crash(&ALL).await;
    chat.restart_containers(&ALL).await?;
    chat.wait_all_ready(&ALL).await?;
    chat.wait_full(&ALL, FULL_LIMIT).await?;
    chat.users_everywhere(&ALL, &users).await?;
    say!(
        chat,
        "every container killed at once (SIGKILL), restarted in place: full \
         cluster with every user {:?} after the crash",
        t.elapsed()
    );

    // (5) Rolling update: highest ordinal first, one at a time, each
    // replaced only when the previous is Ready; the others keep answering.
    let t = Instant::now();
    for k in [2, 1, 0] {
        let tk = Instant::now();
        chat.delete(&[k]).await?;
        let rest: Vec<usize> = ALL.into_iter().filter(|&j| j != k).collect();
        chat.wait_full(&rest, Duration::from_secs(30)).await?;
        chat.create(&[k]).await?;
        chat.wait_ready(k, FULL_LIMIT).await?;
        chat.wait_full(&ALL, FULL_LIMIT).await?;
        say!(
            chat,
            "rolling update: chat-{k} replaced in {:?}",
            tk.elapsed()
        );
    }
    chat.users_everywhere(&ALL, &users).await?;
    say!(
        chat,
        "rolling update of 3 pods in {:?}, never below 2 answering",
        t.elapsed()
    );

    // (4) A lost volume: chat-2 comes back empty while the others list it.
    let t = Instant::now();
    chat.delete(&[2]).await?;
    chat.empty_volume(2)?;
    let t_recreate = Instant::now();
    chat.create(&[2]).await?;
    chat.wait_ready(2, FULL_LIMIT).await?;
    chat.wait_full(&ALL, FULL_LIMIT).await?;
    chat.schema_is(&ALL).await?;
    chat.users_everywhere(&ALL, &users).await?;
    check(chat.log(2).contains("removing the stale entry"), || {
        chat.log(2)
    })?;
    say!(
        chat,
        "chat-2 lost its volume: back in the cluster with the users {:?} after \
         recreation ({:?} with the stop)",
        t_recreate.elapsed(),
        t.elapsed()
    );

    // The one manual step: the node that went down last is gone for good
    // (its volume with it). The others wait for its tables for ever;
    // `cluster-entrypoint.sh force-load` in the one that went down last
    // among those left loads its own copy, losing what only the gone node
    // had. Then a new chat-2 joins with an empty volume.
    let t = Instant::now();
    // The user on chat-2 is lost with its volume: not expected anywhere.
    chat.stop_in_turn(["before_chat1_stopped", "only_on_the_lost_node"])
        .await?;
    users.push("before_chat1_stopped".into());
    chat.empty_volume(2)?;
    chat.create(&[0, 1]).await?;
    // chat-1 runs and waits for chat-2's tables; chat-0, the lowest node of
    // the schema, holds back until someone has the tables.
    let mut waiting = String::new();
    let t_wait = Instant::now();
    loop {
        let (code, out) = chat.script(1, &["query"]).await?;
        if code == 0
            && out.contains(&format!("{{\"node\":\"{}\",\"state\":\"waiting\"", node(1)))
            && chat
                .log(0)
                .contains("waiting for a peer to load the tables")
        {
            waiting = out;
            break;
        }
        if t_wait.elapsed() > FULL_LIMIT {
            return Err(format!(
                "chat-1 never waited for tables: {out}{waiting}\n{}",
                chat.log(0)
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    check(
        !chat.pods[0].tmp.join("ready").exists() && !chat.pods[1].tmp.join("ready").exists(),
        || "chat-0 or chat-1 Ready without chat-2's tables".into(),
    )?;
    say!(
        chat,
        "last node down gone for good: chat-1 waits for its tables, chat-0 holds \
         back ({})",
        waiting.trim()
    );
    let t_force = Instant::now();
    let (code, out) = chat.script(1, &["force-load"]).await?;
    check(code == 0 && out.contains("passwd yes"), || {
        format!("force-load exited {code}: {out}")
    })?;
    chat.wait_all_ready(&[0, 1]).await?;
    chat.wait_full(&[0, 1], FULL_LIMIT).await?;
    chat.users_everywhere(&[0, 1], &users).await?;
    let left = chat.ctl_ok(1, &["registered_users", DOMAIN]).await?;
    check(!left.contains("only_on_the_lost_node"), || {
        format!("a user only the lost node had survived force-load?: {left}")
    })?;
    say!(
        chat,
        "force-load in chat-1: chat-0 and chat-1 in the cluster {:?} later (the user written only on the lost node is gone, as documented)",
        t_force.elapsed()
    );
    chat.create(&[2]).await?;
    chat.wait_ready(2, FULL_LIMIT).await?;
    chat.wait_full(&ALL, FULL_LIMIT).await?;
    chat.schema_is(&ALL).await?;
    chat.users_everywhere(&ALL, &users).await?;
    say!(
        chat,
        "a new empty chat-2 joined after the force-load; escape hatch round trip {:?}",
        t.elapsed()
    );

    if let Some(k) = chat.logs_contain(&ALL, PRUNED) {
        return Err(format!(
            "chat-{k} removed a node that was only restarting or gone with replicas 3:\n{}",
            chat.log(k)
        ));
    }

    // (3) Scale 3 -> 2: the controller deletes chat-2, and keeps its claim
    // (whenScaled: Retain); the lowest running node removes chat-2 from the
    // schema.
    let t = Instant::now();
    chat.scale(2).await?;
    let mut d = Duration::ZERO;
    let limit = Duration::from_secs(60);
    loop {
        let a = chat.db_nodes(0).await?;
        let b = chat.db_nodes(1).await?;
        if !a.contains(&node(2)) && !b.contains(&node(2)) {
            break;
        }
        if t.elapsed() > limit {
            return Err(format!(
                "chat-2 still in the schema {limit:?} after scale-down: {a:?} {b:?}\n{}\n{}",
                chat.log(0),
                chat.log(1)
            ));
        }
        d = t.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    chat.wait_full(&[0, 1], Duration::from_secs(30)).await?;
    chat.schema_is(&[0, 1]).await?;
    chat.register(0, "while_scaled_to_2").await?;
    users.push("while_scaled_to_2".into());
    say!(
        chat,
        "scale 3 -> 2: chat-2 gone from every remaining schema {:?} after the \
         scale (last seen at {d:?})",
        t.elapsed()
    );

    // Scale 2 -> 3: chat-2 comes back with its kept claim, whose database
    // the cluster dropped: it must be set aside (never loaded, never
    // merged, never deleted) and chat-2 join empty.
    let t = Instant::now();
    let seen2 = chat.log(2).len();
    let aside_before = chat.set_aside(2).len();
    chat.scale(3).await?;
    chat.wait_ready(2, FULL_LIMIT).await?;
    chat.wait_full(&ALL, FULL_LIMIT).await?;
    chat.schema_is(&ALL).await?;
    chat.users_everywhere(&ALL, &users).await?;
    let since = chat.log(2).get(seen2..).unwrap_or_default().to_string();
    check(joined_a_cluster(&since), || since.clone())?;
    let aside = chat.set_aside(2);
    if chat.retain_scaled {
        check(
            since.contains("set-aside: the cluster dropped")
                && aside.len() == aside_before + 1
                && aside
                    .last()
                    .is_some_and(|(_, f)| f.iter().any(|f| f == "schema.DAT")),
            || format!("chat-2's retained database was not set aside: {aside:?}\n{since}"),
        )?;
    }
    say!(
        chat,
        "scale 2 -> 3: chat-2 back on its {} claim joined in {:?} ({})",
        if chat.retain_scaled { "kept" } else { "new" },
        t.elapsed(),
        aside
            .last()
            .map(|(d, f)| format!("set aside: {d} with {} files", f.len()))
            .unwrap_or_else(|| "nothing set aside".into())
    );

    // Scale 3 -> 0 -> 3 (issue 21: with whenScaled: Delete this emptied
    // every volume and came back as a new, empty cluster): every pod goes,
    // every claim stays, and the cluster comes back whole with every user;
    // nobody pruned, set aside or seeded.
    chat.register(1, "before_scale_to_0").await?;
    users.push("before_scale_to_0".into());
    chat.users_everywhere(&ALL, &users).await?;
    let t = Instant::now();
    let seen: Vec<usize> = ALL.iter().map(|&k| chat.log(k).len()).collect();
    chat.scale(0).await?;
    let t_back = Instant::now();
    chat.scale(3).await?;
    chat.wait_all_ready(&ALL).await?;
    chat.wait_full(&ALL, FULL_LIMIT).await?;
    chat.schema_is(&ALL).await?;
    chat.users_everywhere(&ALL, &users).await?;
    for k in ALL {
        let since = chat.log(k).get(seen[k]..).unwrap_or_default().to_string();
        check(
            !since.contains("set-aside")
                && !since.contains("seeds a new cluster")
                && !since.contains(PRUNED),
            || format!("chat-{k} after scale 3 -> 0 -> 3:\n{since}"),
        )?;
    }
    say!(
        chat,
        "scale 3 -> 0 -> 3: full cluster with every user {:?} after scaling back ({:?} \
         with the scale-down)",
        t_back.elapsed(),
        t.elapsed()
    );

    // (6b) First start again on new, empty volumes, chat-0 created last:
    // chat-2 and chat-1 are up and asking before chat-0 exists, and must
    // neither seed nor cluster between themselves.
    chat.delete(&ALL).await?;
    for k in ALL {
        chat.empty_volume(k)?;
        let _ = std::fs::remove_file(&chat.pods[k].log);
    }
    let t = Instant::now();
    chat.create(&[2, 1]).await?;
    let limit = Instant::now() + FULL_LIMIT;
    while ![1, 2]
        .iter()
        .all(|&k| chat.log(k).contains("no cluster to join yet"))
    {
        if Instant::now() > limit {
            return Err(format!(
                "chat-1 and chat-2 never waited for chat-0:\n{}\n{}",
                chat.log(1),
                chat.log(2)
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    check(!chat.pods[1].tmp.join("ready").exists(), || chat.log(1))?;
    check(!chat.pods[2].tmp.join("ready").exists(), || chat.log(2))?;
    let t0 = Instant::now();
    chat.create(&[0]).await?;
    chat.wait_all_ready(&ALL).await?;
    chat.wait_full(&ALL, FULL_LIMIT).await?;
    chat.schema_is(&ALL).await?;
    chat.one_seed()?;
    say!(
        chat,
        "first start with chat-0 created {:?} after chat-2 and chat-1: one cluster \
         of 3, {:?} after chat-0 was created",
        t0 - t,
        t0.elapsed()
    );

    chat.delete(&ALL).await?;
    say!(chat, "total {:?}", t_all.elapsed());
    Ok(())
}

/// A lifecycle test: its own cluster of netns pods running ejabberd under
/// the entrypoint (which runs under BusyBox ash), once per flavour, and
/// failing naming any missing prerequisite:
///   - `host`: Debian's ejabberd and busybox installed on the host
///     (bookworm: ejabberd 23.01, OTP 25);
///   - `forky`: the root `KUBE_EPMD_EJABBERD_ROOT` names, made by
///     scripts/forky-root.sh (forky: ejabberd 26.07, OTP 29), which brings
///     its own busybox.
macro_rules! lifecycle_test {
    ($(#[$doc:meta])* $name:ident, $label:literal, host, $body:ident) => {
        $(#[$doc])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        #[cfg_attr(skip_netns, ignore = "needs root and ip netns (KUBE_EPMD_TEST_SKIP)")]
        #[cfg_attr(skip_ejabberd, ignore = "needs Debian's ejabberd (KUBE_EPMD_TEST_SKIP)")]
        #[cfg_attr(skip_busybox, ignore = "needs busybox (KUBE_EPMD_TEST_SKIP)")]
        async fn $name() {
            crate::support::prereq::ejabberd();
            crate::support::prereq::busybox();
            run($label, $body(Flavour::Host)).await;
        }
    };
    ($(#[$doc:meta])* $name:ident, $label:literal, forky, $body:ident) => {
        $(#[$doc])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        #[cfg_attr(skip_netns, ignore = "needs root and ip netns (KUBE_EPMD_TEST_SKIP)")]
        #[cfg_attr(
            skip_forky,
            ignore = "needs the forky root of scripts/forky-root.sh (KUBE_EPMD_TEST_SKIP)"
        )]
        async fn $name() {
            let root = crate::support::prereq::forky_root();
            run($label, $body(Flavour::Root(root))).await;
        }
    };
}

lifecycle_test!(
    /// Issue 10: every lifecycle event ends in a full cluster with the data.
    lifecycle_ejabberd_events,
    "lifecycle ejabberd events",
    host,
    lifecycle
);

lifecycle_test!(
    /// [`lifecycle_ejabberd_events`] with forky's ejabberd on OTP 29.
    lifecycle_otp29_ejabberd_events,
    "lifecycle otp29 ejabberd events",
    forky,
    lifecycle
);

/// All pods down and a higher ordinal's volume lost with them: chat-0 goes
/// first, a user is registered, chat-2 then chat-1 go; all three come back
/// at once, chat-2 empty. chat-1 went down last and loads by itself, chat-0
/// (the lowest) holds back until it has, and the empty chat-2 must not run
/// ejabberd before the members that list it have booted (their Mnesia would
/// refuse its new schema): it drops its stale entry and joins. A separate
/// cluster, so that it runs beside the lifecycle sequence.
async fn lost_higher_volume(flavour: Flavour) -> Result<(), String> {
    let mut chat = Chat::new("lv", 3, &flavour).await?;
    chat.create(&[0, 1, 2]).await?;
    chat.wait_all_ready(&ALL).await?;
    chat.wait_full(&ALL, FULL_LIMIT).await?;
    chat.wait_replicas_file(&ALL, 3).await?;
    let users: Vec<String> = vec!["before_all".into(), "after_chat0_gone".into()];
    chat.register(0, &users[0]).await?;
    let t = Instant::now();
    chat.delete(&[0]).await?;
    chat.register(1, &users[1]).await?;
    chat.delete(&[2]).await?;
    chat.delete(&[1]).await?;
    let (since, d, back) = chat.recreate_all_with_empty_volume(2, &users).await?;
    check(
        since.contains("removing the stale entry") && joined_a_cluster(&since),
        || format!("chat-2 (empty volume) did not drop its entry and join:\n{since}"),
    )?;
    say!(
        chat,
        "chat-0, then chat-2, then chat-1 stopped, chat-2's volume lost: full \
         cluster with every user {:?} after recreation (list_cluster full {d:?} after the last \
         Ready; {:?} with the stops)",
        back,
        t.elapsed()
    );
    chat.delete(&ALL).await
}

lifecycle_test!(
    /// All down with a higher ordinal's volume lost (see lost_higher_volume).
    lifecycle_lost_higher_volume,
    "lifecycle lost higher volume",
    host,
    lost_higher_volume
);

lifecycle_test!(
    /// [`lifecycle_lost_higher_volume`] with forky's ejabberd on OTP 29.
    lifecycle_otp29_lost_higher_volume,
    "lifecycle otp29 lost higher volume",
    forky,
    lost_higher_volume
);

// After the macros above: the TLS scenario reuses `say!` and the harness.
pub(crate) mod operations;
pub(crate) mod partition;
pub(crate) mod tls;
