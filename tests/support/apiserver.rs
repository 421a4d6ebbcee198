//! An in-process stand-in for kube-apiserver, serving Pods and apps/v1
//! StatefulSets, that the real kube-rs client talks to over plain HTTP on
//! loopback.
//!
//! What it reproduces, because the daemon's correctness depends on it:
//! - LIST `/api/v1/pods`, `/api/v1/namespaces/{ns}/pods` and the same
//!   under `/apis/apps/v1/.../statefulsets`, with
//!   `metadata.resourceVersion`, `labelSelector`, `fieldSelector`
//!   (`metadata.name` and `metadata.namespace`, as every kind supports),
//!   `limit`/`continue` paging over a consistent snapshot;
//! - WATCH (`?watch=true`) as a chunked stream of newline-delimited
//!   `WatchEvent` JSON: ADDED/MODIFIED/DELETED/BOOKMARK and ERROR (410
//!   Expired), replaying history after the requested resourceVersion, with
//!   label changes turned into ADDED/DELETED as the real watch cache does;
//! - RBAC `resourceNames` on StatefulSets: when restricted, a LIST or
//!   WATCH is allowed only with `fieldSelector=metadata.name=<allowed>`,
//!   as kube-apiserver authorizes it; anything else is 403;
//! - one resourceVersion sequence shared by every kind, as etcd's;
//! - faults: 403 Forbidden with an RBAC `Status`, watch streams cut
//!   mid-way, history compaction (410), and the whole server down
//!   (connections refused) and back on the same address.
//!
//! Every body is built by serialising k8s-openapi types, so the JSON is the
//! wire format the daemon meets in a cluster.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State as AxState};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    Container, Pod, PodCondition, PodIP, PodSpec, PodStatus, PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ListMeta, ManagedFieldsEntry, ObjectMeta, Status, StatusDetails, Time,
    WatchEvent,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// List snapshots kept for `continue` tokens; older tokens get 410.
const PAGE_SNAPSHOTS_KEPT: usize = 16;

type Key = (String, String);

/// What a watch stream task receives.
enum Frame {
    /// One JSON line (a serialized `WatchEvent`), newline included.
    Line(Bytes),
    /// Send this line, then end the stream cleanly.
    Last(Bytes),
    /// Cut the connection without finishing the chunked body.
    Cut,
}

/// What a LIST or WATCH asked for: namespace, labels, fields.
#[derive(Clone)]
struct Scope {
    namespace: Option<String>,
    labels: Selector,
    fields: FieldSelector,
}

impl Scope {
    fn matches(&self, meta: &ObjectMeta) -> bool {
        self.namespace
            .as_ref()
            .is_none_or(|n| meta.namespace.as_ref() == Some(n))
            && self.labels.matches_meta(meta)
            && self.fields.matches(meta)
    }
}

struct Watcher {
    scope: Scope,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Frame>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Added,
    Modified,
    Deleted,
}

struct HistoryEntry<K> {
    rv: u64,
    kind: Kind,
    /// The object before the change (None for a creation).
    old: Option<K>,
    /// The object after the change (for DELETED: the last state, with the
    /// deletion's resourceVersion, as the real server sends it).
    new: K,
}

/// Every object of one kind, with its change history and open watches.
struct Collection<K> {
    objects: BTreeMap<Key, K>,
    history: Vec<HistoryEntry<K>>,
    watchers: Vec<Watcher>,
    /// Snapshots behind outstanding `continue` tokens, by resourceVersion.
    snapshots: BTreeMap<u64, Arc<BTreeMap<Key, K>>>,
}

impl<K> Default for Collection<K> {
    fn default() -> Self {
        Collection {
            objects: BTreeMap::new(),
            history: Vec::new(),
            watchers: Vec::new(),
            snapshots: BTreeMap::new(),
        }
    }
}

impl<K> Collection<K> {
    /// Send `frame` to every open watch and forget them.
    fn end_watches(&mut self, frame: impl Fn() -> Frame) {
        for w in self.watchers.drain(..) {
            let _ = w.tx.send(frame());
        }
    }

    fn open_watches(&mut self) -> usize {
        self.watchers.retain(|w| !w.tx.is_closed());
        self.watchers.len()
    }
}

/// A kind this server stores: its collection inside [`Inner`], and what
/// an RBAC message calls it.
trait Stored:
    k8s_openapi::Resource
    + k8s_openapi::ListableResource
    + k8s_openapi::Metadata<Ty = ObjectMeta>
    + serde::Serialize
    + Clone
    + Default
    + Send
    + 'static
{
    fn collection(inner: &mut Inner) -> &mut Collection<Self>;

    /// What kube-apiserver fills in on create (API defaulting).
    fn set_defaults(&mut self) {}
}

impl Stored for Pod {
    fn collection(inner: &mut Inner) -> &mut Collection<Pod> {
        &mut inner.pods
    }
}

impl Stored for StatefulSet {
    fn collection(inner: &mut Inner) -> &mut Collection<StatefulSet> {
        &mut inner.statefulsets
    }

    fn set_defaults(&mut self) {
        let spec = &mut self.spec;
        spec.replicas.get_or_insert(1);
        spec.pod_management_policy
            .get_or_insert_with(|| "OrderedReady".into());
        spec.revision_history_limit.get_or_insert(10);
    }
}

struct Inner {
    pods: Collection<Pod>,
    statefulsets: Collection<StatefulSet>,
    rv: u64,
    /// Watches from a resourceVersion below this get 410 Expired.
    oldest_rv: u64,
    forbidden: bool,
    /// RBAC `resourceNames` on statefulsets: Some(names) allows LIST and
    /// WATCH only with `fieldSelector=metadata.name=<one of names>`.
    statefulset_names: Option<Vec<String>>,
    next_uid: u64,
}

impl Inner {
    fn each_collection(&mut self, mut f: impl FnMut(&mut dyn ErasedCollection)) {
        f(&mut self.pods);
        f(&mut self.statefulsets);
    }
}

/// What the server does to all kinds at once (faults, compaction).
trait ErasedCollection {
    fn end_watches_with(&mut self, frame: &dyn Fn() -> Frame);
    fn compact(&mut self);
    fn close_all(&mut self);
    fn open(&mut self) -> usize;
    fn bookmark_all(&mut self, rv: u64);
}

impl<K: Stored> ErasedCollection for Collection<K> {
    fn end_watches_with(&mut self, frame: &dyn Fn() -> Frame) {
        self.end_watches(frame);
    }
    fn compact(&mut self) {
        self.history.clear();
        self.snapshots.clear();
    }
    fn close_all(&mut self) {
        self.watchers.clear();
    }
    fn open(&mut self) -> usize {
        self.open_watches()
    }
    fn bookmark_all(&mut self, rv: u64) {
        let line = bookmark_line::<K>(rv);
        for w in self.watchers.iter().filter(|w| w.bookmarks) {
            let _ = w.tx.send(Frame::Line(line.clone()));
        }
    }
}

struct Shared {
    inner: Mutex<Inner>,
    lists: AtomicUsize,
    watches: AtomicUsize,
    /// LIST and WATCH requests for statefulsets (refused ones included).
    statefulset_requests: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock must not hide the
        // real failure behind a PoisonError.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The listening side: the accept loop and every connection it spawned, so
/// `set_unavailable` can drop all of them at once.
struct Net {
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Net {
    /// Stop listening and cut every open connection.
    fn close(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            c.abort();
        }
    }
}

/// A kube-apiserver stand-in; see the module docs.
pub struct TestApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    net: Mutex<Net>,
    runtime: tokio::runtime::Handle,
}

impl TestApiServer {
    /// Listen on `addr` (port 0 picks a free port) and serve until dropped.
    pub async fn start(addr: SocketAddr) -> std::io::Result<TestApiServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                pods: Collection::default(),
                statefulsets: Collection::default(),
                // Real clusters never start at 0, and "0" means "any" to
                // clients: start somewhere recognisable instead.
                rv: 1000,
                oldest_rv: 1000,
                forbidden: false,
                statefulset_names: None,
                next_uid: 1,
            }),
            lists: AtomicUsize::new(0),
            watches: AtomicUsize::new(0),
            statefulset_requests: AtomicUsize::new(0),
        });
        let conns = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn(accept_loop(listener, shared.clone(), conns.clone()));
        Ok(TestApiServer {
            addr,
            shared,
            net: Mutex::new(Net {
                accept: Some(accept),
                conns,
            }),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig whose current context points at this server, with
    /// `namespace` as the context's default namespace.
    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) -> std::io::Result<()> {
        self.write_kubeconfig_for(path, namespace, &self.url())
    }

    /// As [`TestApiServer::write_kubeconfig`] with another server URL: for
    /// a server bound to 0.0.0.0 and reached from a network namespace at
    /// the bridge's address.
    pub fn write_kubeconfig_for(
        &self,
        path: &Path,
        namespace: &str,
        server_url: &str,
    ) -> std::io::Result<()> {
        let yaml = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: test\n  \
               cluster:\n    \
                 server: {url}\n\
             users:\n\
             - name: test\n  \
               user:\n    \
                 token: test-token\n\
             contexts:\n\
             - name: test\n  \
               context:\n    \
                 cluster: test\n    \
                 user: test\n    \
                 namespace: {namespace}\n\
             current-context: test\n",
            url = server_url,
        );
        std::fs::write(path, yaml)
    }

    /// Create or replace a pod (ADDED or MODIFIED to watchers). The server
    /// assigns resourceVersion, and uid/creationTimestamp when missing.
    pub fn upsert_pod(&self, pod: Pod) {
        self.upsert(pod);
    }

    /// Delete a pod (DELETED to watchers); unknown pods are ignored.
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        self.delete::<Pod>(namespace, name);
    }

    /// Create or replace a StatefulSet, with the API's defaults filled in
    /// (`spec.replicas` 1 when absent), as [`TestApiServer::upsert_pod`].
    pub fn upsert_statefulset(&self, sts: StatefulSet) {
        self.upsert(sts);
    }

    /// Delete a StatefulSet; unknown ones are ignored.
    pub fn delete_statefulset(&self, namespace: &str, name: &str) {
        self.delete::<StatefulSet>(namespace, name);
    }

    /// RBAC with `resourceNames` on statefulsets: `Some(names)` forbids a
    /// LIST or WATCH of statefulsets unless it carries
    /// `fieldSelector=metadata.name=N` for one of `names`; `None` allows
    /// every request (a role without resourceNames).
    pub fn restrict_statefulsets_to(&self, names: Option<&[&str]>) {
        self.shared.lock().statefulset_names =
            names.map(|n| n.iter().map(|s| s.to_string()).collect());
    }

    fn upsert<K: Stored>(&self, mut obj: K) {
        let mut g = self.shared.lock();
        obj.set_defaults();
        let meta = obj.metadata_mut();
        let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let name = meta.name.clone().unwrap_or_default();
        assert!(
            !name.is_empty(),
            "upsert of a {} without metadata.name",
            K::KIND
        );
        meta.namespace = Some(ns.clone());
        g.rv += 1;
        let rv = g.rv;
        let mut next_uid = g.next_uid;
        let key = (ns, name);
        let coll = K::collection(&mut g);
        let old = coll.objects.get(&key).cloned();
        let meta = obj.metadata_mut();
        meta.resource_version = Some(rv.to_string());
        if let Some(o) = &old {
            meta.uid = o.metadata().uid.clone();
            meta.creation_timestamp = o.metadata().creation_timestamp.clone();
        }
        if meta.uid.is_none() {
            meta.uid = Some(format!("00000000-0000-4000-8000-{next_uid:012x}"));
            next_uid += 1;
        }
        if meta.creation_timestamp.is_none() {
            meta.creation_timestamp = Some(Time(now()));
        }
        let kind = if old.is_some() {
            Kind::Modified
        } else {
            Kind::Added
        };
        coll.objects.insert(key, obj.clone());
        publish(
            coll,
            HistoryEntry {
                rv,
                kind,
                old,
                new: obj,
            },
        );
        g.next_uid = next_uid;
    }

    fn delete<K: Stored>(&self, namespace: &str, name: &str) {
        let mut g = self.shared.lock();
        let key = (namespace.to_string(), name.to_string());
        if !K::collection(&mut g).objects.contains_key(&key) {
            return;
        }
        g.rv += 1;
        let rv = g.rv;
        let coll = K::collection(&mut g);
        let Some(mut obj) = coll.objects.remove(&key) else {
            return;
        };
        let old = obj.clone();
        obj.metadata_mut().resource_version = Some(rv.to_string());
        publish(
            coll,
            HistoryEntry {
                rv,
                kind: Kind::Deleted,
                old: Some(old),
                new: obj,
            },
        );
    }

    /// While on, LIST and WATCH answer 403 with an RBAC-style Status. Open
    /// watches are cut, as losing the permission does in a real cluster
    /// once the client reconnects.
    pub fn set_forbidden(&self, on: bool) {
        let mut g = self.shared.lock();
        g.forbidden = on;
        if on {
            g.each_collection(|c| c.end_watches_with(&|| Frame::Cut));
        }
    }

    /// On: close the listening socket and every open connection, so
    /// clients get "connection refused". Off: listen again on the same
    /// address.
    pub fn set_unavailable(&self, on: bool) {
        let mut net = self.net.lock().unwrap_or_else(|e| e.into_inner());
        if on {
            net.close();
            self.shared.lock().each_collection(|c| c.close_all());
        } else if net.accept.is_none() {
            let _enter = self.runtime.enter();
            // std sets SO_REUSEADDR on Unix, so TIME_WAIT leftovers from
            // the connections just aborted do not block the re-bind.
            let std_listener = std::net::TcpListener::bind(self.addr)
                .unwrap_or_else(|e| panic!("test API server cannot re-bind {}: {e}", self.addr));
            std_listener
                .set_nonblocking(true)
                .expect("set_nonblocking on the re-bound listener");
            let listener =
                TcpListener::from_std(std_listener).expect("register the re-bound listener");
            net.accept = Some(self.runtime.spawn(accept_loop(
                listener,
                self.shared.clone(),
                net.conns.clone(),
            )));
        }
    }

    /// Cut every open watch stream mid-body (no terminating chunk).
    pub fn drop_watches(&self) {
        self.shared
            .lock()
            .each_collection(|c| c.end_watches_with(&|| Frame::Cut));
    }

    /// Compact the history: open watches get `ERROR` 410 Expired and end,
    /// and any later watch from a resourceVersion issued before now gets
    /// 410 too, so clients must re-list.
    pub fn expire_watches(&self) {
        let mut g = self.shared.lock();
        // Bump the revision (as unrelated etcd writes do) so that even a
        // client that has seen the latest event holds a compacted version.
        g.rv += 1;
        let current = g.rv;
        g.oldest_rv = current;
        let line = expired_line(current - 1, current);
        g.each_collection(|c| {
            c.compact();
            c.end_watches_with(&|| Frame::Last(line.clone()));
        });
    }

    /// Send a BOOKMARK at the current resourceVersion to every open watch
    /// that asked for bookmarks.
    pub fn send_bookmarks(&self) {
        let mut g = self.shared.lock();
        let rv = g.rv;
        g.each_collection(|c| c.bookmark_all(rv));
    }

    /// WATCH requests answered so far, of every kind (including refused
    /// ones).
    pub fn watch_count(&self) -> usize {
        self.shared.watches.load(Ordering::SeqCst)
    }

    /// LIST requests answered so far, of every kind (each page counts).
    pub fn list_count(&self) -> usize {
        self.shared.lists.load(Ordering::SeqCst)
    }

    /// LIST and WATCH requests for statefulsets so far (refused included).
    pub fn statefulset_requests(&self) -> usize {
        self.shared.statefulset_requests.load(Ordering::SeqCst)
    }

    /// Pod watch streams currently open.
    pub fn open_watches(&self) -> usize {
        self.shared.lock().pods.open_watches()
    }

    /// StatefulSet watch streams currently open.
    pub fn open_statefulset_watches(&self) -> usize {
        self.shared.lock().statefulsets.open_watches()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        self.net.lock().unwrap_or_else(|e| e.into_inner()).close();
    }
}

/// A Pod as the kubelet would report it: `ips` become status.podIP(s)
/// (empty: Pending, no IP), `ready` sets the Ready condition. Carries a
/// managedFields entry as real objects do. Set spec.hostname/subdomain on
/// the result when needed.
pub fn pod(namespace: &str, name: &str, ips: &[&str], ready: bool, labels: &[(&str, &str)]) -> Pod {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let status_word = if ready { "True" } else { "False" };
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: (!labels.is_empty()).then_some(labels),
            managed_fields: Some(vec![managed_by("v1", "kubelet", "Update", Some("status"))]),
            ..Default::default()
        },
        spec: Some(app_pod_spec()),
        status: Some(PodStatus {
            phase: Some(if ips.is_empty() { "Pending" } else { "Running" }.into()),
            pod_ip: ips.first().map(|s| s.to_string()),
            pod_ips: (!ips.is_empty())
                .then(|| ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect()),
            host_ip: (!ips.is_empty()).then(|| "10.0.0.1".to_string()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: status_word.into(),
                last_transition_time: Some(Time(now())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// A StatefulSet's pod as the API serves it: [`pod`] with hostname = pod
/// name and subdomain = the headless service, which is what makes kube-epmd
/// publish `NAME.SUBDOMAIN...` names for it.
pub fn sts_pod(
    namespace: &str,
    name: &str,
    subdomain: &str,
    ips: &[&str],
    ready: bool,
    labels: &[(&str, &str)],
) -> Pod {
    let mut p = pod(namespace, name, ips, ready, labels);
    if let Some(spec) = p.spec.as_mut() {
        spec.hostname = Some(name.into());
        spec.subdomain = Some(subdomain.into());
    }
    p
}

/// A distinct IPv4 address for pod number `i` (10.0.x.y), for tables of
/// thousands of pods.
pub fn indexed_ip(i: usize) -> String {
    format!("10.0.{}.{}", i / 250, i % 250 + 1)
}

/// The one-container pod spec of every test pod and pod template.
fn app_pod_spec() -> PodSpec {
    PodSpec {
        containers: vec![Container {
            name: "app".into(),
            image: Some("ejabberd:test".into()),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A managedFields entry as the API server records a write: who wrote
/// (`manager`), how (`operation`, Update or Apply) and to which part.
fn managed_by(
    api_version: &str,
    manager: &str,
    operation: &str,
    subresource: Option<&str>,
) -> ManagedFieldsEntry {
    ManagedFieldsEntry {
        api_version: Some(api_version.into()),
        fields_type: Some("FieldsV1".into()),
        manager: Some(manager.into()),
        operation: Some(operation.into()),
        subresource: subresource.map(Into::into),
        time: Some(Time(now())),
        ..Default::default()
    }
}

/// A StatefulSet as the deploy writes it (pods labelled `app=<name>`,
/// headless service `service_name`), with `replicas` in its spec (None:
/// left to the API's default of 1) and a status as the controller reports
/// it once every replica is up.
pub fn statefulset(
    namespace: &str,
    name: &str,
    service_name: &str,
    replicas: Option<i32>,
) -> StatefulSet {
    let labels: BTreeMap<String, String> = [("app".to_string(), name.to_string())].into();
    let n = replicas.unwrap_or(1);
    StatefulSet {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            generation: Some(1),
            managed_fields: Some(vec![managed_by("apps/v1", "kubectl", "Apply", None)]),
            ..Default::default()
        },
        spec: StatefulSetSpec {
            replicas,
            service_name: Some(service_name.into()),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(app_pod_spec()),
            },
            ..Default::default()
        },
        status: Some(StatefulSetStatus {
            observed_generation: Some(1),
            replicas: n,
            ready_replicas: Some(n),
            current_replicas: Some(n),
            updated_replicas: Some(n),
            available_replicas: Some(n),
            ..Default::default()
        }),
    }
}

fn now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

/// Record a change and tell every open watch that sees it.
fn publish<K: Stored>(c: &mut Collection<K>, entry: HistoryEntry<K>) {
    c.watchers.retain(|w| !w.tx.is_closed());
    for w in &c.watchers {
        if let Some(line) = event_line_for(&entry, &w.scope) {
            let _ = w.tx.send(Frame::Line(line));
        }
    }
    c.history.push(entry);
}

/// The event a watcher with this scope sees for `e`, if any: as in the
/// real watch cache, an object entering the selector is ADDED, one leaving
/// it is DELETED.
fn event_line_for<K: Stored>(e: &HistoryEntry<K>, scope: &Scope) -> Option<Bytes> {
    let was = e.old.as_ref().is_some_and(|o| scope.matches(o.metadata()));
    let is = scope.matches(e.new.metadata());
    let ev = match (e.kind, was, is) {
        (Kind::Deleted, true, _) => WatchEvent::Deleted(e.new.clone()),
        (Kind::Deleted, false, _) => return None,
        (_, false, true) => WatchEvent::Added(e.new.clone()),
        (_, true, true) => WatchEvent::Modified(e.new.clone()),
        (_, true, false) => WatchEvent::Deleted(e.new.clone()),
        (_, false, false) => return None,
    };
    Some(json_line(&ev))
}

fn json_line<T: serde::Serialize>(v: &T) -> Bytes {
    let mut out = serde_json::to_vec(v).expect("k8s-openapi types serialize");
    out.push(b'\n');
    Bytes::from(out)
}

/// A BOOKMARK as kube-apiserver sends it: an object with only kind,
/// apiVersion and metadata.resourceVersion.
fn bookmark_line<K: Stored>(rv: u64) -> Bytes {
    let mut object = K::default();
    *object.metadata_mut() = ObjectMeta {
        resource_version: Some(rv.to_string()),
        ..Default::default()
    };
    json_line(&serde_json::json!({ "type": "BOOKMARK", "object": object }))
}

fn expired_line(requested: u64, oldest: u64) -> Bytes {
    let status = Status {
        code: Some(410),
        message: Some(format!("too old resource version: {requested} ({oldest})")),
        metadata: ListMeta::default(),
        reason: Some("Expired".into()),
        status: Some("Failure".into()),
        details: None,
    };
    json_line(&WatchEvent::<Pod>::ErrorStatus(status))
}

fn status_response(
    code: StatusCode,
    reason: &str,
    message: String,
    details: Option<StatusDetails>,
) -> Response {
    let status = Status {
        code: Some(code.as_u16().into()),
        message: Some(message),
        metadata: ListMeta::default(),
        reason: Some(reason.into()),
        status: Some("Failure".into()),
        details,
    };
    let body = serde_json::to_vec(&status).expect("Status serializes");
    (
        code,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    let app = Router::new()
        .route("/api/v1/pods", get(all_of::<Pod>))
        .route("/api/v1/namespaces/{ns}/pods", get(in_namespace::<Pod>))
        .route("/apis/apps/v1/statefulsets", get(all_of::<StatefulSet>))
        .route(
            "/apis/apps/v1/namespaces/{ns}/statefulsets",
            get(in_namespace::<StatefulSet>),
        )
        .fallback(not_found)
        .with_state(shared);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        let task = tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
        let mut c = conns.lock().unwrap_or_else(|e| e.into_inner());
        c.retain(|h| !h.is_finished());
        c.push(task);
    }
}

async fn not_found() -> Response {
    status_response(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource".into(),
        None,
    )
}

async fn all_of<K: Stored>(
    AxState(shared): AxState<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    serve::<K>(shared, None, q).await
}

async fn in_namespace<K: Stored>(
    AxState(shared): AxState<Arc<Shared>>,
    UrlPath(ns): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    serve::<K>(shared, Some(ns), q).await
}

/// The 403 kube-apiserver's RBAC authorizer answers, with its wording.
fn forbidden<K: Stored>(verb: &str, ns: Option<&str>) -> Response {
    let resource = K::URL_PATH_SEGMENT;
    let qualified = if K::GROUP.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{}", K::GROUP)
    };
    let scope = match ns {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".into(),
    };
    status_response(
        StatusCode::FORBIDDEN,
        "Forbidden",
        format!(
            "{qualified} is forbidden: User \"system:serviceaccount:test:kube-epmd\" \
             cannot {verb} resource \"{resource}\" in API group \"{group}\" {scope}",
            group = K::GROUP
        ),
        Some(StatusDetails {
            group: (!K::GROUP.is_empty()).then(|| K::GROUP.to_string()),
            kind: Some(resource.into()),
            ..Default::default()
        }),
    )
}

async fn serve<K: Stored>(
    shared: Arc<Shared>,
    ns: Option<String>,
    q: HashMap<String, String>,
) -> Response {
    let watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = if watch { "watch" } else { "list" };
    if watch {
        shared.watches.fetch_add(1, Ordering::SeqCst);
    } else {
        shared.lists.fetch_add(1, Ordering::SeqCst);
    }
    if K::URL_PATH_SEGMENT == "statefulsets" {
        shared.statefulset_requests.fetch_add(1, Ordering::SeqCst);
    }
    let fields =
        match FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or("")) {
            Ok(f) => f,
            Err(e) => return bad_request(e),
        };
    {
        let g = shared.lock();
        if g.forbidden {
            return forbidden::<K>(verb, ns.as_deref());
        }
        // RBAC authorizes a LIST/WATCH against resourceNames only through
        // a single `metadata.name=` field selector.
        if K::URL_PATH_SEGMENT == "statefulsets"
            && let Some(names) = &g.statefulset_names
            && !fields
                .single_name()
                .is_some_and(|n| names.iter().any(|a| a == n))
        {
            return forbidden::<K>(verb, ns.as_deref());
        }
    }
    let labels = match Selector::parse(q.get("labelSelector").map(String::as_str).unwrap_or("")) {
        Ok(s) => s,
        Err(e) => return bad_request(format!("unable to parse requirement: {e}")),
    };
    let scope = Scope {
        namespace: ns,
        labels,
        fields,
    };
    if watch {
        start_watch::<K>(&shared, scope, &q)
    } else {
        list::<K>(&shared, scope, &q)
    }
}

fn bad_request(message: String) -> Response {
    status_response(StatusCode::BAD_REQUEST, "BadRequest", message, None)
}

fn list<K: Stored>(shared: &Shared, scope: Scope, q: &HashMap<String, String>) -> Response {
    let mut g = shared.lock();
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => None,
        Some(Ok(0)) => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return bad_request("limit must be a non-negative integer".into()),
    };
    let current = g.rv;
    let coll = K::collection(&mut g);
    // A continue token names the snapshot's resourceVersion and the last
    // key served: "<rv>/<namespace>/<name>".
    let (rv, snapshot, after) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let mut parts = token.splitn(3, '/');
            let (Some(rv), Some(kns), Some(kname)) = (parts.next(), parts.next(), parts.next())
            else {
                return bad_request(format!("continue key is not valid: {token:?}"));
            };
            let Ok(rv) = rv.parse::<u64>() else {
                return bad_request(format!("continue key is not valid: {token:?}"));
            };
            let Some(snap) = coll.snapshots.get(&rv).cloned() else {
                return status_response(
                    StatusCode::GONE,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent \
                     list result. You can start a new list without the continue parameter."
                        .into(),
                    None,
                );
            };
            (rv, snap, Some((kns.to_string(), kname.to_string())))
        }
        None => {
            let snap = match coll.snapshots.get(&current) {
                Some(s) => s.clone(),
                None => Arc::new(coll.objects.clone()),
            };
            (current, snap, None)
        }
    };
    let mut items = Vec::new();
    let mut last_key = None;
    let mut more = false;
    let range = match &after {
        Some(k) => {
            snapshot.range::<Key, _>((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded))
        }
        None => snapshot.range::<Key, _>(..),
    };
    for (key, obj) in range {
        if !scope.matches(obj.metadata()) {
            continue;
        }
        if limit.is_some_and(|l| items.len() >= l) {
            more = true;
            break;
        }
        items.push(obj.clone());
        last_key = Some(key.clone());
    }
    let continue_ = match (more, last_key) {
        (true, Some((kns, kname))) => {
            coll.snapshots.insert(rv, snapshot.clone());
            while coll.snapshots.len() > PAGE_SNAPSHOTS_KEPT {
                coll.snapshots.pop_first();
            }
            Some(format!("{rv}/{kns}/{kname}"))
        }
        _ => None,
    };
    drop(g);
    let list = k8s_openapi::List::<K> {
        items,
        metadata: ListMeta {
            resource_version: Some(rv.to_string()),
            continue_,
            ..Default::default()
        },
    };
    let mut value = serde_json::to_value(&list).expect("lists serialize");
    // kube-apiserver does not repeat kind/apiVersion on list items.
    if let Some(items) = value.get_mut("items").and_then(|i| i.as_array_mut()) {
        for item in items {
            if let Some(obj) = item.as_object_mut() {
                obj.remove("kind");
                obj.remove("apiVersion");
            }
        }
    }
    let body = serde_json::to_vec(&value).expect("JSON value serializes");
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn start_watch<K: Stored>(shared: &Shared, scope: Scope, q: &HashMap<String, String>) -> Response {
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = match q.get("timeoutSeconds").map(|t| t.parse::<u64>()) {
        None => None,
        Some(Ok(t)) => Some(Duration::from_secs(t)),
        Some(Err(_)) => return bad_request("timeoutSeconds must be an integer".into()),
    };
    let from = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => match rv.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => return bad_request(format!("invalid resource version: {rv:?}")),
        },
    };
    let (tx, rx) = mpsc::unbounded_channel();
    {
        let mut g = shared.lock();
        let (current, oldest) = (g.rv, g.oldest_rv);
        let coll = K::collection(&mut g);
        match from {
            // No version: the current state as synthetic ADDED events.
            None => {
                for obj in coll.objects.values() {
                    if scope.matches(obj.metadata()) {
                        let _ = tx.send(Frame::Line(json_line(&WatchEvent::Added(obj.clone()))));
                    }
                }
            }
            Some(rv) if rv < oldest => {
                // As kube-apiserver: a 200 stream carrying one ERROR event.
                let _ = tx.send(Frame::Last(expired_line(rv, oldest)));
                return stream_response(rx, None);
            }
            Some(rv) if rv > current => {
                return status_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "Timeout",
                    format!("Too large resource version: {rv}, current: {current}"),
                    None,
                );
            }
            Some(rv) => {
                for e in coll.history.iter().filter(|e| e.rv > rv) {
                    if let Some(line) = event_line_for(e, &scope) {
                        let _ = tx.send(Frame::Line(line));
                    }
                }
            }
        }
        coll.watchers.push(Watcher {
            scope,
            bookmarks,
            tx,
        });
    }
    stream_response(rx, timeout)
}

fn stream_response(rx: mpsc::UnboundedReceiver<Frame>, timeout: Option<Duration>) -> Response {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    // State: the receiver and whether the previous item was the last.
    let stream = futures::stream::unfold((rx, false), move |(mut rx, done)| async move {
        if done {
            return None;
        }
        let frame = match deadline {
            // timeoutSeconds elapsed: end cleanly, as the server does.
            Some(d) => tokio::time::timeout_at(d, rx.recv()).await.ok().flatten(),
            None => rx.recv().await,
        };
        match frame? {
            Frame::Line(b) => Some((Ok(b), (rx, false))),
            Frame::Last(b) => Some((Ok(b), (rx, true))),
            // An error from the body makes hyper abort the connection
            // without the terminating chunk: a cut stream.
            Frame::Cut => Some((
                Err(std::io::Error::other("watch stream cut by the test")),
                (rx, true),
            )),
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A field selector as every kind supports it: `metadata.name` and
/// `metadata.namespace` with `=`, `==` or `!=`, comma-separated (ANDed).
/// Other fields are refused as kube-apiserver refuses an unknown label.
#[derive(Debug, Clone, Default)]
struct FieldSelector(Vec<(FieldKey, bool, String)>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldKey {
    Name,
    Namespace,
}

impl FieldSelector {
    fn parse(s: &str) -> Result<FieldSelector, String> {
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                ));
            };
            let key = match field.trim() {
                "metadata.name" => FieldKey::Name,
                "metadata.namespace" => FieldKey::Namespace,
                other => return Err(format!("field label not supported: {other}")),
            };
            reqs.push((key, equal, value.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    fn matches(&self, meta: &ObjectMeta) -> bool {
        self.0.iter().all(|(key, equal, value)| {
            let actual = match key {
                FieldKey::Name => meta.name.as_deref(),
                FieldKey::Namespace => meta.namespace.as_deref(),
            };
            (actual == Some(value.as_str())) == *equal
        })
    }

    /// The name if this selector is exactly one `metadata.name=` (what the
    /// RBAC authorizer accepts in place of a GET by name).
    fn single_name(&self) -> Option<&str> {
        match self.0.as_slice() {
            [(FieldKey::Name, true, name)] => Some(name),
            _ => None,
        }
    }
}

/// Selector requirements as kube-apiserver parses them (equality and set
/// based): `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`.
#[derive(Debug, Clone, Default)]
pub struct Selector(Vec<Req>);

#[derive(Debug, Clone)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl Selector {
    pub fn parse(s: &str) -> Result<Selector, String> {
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let p = part.trim();
            if p.is_empty() {
                continue;
            }
            let req = if let Some(k) = p.strip_prefix('!') {
                Req::NotExists(key(k)?)
            } else if let Some((k, v)) = p.split_once("!=") {
                Req::Ne(key(k)?, v.trim().to_string())
            } else if let Some((k, v)) = p.split_once("==") {
                Req::Eq(key(k)?, v.trim().to_string())
            } else if let Some((k, v)) = p.split_once('=') {
                Req::Eq(key(k)?, v.trim().to_string())
            } else if let Some((k, set)) = p.split_once(" notin ") {
                Req::NotIn(key(k)?, set_values(set)?)
            } else if let Some((k, set)) = p.split_once(" in ") {
                Req::In(key(k)?, set_values(set)?)
            } else {
                Req::Exists(key(p)?)
            };
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    pub fn matches(&self, pod: &Pod) -> bool {
        self.matches_meta(&pod.metadata)
    }

    pub fn matches_meta(&self, meta: &ObjectMeta) -> bool {
        let empty = BTreeMap::new();
        let labels = meta.labels.as_ref().unwrap_or(&empty);
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => labels.get(k) == Some(v),
            Req::Ne(k, v) => labels.get(k) != Some(v),
            Req::Exists(k) => labels.contains_key(k),
            Req::NotExists(k) => !labels.contains_key(k),
            Req::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Req::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
        })
    }
}

fn key(k: &str) -> Result<String, String> {
    let k = k.trim();
    if k.is_empty() || k.contains(|c: char| c.is_whitespace() || "()!=,".contains(c)) {
        Err(format!("invalid label key {k:?}"))
    } else {
        Ok(k.to_string())
    }
}

fn set_values(set: &str) -> Result<Vec<String>, String> {
    let inner = set
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("expected (v1,v2) after in/notin, got {set:?}"))?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
}

/// Split on commas that are not inside a `( … )` value set.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}
