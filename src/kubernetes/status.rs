//! Discovery health, as `/readyz`, `/healthz` and `/peers` report it.
//!
//! Ready means the first complete list has reached the hosts file (the
//! hosts file writer signals it; this file tracks the API side). It never
//! goes back to false: after that the table is the last good view and keeps
//! serving through API outages, which `healthy`/`last_error` report instead
//! (a sidecar that turned unready on every API blip would take ejabberd out
//! of its Services for no reason).

use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Health {
    /// The first complete list is in the hosts file.
    pub ready: bool,
    /// The last API call succeeded (false: serving the last good table).
    pub healthy: bool,
    /// Set while unhealthy: what failed last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Unix seconds since which the API has been failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<u64>,
    /// Unix seconds of the last table update from the API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<u64>,
}

/// The API side of [`Health`]: updated by the watch.
#[derive(Debug, Default)]
pub struct SyncStatus {
    inner: Mutex<ApiHealth>,
}

#[derive(Debug, Clone, Default)]
struct ApiHealth {
    healthy: bool,
    last_error: Option<String>,
    failing_since: Option<u64>,
    last_sync: Option<u64>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SyncStatus {
    fn with<R>(&self, f: impl FnOnce(&mut ApiHealth) -> R) -> R {
        // Plain data: a panic elsewhere cannot leave it invalid.
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    /// The whole picture, given whether the first list is on disk.
    pub fn health(&self, ready: bool) -> Health {
        let a = self.with(|h| h.clone());
        Health {
            ready,
            healthy: a.healthy,
            last_error: a.last_error,
            failing_since: a.failing_since,
            last_sync: a.last_sync,
        }
    }

    /// Whether the API is failing now.
    pub fn is_failing(&self) -> bool {
        self.with(|h| h.failing_since.is_some())
    }

    /// The API answered and the table was updated from it.
    pub fn api_ok(&self) {
        self.with(|h| {
            h.healthy = true;
            h.last_error = None;
            h.failing_since = None;
            h.last_sync = Some(unix_now());
        });
    }

    /// The API failed; returns whether this starts a failing period.
    pub fn api_error(&self, error: String) -> bool {
        self.with(|h| {
            let newly = h.failing_since.is_none();
            h.healthy = false;
            h.last_error = Some(error);
            if newly {
                h.failing_since = Some(unix_now());
            }
            newly
        })
    }
}
