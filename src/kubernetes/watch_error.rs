//! How a watch stopped, as a short stable label for metrics and logs
//! (`kube_epmd_watch_errors_total{reason}`), shared by the pod watch and
//! the StatefulSet watch.

use kube::runtime::watcher;

/// Why a watch stopped: an error from kube-rs, or the stream simply
/// ending (kube-rs's watcher does not end; should it, the watch is
/// restarted all the same, and counted apart from a bad response).
#[derive(Debug)]
pub enum WatchStop {
    Failed(watcher::Error),
    Ended,
}

impl WatchStop {
    pub fn reason(&self) -> &'static str {
        match self {
            WatchStop::Failed(e) => classify(e),
            WatchStop::Ended => "stream_ended",
        }
    }
}

impl std::fmt::Display for WatchStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WatchStop::Failed(e) => e.fmt(f),
            WatchStop::Ended => f.write_str("the watch stream ended"),
        }
    }
}

/// Every label [`WatchStop::reason`] gives: `kube_epmd_watch_errors_total`
/// shows each at 0 from the start, so an alert on `absent()` or `rate()`
/// works before the first failure.
pub const REASONS: [&str; 10] = [
    "unauthorized",
    "forbidden",
    "expired",
    "client_error",
    "server_error",
    "unreachable",
    "stream_broken",
    "bad_response",
    "stream_ended",
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
        assert_eq!(WatchStop::Ended.reason(), "stream_ended");
    }

    #[test]
    fn every_reason_is_exposed_from_the_start() {
        let m = crate::metrics::DiscoveryMetrics::new(true, &REASONS);
        let text = crate::metrics::render_all(&crate::metrics::Metrics::default(), Some(&m), None);
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
            assert!(REASONS.contains(&WatchStop::Failed(e).reason()));
        }
        assert!(REASONS.contains(&WatchStop::Ended.reason()));
    }
}
