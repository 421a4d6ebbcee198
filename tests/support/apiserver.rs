//! An in-process stand-in for kube-apiserver, serving Pods only, that the
//! real kube-rs client talks to over plain HTTP on loopback.
//!
//! What it reproduces, because the daemon's correctness depends on it:
//! - LIST `/api/v1/pods` and `/api/v1/namespaces/{ns}/pods` with
//!   `metadata.resourceVersion`, `labelSelector`, `limit`/`continue` paging
//!   over a consistent snapshot;
//! - WATCH (`?watch=true`) as a chunked stream of newline-delimited
//!   `WatchEvent` JSON: ADDED/MODIFIED/DELETED/BOOKMARK and ERROR (410
//!   Expired), replaying history after the requested resourceVersion, with
//!   label changes turned into ADDED/DELETED as the real watch cache does;
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
use k8s_openapi::api::core::v1::{Container, Pod, PodCondition, PodIP, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    ListMeta, ManagedFieldsEntry, ObjectMeta, Status, StatusDetails, Time, WatchEvent,
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

struct Watcher {
    namespace: Option<String>,
    selector: Selector,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Frame>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Added,
    Modified,
    Deleted,
}

struct HistoryEntry {
    rv: u64,
    kind: Kind,
    /// The object before the change (None for a creation).
    old: Option<Pod>,
    /// The object after the change (for DELETED: the last state, with the
    /// deletion's resourceVersion, as the real server sends it).
    new: Pod,
}

struct Inner {
    pods: BTreeMap<Key, Pod>,
    rv: u64,
    /// Watches from a resourceVersion below this get 410 Expired.
    oldest_rv: u64,
    history: Vec<HistoryEntry>,
    watchers: Vec<Watcher>,
    /// Snapshots behind outstanding `continue` tokens, by resourceVersion.
    snapshots: BTreeMap<u64, Arc<BTreeMap<Key, Pod>>>,
    forbidden: bool,
    next_uid: u64,
}

struct Shared {
    inner: Mutex<Inner>,
    lists: AtomicUsize,
    watches: AtomicUsize,
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
                pods: BTreeMap::new(),
                // Real clusters never start at 0, and "0" means "any" to
                // clients: start somewhere recognisable instead.
                rv: 1000,
                oldest_rv: 1000,
                history: Vec::new(),
                watchers: Vec::new(),
                snapshots: BTreeMap::new(),
                forbidden: false,
                next_uid: 1,
            }),
            lists: AtomicUsize::new(0),
            watches: AtomicUsize::new(0),
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
    pub fn upsert_pod(&self, mut pod: Pod) {
        let mut g = self.shared.lock();
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        assert!(!name.is_empty(), "upsert_pod: pod without metadata.name");
        pod.metadata.namespace = Some(ns.clone());
        g.rv += 1;
        let rv = g.rv;
        pod.metadata.resource_version = Some(rv.to_string());
        let key = (ns, name);
        let old = g.pods.get(&key).cloned();
        if let Some(o) = &old {
            pod.metadata.uid = o.metadata.uid.clone();
            pod.metadata.creation_timestamp = o.metadata.creation_timestamp.clone();
        }
        if pod.metadata.uid.is_none() {
            pod.metadata.uid = Some(format!("00000000-0000-4000-8000-{:012x}", g.next_uid));
            g.next_uid += 1;
        }
        if pod.metadata.creation_timestamp.is_none() {
            pod.metadata.creation_timestamp = Some(Time(now()));
        }
        let kind = if old.is_some() {
            Kind::Modified
        } else {
            Kind::Added
        };
        g.pods.insert(key, pod.clone());
        publish(
            &mut g,
            HistoryEntry {
                rv,
                kind,
                old,
                new: pod,
            },
        );
    }

    /// Delete a pod (DELETED to watchers); unknown pods are ignored.
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        let mut g = self.shared.lock();
        let Some(mut pod) = g.pods.remove(&(namespace.to_string(), name.to_string())) else {
            return;
        };
        g.rv += 1;
        let rv = g.rv;
        let old = pod.clone();
        pod.metadata.resource_version = Some(rv.to_string());
        publish(
            &mut g,
            HistoryEntry {
                rv,
                kind: Kind::Deleted,
                old: Some(old),
                new: pod,
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
            for w in g.watchers.drain(..) {
                let _ = w.tx.send(Frame::Cut);
            }
        }
    }

    /// On: close the listening socket and every open connection, so
    /// clients get "connection refused". Off: listen again on the same
    /// address.
    pub fn set_unavailable(&self, on: bool) {
        let mut net = self.net.lock().unwrap_or_else(|e| e.into_inner());
        if on {
            net.close();
            self.shared.lock().watchers.clear();
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
        let mut g = self.shared.lock();
        for w in g.watchers.drain(..) {
            let _ = w.tx.send(Frame::Cut);
        }
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
        g.history.clear();
        g.snapshots.clear();
        for w in g.watchers.drain(..) {
            let _ = w.tx.send(Frame::Last(expired_line(current - 1, current)));
        }
    }

    /// Send a BOOKMARK at the current resourceVersion to every open watch
    /// that asked for bookmarks.
    pub fn send_bookmarks(&self) {
        let g = self.shared.lock();
        let line = bookmark_line(g.rv);
        for w in g.watchers.iter().filter(|w| w.bookmarks) {
            let _ = w.tx.send(Frame::Line(line.clone()));
        }
    }

    /// WATCH requests answered so far (including refused ones).
    pub fn watch_count(&self) -> usize {
        self.shared.watches.load(Ordering::SeqCst)
    }

    /// LIST requests answered so far (each page counts).
    pub fn list_count(&self) -> usize {
        self.shared.lists.load(Ordering::SeqCst)
    }

    /// Watch streams currently open.
    pub fn open_watches(&self) -> usize {
        let mut g = self.shared.lock();
        g.watchers.retain(|w| !w.tx.is_closed());
        g.watchers.len()
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
            managed_fields: Some(vec![ManagedFieldsEntry {
                api_version: Some("v1".into()),
                fields_type: Some("FieldsV1".into()),
                manager: Some("kubelet".into()),
                operation: Some("Update".into()),
                subresource: Some("status".into()),
                time: Some(Time(now())),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some("ejabberd:test".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
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

fn now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

/// Record a change and tell every open watch that sees it.
fn publish(g: &mut Inner, entry: HistoryEntry) {
    g.watchers.retain(|w| !w.tx.is_closed());
    for w in &g.watchers {
        if let Some(line) = event_line_for(&entry, w.namespace.as_deref(), &w.selector) {
            let _ = w.tx.send(Frame::Line(line));
        }
    }
    g.history.push(entry);
}

/// The event a watcher with this scope sees for `e`, if any: as in the
/// real watch cache, an object entering the selector is ADDED, one leaving
/// it is DELETED.
fn event_line_for(e: &HistoryEntry, ns: Option<&str>, sel: &Selector) -> Option<Bytes> {
    if let Some(ns) = ns
        && e.new.metadata.namespace.as_deref() != Some(ns)
    {
        return None;
    }
    let was = e.old.as_ref().is_some_and(|o| sel.matches(o));
    let is = sel.matches(&e.new);
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
fn bookmark_line(rv: u64) -> Bytes {
    let object = Pod {
        metadata: ObjectMeta {
            resource_version: Some(rv.to_string()),
            ..Default::default()
        },
        spec: None,
        status: None,
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
        .route("/api/v1/pods", get(all_pods))
        .route("/api/v1/namespaces/{ns}/pods", get(ns_pods))
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

async fn all_pods(
    AxState(shared): AxState<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    serve(shared, None, q).await
}

async fn ns_pods(
    AxState(shared): AxState<Arc<Shared>>,
    UrlPath(ns): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    serve(shared, Some(ns), q).await
}

async fn serve(shared: Arc<Shared>, ns: Option<String>, q: HashMap<String, String>) -> Response {
    let watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = if watch { "watch" } else { "list" };
    if watch {
        shared.watches.fetch_add(1, Ordering::SeqCst);
    } else {
        shared.lists.fetch_add(1, Ordering::SeqCst);
    }
    if shared.lock().forbidden {
        let scope = match &ns {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".into(),
        };
        return status_response(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "pods is forbidden: User \"system:serviceaccount:test:kube-epmd\" \
                 cannot {verb} resource \"pods\" in API group \"\" {scope}"
            ),
            Some(StatusDetails {
                kind: Some("pods".into()),
                ..Default::default()
            }),
        );
    }
    if q.get("fieldSelector").is_some_and(|f| !f.is_empty()) {
        return bad_request("fieldSelector is not supported by the test API server".into());
    }
    let selector = match Selector::parse(q.get("labelSelector").map(String::as_str).unwrap_or("")) {
        Ok(s) => s,
        Err(e) => return bad_request(format!("unable to parse requirement: {e}")),
    };
    if watch {
        start_watch(&shared, ns, selector, &q)
    } else {
        list(&shared, ns, selector, &q)
    }
}

fn bad_request(message: String) -> Response {
    status_response(StatusCode::BAD_REQUEST, "BadRequest", message, None)
}

fn list(
    shared: &Shared,
    ns: Option<String>,
    sel: Selector,
    q: &HashMap<String, String>,
) -> Response {
    let mut g = shared.lock();
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => None,
        Some(Ok(0)) => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return bad_request("limit must be a non-negative integer".into()),
    };
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
            let Some(snap) = g.snapshots.get(&rv).cloned() else {
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
            let rv = g.rv;
            let snap = match g.snapshots.get(&rv) {
                Some(s) => s.clone(),
                None => Arc::new(g.pods.clone()),
            };
            (rv, snap, None)
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
    for (key, pod) in range {
        if ns.as_ref().is_some_and(|n| n != &key.0) || !sel.matches(pod) {
            continue;
        }
        if limit.is_some_and(|l| items.len() >= l) {
            more = true;
            break;
        }
        items.push(pod.clone());
        last_key = Some(key.clone());
    }
    let continue_ = match (more, last_key) {
        (true, Some((kns, kname))) => {
            g.snapshots.insert(rv, snapshot.clone());
            while g.snapshots.len() > PAGE_SNAPSHOTS_KEPT {
                g.snapshots.pop_first();
            }
            Some(format!("{rv}/{kns}/{kname}"))
        }
        _ => None,
    };
    drop(g);
    let list = k8s_openapi::List::<Pod> {
        items,
        metadata: ListMeta {
            resource_version: Some(rv.to_string()),
            continue_,
            ..Default::default()
        },
    };
    let mut value = serde_json::to_value(&list).expect("PodList serializes");
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

fn start_watch(
    shared: &Shared,
    ns: Option<String>,
    selector: Selector,
    q: &HashMap<String, String>,
) -> Response {
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
        match from {
            // No version: the current state as synthetic ADDED events.
            None => {
                for pod in g.pods.values() {
                    if ns
                        .as_ref()
                        .is_none_or(|n| pod.metadata.namespace.as_ref() == Some(n))
                        && selector.matches(pod)
                    {
                        let _ = tx.send(Frame::Line(json_line(&WatchEvent::Added(pod.clone()))));
                    }
                }
            }
            Some(rv) if rv < g.oldest_rv => {
                // As kube-apiserver: a 200 stream carrying one ERROR event.
                let _ = tx.send(Frame::Last(expired_line(rv, g.oldest_rv)));
                return stream_response(rx, None);
            }
            Some(rv) if rv > g.rv => {
                return status_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "Timeout",
                    format!("Too large resource version: {rv}, current: {}", g.rv),
                    None,
                );
            }
            Some(rv) => {
                for e in g.history.iter().filter(|e| e.rv > rv) {
                    if let Some(line) = event_line_for(e, ns.as_deref(), &selector) {
                        let _ = tx.send(Frame::Line(line));
                    }
                }
            }
        }
        g.watchers.push(Watcher {
            namespace: ns,
            selector,
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
        let empty = BTreeMap::new();
        let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
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
