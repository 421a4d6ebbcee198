//! The node names of one StatefulSet's pods, learnt from our own: with
//! pod `chat-0` named `ejabberd@chat-0.xmpp-internal-svc`, pod `chat-N` is
//! `ejabberd@chat-N.xmpp-internal-svc` (and `ejabberd@chat-0` gives
//! `ejabberd@chat-N`). Mnesia keys its data by node name, so these are
//! stable across restarts.

use serde::Serialize;

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
