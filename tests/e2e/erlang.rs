//! A plain `erl` node inside a pod namespace, driven through its stdin by
//! the `e2e_ctl` control loop (see `e2e_ctl.erl`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

use crate::netns::Netns;

/// The cookie every node of the suite shares.
pub const COOKIE: &str = "kube_epmd_e2e";

/// Compile the control module once per test into `dir`; returns the ebin.
pub fn compile_ctl(dir: &Path) -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/e2e_ctl.erl");
    let out = std::process::Command::new("erlc")
        .arg("-o")
        .arg(dir)
        .arg(&src)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run erlc (is erlang-base installed?): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "erlc {}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(dir.to_path_buf())
}

/// How the node is named: `-name` (host part with dots) or `-sname`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    Long,
    Short,
}

pub struct ErlNode {
    /// The full node name, e.g. `ejabberd@chat-0.xmpp-internal-svc`.
    pub name: String,
    /// The creation the node reported at start.
    pub creation: u64,
    child: Child,
    stdin: Option<ChildStdin>,
    replies: mpsc::UnboundedReceiver<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl ErlNode {
    /// Start `name` in `ns` with the distribution pinned to 4200-4210 and
    /// `ERL_INETRC` = `inetrc`, and wait (bounded) until it is up.
    pub async fn start(
        ns: &Netns,
        name: &str,
        naming: Naming,
        inetrc: &Path,
        ebin: &Path,
    ) -> Result<ErlNode, String> {
        Self::start_args(ns, name, naming, inetrc, ebin, (4200, 4210), &[]).await
    }

    /// As [`ErlNode::start`], listening for distribution in `dist` (min,
    /// max), with `extra` VM arguments (e.g. `-proto_dist inet_tls
    /// -ssl_dist_optfile F`).
    pub async fn start_args(
        ns: &Netns,
        name: &str,
        naming: Naming,
        inetrc: &Path,
        ebin: &Path,
        dist: (u16, u16),
        extra: &[String],
    ) -> Result<ErlNode, String> {
        let (min, max) = (dist.0.to_string(), dist.1.to_string());
        let flag = match naming {
            Naming::Long => "-name",
            Naming::Short => "-sname",
        };
        let mut cmd = ns.command("erl");
        cmd.args([
            "-noshell",
            flag,
            name,
            "-setcookie",
            COOKIE,
            "-start_epmd",
            "false",
            "-kernel",
            "inet_dist_listen_min",
            &min,
            "inet_dist_listen_max",
            &max,
            "-pa",
        ])
        .arg(ebin)
        .args(extra)
        .args(["-s", "e2e_ctl", "main"])
        .env("ERL_INETRC", inetrc)
        // Crash dumps would land in the current directory.
        .env("ERL_CRASH_DUMP_BYTES", "0")
        .current_dir(ebin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start erl {name}: {e}"))?;
        let stdin = child.stdin.take();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = mpsc::unbounded_channel();
        if let Some(out) = child.stdout.take() {
            tokio::spawn(pump(out, Some(tx), log.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(pump(err, None, log.clone()));
        }
        let deadline = Duration::from_secs(30);
        let ready = tokio::time::timeout(deadline, async {
            while let Some(line) = rx.recv().await {
                if let Some(rest) = line.strip_prefix("E2E-READY ") {
                    return Some(rest.to_string());
                }
            }
            None
        })
        .await;
        let dump = |why: &str| {
            format!(
                "node {name} {why}; its output:\n{}",
                log.lock().unwrap().join("\n")
            )
        };
        let rest = match ready {
            Ok(Some(r)) => r,
            Ok(None) => return Err(dump("exited before it was up")),
            Err(_) => return Err(dump(&format!("not up within {deadline:?}"))),
        };
        let creation = rest
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| dump("printed a bad E2E-READY line"))?;
        Ok(ErlNode {
            name: name.to_string(),
            creation,
            child,
            stdin,
            replies: rx,
            log,
        })
    }

    /// Evaluate `expr` (an Erlang expression, no trailing dot needed) on
    /// the node; returns the `~w` text of the value, or the error.
    pub async fn eval(&mut self, expr: &str, limit: Duration) -> Result<String, String> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| format!("{} is stopped", self.name))?;
        let line = format!("{}.\n", expr.trim().trim_end_matches('.'));
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("{}: write to node: {e}", self.name))?;
        loop {
            let got = tokio::time::timeout(limit, self.replies.recv()).await;
            let reply = match got {
                Ok(Some(r)) => r,
                Ok(None) => return Err(format!("{} exited while evaluating {expr}", self.name)),
                Err(_) => {
                    return Err(format!(
                        "{}: no answer to {expr} within {limit:?}",
                        self.name
                    ));
                }
            };
            let Some(term) = reply.strip_prefix("E2E> ") else {
                continue;
            };
            return match term.strip_prefix("{ok,").and_then(|t| t.strip_suffix('}')) {
                Some(v) => Ok(v.to_string()),
                None => Err(format!("{}: {expr} -> {term}", self.name)),
            };
        }
    }

    /// `net_adm:ping(Peer)`: true on pong.
    pub async fn ping(&mut self, peer: &str) -> Result<bool, String> {
        let v = self
            .eval(&format!("net_adm:ping('{peer}')"), Duration::from_secs(20))
            .await?;
        Ok(v == "pong")
    }

    /// `rpc:call(Peer, erlang, node, [])` must name the peer.
    pub async fn rpc_node(&mut self, peer: &str) -> Result<(), String> {
        let v = self
            .eval(
                &format!("rpc:call('{peer}', erlang, node, [], 10000)"),
                Duration::from_secs(20),
            )
            .await?;
        if v == format!("'{peer}'") || v == peer {
            Ok(())
        } else {
            Err(format!(
                "{}: rpc:call({peer}, erlang, node) = {v}",
                self.name
            ))
        }
    }

    /// Connected nodes, as the `~w` text of `lists:sort(nodes())`.
    pub async fn nodes(&mut self) -> Result<String, String> {
        self.eval("lists:sort(nodes())", Duration::from_secs(10))
            .await
    }

    /// nodeup/nodedown events recorded since the node started.
    pub async fn events(&mut self) -> Result<String, String> {
        self.eval("e2e_ctl:events()", Duration::from_secs(10)).await
    }

    /// Ping `peer` until pong or `limit`; returns the time it took.
    pub async fn ping_until(&mut self, peer: &str, limit: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        loop {
            if self.ping(peer).await? {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > limit {
                return Err(format!(
                    "{} cannot reach {peer} within {limit:?}",
                    self.name
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The node's own output so far (for failure messages).
    pub fn output(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGKILL the VM (a crash, as when a container dies).
    pub async fn kill(&mut self) {
        self.stdin = None;
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }

    /// A clean stop: `init:stop()`, waiting (bounded) for the VM to exit.
    pub async fn stop(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.write_all(b"init:stop().\n").await;
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            self.kill().await;
        }
    }
}

/// Forward a node's output lines: results to `tx`, everything to `log`.
async fn pump(
    out: impl tokio::io::AsyncRead + Unpin,
    tx: Option<mpsc::UnboundedSender<String>>,
    log: Arc<Mutex<Vec<String>>>,
) {
    let mut lines = BufReader::new(out).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(tx) = &tx
            && (line.starts_with("E2E> ") || line.starts_with("E2E-READY "))
        {
            let _ = tx.send(line.clone());
        }
        let mut l = log.lock().unwrap();
        // Keep memory bounded if a node floods its output.
        if l.len() < 2000 {
            l.push(line);
        }
    }
}
