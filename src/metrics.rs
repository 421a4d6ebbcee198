//! Prometheus metrics shared by the EPMD server and Kubernetes discovery.
//! Rendered as text by the admin endpoint (`/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::codec::RequestKind;

/// How a request ended, for `kube_epmd_requests_total{kind,outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answered positively (registered, found, listed, stopped, killed).
    Ok,
    /// PORT_PLEASE2 for a name that is not registered.
    Miss,
    /// Answered negatively (result 1, KILL answered NO, STOP of unknown name).
    Refused,
    /// Closed without a reply: policy (non-local peer) or malformed request.
    Dropped,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Miss => "miss",
            Outcome::Refused => "refused",
            Outcome::Dropped => "dropped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub kind: &'static str,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Every metric this daemon exports. Cheap to update from the request path:
/// counters are atomics, families are looked up under a read lock.
#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    /// Connections closed without a request being answered, by reason.
    pub dropped: Family<ReasonLabels, Counter>,
    pub connections_open: Gauge,
    pub connections_accepted: Counter,
    /// Idle connections closed to make room for new ones at the limit.
    pub connections_evicted: Counter,
    pub accept_errors: Counter,
    pub registered_nodes: Gauge,
}

impl Metrics {
    pub fn request(&self, kind: RequestKind, outcome: Outcome) {
        self.requests
            .get_or_create(&RequestLabels {
                kind: kind.as_str(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub fn dropped(&self, reason: &'static str) {
        self.dropped.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Add the EPMD server's metrics to `registry` under the `kube_epmd` prefix.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "requests",
            "EPMD requests by kind and outcome",
            self.requests.clone(),
        );
        registry.register(
            "connections_dropped",
            "Connections closed without an answer, by reason",
            self.dropped.clone(),
        );
        registry.register(
            "connections_open",
            "EPMD connections currently open",
            self.connections_open.clone(),
        );
        registry.register(
            "connections_accepted",
            "EPMD connections accepted",
            self.connections_accepted.clone(),
        );
        registry.register(
            "connections_evicted",
            "Idle EPMD connections closed to make room at the connection limit",
            self.connections_evicted.clone(),
        );
        registry.register(
            "accept_errors",
            "Failed accept() calls (e.g. out of file descriptors)",
            self.accept_errors.clone(),
        );
        registry.register(
            "registered_nodes",
            "Erlang nodes currently registered",
            self.registered_nodes.clone(),
        );
    }

    /// The Prometheus text exposition of the server metrics alone.
    pub fn render(&self) -> String {
        let mut registry = Registry::with_prefix("kube_epmd");
        self.register(&mut registry);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
