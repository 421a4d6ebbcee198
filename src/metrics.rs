//! Prometheus metrics shared by the EPMD server and Kubernetes discovery.
//! Rendered as text by the admin endpoint (`/metrics`).

use std::sync::OnceLock;

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

/// Why a registration was refused, and which program (by its node name)
/// asked: `kube_epmd_registrations_refused_total{reason,program}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusalLabels {
    pub reason: &'static str,
    pub program: &'static str,
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
    /// Refused ALIVE2 requests: counted every time, logged as the policy in
    /// server::dispatch says (short-lived helpers only once).
    pub registrations_refused: Family<RefusalLabels, Counter>,
    /// `requests`' counters by [kind][outcome], each taken from the family
    /// on first use: counting a request is then one atomic add, not a
    /// lock and two string hashes.
    request_counters: [[OnceLock<Counter>; 4]; 6],
}

impl Metrics {
    pub fn request(&self, kind: RequestKind, outcome: Outcome) {
        self.request_counters[kind as usize][outcome as usize]
            .get_or_init(|| {
                self.requests
                    .get_or_create(&RequestLabels {
                        kind: kind.as_str(),
                        outcome: outcome.as_str(),
                    })
                    .clone()
            })
            .inc();
    }

    pub fn refused(&self, reason: &'static str, program: &'static str) {
        self.registrations_refused
            .get_or_create(&RefusalLabels { reason, program })
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
        registry.register(
            "registrations_refused",
            "Refused registrations by reason and program (from the node name)",
            self.registrations_refused.clone(),
        );
    }

    /// The Prometheus text exposition of the server metrics alone.
    pub fn render(&self) -> String {
        render_all(self, None, None)
    }
}

/// Kubernetes discovery and resolver-file metrics.
#[derive(Debug, Default)]
pub struct DiscoveryMetrics {
    /// Peers (pods with an address) in the table now.
    pub peers: Gauge,
    /// 1 once the first complete list has been written to the hosts file.
    pub synced: Gauge,
    /// 1 while the watch is healthy, 0 while it is failing (the table is
    /// then the last good one).
    pub watch_healthy: Gauge,
    /// Watch (re)starts after the first one: each re-lists from scratch.
    pub watch_restarts: Counter,
    /// Errors from the API, by reason (forbidden, expired, unreachable, ...).
    pub watch_errors: Family<ReasonLabels, Counter>,
    /// Unix time of the last update of the table from the API (a complete
    /// list or a watch event).
    pub last_sync_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub hosts_file_writes: Counter,
    pub hosts_file_write_errors: Counter,
    /// Set with `--statefulset`: the StatefulSet metrics below are exposed.
    pub statefulset_watched: bool,
    /// The StatefulSet's desired replicas; -1 while unknown (before the
    /// first complete list, or deleted).
    pub statefulset_replicas: Gauge,
    /// StatefulSet watch errors, by reason (as `watch_errors`).
    pub statefulset_watch_errors: Family<ReasonLabels, Counter>,
    pub replicas_file_write_errors: Counter,
    /// Plans given to this pod's entrypoint (`/cluster/plan`), by action.
    pub cluster_plans: Family<ActionLabels, Counter>,
    /// 1 while the last plan saw a network partition.
    pub cluster_partitioned: Gauge,
    /// 1 while this node does not serve because of a partition.
    pub cluster_paused: Gauge,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: &'static str,
}

impl DiscoveryMetrics {
    /// Metrics for a discovery that also watches a StatefulSet when
    /// `statefulset` is true. Each of `reasons` (every label a watch error
    /// can get) is exposed at 0 from the start: a labelled family with no
    /// series would be missing from `/metrics` until the first error.
    pub fn new(statefulset: bool, reasons: &[&'static str]) -> DiscoveryMetrics {
        let m = DiscoveryMetrics {
            statefulset_watched: statefulset,
            ..Default::default()
        };
        m.statefulset_replicas.set(-1);
        for &reason in reasons {
            // Creating the series is the point; the guard is dropped.
            drop(m.watch_errors.get_or_create(&ReasonLabels { reason }));
            drop(
                m.statefulset_watch_errors
                    .get_or_create(&ReasonLabels { reason }),
            );
        }
        m
    }

    pub fn statefulset_watch_error(&self, reason: &'static str) {
        self.statefulset_watch_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn cluster_plan(&self, action: &'static str) {
        self.cluster_plans
            .get_or_create(&ActionLabels { action })
            .inc();
    }

    /// The partition gauges after a plan; whether either changed.
    pub fn cluster_partition(&self, partitioned: bool, paused: bool) -> bool {
        let was = (self.cluster_partitioned.get(), self.cluster_paused.get());
        self.cluster_partitioned.set(partitioned.into());
        self.cluster_paused.set(paused.into());
        was != (partitioned.into(), paused.into())
    }

    pub fn watch_error(&self, reason: &'static str) {
        self.watch_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register("peers", "Peer pods in the table", self.peers.clone());
        registry.register(
            "discovery_synced",
            "1 once the first complete pod list is in the hosts file",
            self.synced.clone(),
        );
        registry.register(
            "watch_healthy",
            "1 while the pod watch works, 0 while it fails (last good table kept)",
            self.watch_healthy.clone(),
        );
        registry.register(
            "watch_restarts",
            "Pod watch restarts (each re-lists)",
            self.watch_restarts.clone(),
        );
        registry.register(
            "watch_errors",
            "Kubernetes API errors by reason",
            self.watch_errors.clone(),
        );
        registry.register(
            "last_sync_timestamp_seconds",
            "Unix time of the last table update from the API",
            self.last_sync_seconds.clone(),
        );
        registry.register(
            "hosts_file_writes",
            "Hosts file replacements",
            self.hosts_file_writes.clone(),
        );
        registry.register(
            "hosts_file_write_errors",
            "Failed hosts file replacements",
            self.hosts_file_write_errors.clone(),
        );
        registry.register(
            "cluster_plans",
            "Plans given to this pod's entrypoint, by action",
            self.cluster_plans.clone(),
        );
        registry.register(
            "cluster_partitioned",
            "1 while the last cluster plan saw a network partition (a pod cut off, or sides running apart after a heal)",
            self.cluster_partitioned.clone(),
        );
        registry.register(
            "cluster_paused",
            "1 while this node does not serve because it cannot reach a majority (pause_minority)",
            self.cluster_paused.clone(),
        );
        if self.statefulset_watched {
            registry.register(
                "statefulset_replicas",
                "Desired replicas of the watched StatefulSet (-1: unknown, no replicas file)",
                self.statefulset_replicas.clone(),
            );
            registry.register(
                "statefulset_watch_errors",
                "StatefulSet watch errors by reason",
                self.statefulset_watch_errors.clone(),
            );
            registry.register(
                "replicas_file_write_errors",
                "Failed replicas file writes",
                self.replicas_file_write_errors.clone(),
            );
        }
    }
}

/// Distribution TLS: the certificate the sidecar keeps for its VM
/// (`kube_epmd_tls_*`).
#[derive(Debug, Default)]
pub struct TlsMetrics {
    /// notAfter (Unix time) of the certificate in the output directory; 0
    /// before the first one is written.
    pub certificate_expiry_seconds: Gauge,
    /// 1 while the certificate in the output directory is within its
    /// validity, 0 before the first one and once it has expired.
    pub certificate_valid: Gauge,
    /// notAfter (Unix time) of the CA last read (the CA issued from, or
    /// the ca.crt provided); 0 before one could be read.
    pub ca_expiry_seconds: Gauge,
    /// Certificates written: issued from the CA, or copied from
    /// cert-manager's Secret when it changed.
    pub certificates_written: Counter,
    /// Failed attempts, by reason.
    pub errors: Family<ReasonLabels, Counter>,
}

impl TlsMetrics {
    /// Every reason an attempt can fail with, exposed at 0 from the start.
    pub const REASONS: [&'static str; 5] = [
        "source_unreadable",
        "source_invalid",
        "ca_expired",
        "certificate_expired",
        "write_failed",
    ];

    pub fn new() -> TlsMetrics {
        let m = TlsMetrics::default();
        for reason in Self::REASONS {
            drop(m.errors.get_or_create(&ReasonLabels { reason }));
        }
        m
    }

    pub fn error(&self, reason: &'static str) {
        self.errors.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "notAfter (Unix time) of the distribution certificate written for the VM (0: none yet)",
            self.certificate_expiry_seconds.clone(),
        );
        registry.register(
            "tls_certificate_valid",
            "1 while the distribution certificate written for the VM is within its validity",
            self.certificate_valid.clone(),
        );
        registry.register(
            "tls_ca_expiry_timestamp_seconds",
            "notAfter (Unix time) of the cluster CA last read (0: none read yet)",
            self.ca_expiry_seconds.clone(),
        );
        registry.register(
            "tls_certificates_written",
            "Distribution certificates written (issued, or copied when changed)",
            self.certificates_written.clone(),
        );
        registry.register(
            "tls_errors",
            "Failed attempts to issue or copy the distribution certificate, by reason",
            self.errors.clone(),
        );
    }
}

/// The Prometheus text exposition of the server metrics and, when given,
/// the discovery and TLS metrics.
pub fn render_all(
    server: &Metrics,
    discovery: Option<&DiscoveryMetrics>,
    tls: Option<&TlsMetrics>,
) -> String {
    let mut registry = Registry::with_prefix("kube_epmd");
    server.register(&mut registry);
    if let Some(d) = discovery {
        d.register(&mut registry);
    }
    if let Some(t) = tls {
        t.register(&mut registry);
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}
