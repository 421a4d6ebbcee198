//! The resolver feed: a hosts file in /etc/hosts format built from the peer
//! table, and an Erlang inetrc that makes the VM read it.
//!
//! The VM's inet_db notices a changed `hosts_file` only on a lookup, at
//! most every 5 s, by comparing the file's info (size, inode, mtime in whole
//! seconds). So the file is always replaced by rename (new inode, and the
//! reader never sees a half-written file), and each version gets an mtime
//! second later than the previous one: two versions written within one
//! second, of equal size, on a recycled inode would otherwise look
//! identical to inet_db and the newer one would be missed.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use tokio::sync::watch;
use tracing::{debug, error};

use crate::kubernetes::SyncStatus;
use crate::metrics::DiscoveryMetrics;
use crate::peers::PeerTable;

pub const HOSTS_FILE: &str = "hosts";
pub const INETRC_FILE: &str = "inetrc";

/// Loopback lines every hosts file starts with, as in /etc/hosts: the VM
/// looks `localhost` up in this file first (`{lookup, [file, native]}`).
const LOOPBACK: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// The hosts file text for `table`: loopback lines, then one line per
/// peer address with every name form, in (namespace, pod) order, so equal
/// tables give byte-identical files.
pub fn render_hosts(table: &PeerTable, cluster_domain: &str) -> String {
    let mut out = String::with_capacity(64 + table.len() * 200);
    out.push_str("# Written by kube-epmd from the Kubernetes API; replaced as pods change.\n");
    out.push_str(LOOPBACK);
    let mut names = String::new();
    for peer in table.iter() {
        names.clear();
        peer.write_names(cluster_domain, &mut names);
        for ip in &peer.ips {
            // Writing into a String cannot fail.
            let _ = write!(out, "{ip}\t");
            out.push_str(&names);
            out.push('\n');
        }
    }
    out
}

/// The inetrc text: read peers from `hosts` first, then the system
/// resolver (so anything else still resolves as before).
pub fn render_inetrc(hosts: &Path) -> String {
    format!(
        "%% Written by kube-epmd: resolve peer pods from the hosts file it keeps current.\n\
         {{hosts_file, \"{}\"}}.\n\
         {{lookup, [file, native]}}.\n",
        erlang_string_escape(&hosts.to_string_lossy())
    )
}

fn erlang_string_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Write `content` to `path` atomically: a temp file in the same directory,
/// then renamed over `path`. `mtime`, when given, is set on the temp file
/// first. No fsync: readers see the rename atomically either way, and the
/// files live in a pod's emptyDir, which does not outlive a node crash; the
/// daemon rewrites them from the API on every start.
pub fn replace_file(path: &Path, content: &[u8], mtime: Option<SystemTime>) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(content)?;
        if let Some(t) = mtime {
            f.set_modified(t)?;
        }
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The hosts file this daemon owns: remembers what it last wrote so an
/// unchanged table never touches the file.
#[derive(Debug)]
pub struct HostsFile {
    path: PathBuf,
    last: Option<String>,
    last_mtime_secs: u64,
}

impl HostsFile {
    /// Adopt the file at `path`. An existing file (left by a previous run
    /// of this sidecar) is kept as it is until the first complete list: it
    /// is the last good view, better than none.
    pub fn open(path: PathBuf) -> HostsFile {
        let last = fs::read_to_string(&path).ok();
        let last_mtime_secs = fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        HostsFile {
            path,
            last,
            last_mtime_secs,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a file is in place (written now or left by a previous run).
    pub fn exists(&self) -> bool {
        self.last.is_some()
    }

    /// Replace the file if `content` differs from what is there. Returns
    /// whether it was written.
    pub fn update(&mut self, content: String) -> io::Result<bool> {
        if self.last.as_deref() == Some(content.as_str()) {
            return Ok(false);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // Strictly increasing whole seconds (see the module docs). A burst
        // of writes runs ahead of the clock by at most its length.
        let secs = now.max(self.last_mtime_secs + 1);
        replace_file(
            &self.path,
            content.as_bytes(),
            Some(UNIX_EPOCH + Duration::from_secs(secs)),
        )?;
        self.last = Some(content);
        self.last_mtime_secs = secs;
        Ok(true)
    }
}

/// Keep the hosts file in step with the table: re-render on every change
/// (changes arriving meanwhile coalesce into one write), write if the text
/// differs, and report readiness once the first complete list is on disk.
/// A failed write is retried every second until it succeeds.
pub async fn run_writer(
    mut table: watch::Receiver<PeerTable>,
    mut hosts: HostsFile,
    cluster_domain: String,
    status: Arc<SyncStatus>,
    metrics: Arc<DiscoveryMetrics>,
) {
    let mut retry = false;
    loop {
        if retry {
            tokio::select! {
                r = table.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        } else if table.changed().await.is_err() {
            return;
        }
        let content = {
            let t = table.borrow_and_update();
            // Before the first complete list there is nothing to say: the
            // file keeps what it had.
            if !t.is_synced() {
                continue;
            }
            render_hosts(&t, &cluster_domain)
        };
        // A write and a rename: brief, but blocking, so off the runtime.
        let (back, result) = match tokio::task::spawn_blocking(move || {
            let r = hosts.update(content);
            (hosts, r)
        })
        .await
        {
            Ok(done) => done,
            // The closure does not panic short of a bug; the writer cannot
            // go on without its file state.
            Err(e) => {
                error!(error = %e, "hosts file writer failed");
                return;
            }
        };
        hosts = back;
        match result {
            Ok(written) => {
                retry = false;
                if written {
                    metrics.hosts_file_writes.inc();
                    debug!(path = %hosts.path().display(), "hosts file replaced");
                }
                status.mark_ready();
                metrics.synced.set(1);
            }
            Err(e) => {
                retry = true;
                metrics.hosts_file_write_errors.inc();
                error!(path = %hosts.path().display(), error = %e, "cannot write the hosts file; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::PeerTable;
    use k8s_openapi::api::core::v1::Pod;
    use std::os::unix::fs::MetadataExt;

    fn pod(name: &str, ips: &[&str]) -> Pod {
        crate::peers::tests::pod(name, ips, "Running", true)
    }

    #[test]
    fn hosts_text_is_deterministic_with_all_names_per_address() {
        let mut a = PeerTable::default();
        a.apply(&pod("chat-1", &["10.0.0.2", "fd00::2"]));
        a.apply(&pod("chat-0", &["10.0.0.1"]));
        let mut b = PeerTable::default();
        b.apply(&pod("chat-0", &["10.0.0.1"]));
        b.apply(&pod("chat-1", &["10.0.0.2", "fd00::2"]));
        let text = render_hosts(&a, "cluster.local");
        assert_eq!(text, render_hosts(&b, "cluster.local"));
        let lines: Vec<_> = text.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "127.0.0.1\tlocalhost",
                "::1\tlocalhost ip6-localhost ip6-loopback",
                "10.0.0.1\tchat-0 chat-0.xmpp-internal-svc chat-0.xmpp-internal-svc.chat chat-0.xmpp-internal-svc.chat.svc chat-0.xmpp-internal-svc.chat.svc.cluster.local",
                "10.0.0.2\tchat-1 chat-1.xmpp-internal-svc chat-1.xmpp-internal-svc.chat chat-1.xmpp-internal-svc.chat.svc chat-1.xmpp-internal-svc.chat.svc.cluster.local",
                "fd00::2\tchat-1 chat-1.xmpp-internal-svc chat-1.xmpp-internal-svc.chat chat-1.xmpp-internal-svc.chat.svc chat-1.xmpp-internal-svc.chat.svc.cluster.local",
            ]
        );
    }

    #[test]
    fn inetrc_points_at_the_hosts_file() {
        assert_eq!(
            render_inetrc(Path::new("/run/k\"e/hosts")),
            "%% Written by kube-epmd: resolve peer pods from the hosts file it keeps current.\n\
             {hosts_file, \"/run/k\\\"e/hosts\"}.\n{lookup, [file, native]}.\n"
        );
    }

    #[test]
    fn update_renames_only_on_change_with_increasing_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HOSTS_FILE);
        let mut h = HostsFile::open(path.clone());
        assert!(!h.exists());
        assert!(h.update("one\n".into()).unwrap());
        let m1 = fs::metadata(&path).unwrap();
        assert!(
            !h.update("one\n".into()).unwrap(),
            "same content: untouched"
        );
        assert_eq!(fs::metadata(&path).unwrap().ino(), m1.ino());
        assert!(h.update("two\n".into()).unwrap());
        let m2 = fs::metadata(&path).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two\n");
        assert_ne!(m1.ino(), m2.ino(), "replaced by rename");
        assert!(m2.mtime() > m1.mtime(), "a later whole second");
        // No temp files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // A restarted writer adopts the file and skips an identical write.
        let mut again = HostsFile::open(path.clone());
        assert!(again.exists());
        assert!(!again.update("two\n".into()).unwrap());
    }
}
