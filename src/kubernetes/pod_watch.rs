//! The pod watch: kube-rs `watcher` over the selected pods, each event
//! applied to the peer table, every failure logged, counted and reported,
//! and the table kept as it is until the API answers again.
//!
//! After any error the watch is started afresh (after kube-rs's default
//! backoff) and so re-lists. kube-rs would otherwise resume some failures
//! silently, and a resumed watch that sees no change produces no event:
//! the daemon could not tell "recovered" from "still failing". A complete
//! list is that proof, and costs one LIST of the selected pods per failure.
//! A 410 Expired is one such error, and its re-list replaces the table
//! whole, so nothing deleted meanwhile stays behind.

use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::utils::Backoff as _;
use kube::runtime::watcher::{self, DefaultBackoff, Event};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::relist::{Applied, RelistBuffer};
use super::status::SyncStatus;
use super::watch_error::WatchStop;
use crate::metrics::DiscoveryMetrics;
use crate::peers::PeerTable;

/// Longest pause between attempts, should the backoff ever end.
const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn run(
    api: Api<Pod>,
    config: watcher::Config,
    table: watch::Sender<PeerTable>,
    status: Arc<SyncStatus>,
    metrics: Arc<DiscoveryMetrics>,
) {
    let mut backoff = DefaultBackoff::default();
    let mut relist = RelistBuffer::default();
    let mut attempts: u64 = 0;
    loop {
        if attempts > 0 {
            metrics.watch_restarts.inc();
        }
        attempts += 1;
        let mut stream = watcher::watcher(api.clone(), config.clone()).boxed();
        let error = loop {
            match stream.next().await {
                Some(Ok(event)) => {
                    on_event(&event, &mut relist, &table, &status, &metrics);
                    if matches!(event, Event::InitDone) {
                        backoff.reset();
                    }
                }
                Some(Err(e)) => break WatchStop::Failed(e),
                None => break WatchStop::Ended,
            }
        };
        let reason = error.reason();
        metrics.watch_error(reason);
        metrics.watch_healthy.set(0);
        let peers = table.borrow().len();
        let message = format!("{reason}: {error}");
        if status.api_error(message) {
            warn!(
                %error, reason, peers,
                "Kubernetes API failing; keeping the last good peer table"
            );
        } else {
            debug!(%error, reason, "Kubernetes API still failing");
        }
        let pause = backoff.next().unwrap_or(MAX_BACKOFF).min(MAX_BACKOFF);
        tokio::time::sleep(pause).await;
    }
}

fn on_event(
    event: &Event<Pod>,
    relist: &mut RelistBuffer,
    table: &watch::Sender<PeerTable>,
    status: &SyncStatus,
    metrics: &DiscoveryMetrics,
) {
    let mut applied = Applied::Unchanged;
    table.send_if_modified(|t| {
        applied = relist.apply(t, event);
        matches!(
            applied,
            Applied::Changed | Applied::Relisted { changed: true }
        )
    });
    match event {
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
