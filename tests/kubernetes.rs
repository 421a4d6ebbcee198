//! Kubernetes mode end to end on one host: the real `kube-epmd` binary,
//! the real kube-rs client inside it, the in-tree test API server, and the
//! files it writes.

mod support;

use std::time::Duration;

use support::apiserver::{self, TestApiServer, pod, statefulset};
use support::daemon::{Daemon, eventually, file_is, http_post, run_peers_command};

const READY: Duration = Duration::from_secs(20);
/// Long enough for kube-rs's default backoff to come round after an
/// outage of a few seconds (0.8 s doubling, jittered, capped at 30 s).
const RECOVER: Duration = Duration::from_secs(45);
const CHANGE: Duration = Duration::from_secs(10);

const SVC: &str = "xmpp-internal-svc";
const APP: (&str, &str) = ("app", "xmpp");

/// A StatefulSet pod: hostname = pod name, subdomain = headless service.
fn sts_pod(name: &str, ips: &[&str], ready: bool) -> k8s_openapi::api::core::v1::Pod {
    apiserver::sts_pod("chat", name, SVC, ips, ready, &[APP])
}

fn line(ip: &str, host: &str) -> String {
    format!(
        "{ip}\t{host} {host}.{SVC} {host}.{SVC}.chat {host}.{SVC}.chat.svc {host}.{SVC}.chat.svc.cluster.local\n"
    )
}

const LOOPBACK: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

fn hosts_of(lines: &[String]) -> String {
    format!("{LOOPBACK}{}", lines.concat())
}

async fn api() -> TestApiServer {
    TestApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

async fn wait_hosts(d: &Daemon, want: &str, what: &str) {
    eventually(d, CHANGE, what, || async {
        (d.hosts() == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_changes_drive_the_hosts_file_inetrc_and_peers() {
    let api = api().await;
    api.upsert_pod(sts_pod("chat-0", &["10.244.0.10"], true));
    // Not Ready (ejabberd has not joined yet) and dual-stack: present.
    api.upsert_pod(sts_pod(
        "chat-1",
        &["10.244.1.11", "fd00:10:244::11"],
        false,
    ));
    // Not peers: other label, no IP yet, finished.
    api.upsert_pod(pod(
        "chat",
        "web-0",
        &["10.244.9.9"],
        true,
        &[("app", "web")],
    ));
    api.upsert_pod(sts_pod("chat-2", &[], false));
    let mut failed = sts_pod("chat-9", &["10.244.9.99"], false);
    failed.status.as_mut().unwrap().phase = Some("Failed".into());
    api.upsert_pod(failed);
    // Another namespace: not watched.
    api.upsert_pod(pod("other", "chat-5", &["10.244.5.5"], true, &[APP]));

    let mut d = Daemon::start(
        &api,
        "chat",
        &["--selector", "app=xmpp", "--pod-name", "chat-0"],
    );
    d.wait_ready(READY).await;
    let inetrc = format!(
        "%% Written by kube-epmd: resolve peer pods from the hosts file it keeps current.\n\
         {{hosts_file, \"{}\"}}.\n{{lookup, [file, native]}}.\n",
        d.hosts_path().display()
    );
    assert!(
        file_is(&d.inetrc_path(), &inetrc),
        "inetrc: {:?}",
        std::fs::read_to_string(d.inetrc_path())
    );
    let mut want = vec![
        line("10.244.0.10", "chat-0"),
        line("10.244.1.11", "chat-1"),
        line("fd00:10:244::11", "chat-1"),
    ];
    assert_eq!(d.hosts(), hosts_of(&want), "{}", d.log());

    // A pod gets its IP: added.
    api.upsert_pod(sts_pod("chat-2", &["10.244.2.12"], false));
    want.push(line("10.244.2.12", "chat-2"));
    wait_hosts(&d, &hosts_of(&want), "chat-2 added").await;

    // A pod re-created with a new IP: replaced, the old address gone.
    api.upsert_pod(sts_pod("chat-0", &["10.244.0.77"], true));
    want[0] = line("10.244.0.77", "chat-0");
    wait_hosts(&d, &hosts_of(&want), "chat-0 new IP").await;

    // Deleted: gone.
    api.delete_pod("chat", "chat-1");
    want.remove(1);
    want.remove(1);
    wait_hosts(&d, &hosts_of(&want), "chat-1 deleted").await;

    // Leaving the selector is a deletion too.
    api.upsert_pod(pod(
        "chat",
        "chat-2",
        &["10.244.2.12"],
        false,
        &[("app", "other")],
    ));
    want.pop();
    wait_hosts(&d, &hosts_of(&want), "chat-2 relabelled away").await;

    // A change that does not touch the table leaves the file alone.
    let before = std::fs::metadata(d.hosts_path()).unwrap();
    let writes = d.metric("kube_epmd_hosts_file_writes_total").await.unwrap();
    api.upsert_pod(pod(
        "chat",
        "web-0",
        &["10.244.9.10"],
        true,
        &[("app", "web")],
    ));
    let mut c0 = sts_pod("chat-0", &["10.244.0.77"], true);
    c0.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("extra".into(), "x".into());
    api.upsert_pod(c0);
    // The next real change proves the two above were seen and skipped.
    api.upsert_pod(sts_pod("chat-3", &["10.244.3.13"], true));
    want.push(line("10.244.3.13", "chat-3"));
    wait_hosts(&d, &hosts_of(&want), "chat-3 added").await;
    let after_writes = d.metric("kube_epmd_hosts_file_writes_total").await.unwrap();
    assert_eq!(after_writes, writes + 1.0, "only the chat-3 change wrote");
    let after = std::fs::metadata(d.hosts_path()).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_ne!(before.ino(), after.ino(), "replaced by rename");

    // /peers and `kube-epmd peers`.
    let (code, body) = d.get("/peers").await.unwrap();
    assert_eq!(code, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["ready"], true);
    assert_eq!(doc["healthy"], true);
    assert_eq!(doc["namespace"], "chat");
    let peers = doc["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2);
    assert_eq!(peers[0]["pod"], "chat-0");
    assert_eq!(peers[0]["self"], true);
    assert_eq!(peers[1]["self"], false);
    assert_eq!(peers[0]["names"][1], format!("chat-0.{SVC}"));
    let (code, out, err) = run_peers_command(d.admin, &[]);
    assert_eq!(
        (code, out.as_str()),
        (0, "chat-0 10.244.0.77\nchat-3 10.244.3.13\n"),
        "{err}"
    );
    let (code, out, _) = run_peers_command(d.admin, &["--json"]);
    assert_eq!(code, 0);
    let again: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(again["peers"], doc["peers"]);

    // Metrics: the table, the sync, the writes, and the EPMD server's own.
    let (_, metrics) = d.get("/metrics").await.unwrap();
    assert!(metrics.contains("kube_epmd_peers 2\n"), "{metrics}");
    assert!(metrics.contains("kube_epmd_discovery_synced 1\n"));
    assert!(metrics.contains("kube_epmd_watch_healthy 1\n"));
    assert!(metrics.contains("kube_epmd_last_sync_timestamp_seconds "));
    assert!(metrics.contains("kube_epmd_registered_nodes "));
    assert!(d.running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inetrc_names_the_output_dir_as_given_and_is_rewritten_on_every_start() {
    // The VM (another container) sees the output directory by the path
    // the deploy gives, not by where a symlink in this container leads.
    let api = api().await;
    let keep = tempfile::tempdir().unwrap();
    let real = keep.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = keep.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    // A stale inetrc (say, from an older version) is replaced at start.
    std::fs::write(link.join("inetrc"), "{hosts_file, \"/elsewhere\"}.\n").unwrap();
    let mut d = Daemon::start_in(&api, "chat", Some(link.clone()), &[]);
    d.wait_ready(READY).await;
    let want = format!(
        "%% Written by kube-epmd: resolve peer pods from the hosts file it keeps current.\n\
         {{hosts_file, \"{}\"}}.\n{{lookup, [file, native]}}.\n",
        link.join("hosts").display()
    );
    assert!(
        file_is(&real.join("inetrc"), &want),
        "inetrc: {:?}",
        std::fs::read_to_string(real.join("inetrc"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_errors_are_exposed_at_zero_before_any_error() {
    // An alert built on absent(kube_epmd_watch_errors_total) or on its
    // rate must see the family from the start, not after the first error.
    let api = api().await;
    api.upsert_pod(sts_pod("chat-0", &["10.244.0.10"], true));
    let mut d = Daemon::start(&api, "chat", &["--selector", "app=xmpp"]);
    d.wait_ready(READY).await;
    let (_, metrics) = d.get("/metrics").await.unwrap();
    // Every label the daemon can ever give (the library's own list, so a
    // new reason cannot be forgotten here).
    assert!(kube_epmd::kubernetes::watch_error::REASONS.contains(&"forbidden"));
    for reason in kube_epmd::kubernetes::watch_error::REASONS {
        let line = format!("kube_epmd_watch_errors_total{{reason=\"{reason}\"}} 0\n");
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }
    // A real error then counts on its own series.
    api.expire_watches();
    eventually(&d, RECOVER, "410 counted", || async {
        let n = d
            .metric("kube_epmd_watch_errors_total{reason=\"expired\"}")
            .await?;
        (n >= 1.0).then_some(())
    })
    .await;
    assert_eq!(
        d.metric("kube_epmd_watch_errors_total{reason=\"forbidden\"}")
            .await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_before_the_first_list_and_no_empty_view_on_errors() {
    let api = api().await;
    api.upsert_pod(sts_pod("chat-0", &["10.244.0.10"], true));
    api.set_forbidden(true);
    let mut d = Daemon::start(&api, "chat", &["--selector", "app=xmpp"]);

    // The inetrc and a loopback-only hosts file exist at once, but the
    // daemon is not ready: it has no list.
    eventually(&d, READY, "403 reported before the first list", || async {
        let (code, body) = d.get("/readyz").await?;
        (code == 503 && body.contains("forbidden")).then_some(())
    })
    .await;
    assert!(d.inetrc_path().exists());
    assert_eq!(d.hosts(), LOOPBACK);
    let forbidden = d
        .metric("kube_epmd_watch_errors_total{reason=\"forbidden\"}")
        .await
        .unwrap_or(0.0);
    assert!(forbidden >= 1.0);

    api.set_forbidden(false);
    d.wait_ready(RECOVER).await;
    assert_eq!(d.hosts(), hosts_of(&[line("10.244.0.10", "chat-0")]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_down_forbidden_and_cut_watches_keep_the_table_and_recover() {
    let api = api().await;
    api.upsert_pod(sts_pod("chat-0", &["10.244.0.10"], true));
    api.upsert_pod(sts_pod("chat-1", &["10.244.1.11"], false));
    let mut d = Daemon::start(&api, "chat", &["--selector", "app=xmpp"]);
    d.wait_ready(READY).await;
    let mut want = vec![line("10.244.0.10", "chat-0"), line("10.244.1.11", "chat-1")];
    assert_eq!(d.hosts(), hosts_of(&want));
    let mtime = std::fs::metadata(d.hosts_path())
        .unwrap()
        .modified()
        .unwrap();

    // --- API down: connections refused. ---
    api.set_unavailable(true);
    let stale = eventually(&d, RECOVER, "readyz reports the outage", || async {
        let (code, body) = d.get("/readyz").await?;
        (code == 200 && body.contains("stale")).then_some(body)
    })
    .await;
    assert!(
        stale.contains("unreachable") || stale.contains("stream_broken"),
        "{stale}"
    );
    assert_eq!(d.metric("kube_epmd_watch_healthy").await, Some(0.0));
    let (_, peers) = d.get("/peers").await.unwrap();
    assert!(peers.contains("\"healthy\": false"), "{peers}");
    // Changes made while the daemon cannot see them...
    api.delete_pod("chat", "chat-1");
    api.upsert_pod(sts_pod("chat-2", &["10.244.2.12"], false));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // ...leave the last good file untouched.
    assert_eq!(d.hosts(), hosts_of(&want));
    assert_eq!(
        std::fs::metadata(d.hosts_path())
            .unwrap()
            .modified()
            .unwrap(),
        mtime
    );
    assert!(d.running());

    api.set_unavailable(false);
    want = vec![line("10.244.0.10", "chat-0"), line("10.244.2.12", "chat-2")];
    eventually(&d, RECOVER, "re-listed after the outage", || async {
        (d.hosts() == hosts_of(&want)).then_some(())
    })
    .await;
    eventually(&d, CHANGE, "healthy again", || async {
        let (code, body) = d.get("/readyz").await?;
        (code == 200 && body == "ok\n").then_some(())
    })
    .await;
    assert_eq!(d.metric("kube_epmd_watch_healthy").await, Some(1.0));
    let unreachable = d
        .metric("kube_epmd_watch_errors_total{reason=\"unreachable\"}")
        .await
        .unwrap_or(0.0)
        + d.metric("kube_epmd_watch_errors_total{reason=\"stream_broken\"}")
            .await
            .unwrap_or(0.0);
    assert!(unreachable >= 1.0);

    // --- 403: RBAC taken away. ---
    let before_403 = d.metric("kube_epmd_watch_restarts_total").await.unwrap();
    api.set_forbidden(true);
    eventually(&d, RECOVER, "readyz reports 403", || async {
        let (code, body) = d.get("/readyz").await?;
        (code == 200 && body.contains("stale") && body.contains("forbidden")).then_some(())
    })
    .await;
    assert!(
        d.metric("kube_epmd_watch_errors_total{reason=\"forbidden\"}")
            .await
            .unwrap()
            >= 1.0
    );
    assert_eq!(d.hosts(), hosts_of(&want));
    api.set_forbidden(false);
    eventually(&d, RECOVER, "healthy after 403", || async {
        let (_, body) = d.get("/readyz").await?;
        (body == "ok\n").then_some(())
    })
    .await;
    api.upsert_pod(sts_pod("chat-1", &["10.244.1.21"], true));
    want.insert(1, line("10.244.1.21", "chat-1"));
    wait_hosts(&d, &hosts_of(&want), "change after 403").await;
    assert!(
        d.metric("kube_epmd_watch_restarts_total").await.unwrap() >= before_403 + 1.0,
        "a 403 ends the watch: it restarts with a re-list"
    );

    // --- A watch cut mid-stream. ---
    // kube-rs takes an unexpected EOF as the end of the stream and resumes
    // from the last resourceVersion it saw: no error to report, and the
    // server replays what happened in between.
    eventually(&d, CHANGE, "watch open", || async {
        (api.open_watches() == 1).then_some(())
    })
    .await;
    let watches = api.watch_count();
    // Read right before the cut: only what the cut causes counts.
    let restarts = d.metric("kube_epmd_watch_restarts_total").await.unwrap();
    let lists = api.list_count();
    api.drop_watches();
    api.delete_pod("chat", "chat-0");
    want.remove(0);
    wait_hosts(&d, &hosts_of(&want), "change made during the cut").await;
    assert!(api.watch_count() > watches, "a new watch was opened");
    api.upsert_pod(sts_pod("chat-0", &["10.244.0.10"], true));
    want.insert(0, line("10.244.0.10", "chat-0"));
    wait_hosts(&d, &hosts_of(&want), "change after the cut").await;
    assert_eq!(d.get("/readyz").await.unwrap(), (200, "ok\n".to_string()));
    // Resumed, not restarted: no error counted, no re-list sent.
    assert_eq!(
        d.metric("kube_epmd_watch_restarts_total").await,
        Some(restarts),
        "a cut watch resumes from its resourceVersion"
    );
    assert_eq!(api.list_count(), lists, "no re-list after a cut");
    assert!(d.running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_watch_relists_with_no_stale_entries() {
    let api = api().await;
    for i in 0..3 {
        api.upsert_pod(sts_pod(
            &format!("chat-{i}"),
            &[&format!("10.244.{i}.1{i}")],
            true,
        ));
    }
    let mut d = Daemon::start(&api, "chat", &["--selector", "app=xmpp"]);
    d.wait_ready(READY).await;
    eventually(&d, CHANGE, "watch open", || async {
        (api.open_watches() == 1).then_some(())
    })
    .await;

    // 410 on the open watch: the daemon re-lists.
    let lists = api.list_count();
    api.expire_watches();
    eventually(&d, RECOVER, "re-list after 410", || async {
        (api.list_count() > lists && api.open_watches() == 1).then_some(())
    })
    .await;
    assert!(
        d.metric("kube_epmd_watch_errors_total{reason=\"expired\"}")
            .await
            .unwrap()
            >= 1.0
    );

    // Changes the daemon never saw as events (made while it was cut off,
    // history compacted before it came back): the re-list must show the
    // new state exactly, with nothing left of the deleted pods.
    api.set_unavailable(true);
    eventually(&d, RECOVER, "outage noticed", || async {
        let (_, body) = d.get("/readyz").await?;
        body.contains("stale").then_some(())
    })
    .await;
    api.delete_pod("chat", "chat-0");
    api.delete_pod("chat", "chat-2");
    api.upsert_pod(sts_pod("chat-1", &["10.244.1.99"], true));
    api.upsert_pod(sts_pod("chat-4", &["10.244.4.14"], false));
    api.expire_watches();
    api.set_unavailable(false);
    let want = hosts_of(&[line("10.244.1.99", "chat-1"), line("10.244.4.14", "chat-4")]);
    eventually(&d, RECOVER, "fresh table after compaction", || async {
        (d.hosts() == want).then_some(())
    })
    .await;
    let (_, peers) = d.get("/peers").await.unwrap();
    let doc: serde_json::Value = serde_json::from_str(&peers).unwrap();
    let pods: Vec<_> = doc["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pod"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(pods, ["chat-1", "chat-4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_hosts_file_is_kept_until_the_first_list() {
    // A restarted sidecar (emptyDir survives container restarts) must not
    // blank the file the VM is using while the API is unreachable.
    let api = api().await;
    api.upsert_pod(sts_pod("chat-0", &["10.244.0.10"], true));
    let mut first = Daemon::start(&api, "chat", &[]);
    first.wait_ready(READY).await;
    let want = hosts_of(&[line("10.244.0.10", "chat-0")]);
    assert_eq!(first.hosts(), want);
    let out = first.out_dir();

    // Keep the directory past the first daemon's exit.
    let keep = tempfile::tempdir().unwrap();
    let out2 = keep.path().join("out");
    std::fs::create_dir(&out2).unwrap();
    std::fs::copy(out.join("hosts"), out2.join("hosts")).unwrap();
    drop(first);

    api.set_unavailable(true);
    let mut again = Daemon::start_in(&api, "chat", Some(out2.clone()), &[]);
    eventually(&again, READY, "readyz answers 503", || async {
        let (code, _) = again.get("/readyz").await?;
        (code == 503).then_some(())
    })
    .await;
    assert!(again.inetrc_path().exists());
    assert_eq!(again.hosts(), want, "the previous file is kept");
    api.upsert_pod(sts_pod("chat-1", &["10.244.1.11"], true));
    api.set_unavailable(false);
    again.wait_ready(RECOVER).await;
    assert_eq!(
        again.hosts(),
        hosts_of(&[line("10.244.0.10", "chat-0"), line("10.244.1.11", "chat-1")])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_survives_epmd_kill_and_allows_it_when_asked() {
    // ejabberdctl runs `epmd -kill` once no node is left; in Kubernetes mode
    // the daemon answers as epmd would (NO with live nodes, else OK) but
    // keeps running, unless --allow-kill is given.
    let api = api().await;
    let mut d = Daemon::start(&api, "chat", &[]);
    d.wait_ready(READY).await;
    let kill = |port: u16| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kube-epmd"))
            .args(["-port", &port.to_string(), "-kill"])
            .output()
            .expect("run kube-epmd -kill")
    };
    let node = support::epmd::exchange_keep(
        d.epmd_port,
        &support::epmd::alive2(b"ejabberd", 4200, 6, b""),
    );
    assert_eq!(node.1.bytes[..2], [b'v', 0]);
    let out = kill(d.epmd_port);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Killing not allowed - living nodes in database.\n"
    );
    drop(node);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = kill(d.epmd_port);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Killed\n");
    assert_eq!(out.status.code(), Some(0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(d.running(), "the sidecar must survive -kill");
    assert_eq!(d.get("/readyz").await.map(|r| r.0), Some(200));

    let mut allowed = Daemon::start(&api, "chat", &["--allow-kill"]);
    allowed.wait_ready(READY).await;
    let out = kill(allowed.epmd_port);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Killed\n");
    let deadline = tokio::time::Instant::now() + CHANGE;
    while allowed.running() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no exit after an allowed kill:\n{}",
            allowed.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_mode_admin_endpoint_has_metrics_but_no_peer_table() {
    use support::daemon::{ChildGuard, free_port, http_get};
    let port = free_port();
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut child = ChildGuard(
        std::process::Command::new(env!("CARGO_BIN_EXE_kube-epmd"))
            .args(["-port", &port.to_string(), "-address", "127.0.0.1"])
            .args(["--admin-addr", &admin.to_string()])
            .env_remove("KUBE_EPMD_KUBERNETES")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = tokio::time::Instant::now() + READY;
    let health = loop {
        if let Some(r) = http_get(admin, "/healthz").await {
            break r;
        }
        assert!(matches!(child.0.try_wait(), Ok(None)), "daemon exited");
        assert!(
            tokio::time::Instant::now() < deadline,
            "admin endpoint not up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(health, (200, "ok\n".to_string()));
    assert_eq!(http_get(admin, "/readyz").await.unwrap().0, 200);
    let (code, metrics) = http_get(admin, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("kube_epmd_registered_nodes 0\n"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("kube_epmd_peers"),
        "no discovery metrics in plain mode"
    );
    assert_eq!(http_get(admin, "/peers").await.unwrap().0, 404);
    let (code, out, err) = run_peers_command(admin, &[]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.contains("404") && err.contains("not in Kubernetes mode"),
        "{err}"
    );
}

/// `/peers`' `replicas` field (JSON null when unknown).
async fn peers_replicas(d: &Daemon) -> Option<serde_json::Value> {
    let (code, body) = d.get("/peers").await?;
    if code != 200 {
        return None;
    }
    let doc: serde_json::Value = serde_json::from_str(&body).ok()?;
    doc.get("replicas").cloned()
}

async fn wait_replicas(d: &Daemon, want: Option<&str>, limit: Duration, what: &str) {
    eventually(d, limit, what, || async {
        (d.replicas().as_deref() == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_file_follows_the_statefulset() {
    let api = api().await;
    // RBAC as the deploy grants it: this StatefulSet by name only. A
    // daemon that listed without the name field selector would get 403
    // for ever.
    api.restrict_statefulsets_to(Some(&["chat"]));
    api.upsert_pod(sts_pod("chat-0", &["10.244.0.10"], true));
    // Another StatefulSet in the namespace, scaled differently: not ours.
    api.upsert_statefulset(statefulset("chat", "web", "web-svc", Some(7)));
    api.upsert_statefulset(statefulset("chat", "chat", SVC, Some(3)));
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    // A previous run's value is not trusted: the count may have changed.
    std::fs::write(out_dir.join("replicas"), "9\n").unwrap();
    let mut d = Daemon::start_in(
        &api,
        "chat",
        Some(out_dir),
        &["--selector", "app=xmpp", "--statefulset", "chat"],
    );
    wait_replicas(&d, Some("3\n"), READY, "replicas file from the first list").await;
    d.wait_ready(READY).await;
    assert_eq!(peers_replicas(&d).await, Some(serde_json::json!(3)));
    assert_eq!(d.metric("kube_epmd_statefulset_replicas ").await, Some(3.0));

    // Scale down, and up past the other StatefulSet's count.
    api.upsert_statefulset(statefulset("chat", "chat", SVC, Some(2)));
    wait_replicas(&d, Some("2\n"), CHANGE, "scaled to 2").await;
    let ino = |d: &Daemon| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(d.replicas_path()).unwrap().ino()
    };
    let before = ino(&d);
    // A change that leaves spec.replicas alone (a template edit) does not
    // touch the file; the next scale proves the edit was seen.
    let mut edited = statefulset("chat", "chat", SVC, Some(2));
    edited.metadata.generation = Some(2);
    api.upsert_statefulset(edited);
    api.upsert_pod(sts_pod("chat-1", &["10.244.1.11"], true));
    wait_hosts(
        &d,
        &hosts_of(&[line("10.244.0.10", "chat-0"), line("10.244.1.11", "chat-1")]),
        "pod change after the template edit",
    )
    .await;
    api.upsert_statefulset(statefulset("chat", "chat", SVC, Some(8)));
    wait_replicas(&d, Some("8\n"), CHANGE, "scaled to 8").await;
    assert_ne!(ino(&d), before, "replaced by rename");
    api.upsert_statefulset(statefulset("chat", "chat", SVC, Some(2)));
    wait_replicas(&d, Some("2\n"), CHANGE, "back to 2").await;
    // The API defaults an absent count to 1.
    api.upsert_statefulset(statefulset("chat", "chat", SVC, None));
    wait_replicas(&d, Some("1\n"), CHANGE, "absent replicas read as 1").await;
    api.upsert_statefulset(statefulset("chat", "chat", SVC, Some(2)));
    wait_replicas(&d, Some("2\n"), CHANGE, "2 again").await;

    // API outage: the last value stays; a change made meanwhile arrives
    // with the re-list.
    api.set_unavailable(true);
    eventually(&d, RECOVER, "outage noticed", || async {
        let errors = d
            .metric("kube_epmd_statefulset_watch_errors_total{reason=\"unreachable\"}")
            .await
            .unwrap_or(0.0)
            + d.metric("kube_epmd_statefulset_watch_errors_total{reason=\"stream_broken\"}")
                .await
                .unwrap_or(0.0);
        (errors >= 1.0).then_some(())
    })
    .await;
    assert_eq!(d.replicas().as_deref(), Some("2\n"));
    api.upsert_statefulset(statefulset("chat", "chat", SVC, Some(4)));
    api.expire_watches();
    assert_eq!(d.replicas().as_deref(), Some("2\n"), "kept while down");
    assert_eq!(peers_replicas(&d).await, Some(serde_json::json!(2)));
    api.set_unavailable(false);
    wait_replicas(&d, Some("4\n"), RECOVER, "re-listed after the outage").await;

    // Deleted: the file goes, /peers says null, the gauge -1.
    api.delete_statefulset("chat", "chat");
    wait_replicas(&d, None, CHANGE, "file removed on delete").await;
    assert_eq!(peers_replicas(&d).await, Some(serde_json::Value::Null));
    assert_eq!(
        d.metric("kube_epmd_statefulset_replicas ").await,
        Some(-1.0)
    );
    // Re-created: back.
    api.upsert_statefulset(statefulset("chat", "chat", SVC, Some(3)));
    wait_replicas(&d, Some("3\n"), CHANGE, "re-created").await;
    assert!(d.running());
    let leftovers: Vec<_> = std::fs::read_dir(d.out_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_file_absent_until_the_statefulset_is_listed() {
    let api = api().await;
    api.upsert_statefulset(statefulset("chat", "chat", SVC, Some(3)));
    // RBAC grants another name: every list and watch is 403.
    api.restrict_statefulsets_to(Some(&["other"]));
    let mut d = Daemon::start(&api, "chat", &["--statefulset", "chat"]);
    d.wait_ready(READY).await;
    eventually(&d, READY, "403 on the StatefulSet counted", || async {
        let n = d
            .metric("kube_epmd_statefulset_watch_errors_total{reason=\"forbidden\"}")
            .await?;
        (n >= 1.0).then_some(())
    })
    .await;
    assert_eq!(d.replicas(), None, "unknown: no file");
    assert_eq!(peers_replicas(&d).await, Some(serde_json::Value::Null));
    assert_eq!(
        d.metric("kube_epmd_statefulset_replicas ").await,
        Some(-1.0)
    );
    // The pod side is unaffected by the StatefulSet's 403.
    assert_eq!(d.get("/readyz").await.unwrap(), (200, "ok\n".to_string()));

    api.restrict_statefulsets_to(Some(&["chat"]));
    wait_replicas(&d, Some("3\n"), RECOVER, "listed once allowed").await;

    // A StatefulSet that does not exist (yet): no file, then the file.
    let mut other = Daemon::start(&api, "chat", &["--statefulset", "chat2"]);
    api.restrict_statefulsets_to(None);
    other.wait_ready(READY).await;
    eventually(&other, READY, "StatefulSet watch open", || async {
        (api.open_statefulset_watches() == 2).then_some(())
    })
    .await;
    assert_eq!(other.replicas(), None);
    assert_eq!(peers_replicas(&other).await, Some(serde_json::Value::Null));
    api.upsert_statefulset(statefulset("chat", "chat2", SVC, Some(5)));
    wait_replicas(&other, Some("5\n"), CHANGE, "created after start").await;
    assert_eq!(d.replicas().as_deref(), Some("3\n"), "each its own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_replicas_file_or_statefulset_request_without_the_flag() {
    let api = api().await;
    api.upsert_statefulset(statefulset("chat", "chat", SVC, Some(3)));
    api.upsert_pod(sts_pod("chat-0", &["10.244.0.10"], true));
    let mut d = Daemon::start(&api, "chat", &[]);
    d.wait_ready(READY).await;
    // A pod change applied after start proves the daemon has run a while
    // with its watches up.
    api.upsert_pod(sts_pod("chat-1", &["10.244.1.11"], true));
    wait_hosts(
        &d,
        &hosts_of(&[line("10.244.0.10", "chat-0"), line("10.244.1.11", "chat-1")]),
        "chat-1 added",
    )
    .await;
    assert_eq!(d.replicas(), None);
    assert_eq!(api.statefulset_requests(), 0, "no StatefulSet API call");
    assert_eq!(peers_replicas(&d).await, Some(serde_json::Value::Null));
    let (_, metrics) = d.get("/metrics").await.unwrap();
    assert!(!metrics.contains("statefulset"), "{metrics}");
}

/// One node as the entrypoint's probe reports it, alone in its schema.
fn alone(node: &str) -> serde_json::Value {
    serde_json::json!({
        "node": node, "state": "started", "db_nodes": [node],
        "running_db_nodes": [node], "uptime": 5, "saw_down": []
    })
}

/// `/cluster/nodes` and `/cluster/plan`: the peer table and the
/// StatefulSet's replicas join what the entrypoint observed, and the pure
/// planner answers in two lines; bad observations are refused whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_plan_joins_the_peer_table_and_the_observation() {
    let api = api().await;
    for k in 0..3 {
        api.upsert_pod(sts_pod(
            &format!("chat-{k}"),
            &[&format!("10.244.{k}.1")],
            false,
        ));
    }
    // Another StatefulSet's pod under the same selector is no peer node.
    api.upsert_pod(apiserver::sts_pod(
        "web",
        "web-0",
        SVC,
        &["10.244.9.1"],
        true,
        &[APP],
    ));
    api.upsert_statefulset(statefulset("chat", "chat", SVC, Some(3)));
    let mut d = Daemon::start(
        &api,
        "chat",
        &[
            "--selector",
            "app=xmpp",
            "--pod-name",
            "chat-0",
            "--statefulset",
            "chat",
        ],
    );
    d.wait_ready(READY).await;
    wait_replicas(&d, Some("3\n"), CHANGE, "replicas known").await;
    let node = |k: u32| format!("ejabberd@chat-{k}.{SVC}");

    let (code, body) = d
        .get("/cluster/nodes?self=ejabberd%40chat-0.xmpp-internal-svc")
        .await
        .unwrap();
    assert_eq!((code, body), (200, format!("{}\n{}\n", node(1), node(2))));
    let (code, body) = d.get("/cluster/nodes?self=chat-0").await.unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("NAME@HOST"), "{body}");

    let obs = |nodes: Vec<serde_json::Value>| {
        serde_json::json!({
            "self": node(0), "phase": "joining", "marker": false,
            "since_start": 4, "since_phase": 2,
            "timing": {"load_grace": 15, "hold_max": 120, "join_timeout": 300},
            "nodes": nodes,
        })
        .to_string()
    };
    // Every pod answers, none in a cluster: chat-0 seeds.
    let all = obs(vec![alone(&node(0)), alone(&node(1)), alone(&node(2))]);
    let (code, body) = http_post(d.admin, "/cluster/plan", &all).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 2, "{body}");
    assert_eq!(lines[0], "seed");
    assert!(lines[1].contains("seeds a new cluster"), "{body}");
    // chat-2 not seen (its probe answer missing): the replicas hold the seed.
    let two = obs(vec![alone(&node(0)), alone(&node(1))]);
    let (_, body) = http_post(d.admin, "/cluster/plan", &two).await.unwrap();
    assert_eq!(body.lines().next(), Some("wait 3"), "{body}");
    // The pod table counts, not what the probe claims: chat-3 has no pod.
    let extra = obs(vec![alone(&node(0)), alone(&node(3))]);
    let (_, body) = http_post(d.admin, "/cluster/plan", &extra).await.unwrap();
    assert_eq!(body.lines().next(), Some("wait 3"), "{body}");
    api.delete_pod("chat", "chat-2");
    eventually(&d, CHANGE, "chat-2 gone from /cluster/nodes", || async {
        let (_, b) = d
            .get("/cluster/nodes?self=ejabberd%40chat-0.xmpp-internal-svc")
            .await?;
        (b == format!("{}\n", node(1))).then_some(())
    })
    .await;

    // Refused whole, with the reason: not JSON, an unknown field, a bad name.
    for (bad, why) in [
        ("{", "EOF"),
        (&all.replace("\"marker\"", "\"markr\""), "unknown field"),
        (
            &all.replace(&format!("\"self\":\"{}\"", node(0)), "\"self\":\"chat\""),
            "NAME@HOST",
        ),
    ] {
        let (code, body) = http_post(d.admin, "/cluster/plan", bad).await.unwrap();
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(body.contains(why), "{bad}: {body}");
    }
    let seeds = d
        .metric("kube_epmd_cluster_plans_total{action=\"seed\"}")
        .await;
    assert_eq!(seeds, Some(1.0), "{}", d.get("/metrics").await.unwrap().1);
}
