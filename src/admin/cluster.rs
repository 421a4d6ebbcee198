//! `/cluster/nodes` and `/cluster/plan`: what the ejabberd container's
//! entrypoint asks the sidecar (see [`crate::cluster`]). Loopback only:
//! they serve this pod's own containers, and a plan is for the pod that
//! observed the facts.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::{AdminState, text};
use crate::cluster::facts::{Facts, Observation};
use crate::cluster::nodes::Naming;
use crate::cluster::plan::plan;
use crate::kubernetes::DiscoveryView;

#[derive(Debug, Deserialize)]
pub struct NodesQuery {
    #[serde(rename = "self")]
    me: String,
}

/// The other pods' node names, lowest ordinal first, one per line.
pub async fn nodes(
    State(s): State<Arc<AdminState>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Query(q): Query<NodesQuery>,
) -> Response {
    match view(&s, from).and_then(|d| naming(d, &q.me).map(|n| (d, n))) {
        Ok((d, naming)) => {
            let mut body = String::new();
            for n in pod_nodes(d, &naming, &q.me) {
                body.push_str(&n);
                body.push('\n');
            }
            text(StatusCode::OK, body)
        }
        Err((code, why)) => text(code, why),
    }
}

/// The plan for the observation in the body (JSON, see
/// [`Observation`]): the action on the first line, the reason on the
/// second.
pub async fn plan_for(
    State(s): State<Arc<AdminState>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    body: axum::body::Bytes,
) -> Response {
    let d = match view(&s, from) {
        Ok(d) => d,
        Err((code, why)) => return text(code, why),
    };
    let obs: Observation = match serde_json::from_slice(&body) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("bad observation: {e}\n")),
    };
    let naming = match naming(d, &obs.me) {
        Ok(n) => n,
        Err((code, why)) => return text(code, why),
    };
    let pods = pod_nodes(d, &naming, &obs.me);
    let facts = Facts {
        obs,
        naming,
        pods,
        replicas: *d.replicas.borrow(),
    };
    let p = plan(&facts);
    d.metrics.cluster_plan(p.action.kind());
    tracing::debug!(action = %p.action, reason = %p.reason, "cluster plan");
    text(StatusCode::OK, p.to_string())
}

fn view(s: &AdminState, from: SocketAddr) -> Result<&DiscoveryView, (StatusCode, String)> {
    // An IPv4 client of the dual-stack listener shows as ::ffff:127.0.0.1.
    let ip = match from.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(std::net::IpAddr::V4)
            .unwrap_or(std::net::IpAddr::V6(v6)),
        ip => ip,
    };
    if !ip.is_loopback() {
        return Err((
            StatusCode::FORBIDDEN,
            format!("/cluster/* answers this pod's containers only (loopback), not {ip}\n"),
        ));
    }
    let d = s.discovery.as_ref().ok_or((
        StatusCode::NOT_FOUND,
        "no peer table: not in Kubernetes mode\n".to_string(),
    ))?;
    if !d.health().ready {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "no complete pod list yet\n".to_string(),
        ));
    }
    Ok(d)
}

fn naming(d: &DiscoveryView, me: &str) -> Result<Naming, (StatusCode, String)> {
    let pod = d.settings.pod_name.as_deref().ok_or((
        StatusCode::SERVICE_UNAVAILABLE,
        "this pod's name is not known (set POD_NAME from the downward API)\n".to_string(),
    ))?;
    Naming::new(me, pod).map_err(|e| (StatusCode::BAD_REQUEST, format!("{e}\n")))
}

fn pod_nodes(d: &DiscoveryView, naming: &Naming, me: &str) -> Vec<String> {
    naming.pod_nodes(&d.table.borrow(), &d.settings.cluster_domain, me)
}
