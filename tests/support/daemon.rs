//! Running the real `kube-epmd` binary in Kubernetes mode against the test
//! API server, with every wait bounded and the child killed on drop (also
//! when the test fails).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use super::apiserver::TestApiServer;

/// Ports this project's Kubernetes tests may use.
const PORT_MIN: u16 = 15000;
const PORT_MAX: u16 = 15999;

/// A free TCP port in 15000-15999 on 0.0.0.0 and [::] (where daemons
/// listen). Test binaries run side by side (nextest), so each starts at a
/// pid-derived offset and every port is probed by binding it.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let span = PORT_MAX - PORT_MIN + 1;
    let _ = NEXT.compare_exchange(
        0,
        (std::process::id() % 40) as u16 * 25 + 1,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = PORT_MIN + n % span;
        // A dual-stack bind of [::] fails if either family holds the port.
        if std::net::TcpListener::bind(("::", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {PORT_MIN}-{PORT_MAX}");
}

/// The kube-epmd binary to run: this build's, or `KUBE_EPMD_BIN` when set
/// (benches compare an older build side by side).
pub fn binary() -> std::ffi::OsString {
    std::env::var_os("KUBE_EPMD_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_kube-epmd").into())
}

/// Kills the child on drop. Use for every process a test starts.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Daemon {
    child: ChildGuard,
    pub admin: SocketAddr,
    pub epmd_port: u16,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    out_dir: PathBuf,
}

impl Daemon {
    /// Start `kube-epmd --kubernetes` watching `namespace` of `api`, with
    /// `extra` arguments appended.
    pub fn start(api: &TestApiServer, namespace: &str, extra: &[&str]) -> Daemon {
        Self::start_in(api, namespace, None, extra)
    }

    /// As [`Daemon::start`], writing into `out_dir` (default: a fresh
    /// directory of its own).
    pub fn start_in(
        api: &TestApiServer,
        namespace: &str,
        out_dir: Option<PathBuf>,
        extra: &[&str],
    ) -> Daemon {
        Self::start_full(api, namespace, out_dir, extra, "kube_epmd=debug,info")
    }

    /// As [`Daemon::start_in`], with the daemon's RUST_LOG.
    pub fn start_full(
        api: &TestApiServer,
        namespace: &str,
        out_dir: Option<PathBuf>,
        extra: &[&str],
        rust_log: &str,
    ) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig, namespace)
            .expect("write kubeconfig");
        let epmd_port = free_port();
        let admin_port = free_port();
        let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
        let out_dir = out_dir.unwrap_or_else(|| dir.path().join("out"));
        let log = std::fs::File::create(dir.path().join("daemon.log")).expect("log file");
        let child = Command::new(binary())
            .args(["--kubernetes", "-port", &epmd_port.to_string()])
            .args(["-address", "127.0.0.1"])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--namespace", namespace])
            .arg("--output-dir")
            .arg(&out_dir)
            .args(extra)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", rust_log)
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME")
            .env_remove("KUBE_EPMD_SELECTOR")
            .env_remove("KUBE_EPMD_STATEFULSET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn kube-epmd");
        Daemon {
            child: ChildGuard(child),
            admin,
            epmd_port,
            dir,
            kubeconfig,
            out_dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    pub fn out_dir(&self) -> PathBuf {
        self.out_dir.clone()
    }

    pub fn hosts_path(&self) -> PathBuf {
        self.out_dir().join("hosts")
    }

    pub fn inetrc_path(&self) -> PathBuf {
        self.out_dir().join("inetrc")
    }

    pub fn replicas_path(&self) -> PathBuf {
        self.out_dir().join("replicas")
    }

    /// The replicas file's text; None while it does not exist.
    pub fn replicas(&self) -> Option<String> {
        std::fs::read_to_string(self.replicas_path()).ok()
    }

    /// The hosts file without its comment line ("" if missing).
    pub fn hosts(&self) -> String {
        std::fs::read_to_string(self.hosts_path())
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// The daemon's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.0.try_wait(), Ok(None))
    }

    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.admin, path).await
    }

    /// Poll `/readyz` until it answers 200 or `limit` passes.
    pub async fn wait_ready(&mut self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some((200, _)) = self.get("/readyz").await {
                return;
            }
            assert!(self.running(), "kube-epmd exited:\n{}", self.log());
            assert!(
                tokio::time::Instant::now() < deadline,
                "kube-epmd not ready within {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One metric's value from `/metrics` (the first sample whose name and
    /// labels start with `prefix`).
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").await?;
        body.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

/// Poll `f` until it returns Some, for at most `limit`; panic with `what`
/// and the daemon's log on timeout.
pub async fn eventually<T, F, Fut>(d: &Daemon, limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}\n--- daemon log ---\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET over HTTP/1.0 on loopback: status and body; None if unreachable.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path, None).await
}

/// POST a JSON body over HTTP/1.0 on loopback: status and body.
#[allow(dead_code)] // not every test binary posts
pub async fn http_post(addr: SocketAddr, path: &str, json: &str) -> Option<(u16, String)> {
    http_request(addr, "POST", path, Some(json)).await
}

async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
        if let Some(body) = json {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        } else {
            req.push_str("\r\n");
        }
        s.write_all(req.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .ok()
        .flatten()
}

/// Run `kube-epmd peers` against the daemon: (exit code, stdout, stderr).
pub fn run_peers_command(admin: SocketAddr, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kube-epmd"))
        .args(["peers", "--url", &format!("http://{admin}")])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run kube-epmd peers");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether `path` exists and holds `text` exactly.
pub fn file_is(path: &Path, text: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t == text)
}
