//! `/cluster/nodes` and `/cluster/plan`: what the ejabberd container's
//! entrypoint asks the sidecar (see [`crate::cluster`]). Loopback only:
//! they serve this pod's own containers, and a plan is for the pod that
//! observed the facts.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::{AdminState, text};
use crate::cluster::facts::{Facts, Observation};
use crate::cluster::nodes::Naming;
use crate::cluster::partition;
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
    let st = partition::status(&facts, &p);
    if d.metrics.cluster_partition(st.partitioned, st.paused) {
        tracing::warn!(
            partitioned = st.partitioned,
            paused = st.paused,
            action = %p.action,
            reason = %p.reason,
            "cluster partition state changed"
        );
    }
    tracing::debug!(action = %p.action, reason = %p.reason, "cluster plan");
    text(StatusCode::OK, p.to_string())
}

fn view(s: &AdminState, from: SocketAddr) -> Result<&DiscoveryView, (StatusCode, String)> {
    if !is_local(from) {
        return Err((
            StatusCode::FORBIDDEN,
            format!(
                "/cluster/* answers this pod's containers only (loopback), not {}\n",
                from.ip()
            ),
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

/// A loopback client; an IPv4 one of the dual-stack listener shows as
/// `::ffff:127.0.0.1`.
fn is_local(from: SocketAddr) -> bool {
    match from.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
        IpAddr::V4(v4) => v4.is_loopback(),
    }
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

#[cfg(test)]
mod tests {
    use super::is_local;

    #[test]
    fn only_loopback_clients_are_local() {
        for (addr, local) in [
            ("127.0.0.1:1", true),
            ("127.9.0.1:1", true),
            ("[::1]:1", true),
            ("[::ffff:127.0.0.1]:1", true),
            ("10.244.0.7:1", false),
            ("[::ffff:10.244.0.7]:1", false),
            ("[fd00::7]:1", false),
        ] {
            assert_eq!(is_local(addr.parse().unwrap()), local, "{addr}");
        }
    }
}
