//! The HTTP admin endpoint: `/healthz`, `/readyz`, `/metrics` (Prometheus
//! text) and, in Kubernetes mode, `/peers` (JSON) and `/cluster/nodes`,
//! `/cluster/plan` for this pod's entrypoint ([`crate::cluster`]). It only
//! reads state.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

mod cluster;

use crate::kubernetes::{DiscoveryView, Health};
use crate::metrics::{Metrics, render_all};
use crate::tls::TlsView;

pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// Present in Kubernetes mode.
    pub discovery: Option<DiscoveryView>,
    /// Present with distribution TLS (--tls-ca-dir, --tls-cert-dir).
    pub tls: Option<TlsView>,
}

/// The `/peers` document. Also what `kube-epmd peers` parses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeersDoc {
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(rename = "self", default, skip_serializing_if = "Option::is_none")]
    pub self_pod: Option<String>,
    pub ready: bool,
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<u64>,
    /// The watched StatefulSet's desired replicas; null when not watched
    /// (no `--statefulset`) or not known (before its first list, deleted).
    #[serde(default)]
    pub replicas: Option<u32>,
    pub peers: Vec<PeerDoc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerDoc {
    pub pod: String,
    pub namespace: String,
    pub hostname: String,
    /// Every name in the hosts file for this pod, shortest first.
    pub names: Vec<String>,
    pub ips: Vec<String>,
    pub ready: bool,
    pub terminating: bool,
    #[serde(rename = "self")]
    pub is_self: bool,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/peers", get(peers))
        .route("/cluster/nodes", get(cluster::nodes))
        .route("/cluster/plan", post(cluster::plan_for))
        .with_state(state)
}

/// Serve until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    // The peer address is kept for /cluster/*, which answers loopback only.
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = shutdown.wait_for(|s| *s).await;
    })
    .await
}

/// Listen on `addr`. The IPv6 wildcard `[::]` takes IPv4 too (IPV6_V6ONLY
/// off, whatever the host's `net.ipv6.bindv6only`); on a host without IPv6
/// it falls back to `0.0.0.0` on the same port.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let dual = matches!(addr, SocketAddr::V6(a) if a.ip().is_unspecified());
    let open = |addr: SocketAddr| -> std::io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        if dual {
            socket.set_only_v6(false)?;
        }
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(128)?;
        TcpListener::from_std(socket.into())
    };
    match open(addr) {
        Err(e) if dual && is_no_ipv6(&e) => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            tracing::info!(%addr, fallback = %v4, "no IPv6 on this host; admin endpoint on IPv4 only");
            open(v4)
        }
        r => r,
    }
}

fn is_no_ipv6(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT)
    )
}

fn text(code: StatusCode, body: String) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Liveness: the process answers. Discovery failures are not a reason to
/// restart the sidecar (it would lose nothing but gain nothing either).
async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n".into())
}

/// Readiness: 503 until the first complete pod list is in the hosts file.
/// Afterwards 200, saying `stale` (and why) while the API is failing: the
/// last good table still serves, see [`crate::kubernetes::status`].
///
/// With distribution TLS, also 503 until the VM's certificate is written
/// and once the one in place has expired (the VM can then neither make
/// nor take a distribution connection); a failing CA or cert-manager
/// source with a valid certificate in place is reported but stays ready.
async fn readyz(State(s): State<Arc<AdminState>>) -> Response {
    let (code, body) = discovery_readyz(&s);
    match s.tls.as_ref().map(TlsView::health) {
        Some(t) if !t.ready && code == StatusCode::OK => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", t.message),
        ),
        Some(t) if !t.message.is_empty() => {
            text(code, format!("{}; {}\n", body.trim_end(), t.message))
        }
        _ => text(code, body),
    }
}

fn discovery_readyz(s: &AdminState) -> (StatusCode, String) {
    let Some(d) = &s.discovery else {
        return (StatusCode::OK, "ok\n".into());
    };
    let h: Health = d.health();
    if !h.ready {
        let why = h
            .last_error
            .map(|e| format!(" (last error: {e})"))
            .unwrap_or_default();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: waiting for the first complete pod list{why}\n"),
        );
    }
    if h.healthy {
        (StatusCode::OK, "ok\n".into())
    } else {
        (
            StatusCode::OK,
            format!(
                "ok, stale: Kubernetes API failing since {} (unix), serving the last good table: {}\n",
                h.failing_since.unwrap_or(0),
                h.last_error.unwrap_or_default()
            ),
        )
    }
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    let body = render_all(
        &s.metrics,
        s.discovery.as_ref().map(|d| &*d.metrics),
        s.tls.as_ref().map(|t| &*t.metrics),
    );
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn peers(State(s): State<Arc<AdminState>>) -> Response {
    let Some(d) = &s.discovery else {
        return text(
            StatusCode::NOT_FOUND,
            "no peer table: not in Kubernetes mode\n".into(),
        );
    };
    let doc = peers_doc(d);
    match serde_json::to_vec_pretty(&doc) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

pub fn peers_doc(d: &DiscoveryView) -> PeersDoc {
    let h = d.health();
    let domain = &d.settings.cluster_domain;
    let me = d.settings.pod_name.as_deref();
    let table = d.table.borrow();
    PeersDoc {
        namespace: d.settings.namespace.clone(),
        selector: d.settings.selector.clone(),
        self_pod: d.settings.pod_name.clone(),
        ready: h.ready,
        healthy: h.healthy,
        last_error: h.last_error,
        last_sync: h.last_sync,
        replicas: *d.replicas.borrow(),
        peers: table
            .iter()
            .map(|p| PeerDoc {
                pod: p.pod.clone(),
                namespace: p.namespace.clone(),
                hostname: p.hostname.clone(),
                names: p.names(domain),
                ips: p.ips.iter().map(|ip| ip.to_string()).collect(),
                ready: p.ready,
                terminating: p.terminating,
                is_self: me == Some(p.pod.as_str()),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Args;

    fn admin_addr(args: &[&str]) -> Option<SocketAddr> {
        Args::parse_from_epmd(std::iter::once("kube-epmd").chain(args.iter().copied()))
            .unwrap()
            .kube
            .admin_addr
    }

    #[test]
    fn admin_default_is_dual_stack_in_kubernetes_mode_only() {
        assert_eq!(
            admin_addr(&["--kubernetes"]),
            Some("[::]:9090".parse().unwrap())
        );
        assert_eq!(admin_addr(&[]), None, "plain mode: no admin endpoint");
        assert_eq!(
            admin_addr(&["--kubernetes", "--admin-addr", "127.0.0.1:1"]),
            Some("127.0.0.1:1".parse().unwrap())
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_ipv6_wildcard_takes_ipv4_too() {
        let Ok(l) = bind("[::]:0".parse().unwrap()) else {
            // No IPv6 here: the fallback is IPv4-only by design.
            return;
        };
        let port = l.local_addr().unwrap().port();
        for client in ["127.0.0.1", "::1"] {
            let ip: std::net::IpAddr = client.parse().unwrap();
            let c = tokio::net::TcpStream::connect((ip, port)).await;
            if ip.is_ipv6() && c.is_err() {
                continue; // no ::1 on this host (IPv6 disabled on lo)
            }
            c.unwrap_or_else(|e| panic!("connect from {client}: {e}"));
            l.accept().await.unwrap();
        }
    }
}
