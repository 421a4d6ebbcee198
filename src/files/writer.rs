//! The hosts file writer: a task that follows the peer table, renders the
//! hosts file on every change and replaces it on disk when its text
//! differs. It knows nothing of Kubernetes: a table in, a file and a
//! "first complete table is on disk" signal out.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, error};

use super::disk::HostsFile;
use super::render::render_hosts;
use crate::metrics::DiscoveryMetrics;
use crate::peers::PeerTable;

/// Keep the hosts file in step with the table: re-render on every change
/// (changes arriving meanwhile coalesce into one write), write if the text
/// differs, and set `on_disk` once a complete table is in the file (it
/// stays set). A failed write is retried every second until it succeeds.
pub async fn run(
    mut table: watch::Receiver<PeerTable>,
    mut hosts: HostsFile,
    cluster_domain: String,
    on_disk: watch::Sender<bool>,
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
                on_disk.send_if_modified(|done| !std::mem::replace(done, true));
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
