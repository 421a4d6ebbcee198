//! The pod watch: kube-rs `watcher` over the selected pods, each event
//! applied to the peer table, every failure logged, counted and reported,
//! and the table kept as it is until the API answers again.
//!
//! After any error the watch is started afresh and re-lists (see
//! [`super::watch_loop`] for why). A 410 Expired is one such error, and its
//! re-list replaces the table whole, so nothing deleted meanwhile stays
//! behind.

use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::relist::{Applied, RelistBuffer};
use super::status::SyncStatus;
use super::watch_error::WatchStop;
use super::watch_loop::{self, WatchHandler};
use crate::metrics::DiscoveryMetrics;
use crate::peers::PeerTable;

/// Watch the selected pods for ever, keeping the table, the API health
/// and the metrics in step.
pub async fn run(
    api: Api<Pod>,
    config: watcher::Config,
    table: watch::Sender<PeerTable>,
    status: Arc<SyncStatus>,
    metrics: Arc<DiscoveryMetrics>,
) {
    let handler = PodWatch {
        relist: RelistBuffer::default(),
        table,
        status,
        metrics,
    };
    watch_loop::run(api, config, handler).await
}

/// What the pod watch keeps current: the table (through the re-list
/// buffer), the API health and the metrics.
struct PodWatch {
    relist: RelistBuffer,
    table: watch::Sender<PeerTable>,
    status: Arc<SyncStatus>,
    metrics: Arc<DiscoveryMetrics>,
}

impl WatchHandler<Pod> for PodWatch {
    fn event(&mut self, event: Event<Pod>) {
        let Self {
            relist,
            table,
            status,
            metrics,
        } = self;
        let mut applied = Applied::Unchanged;
        table.send_if_modified(|t| {
            applied = relist.apply(t, &event);
            matches!(
                applied,
                Applied::Changed | Applied::Relisted { changed: true }
            )
        });
        match &event {
            Event::Init | Event::InitApply(_) => return,
            Event::InitDone => {
                let was_failing = status.is_failing();
                let peers = table.borrow().len();
                if was_failing {
                    info!(peers, "pod list complete; Kubernetes API reachable again");
                } else {
                    info!(peers, "pod list complete");
                }
            }
            Event::Apply(pod) | Event::Delete(pod) => {
                if applied == Applied::Changed {
                    debug!(
                        pod = pod.metadata.name.as_deref().unwrap_or(""),
                        deleted = matches!(event, Event::Delete(_)),
                        "peer table changed"
                    );
                }
            }
        }
        status.api_ok();
        metrics.watch_healthy.set(1);
        metrics.peers.set(table.borrow().len() as i64);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        metrics.last_sync_seconds.set(now);
    }

    fn stopped(&mut self, error: &WatchStop) {
        let reason = error.reason();
        self.metrics.watch_error(reason);
        self.metrics.watch_healthy.set(0);
        let peers = self.table.borrow().len();
        let message = format!("{reason}: {error}");
        if self.status.api_error(message) {
            warn!(
                %error, reason, peers,
                "Kubernetes API failing; keeping the last good peer table"
            );
        } else {
            debug!(%error, reason, "Kubernetes API still failing");
        }
    }

    fn restarting(&mut self) {
        self.metrics.watch_restarts.inc();
    }
}
