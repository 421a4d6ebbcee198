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

use super::index::{Applied, Index};
use super::status::SyncStatus;
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
    let mut index = Index::default();
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
                    on_event(&event, &mut index, &table, &status, &metrics);
                    if matches!(event, Event::InitDone) {
                        backoff.reset();
                    }
                }
                Some(Err(e)) => break e,
                // The watcher stream does not end; treat it as a failure
                // all the same rather than spin.
                None => break watcher::Error::NoResourceVersion,
            }
        };
        let reason = classify(&error);
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
    index: &mut Index,
    table: &watch::Sender<PeerTable>,
    status: &SyncStatus,
    metrics: &DiscoveryMetrics,
) {
    let mut applied = Applied::Unchanged;
    table.send_if_modified(|t| {
        applied = index.apply(t, event);
        matches!(
            applied,
            Applied::Changed | Applied::Relisted { changed: true }
        )
    });
    match event {
        Event::Init | Event::InitApply(_) => return,
        Event::InitDone => {
            let was_failing = status.snapshot().failing_since.is_some();
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

/// Every label [`classify`] gives: `kube_epmd_watch_errors_total` shows
/// each at 0 from the start, so an alert on `absent()` or `rate()` works
/// before the first failure.
pub const REASONS: [&str; 9] = [
    "unauthorized",
    "forbidden",
    "expired",
    "client_error",
    "server_error",
    "unreachable",
    "stream_broken",
    "bad_response",
    "other",
];

/// A short, stable label for an API failure (metrics and logs).
pub fn classify(e: &watcher::Error) -> &'static str {
    use watcher::Error as W;
    match e {
        W::WatchError(status) => status_reason(status.code),
        W::InitialListFailed(c) | W::WatchStartFailed(c) | W::WatchFailed(c) => match c {
            kube::Error::Api(s) => status_reason(s.code),
            kube::Error::HyperError(_) | kube::Error::Service(_) => "unreachable",
            kube::Error::ReadEvents(_) => "stream_broken",
            kube::Error::SerdeError(_) => "bad_response",
            _ => "other",
        },
        W::NoResourceVersion => "bad_response",
    }
}

fn status_reason(code: u16) -> &'static str {
    match code {
        401 => "unauthorized",
        403 => "forbidden",
        410 => "expired",
        400..=499 => "client_error",
        _ => "server_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn status(code: u16) -> Box<Status> {
        Box::new(Status {
            code,
            ..Status::failure("x", "y")
        })
    }

    #[test]
    fn failures_get_stable_reasons() {
        use watcher::Error as W;
        assert_eq!(classify(&W::WatchError(status(410))), "expired");
        assert_eq!(
            classify(&W::InitialListFailed(kube::Error::Api(status(403)))),
            "forbidden"
        );
        assert_eq!(
            classify(&W::WatchStartFailed(kube::Error::Api(status(401)))),
            "unauthorized"
        );
        assert_eq!(
            classify(&W::WatchFailed(kube::Error::Api(status(500)))),
            "server_error"
        );
        assert_eq!(
            classify(&W::WatchFailed(kube::Error::ReadEvents(
                std::io::Error::other("cut")
            ))),
            "stream_broken"
        );
        assert_eq!(classify(&W::NoResourceVersion), "bad_response");
    }

    #[test]
    fn every_reason_is_exposed_from_the_start() {
        let m = DiscoveryMetrics::new(true, &REASONS);
        let text = crate::metrics::render_all(&crate::metrics::Metrics::default(), Some(&m));
        for family in ["watch_errors", "statefulset_watch_errors"] {
            for reason in REASONS {
                let line = format!("kube_epmd_{family}_total{{reason=\"{reason}\"}} 0\n");
                assert!(text.contains(&line), "{line} missing from:\n{text}");
            }
        }
        // And nothing else: every classified failure lands on one of them.
        use watcher::Error as W;
        for e in [
            W::WatchError(status(410)),
            W::WatchError(status(404)),
            W::WatchFailed(kube::Error::Api(status(503))),
            W::WatchFailed(kube::Error::ReadEvents(std::io::Error::other("x"))),
            W::NoResourceVersion,
        ] {
            assert!(REASONS.contains(&classify(&e)));
        }
    }
}
