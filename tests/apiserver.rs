//! The test API server, driven by the real kube-rs client: if these pass,
//! the daemon's tests exercise kube-rs against kube-apiserver's behaviour
//! rather than against whatever the stand-in happens to do.

mod support;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config};
use support::apiserver::{TestApiServer, pod, statefulset};

const WAIT: Duration = Duration::from_secs(10);

async fn start() -> (TestApiServer, Client, tempfile::TempDir) {
    let server = TestApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    server.write_kubeconfig(&path, "chat").unwrap();
    let kc = Kubeconfig::read_from(&path).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "chat");
    (server, Client::try_from(config).unwrap(), dir)
}

fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect()
}

async fn next_event(
    s: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<Pod>>> + Unpin),
) -> WatchEvent<Pod> {
    tokio::time::timeout(WAIT, s.next())
        .await
        .expect("watch event in time")
        .expect("stream still open")
        .expect("event decodes")
}

#[tokio::test]
async fn list_has_resource_version_and_filters_by_labels() {
    let (server, client, _d) = start().await;
    server.upsert_pod(pod(
        "chat",
        "chat-0",
        &["10.1.0.10"],
        true,
        &[("app", "xmpp"), ("tier", "a")],
    ));
    server.upsert_pod(pod(
        "chat",
        "chat-1",
        &["10.1.0.11"],
        false,
        &[("app", "xmpp"), ("tier", "b")],
    ));
    server.upsert_pod(pod(
        "chat",
        "web-0",
        &["10.1.0.12"],
        true,
        &[("app", "web")],
    ));
    server.upsert_pod(pod(
        "other",
        "chat-9",
        &["10.2.0.9"],
        true,
        &[("app", "xmpp")],
    ));

    let api: Api<Pod> = Api::default_namespaced(client.clone());
    let all = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(names(&all.items), ["chat-0", "chat-1", "web-0"]);
    let rv: u64 = all.metadata.resource_version.unwrap().parse().unwrap();
    assert_eq!(rv, server.resource_version());

    let xmpp = api
        .list(&ListParams::default().labels("app=xmpp"))
        .await
        .unwrap();
    assert_eq!(names(&xmpp.items), ["chat-0", "chat-1"]);
    let not_web = api
        .list(&ListParams::default().labels("app!=web"))
        .await
        .unwrap();
    assert_eq!(names(&not_web.items), ["chat-0", "chat-1"]);
    let both = api
        .list(&ListParams::default().labels("app=xmpp,tier!=a"))
        .await
        .unwrap();
    assert_eq!(names(&both.items), ["chat-1"]);
    let set = api
        .list(&ListParams::default().labels("tier in (a,b),app"))
        .await
        .unwrap();
    assert_eq!(names(&set.items), ["chat-0", "chat-1"]);

    let everywhere: Api<Pod> = Api::all(client);
    let x = everywhere
        .list(&ListParams::default().labels("app==xmpp"))
        .await
        .unwrap();
    assert_eq!(names(&x.items), ["chat-0", "chat-1", "chat-9"]);
    assert!(server.list_count() >= 6);

    // A malformed selector is the server's 400, not a silent match-all.
    let err = api
        .list(&ListParams::default().labels("app in xmpp"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 400),
        "{err:?}"
    );
}

#[tokio::test]
async fn list_pages_with_limit_and_continue_over_one_snapshot() {
    let (server, client, _d) = start().await;
    for i in 0..5 {
        server.upsert_pod(pod("chat", &format!("chat-{i}"), &["10.1.0.1"], true, &[]));
    }
    let api: Api<Pod> = Api::default_namespaced(client);
    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(&first.items), ["chat-0", "chat-1"]);
    let token = first.metadata.continue_.clone().expect("continue token");
    let rv = first.metadata.resource_version.clone();
    // A change between pages is not visible in the paged snapshot.
    server.delete_pod("chat", "chat-3");
    let second = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(&second.items), ["chat-2", "chat-3"]);
    assert_eq!(second.metadata.resource_version, rv);
    let token = second.metadata.continue_.clone().expect("continue token");
    let third = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(&third.items), ["chat-4"]);
    assert!(third.metadata.continue_.is_none());
}

#[tokio::test]
async fn watch_streams_added_modified_deleted_and_bookmarks() {
    let (server, client, _d) = start().await;
    let api: Api<Pod> = Api::default_namespaced(client);
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let wp = WatchParams::default().labels("app=xmpp").timeout(60);
    let mut s = api.watch(&wp, &rv).await.unwrap().boxed();

    server.upsert_pod(pod(
        "chat",
        "chat-0",
        &["10.1.0.10"],
        false,
        &[("app", "xmpp")],
    ));
    server.upsert_pod(pod(
        "chat",
        "web-0",
        &["10.1.0.99"],
        false,
        &[("app", "web")],
    ));
    server.upsert_pod(pod(
        "chat",
        "chat-0",
        &["10.1.0.20", "fd00::20"],
        true,
        &[("app", "xmpp")],
    ));
    server.send_bookmarks();
    server.delete_pod("chat", "chat-0");

    let WatchEvent::Added(p) = next_event(&mut s).await else {
        panic!("expected ADDED")
    };
    assert_eq!(p.metadata.name.as_deref(), Some("chat-0"));
    let added_rv: u64 = p.metadata.resource_version.unwrap().parse().unwrap();
    let WatchEvent::Modified(p) = next_event(&mut s).await else {
        panic!("expected MODIFIED (web-0 is filtered out)")
    };
    let ips: Vec<_> = p
        .status
        .unwrap()
        .pod_ips
        .unwrap()
        .into_iter()
        .map(|i| i.ip)
        .collect();
    assert_eq!(ips, ["10.1.0.20", "fd00::20"]);
    let modified_rv: u64 = p.metadata.resource_version.unwrap().parse().unwrap();
    assert!(
        modified_rv > added_rv + 1,
        "web-0 took a version in between"
    );
    let WatchEvent::Bookmark(b) = next_event(&mut s).await else {
        panic!("expected BOOKMARK")
    };
    assert_eq!(b.metadata.resource_version, modified_rv.to_string());
    assert_eq!(b.types.kind, "Pod");
    let WatchEvent::Deleted(p) = next_event(&mut s).await else {
        panic!("expected DELETED")
    };
    assert_eq!(p.metadata.name.as_deref(), Some("chat-0"));
    assert_eq!(server.open_watches(), 1);

    // A label change out of the selector is a DELETED for this watch.
    server.upsert_pod(pod(
        "chat",
        "chat-1",
        &["10.1.0.11"],
        true,
        &[("app", "xmpp")],
    ));
    server.upsert_pod(pod(
        "chat",
        "chat-1",
        &["10.1.0.11"],
        true,
        &[("app", "gone")],
    ));
    assert!(matches!(next_event(&mut s).await, WatchEvent::Added(_)));
    assert!(matches!(next_event(&mut s).await, WatchEvent::Deleted(_)));
}

#[tokio::test]
async fn bookmark_and_list_json_match_the_real_wire_format() {
    let (server, _client, _d) = start().await;
    server.upsert_pod(pod("chat", "chat-0", &["10.1.0.10"], true, &[]));
    // Raw HTTP here: the point is the bytes, not what kube-rs accepts.
    let base = server.url();

    let list = raw_get(&format!("{base}/api/v1/namespaces/chat/pods")).await;
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v["kind"], "PodList");
    assert_eq!(v["apiVersion"], "v1");
    assert!(v["metadata"]["resourceVersion"].is_string());
    assert!(v["items"][0].get("kind").is_none(), "items carry no kind");
    assert_eq!(v["items"][0]["status"]["podIPs"][0]["ip"], "10.1.0.10");

    let rv = server.resource_version();
    let body = tokio::spawn(raw_get_lines(
        format!(
            "{base}/api/v1/namespaces/chat/pods?watch=true&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=2"
        ),
        1,
    ));
    wait_until(|| server.open_watches() == 1).await;
    server.send_bookmarks();
    let lines = body.await.unwrap();
    let ev: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(
        ev,
        serde_json::json!({"type": "BOOKMARK", "object": {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"resourceVersion": rv.to_string()}}})
    );
}

#[tokio::test]
async fn watch_from_an_old_version_replays_and_a_compacted_one_is_410() {
    let (server, client, _d) = start().await;
    let api: Api<Pod> = Api::default_namespaced(client);
    let rv0 = server.resource_version().to_string();
    server.upsert_pod(pod("chat", "chat-0", &["10.1.0.10"], true, &[]));
    server.upsert_pod(pod("chat", "chat-1", &["10.1.0.11"], true, &[]));
    let mut s = api
        .watch(&WatchParams::default().timeout(30), &rv0)
        .await
        .unwrap()
        .boxed();
    let WatchEvent::Added(a) = next_event(&mut s).await else {
        panic!("replayed ADDED chat-0")
    };
    let WatchEvent::Added(b) = next_event(&mut s).await else {
        panic!("replayed ADDED chat-1")
    };
    assert_eq!(
        (a.metadata.name.as_deref(), b.metadata.name.as_deref()),
        (Some("chat-0"), Some("chat-1"))
    );

    // Compaction: the open watch gets ERROR 410 Expired and ends.
    server.expire_watches();
    let WatchEvent::Error(e) = next_event(&mut s).await else {
        panic!("expected ERROR")
    };
    assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
    assert!(
        tokio::time::timeout(WAIT, s.next())
            .await
            .unwrap()
            .is_none(),
        "stream ends after the ERROR"
    );

    // Resuming from the old version: 410 again; a fresh list then works.
    let mut s = api
        .watch(&WatchParams::default().timeout(30), &rv0)
        .await
        .unwrap()
        .boxed();
    let WatchEvent::Error(e) = next_event(&mut s).await else {
        panic!("expected ERROR on resume from a compacted version")
    };
    assert_eq!(e.code, 410);
    let list = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(names(&list.items), ["chat-0", "chat-1"]);
    let rv = list.metadata.resource_version.unwrap();
    let mut s = api
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .unwrap()
        .boxed();
    server.delete_pod("chat", "chat-1");
    assert!(matches!(next_event(&mut s).await, WatchEvent::Deleted(_)));
}

#[tokio::test]
async fn forbidden_is_a_403_status_with_an_rbac_message() {
    let (server, client, _d) = start().await;
    server.set_forbidden(true);
    let api: Api<Pod> = Api::default_namespaced(client.clone());
    let err = api.list(&ListParams::default()).await.unwrap_err();
    let kube::Error::Api(s) = err else {
        panic!("expected an API status, got {err:?}")
    };
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
    assert!(
        s.message.contains("cannot list resource \"pods\"") && s.message.contains("\"chat\""),
        "{}",
        s.message
    );
    let err = api.watch(&WatchParams::default(), "0").await.err();
    assert!(
        matches!(err, Some(kube::Error::Api(ref s)) if s.code == 403),
        "{err:?}"
    );

    server.set_forbidden(false);
    assert!(api.list(&ListParams::default()).await.is_ok());
}

#[tokio::test]
async fn unavailable_refuses_connections_and_comes_back_on_the_same_address() {
    let (server, client, _d) = start().await;
    server.upsert_pod(pod("chat", "chat-0", &["10.1.0.10"], true, &[]));
    let api: Api<Pod> = Api::default_namespaced(client);
    let mut s = api
        .watch(
            &WatchParams::default().timeout(60),
            &server.resource_version().to_string(),
        )
        .await
        .unwrap()
        .boxed();
    server.set_unavailable(true);
    // The open watch dies with the server...
    let end = tokio::time::timeout(WAIT, s.next())
        .await
        .expect("watch ends");
    assert!(!matches!(end, Some(Ok(_))), "{end:?}");
    // ...and new connections are refused.
    let refused = std::net::TcpStream::connect(server.addr());
    assert_eq!(
        refused.err().map(|e| e.kind()),
        Some(std::io::ErrorKind::ConnectionRefused)
    );
    assert!(api.list(&ListParams::default()).await.is_err());

    server.set_unavailable(false);
    let list = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(names(&list.items), ["chat-0"]);
}

#[tokio::test]
async fn drop_watches_cuts_open_streams() {
    let (server, client, _d) = start().await;
    let api: Api<Pod> = Api::default_namespaced(client);
    let rv = server.resource_version().to_string();
    let mut s = api
        .watch(&WatchParams::default().timeout(60), &rv)
        .await
        .unwrap()
        .boxed();
    server.upsert_pod(pod("chat", "chat-0", &["10.1.0.10"], true, &[]));
    assert!(matches!(next_event(&mut s).await, WatchEvent::Added(_)));
    server.drop_watches();
    let mut ended = false;
    for _ in 0..3 {
        match tokio::time::timeout(WAIT, s.next())
            .await
            .expect("stream reacts")
        {
            None => {
                ended = true;
                break;
            }
            Some(Err(_)) => continue,
            Some(Ok(ev)) => panic!("unexpected event after cut: {ev:?}"),
        }
    }
    assert!(ended, "stream ended after the cut");
    assert_eq!(server.open_watches(), 0);
}

/// kube-rs's own watcher state machine over the server: initial list,
/// live events, and a full re-list after 410.
#[tokio::test]
async fn kube_runtime_watcher_relists_after_expiry() {
    let (server, client, _d) = start().await;
    server.upsert_pod(pod(
        "chat",
        "chat-0",
        &["10.1.0.10"],
        true,
        &[("app", "xmpp")],
    ));
    let api: Api<Pod> = Api::default_namespaced(client);
    let cfg = watcher::Config::default().labels("app=xmpp");
    let mut w = watcher(api, cfg).boxed();
    assert!(matches!(next_w(&mut w).await, watcher::Event::Init));
    assert!(
        matches!(next_w(&mut w).await, watcher::Event::InitApply(p) if p.metadata.name.as_deref() == Some("chat-0"))
    );
    assert!(matches!(next_w(&mut w).await, watcher::Event::InitDone));
    let lists = server.list_count();
    // The watcher opens its watch when next polled, from the listed
    // version: this change reaches it by replay.
    server.upsert_pod(pod(
        "chat",
        "chat-1",
        &["10.1.0.11"],
        false,
        &[("app", "xmpp")],
    ));
    assert!(
        matches!(next_w(&mut w).await, watcher::Event::Apply(p) if p.metadata.name.as_deref() == Some("chat-1"))
    );

    server.delete_pod("chat", "chat-0");
    server.expire_watches();
    // The watcher consumes the DELETED, then reports the 410 as an error
    // and re-lists from scratch.
    assert!(matches!(next_w(&mut w).await, watcher::Event::Delete(_)));
    let err = tokio::time::timeout(WAIT, w.try_next()).await.unwrap();
    assert!(err.is_err(), "410 surfaces as an error: {err:?}");
    assert!(matches!(next_w(&mut w).await, watcher::Event::Init));
    assert!(
        matches!(next_w(&mut w).await, watcher::Event::InitApply(p) if p.metadata.name.as_deref() == Some("chat-1"))
    );
    assert!(matches!(next_w(&mut w).await, watcher::Event::InitDone));
    assert!(server.list_count() > lists);
}

async fn next_w(
    w: &mut (impl futures::Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> + Unpin),
) -> watcher::Event<Pod> {
    tokio::time::timeout(WAIT, w.try_next())
        .await
        .expect("watcher event in time")
        .expect("watcher ok")
        .expect("watcher open")
}

async fn wait_until(mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// GET over a plain HTTP/1.0 connection: the body as text.
async fn raw_get(url: &str) -> String {
    let lines = raw_get_lines(url.to_string(), usize::MAX).await;
    lines.concat()
}

/// GET and return the body's first `n` lines (or all until EOF). Uses
/// HTTP/1.0 so the body is not chunked and can be read as is.
async fn raw_get_lines(url: String, n: usize) -> Vec<String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut conn = tokio::net::TcpStream::connect(host).await.unwrap();
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let mut out = Vec::new();
    while out.len() < n {
        line.clear();
        let read = tokio::time::timeout(WAIT, r.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        if read == 0 {
            break;
        }
        out.push(line.clone());
    }
    out
}

#[tokio::test]
async fn statefulsets_list_and_watch_by_name_with_rbac_resource_names() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    let (server, client, _d) = start().await;
    server.upsert_statefulset(statefulset("chat", "chat", "xmpp-internal-svc", Some(3)));
    server.upsert_statefulset(statefulset("chat", "web", "web", None));
    server.upsert_statefulset(statefulset("other", "chat", "xmpp", Some(9)));
    let api: Api<StatefulSet> = Api::default_namespaced(client.clone());

    // The API's default: an absent spec.replicas is stored as 1.
    let all = api.list(&ListParams::default()).await.unwrap();
    let got: Vec<_> = all
        .items
        .iter()
        .map(|s| (s.metadata.name.clone().unwrap(), s.spec.replicas))
        .collect();
    assert_eq!(
        got,
        [("chat".to_string(), Some(3)), ("web".to_string(), Some(1))]
    );

    // The wire format: a StatefulSetList of apps/v1, items without kind.
    let raw: serde_json::Value = serde_json::from_str(
        &raw_get(&format!(
            "{}/apis/apps/v1/namespaces/chat/statefulsets?fieldSelector=metadata.name%3Dchat",
            server.url()
        ))
        .await,
    )
    .unwrap();
    assert_eq!(raw["kind"], "StatefulSetList");
    assert_eq!(raw["apiVersion"], "apps/v1");
    assert_eq!(raw["items"].as_array().unwrap().len(), 1);
    assert_eq!(raw["items"][0]["spec"]["replicas"], 3);
    assert!(raw["items"][0].get("kind").is_none());

    // RBAC resourceNames: only a single metadata.name= selector naming an
    // allowed object passes, for LIST and WATCH alike.
    server.restrict_statefulsets_to(Some(&["chat"]));
    let forbidden = |r: kube::Result<kube::core::ObjectList<StatefulSet>>| match r {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403);
            assert!(
                s.message.starts_with("statefulsets.apps is forbidden")
                    && s.message
                        .contains("cannot list resource \"statefulsets\" in API group \"apps\""),
                "{}",
                s.message
            );
        }
        other => panic!("expected 403, got {other:?}"),
    };
    forbidden(api.list(&ListParams::default()).await);
    forbidden(
        api.list(&ListParams::default().fields("metadata.name=web"))
            .await,
    );
    forbidden(
        api.list(&ListParams::default().fields("metadata.name=chat,metadata.namespace=chat"))
            .await,
    );
    let err = api.watch(&WatchParams::default(), "0").await.err();
    assert!(
        matches!(err, Some(kube::Error::Api(ref s)) if s.code == 403),
        "{err:?}"
    );
    let by_name = ListParams::default().fields("metadata.name=chat");
    let one = api.list(&by_name).await.unwrap();
    assert_eq!(one.items.len(), 1);
    let rv = one.metadata.resource_version.unwrap();

    // A watch by name sees its object's changes and nothing else's.
    let mut s = api
        .watch(
            &WatchParams::default()
                .fields("metadata.name=chat")
                .timeout(30),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    server.upsert_statefulset(statefulset("chat", "web", "web", Some(4)));
    server.upsert_statefulset(statefulset("chat", "chat", "xmpp-internal-svc", Some(2)));
    let ev = tokio::time::timeout(WAIT, s.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let WatchEvent::Modified(sts) = ev else {
        panic!("expected MODIFIED, got {ev:?}")
    };
    assert_eq!(
        (sts.metadata.name.as_deref(), sts.spec.replicas),
        (Some("chat"), Some(2))
    );
    server.delete_statefulset("chat", "chat");
    let ev = tokio::time::timeout(WAIT, s.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(ev, WatchEvent::Deleted(_)), "{ev:?}");

    // An unsupported field is refused as the real server refuses it.
    server.restrict_statefulsets_to(None);
    let err = api
        .list(&ListParams::default().fields("spec.replicas=3"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 400 && s.message.contains("field label not supported")),
        "{err:?}"
    );
}
