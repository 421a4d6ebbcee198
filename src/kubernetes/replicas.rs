//! The desired replica count of one StatefulSet (`--statefulset NAME`),
//! published as `<output-dir>/replicas` for the cluster entrypoint, which
//! uses it to tell a pod removed by a scale-down from one that is only
//! restarting.
//!
//! The watch names the StatefulSet with the field selector
//! `metadata.name=NAME`: Kubernetes authorizes a list or watch against a
//! role's `resourceNames` only when the request carries exactly that
//! selector, so RBAC can grant this one object and nothing else.
//!
//! The file holds `spec.replicas` (1 when absent, as the API defaults it)
//! in ASCII decimal and a newline. It is replaced by rename, and only when
//! the value changes. It does not exist until a complete list has seen
//! the StatefulSet in this run (a file left by a previous run is removed
//! at start: the count may have changed meanwhile, and a consumer reads
//! "no file" as "unknown, remove nobody"); it is removed when the
//! StatefulSet is deleted; on API errors the last value stays.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::Api;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::watch_error::WatchStop;
use super::watch_loop::{self, WatchHandler};
use crate::files::disk::ReplicasFile;
use crate::metrics::DiscoveryMetrics;

/// Pause before retrying a failed file write.
const WRITE_RETRY: Duration = Duration::from_secs(1);

/// `spec.replicas`, defaulted as the API server defaults it.
pub fn desired_replicas(sts: &StatefulSet) -> u32 {
    // The API rejects a negative count; a corrupt one reads as 0 rather
    // than wrapping.
    sts.spec.replicas.unwrap_or(1).max(0) as u32
}

/// Turns watcher events for one StatefulSet into "the count is now known
/// to be N / known to be absent". A (re-)list is buffered until
/// `InitDone`, so a StatefulSet deleted while the watch was down reads as
/// gone only once a complete list has shown it.
#[derive(Debug)]
pub struct ReplicaTracker {
    name: String,
    relist: Option<Option<u32>>,
}

impl ReplicaTracker {
    pub fn new(name: &str) -> ReplicaTracker {
        ReplicaTracker {
            name: name.to_string(),
            relist: None,
        }
    }

    /// The count this event establishes: `None` while a list is still
    /// being read, `Some(None)` when the StatefulSet does not exist.
    pub fn apply(&mut self, event: &Event<StatefulSet>) -> Option<Option<u32>> {
        let ours = |sts: &StatefulSet| sts.metadata.name.as_deref() == Some(self.name.as_str());
        match event {
            Event::Init => {
                self.relist = Some(None);
                None
            }
            Event::InitApply(sts) => {
                if ours(sts) {
                    self.relist = Some(Some(desired_replicas(sts)));
                }
                None
            }
            Event::InitDone => Some(self.relist.take().flatten()),
            // The field selector lets through nothing else; an object of
            // another name would be a server bug, not a reason to act.
            Event::Apply(sts) if ours(sts) => Some(Some(desired_replicas(sts))),
            Event::Delete(sts) if ours(sts) => Some(None),
            Event::Apply(_) | Event::Delete(_) => None,
        }
    }
}

/// Watch the StatefulSet and keep the file, `known` and the gauge in step.
/// After any error the watch starts afresh and re-lists, as the pod watch
/// does ([`super::watch_loop`]); the file keeps its value meanwhile.
pub async fn run(
    api: Api<StatefulSet>,
    name: String,
    file: ReplicasFile,
    known: watch::Sender<Option<u32>>,
    metrics: Arc<DiscoveryMetrics>,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let handler = ReplicasWatch {
        tracker: ReplicaTracker::new(&name),
        name,
        file,
        known,
        metrics,
        pending: None,
    };
    watch_loop::run(api, config, handler).await
}

/// What the StatefulSet watch keeps current: the file, `known` and the
/// gauge.
struct ReplicasWatch {
    name: String,
    tracker: ReplicaTracker,
    file: ReplicasFile,
    known: watch::Sender<Option<u32>>,
    metrics: Arc<DiscoveryMetrics>,
    /// A value the file could not take yet.
    pending: Option<Option<u32>>,
}

impl WatchHandler<StatefulSet> for ReplicasWatch {
    fn event(&mut self, event: Event<StatefulSet>) {
        let Some(value) = self.tracker.apply(&event) else {
            return;
        };
        let name = &self.name;
        if *self.known.borrow() != value {
            match value {
                Some(n) => {
                    info!(statefulset = %name, replicas = n, "desired replica count")
                }
                None => {
                    info!(statefulset = %name, "StatefulSet not found; replica count unknown")
                }
            }
        }
        self.known
            .send_if_modified(|k| std::mem::replace(k, value) != value);
        self.metrics
            .statefulset_replicas
            .set(value.map_or(-1, i64::from));
        self.pending = write(&mut self.file, value, &self.metrics);
    }

    fn stopped(&mut self, error: &WatchStop) {
        let reason = error.reason();
        self.metrics.statefulset_watch_error(reason);
        warn!(
            statefulset = %self.name, %error, reason,
            "StatefulSet watch failing; keeping the last replica count"
        );
    }

    fn retry_after(&self) -> Option<Duration> {
        self.pending.is_some().then_some(WRITE_RETRY)
    }

    fn retry(&mut self) {
        if let Some(value) = self.pending.take() {
            self.pending = write(&mut self.file, value, &self.metrics);
        }
    }
}

/// Write `value`; on failure return it, to be retried.
fn write(
    file: &mut ReplicasFile,
    value: Option<u32>,
    metrics: &DiscoveryMetrics,
) -> Option<Option<u32>> {
    match file.set(value) {
        Ok(changed) => {
            if changed {
                debug!(path = %file.path().display(), ?value, "replicas file updated");
            }
            None
        }
        Err(e) => {
            metrics.replicas_file_write_errors.inc();
            error!(path = %file.path().display(), error = %e, "cannot write the replicas file; retrying");
            Some(value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts(name: &str, replicas: Option<i32>) -> StatefulSet {
        let mut s = StatefulSet::default();
        s.metadata.name = Some(name.into());
        s.spec.replicas = replicas;
        s
    }

    #[test]
    fn absent_replicas_default_to_one() {
        assert_eq!(desired_replicas(&sts("chat", None)), 1);
        assert_eq!(desired_replicas(&sts("chat", Some(0))), 0);
        assert_eq!(desired_replicas(&sts("chat", Some(5))), 5);
        assert_eq!(desired_replicas(&sts("chat", Some(-3))), 0);
    }

    #[test]
    fn known_only_after_a_complete_list() {
        let mut t = ReplicaTracker::new("chat");
        assert_eq!(t.apply(&Event::Init), None);
        assert_eq!(t.apply(&Event::InitApply(sts("chat", Some(3)))), None);
        assert_eq!(t.apply(&Event::InitDone), Some(Some(3)));
        assert_eq!(t.apply(&Event::Apply(sts("chat", Some(2)))), Some(Some(2)));
        assert_eq!(t.apply(&Event::Apply(sts("other", Some(9)))), None);
        assert_eq!(t.apply(&Event::Delete(sts("chat", Some(2)))), Some(None));
        // A re-list that does not contain it: gone.
        t.apply(&Event::Init);
        assert_eq!(t.apply(&Event::InitDone), Some(None));
    }
}
