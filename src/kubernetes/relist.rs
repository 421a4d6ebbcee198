//! Applying watcher events to the peer table, in the kubert style: changes
//! apply at once while watching; a (re-)list is buffered from `Init` to
//! `InitDone` and then replaces the table in one step, so readers never see
//! a half-listed table and pods deleted while the watch was down vanish.
//!
//! kube's `reflector::Store` does the same buffering, but keeps every
//! whole Pod object (spec, status, managedFields): with 10 000 pods that is
//! tens of MiB more in a sidecar. The buffer here keeps only the peer
//! entries a Pod reduces to.

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::Event;

use crate::peers::PeerTable;

/// What an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Nothing visible changed (or a list page is still being buffered).
    Unchanged,
    /// The table changed.
    Changed,
    /// A complete list replaced the table (changed or not).
    Relisted { changed: bool },
}

/// The list being buffered, if a (re-)list is in progress; every event
/// reaches the table through it.
#[derive(Debug, Default)]
pub struct RelistBuffer {
    relist: Option<PeerTable>,
}

impl RelistBuffer {
    /// Apply one event to `table`. Only the pod fields a peer needs are
    /// read: nothing of the object (managedFields included) is kept.
    pub fn apply(&mut self, table: &mut PeerTable, event: &Event<Pod>) -> Applied {
        match event {
            Event::Init => {
                self.relist = Some(PeerTable::default());
                Applied::Unchanged
            }
            Event::InitApply(pod) => {
                self.relist
                    .get_or_insert_with(PeerTable::default)
                    .apply(pod);
                Applied::Unchanged
            }
            Event::InitDone => {
                let fresh = self.relist.take().unwrap_or_default();
                Applied::Relisted {
                    changed: table.replace(fresh),
                }
            }
            Event::Apply(pod) => changed(table.apply(pod)),
            Event::Delete(pod) => changed(table.delete(pod)),
        }
    }
}

fn changed(c: bool) -> Applied {
    if c {
        Applied::Changed
    } else {
        Applied::Unchanged
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodIP, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(name: &str, ip: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                pod_ips: Some(vec![PodIP { ip: ip.into() }]),
                ..Default::default()
            }),
        }
    }

    fn pods(t: &PeerTable) -> Vec<String> {
        t.iter()
            .map(|p| format!("{}={}", p.pod, p.ips[0]))
            .collect()
    }

    #[test]
    fn relist_is_atomic_and_drops_stale_entries() {
        let mut ix = RelistBuffer::default();
        let mut t = PeerTable::default();
        assert_eq!(ix.apply(&mut t, &Event::Init), Applied::Unchanged);
        ix.apply(&mut t, &Event::InitApply(pod("a", "10.0.0.1")));
        ix.apply(&mut t, &Event::InitApply(pod("b", "10.0.0.2")));
        assert!(t.is_empty(), "nothing visible before InitDone");
        assert_eq!(
            ix.apply(&mut t, &Event::InitDone),
            Applied::Relisted { changed: true }
        );
        assert_eq!(pods(&t), ["a=10.0.0.1", "b=10.0.0.2"]);
        assert_eq!(
            ix.apply(&mut t, &Event::Apply(pod("b", "10.0.0.3"))),
            Applied::Changed
        );
        assert_eq!(
            ix.apply(&mut t, &Event::Apply(pod("b", "10.0.0.3"))),
            Applied::Unchanged
        );

        // Re-list after 410: "a" was deleted meanwhile; while the new list
        // is buffered the old table stays whole.
        ix.apply(&mut t, &Event::Init);
        ix.apply(&mut t, &Event::InitApply(pod("b", "10.0.0.3")));
        assert_eq!(pods(&t), ["a=10.0.0.1", "b=10.0.0.3"]);
        ix.apply(&mut t, &Event::InitDone);
        assert_eq!(pods(&t), ["b=10.0.0.3"]);
        assert_eq!(
            ix.apply(&mut t, &Event::Delete(pod("b", "10.0.0.3"))),
            Applied::Changed
        );
        assert!(t.is_empty() && t.is_synced());
    }
}
