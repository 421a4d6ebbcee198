//! The node names of one StatefulSet's pods, learnt from our own: with
//! pod `chat-0` named `ejabberd@chat-0.xmpp-internal-svc`, pod `chat-N` is
//! `ejabberd@chat-N.xmpp-internal-svc` (and `ejabberd@chat-0` gives
//! `ejabberd@chat-N`). Mnesia keys its data by node name, so these are
//! stable across restarts.

use serde::Serialize;

use crate::peers::PeerTable;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Naming {
    /// The part before `@` (`ejabberd`).
    pub prefix: String,
    /// What follows the pod name in the host part (`.xmpp-internal-svc`, or
    /// empty for short names).
    pub suffix: String,
    /// The StatefulSet: the pod name without its `-N`.
    pub statefulset: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamingError {
    #[error("node name {0:?} is not NAME@HOST")]
    NotANode(String),
    #[error("pod name {0:?} does not end in -ORDINAL (not a StatefulSet pod)")]
    NotOrdinal(String),
    #[error("the host part of {node:?} does not start with the pod name {pod:?}")]
    HostNotPod { node: String, pod: String },
}

impl Naming {
    /// From this node's name and this pod's name.
    pub fn new(me: &str, pod: &str) -> Result<Naming, NamingError> {
        let (prefix, host) = me
            .split_once('@')
            .filter(|(p, h)| !p.is_empty() && !h.is_empty())
            .ok_or_else(|| NamingError::NotANode(me.to_string()))?;
        let (statefulset, ordinal) = pod
            .rsplit_once('-')
            .filter(|(s, o)| !s.is_empty() && is_ordinal(o))
            .ok_or_else(|| NamingError::NotOrdinal(pod.to_string()))?;
        let _ = ordinal;
        let suffix = host
            .strip_prefix(pod)
            .filter(|s| s.is_empty() || s.starts_with('.'))
            .ok_or_else(|| NamingError::HostNotPod {
                node: me.to_string(),
                pod: pod.to_string(),
            })?;
        Ok(Naming {
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
            statefulset: statefulset.to_string(),
        })
    }

    /// The node name of the pod whose host name is `hostname`.
    pub fn node_of(&self, hostname: &str) -> String {
        format!("{}@{hostname}{}", self.prefix, self.suffix)
    }

    /// The ordinal of a node of this StatefulSet; None for any other name.
    pub fn ordinal(&self, node: &str) -> Option<u32> {
        let (prefix, host) = node.split_once('@')?;
        if prefix != self.prefix {
            return None;
        }
        let pod = host.strip_suffix(self.suffix.as_str())?;
        let ord = pod
            .strip_prefix(self.statefulset.as_str())?
            .strip_prefix('-')?;
        if !is_ordinal(ord) {
            return None;
        }
        ord.parse().ok()
    }
}

impl Naming {
    /// The node names of the other pods of this StatefulSet in the peer
    /// table (Ready or not, terminating too: the node may still be shutting
    /// down), lowest ordinal first. A pod is taken when the name its node
    /// would have is one of the names the hosts file gives it (so the VM
    /// can resolve it).
    pub fn pod_nodes(&self, table: &PeerTable, cluster_domain: &str, me: &str) -> Vec<String> {
        let mut v: Vec<(u32, String)> = table
            .iter()
            .filter_map(|p| {
                let node = self.node_of(&p.hostname);
                let ord = self.ordinal(&node)?;
                let host = node.split_once('@')?.1;
                let listed = p.names(cluster_domain).iter().any(|n| n == host);
                (node != me && listed).then_some((ord, node))
            })
            .collect();
        v.sort();
        v.dedup();
        v.into_iter().map(|(_, n)| n).collect()
    }
}

fn is_ordinal(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_and_short_names() {
        let n = Naming::new("ejabberd@chat-0.xmpp-internal-svc", "chat-0").unwrap();
        assert_eq!(n.suffix, ".xmpp-internal-svc");
        assert_eq!(n.statefulset, "chat");
        assert_eq!(n.node_of("chat-2"), "ejabberd@chat-2.xmpp-internal-svc");
        assert_eq!(n.ordinal("ejabberd@chat-12.xmpp-internal-svc"), Some(12));
        assert_eq!(n.ordinal("ejabberd@chat-1"), None, "other form");
        assert_eq!(n.ordinal("other@chat-1.xmpp-internal-svc"), None);
        assert_eq!(n.ordinal("ejabberd@chat-x.xmpp-internal-svc"), None);
        assert_eq!(n.ordinal("ejabberd@chat-01.xmpp-internal-svc"), None);
        assert_eq!(n.ordinal("ejabberd@chatty-1.xmpp-internal-svc"), None);
        let s = Naming::new("ejabberd@my-chat-3", "my-chat-3").unwrap();
        assert_eq!(s.suffix, "");
        assert_eq!(s.statefulset, "my-chat");
        assert_eq!(s.ordinal("ejabberd@my-chat-0"), Some(0));
        assert_eq!(s.ordinal("ejabberd@my-chat-0.svc"), None);
    }

    /// A peer table as discovery builds it from these pods (namespace
    /// `xmpp`, subdomain `xmpp-internal-svc`).
    fn table(pods: &[(&str, &[&str])]) -> PeerTable {
        let mut t = PeerTable::default();
        for (name, ips) in pods {
            let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "xmpp"},
                "spec": {"hostname": name, "subdomain": "xmpp-internal-svc", "containers": []},
                "status": {
                    "phase": "Running",
                    "podIPs": ips.iter().map(|ip| serde_json::json!({"ip": ip})).collect::<Vec<_>>(),
                },
            }))
            .expect("pod");
            assert!(t.apply(&pod), "{name} is not a peer");
        }
        t
    }

    #[test]
    fn pods_of_this_statefulset_lowest_first() {
        let t = table(&[
            ("chat-2", &["10.1.0.12", "fd00::12"]),
            ("chat-0", &["10.1.0.10"]),
            ("chat-10", &["10.1.0.20"]),
            ("chat-1", &["10.1.0.11"]),
            ("chatter-3", &["10.1.0.30"]),
            ("chat-x", &["10.1.0.31"]),
        ]);
        let me = "ejabberd@chat-1.xmpp-internal-svc";
        let n = Naming::new(me, "chat-1").unwrap();
        assert_eq!(
            n.pod_nodes(&t, "cluster.local", me),
            [
                "ejabberd@chat-0.xmpp-internal-svc",
                "ejabberd@chat-2.xmpp-internal-svc",
                "ejabberd@chat-10.xmpp-internal-svc"
            ]
        );
        let me = "ejabberd@chat-0";
        let n = Naming::new(me, "chat-0").unwrap();
        assert_eq!(
            n.pod_nodes(&t, "cluster.local", me),
            ["ejabberd@chat-1", "ejabberd@chat-2", "ejabberd@chat-10"]
        );
        // The FQDN form is in the hosts file too.
        let me = "ejabberd@chat-0.xmpp-internal-svc.xmpp.svc.cluster.local";
        let n = Naming::new(me, "chat-0").unwrap();
        assert_eq!(n.pod_nodes(&t, "cluster.local", me).len(), 3);
        // A host form the hosts file does not have: nobody.
        let me = "ejabberd@chat-0.elsewhere";
        let n = Naming::new(me, "chat-0").unwrap();
        assert!(n.pod_nodes(&t, "cluster.local", me).is_empty());
        // Alone: no peers.
        let alone = table(&[("chat-0", &["10.1.0.10"])]);
        let me = "ejabberd@chat-0";
        let n = Naming::new(me, "chat-0").unwrap();
        assert!(n.pod_nodes(&alone, "cluster.local", me).is_empty());
    }

    #[test]
    fn bad_names_say_why() {
        assert!(matches!(
            Naming::new("chat-0", "chat-0"),
            Err(NamingError::NotANode(_))
        ));
        assert!(matches!(
            Naming::new("e@chat", "chat"),
            Err(NamingError::NotOrdinal(_))
        ));
        assert!(matches!(
            Naming::new("e@other-0", "chat-0"),
            Err(NamingError::HostNotPod { .. })
        ));
        assert!(matches!(
            Naming::new("e@chat-00.x", "chat-0"),
            Err(NamingError::HostNotPod { .. })
        ));
    }
}
