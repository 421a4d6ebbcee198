//! A test "cluster": one hub namespace running the in-process test API
//! server, and pods (namespaces) each running kube-epmd in Kubernetes mode
//! on 4369, fed by that server, exactly as the sidecar shares a pod's
//! network namespace with ejabberd.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use tokio::process::Child;

use crate::netns::{Hub, Netns, SUBNET, scratch_prefix};
use crate::probe;
use crate::support::apiserver::{TestApiServer, sts_pod};

/// Kubernetes namespace of the test pods.
pub const K8S_NS: &str = "xmpp";
/// Headless service (pod subdomain), as in the StatefulSet.
pub const SUBDOMAIN: &str = "xmpp-internal-svc";
/// Port of the test API server on the hub bridge.
const API_PORT: u16 = 6443;
/// Port of kube-epmd's admin endpoint inside each pod.
pub const ADMIN_PORT: u16 = 9090;

pub fn pod_name(k: usize) -> String {
    format!("chat-{k}")
}

/// The default address of pod `k`.
pub fn pod_ip(k: usize) -> String {
    format!("{SUBNET}.{}", 10 + k)
}

pub struct PodNs {
    pub ip: String,
    pub ns: Netns,
    /// kube-epmd's --output-dir (hosts + inetrc).
    pub out_dir: PathBuf,
    /// kube-epmd's stdout/stderr.
    pub log: PathBuf,
    sidecar: Option<Child>,
}

impl PodNs {
    pub fn hosts_path(&self) -> PathBuf {
        self.out_dir.join("hosts")
    }
    pub fn inetrc(&self) -> PathBuf {
        self.out_dir.join("inetrc")
    }
    pub fn hosts(&self) -> String {
        std::fs::read_to_string(self.hosts_path()).unwrap_or_default()
    }
}

pub struct Cluster {
    // Field order is drop order: pods (and every process in them) first.
    pub pods: Vec<PodNs>,
    pub api: Arc<TestApiServer>,
    pub hub: Hub,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    /// Arguments added to every kube-epmd started from now on.
    pub sidecar_args: Vec<String>,
}

/// `ip` with whitespace around it, as a hosts file line holds it.
fn hosts_has(hosts: &str, ip: &str, name: &str) -> bool {
    hosts.lines().any(|l| {
        let mut f = l.split_whitespace();
        f.next() == Some(ip) && f.any(|n| n == name)
    })
}

impl Cluster {
    /// The hub, the API server on the bridge, and `n` pod namespaces
    /// (nothing running in them yet).
    pub async fn new(tag: &str, n: usize) -> Result<Cluster, String> {
        let hub = Hub::create(tag)?;
        let addr: SocketAddr = format!("{}:{API_PORT}", hub.ip()).parse().unwrap();
        // The server binds inside `start`'s first poll: polling it on a
        // thread that entered the hub puts the listener in the hub, while
        // its tasks run on the test's runtime.
        let handle = tokio::runtime::Handle::current();
        let api = tokio::task::block_in_place(|| {
            hub.ns.enter(|| handle.block_on(TestApiServer::start(addr)))
        })
        .map_err(|e| format!("test API server on {addr}: {e}"))?;
        let mut dir = tempfile::Builder::new()
            .prefix(&scratch_prefix(tag))
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        // E2E_KEEP=1 keeps logs, configs and spools for a post-mortem.
        if std::env::var_os("E2E_KEEP").is_some() {
            dir.disable_cleanup(true);
            crate::report!("{tag}: keeping {}", dir.path().display());
        }
        // ejabberd runs as its own user and must traverse into its dirs.
        set_mode(dir.path(), 0o755)?;
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig, K8S_NS)
            .map_err(|e| format!("kubeconfig: {e}"))?;
        let mut c = Cluster {
            pods: Vec::new(),
            api: Arc::new(api),
            hub,
            dir,
            kubeconfig,
            sidecar_args: Vec::new(),
        };
        for _ in 0..n {
            c.add_pod_ns()?;
        }
        Ok(c)
    }

    /// One more pod namespace at the next slot.
    pub fn add_pod_ns(&mut self) -> Result<usize, String> {
        let k = self.pods.len();
        let ip = pod_ip(k);
        let ns = self.hub.add_pod(k, &ip)?;
        let out_dir = self.dir.path().join(format!("pod{k}/run"));
        std::fs::create_dir_all(&out_dir).map_err(|e| format!("{e}"))?;
        set_mode(&out_dir, 0o755)?;
        set_mode(out_dir.parent().unwrap(), 0o755)?;
        let log = self.dir.path().join(format!("pod{k}/kube-epmd.log"));
        self.pods.push(PodNs {
            ip,
            ns,
            out_dir,
            log,
            sidecar: None,
        });
        Ok(k)
    }

    /// The Pod object for slot `k` as the kubelet reports it now.
    pub fn pod_object(&self, k: usize, ready: bool) -> Pod {
        let name = pod_name(k);
        sts_pod(
            K8S_NS,
            &name,
            SUBDOMAIN,
            &[&self.pods[k].ip],
            ready,
            &[("app", "xmpp")],
        )
    }

    /// Publish (create or update) pod `k` with its current IP.
    pub fn publish(&self, k: usize, ready: bool) {
        self.api.upsert_pod(self.pod_object(k, ready));
    }

    /// Start kube-epmd in pod `k` and wait (bounded) until it is ready and
    /// its hosts file holds the pod's own name. Returns the time taken.
    pub async fn start_sidecar(&mut self, k: usize) -> Result<Duration, String> {
        let t0 = Instant::now();
        let p = &mut self.pods[k];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .map_err(|e| format!("{}: {e}", p.log.display()))?;
        let err = log.try_clone().map_err(|e| format!("{e}"))?;
        let mut cmd = p.ns.command(env!("CARGO_BIN_EXE_kube-epmd"));
        cmd.args(["--kubernetes", "--namespace", K8S_NS])
            .args(["--selector", "app=xmpp"])
            .args(["--pod-name", &pod_name(k)])
            .arg("--output-dir")
            .arg(&p.out_dir)
            .args(["--admin-addr", &format!("0.0.0.0:{ADMIN_PORT}")])
            .args(&self.sidecar_args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start kube-epmd in pod {k}: {e}"))?;
        p.sidecar = Some(child);
        let me = pod_name(k);
        let ip = p.ip.clone();
        self.wait(
            &format!("kube-epmd in pod {k} ready with its own name in hosts"),
            Duration::from_secs(20),
            |c| {
                let p = &c.pods[k];
                hosts_has(&p.hosts(), &ip, &me)
                    && p.inetrc().exists()
                    && c.admin_get(k, "/readyz").is_ok_and(|(code, _)| code == 200)
            },
        )
        .await?;
        Ok(t0.elapsed())
    }

    /// SIGKILL kube-epmd in pod `k` (a crashed sidecar container).
    pub async fn kill_sidecar(&mut self, k: usize) {
        if let Some(mut c) = self.pods[k].sidecar.take() {
            let _ = c.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
        }
    }

    /// Whether kube-epmd in pod `k` is still running.
    pub fn sidecar_alive(&mut self, k: usize) -> bool {
        match self.pods[k].sidecar.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Pid of the kube-epmd running in pod `k` (`ip netns exec` execs it,
    /// so the child's pid is the daemon's).
    pub fn sidecar_pid(&self, k: usize) -> Option<u32> {
        self.pods[k].sidecar.as_ref().and_then(|c| c.id())
    }

    /// The pod's kube-epmd log so far (for failure messages).
    pub fn sidecar_log(&self, k: usize) -> String {
        std::fs::read_to_string(&self.pods[k].log).unwrap_or_default()
    }

    /// GET `path` from pod `k`'s admin endpoint.
    pub fn admin_get(&self, k: usize, path: &str) -> Result<(u16, String), String> {
        let addr = format!("{}:{ADMIN_PORT}", self.pods[k].ip).parse().unwrap();
        probe::http_get(&self.hub.ns, addr, path)
    }

    /// NAMES from pod `k`'s EPMD (kube-epmd).
    pub fn names(&self, k: usize) -> Result<String, String> {
        probe::epmd_names(&self.hub.ns, &self.pods[k].ip)
    }

    /// Port of `alive` registered with pod `k`'s EPMD.
    pub fn registered(&self, k: usize, alive: &str) -> Result<Option<u16>, String> {
        probe::registered_port(&self.hub.ns, &self.pods[k].ip, alive)
    }

    /// Whether pod `k`'s hosts file maps `name` to `ip`.
    pub fn resolves(&self, k: usize, name: &str, ip: &str) -> bool {
        hosts_has(&self.pods[k].hosts(), ip, name)
    }

    /// Give pod `k` a new address (the pod was re-created elsewhere).
    pub fn readdress(&mut self, k: usize, ip: &str) -> Result<(), String> {
        let p = &mut self.pods[k];
        p.ns.ip(&["addr", "flush", "dev", "eth0"])?;
        p.ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        p.ip = ip.to_string();
        Ok(())
    }

    /// Poll `cond` every 20 ms until true or `limit` (then an error naming
    /// `what`); returns how long it took.
    pub async fn wait(
        &self,
        what: &str,
        limit: Duration,
        mut cond: impl FnMut(&Cluster) -> bool,
    ) -> Result<Duration, String> {
        let t0 = Instant::now();
        loop {
            if cond(self) {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > limit {
                return Err(format!("timed out after {limit:?} waiting for: {what}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

pub fn set_mode(p: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", p.display()))
}
