//! The peer table: which pod names the local Erlang VM may look up, and
//! their addresses. Pure data, built from Pod objects by discovery and read
//! by the hosts file writer and the admin endpoint.
//!
//! Which pods are peers:
//! - a pod with at least one IP in `status.podIPs` (or `status.podIP`) whose
//!   phase is not `Failed` or `Succeeded`;
//! - whether or not it is Ready: ejabberd is only Ready once it has joined
//!   the cluster, and it can only join if its peers can resolve it;
//! - terminating pods (`deletionTimestamp` set) stay until the API deletes
//!   them or the kubelet reports them Failed/Succeeded: the node is still
//!   running its shutdown (Mnesia, `leave_cluster`) at that address, and a
//!   StatefulSet does not start the replacement, which takes the same name,
//!   before the old pod is gone. They are marked `terminating` in `/peers`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;

/// One peer pod, reduced to what name resolution needs (not to be
/// confused with the EPMD server's connecting peer). The Pod object
/// itself (managedFields, spec, conditions...) is never kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerPod {
    pub pod: String,
    pub namespace: String,
    /// `spec.hostname`, else the pod name: the host part of the node name.
    pub hostname: String,
    /// `spec.subdomain` (a StatefulSet sets its headless service here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
    /// Every address in `status.podIPs` order (IPv4 and IPv6).
    pub ips: Vec<IpAddr>,
    pub ready: bool,
    pub terminating: bool,
}

/// Why a Pod is not a peer (for debug logs; none of these is an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotPeer {
    NoName,
    NoIp,
    Finished(String),
    /// A name that cannot appear in a hosts file (whitespace, `#`, ...).
    /// The API validates names, so this means a corrupt or hostile object.
    BadName(String),
}

impl PeerPod {
    pub fn from_pod(pod: &Pod) -> Result<PeerPod, NotPeer> {
        let meta = &pod.metadata;
        let name = meta.name.clone().ok_or(NotPeer::NoName)?;
        let namespace = meta.namespace.clone().unwrap_or_default();
        let status = pod.status.as_ref();
        if let Some(phase) = status.and_then(|s| s.phase.as_deref())
            && matches!(phase, "Failed" | "Succeeded")
        {
            return Err(NotPeer::Finished(phase.to_string()));
        }
        let spec = pod.spec.as_ref();
        let hostname = spec
            .and_then(|s| s.hostname.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| name.clone());
        let subdomain = spec
            .and_then(|s| s.subdomain.clone())
            .filter(|s| !s.is_empty());
        for n in [Some(&hostname), subdomain.as_ref(), Some(&namespace)]
            .into_iter()
            .flatten()
        {
            if !is_dns_name(n) {
                return Err(NotPeer::BadName(n.clone()));
            }
        }
        // podIPs is authoritative; podIP alone is what old kubelets report.
        let listed = status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| ips.iter().map(|i| i.ip.as_str()).collect::<Vec<_>>())
            .unwrap_or_default();
        let single = status.and_then(|s| s.pod_ip.as_deref());
        let mut ips: Vec<IpAddr> = Vec::new();
        for raw in listed.into_iter().chain(single) {
            // An unparsable address is skipped, not fatal: the others may
            // still be good.
            if let Ok(ip) = raw.trim().parse::<IpAddr>()
                && !ips.contains(&ip)
            {
                ips.push(ip);
            }
        }
        if ips.is_empty() {
            return Err(NotPeer::NoIp);
        }
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        Ok(PeerPod {
            pod: name,
            namespace,
            hostname,
            subdomain,
            ips,
            ready,
            terminating: meta.deletion_timestamp.is_some(),
        })
    }

    /// Every name the VM may use for this pod, shortest first:
    /// `host`, and with a subdomain also `host.sub`, `host.sub.ns`,
    /// `host.sub.ns.svc` and `host.sub.ns.svc.<cluster_domain>`.
    pub fn names(&self, cluster_domain: &str) -> Vec<String> {
        let mut line = String::new();
        self.write_names(cluster_domain, &mut line);
        line.split(' ').map(str::to_string).collect()
    }

    /// The same names, space-separated, appended to `out` without
    /// allocating (the hosts file renders thousands of these per change).
    pub fn write_names(&self, cluster_domain: &str, out: &mut String) {
        let h = &self.hostname;
        out.push_str(h);
        let Some(sub) = &self.subdomain else {
            return;
        };
        let ns = &self.namespace;
        let domain = cluster_domain.trim_matches('.');
        for (i, part) in [sub.as_str(), ns, "svc", domain].into_iter().enumerate() {
            if part.is_empty() {
                break;
            }
            out.push(' ');
            out.push_str(h);
            for p in [sub.as_str(), ns, "svc", domain].iter().take(i + 1) {
                out.push('.');
                out.push_str(p);
            }
        }
    }
}

/// Lower-case letters, digits, `-` and `.`: what DNS-1123 names allow and
/// what a hosts file line can carry safely.
pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Pods by (namespace, name). `synced` turns true with the first complete
/// list and never back: after that the table is the last good view, kept
/// through API errors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerTable {
    peers: BTreeMap<(String, String), PeerPod>,
    synced: bool,
}

impl PeerTable {
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Peers in (namespace, pod name) order.
    pub fn iter(&self) -> impl Iterator<Item = &PeerPod> {
        self.peers.values()
    }

    /// Add, update or (when it is no longer a peer) remove `pod`.
    /// Returns whether the table changed.
    pub fn apply(&mut self, pod: &Pod) -> bool {
        let key = key_of(pod);
        match PeerPod::from_pod(pod) {
            Ok(peer) => {
                if self.peers.get(&key) == Some(&peer) {
                    false
                } else {
                    self.peers.insert(key, peer);
                    true
                }
            }
            Err(_) => self.peers.remove(&key).is_some(),
        }
    }

    /// Remove `pod`. Returns whether the table changed.
    pub fn delete(&mut self, pod: &Pod) -> bool {
        self.peers.remove(&key_of(pod)).is_some()
    }

    /// Replace everything with the result of a complete list: pods gone
    /// while the watch was down leave no stale entries.
    pub fn replace(&mut self, other: PeerTable) -> bool {
        let changed = !self.synced || self.peers != other.peers;
        self.peers = other.peers;
        self.synced = true;
        changed
    }
}

fn key_of(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodIP, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    /// A StatefulSet-style pod of namespace `chat`, subdomain
    /// `xmpp-internal-svc` (also used by the resolver's tests).
    pub(crate) fn pod(name: &str, ips: &[&str], phase: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("chat".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                subdomain: Some("xmpp-internal-svc".into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                pod_ip: ips.first().map(|s| s.to_string()),
                pod_ips: Some(ips.iter().map(|i| PodIP { ip: i.to_string() }).collect()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn every_name_form_for_a_statefulset_pod() {
        let p = PeerPod::from_pod(&pod("chat-1", &["10.1.0.11"], "Running", true)).unwrap();
        assert_eq!(
            p.names("cluster.local"),
            [
                "chat-1",
                "chat-1.xmpp-internal-svc",
                "chat-1.xmpp-internal-svc.chat",
                "chat-1.xmpp-internal-svc.chat.svc",
                "chat-1.xmpp-internal-svc.chat.svc.cluster.local",
            ]
        );
    }

    #[test]
    fn spec_hostname_wins_and_no_subdomain_means_short_name_only() {
        let mut p = pod("chat-1", &["10.1.0.11"], "Running", true);
        let spec = p.spec.as_mut().unwrap();
        spec.hostname = Some("xmpp-a".into());
        spec.subdomain = None;
        let peer = PeerPod::from_pod(&p).unwrap();
        assert_eq!(peer.names("cluster.local"), ["xmpp-a"]);
    }

    #[test]
    fn which_pods_are_peers() {
        let not_ready = PeerPod::from_pod(&pod("a", &["10.0.0.1"], "Running", false)).unwrap();
        assert!(!not_ready.ready);
        let pending = PeerPod::from_pod(&pod("a", &["10.0.0.1"], "Pending", false));
        assert!(pending.is_ok(), "an IP is all it takes");
        assert_eq!(
            PeerPod::from_pod(&pod("a", &[], "Pending", false)),
            Err(NotPeer::NoIp)
        );
        assert!(matches!(
            PeerPod::from_pod(&pod("a", &["10.0.0.1"], "Failed", false)),
            Err(NotPeer::Finished(_))
        ));
        assert!(matches!(
            PeerPod::from_pod(&pod("a", &["10.0.0.1"], "Succeeded", false)),
            Err(NotPeer::Finished(_))
        ));
        let mut term = pod("a", &["10.0.0.1"], "Running", true);
        term.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert!(PeerPod::from_pod(&term).unwrap().terminating);
    }

    #[test]
    fn dual_stack_and_bad_addresses() {
        let p = PeerPod::from_pod(&pod(
            "a",
            &["10.0.0.1", "fd00::1", "bogus"],
            "Running",
            true,
        ))
        .unwrap();
        assert_eq!(
            p.ips,
            [
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "fd00::1".parse().unwrap()
            ]
        );
        assert_eq!(
            PeerPod::from_pod(&pod("a", &["bogus"], "Running", true)),
            Err(NotPeer::NoIp)
        );
    }

    #[test]
    fn hostile_names_are_refused() {
        let mut p = pod("a", &["10.0.0.1"], "Running", true);
        p.spec.as_mut().unwrap().hostname = Some("evil\n10.6.6.6 chat-0".into());
        assert!(matches!(PeerPod::from_pod(&p), Err(NotPeer::BadName(_))));
    }

    #[test]
    fn table_apply_delete_replace() {
        let mut t = PeerTable::default();
        assert!(t.apply(&pod("a", &["10.0.0.1"], "Running", true)));
        assert!(!t.apply(&pod("a", &["10.0.0.1"], "Running", true)), "no-op");
        assert!(t.apply(&pod("a", &["10.0.0.2"], "Running", true)));
        assert!(t.apply(&pod("b", &["10.0.0.3"], "Running", false)));
        assert_eq!(t.len(), 2);
        assert!(
            t.apply(&pod("b", &["10.0.0.3"], "Failed", false)),
            "finished → gone"
        );
        assert_eq!(t.len(), 1);
        assert!(t.delete(&pod("a", &[], "Running", true)));
        assert!(t.is_empty());
        assert!(!t.is_synced());

        let mut fresh = PeerTable::default();
        fresh.apply(&pod("c", &["10.0.0.4"], "Running", true));
        t.apply(&pod("stale", &["10.0.0.9"], "Running", true));
        assert!(t.replace(fresh));
        assert!(t.is_synced());
        let names: Vec<_> = t.iter().map(|p| p.pod.as_str()).collect();
        assert_eq!(names, ["c"]);
    }
}
