//! A real Erlang VM, started with ERL_INETRC pointing at the inetrc that
//! kube-epmd wrote, resolves peer pod names from the hosts file through
//! its own resolver (`inet:getaddr/2`), in every naming form, and follows
//! an IP change without a restart.

mod support;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use support::apiserver::{TestApiServer, sts_pod};
use support::daemon::Daemon;
use tokio::io::{AsyncBufReadExt, BufReader};

const SVC: &str = "xmpp-internal-svc";
/// inet_db re-reads the hosts file at most every 5 s, on a lookup.
const FOLLOW: Duration = Duration::from_secs(30);

/// The names the VM looks up, and the address family.
const LOOKUPS: &[(&str, &str)] = &[
    ("chat-1.xmpp-internal-svc", "inet"),
    ("chat-1", "inet"),
    ("chat-1.xmpp-internal-svc.chat.svc.cluster.local", "inet"),
    ("chat-1.xmpp-internal-svc", "inet6"),
];

fn erl_program() -> String {
    let list: Vec<String> = LOOKUPS
        .iter()
        .map(|(n, f)| format!("{{\"{n}\", {f}}}"))
        .collect();
    // Every 200 ms, one "NAME FAMILY RESULT" line per lookup.
    format!(
        "Lookups = [{}], \
         Show = fun(R) -> case R of {{ok, A}} -> inet:ntoa(A); E -> io_lib:format(\"~w\", [E]) end end, \
         Loop = fun L() -> \
           [io:format(\"~s ~s ~s~n\", [N, F, Show(inet:getaddr(N, F))]) || {{N, F}} <- Lookups], \
           timer:sleep(200), L() end, \
         Loop().",
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erl_resolves_peer_names_from_the_generated_inetrc_and_follows_changes() {
    let api = TestApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut chat1 = sts_pod(
        "chat",
        "chat-1",
        SVC,
        &["10.244.1.11", "fd00:10:244::11"],
        false,
        &[("app", "xmpp")],
    );
    api.upsert_pod(chat1.clone());
    let mut d = Daemon::start(&api, "chat", &["--selector", "app=xmpp"]);
    d.wait_ready(Duration::from_secs(20)).await;

    let mut erl = tokio::process::Command::new("erl")
        .args([
            "-start_epmd",
            "false",
            "-noshell",
            "-noinput",
            "-eval",
            &erl_program(),
        ])
        .env("ERL_INETRC", d.inetrc_path())
        // A crash dump goes to the test's scratch directory, not the repo.
        .current_dir(d.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start erl (is erlang-base installed?)");
    let mut lines = BufReader::new(erl.stdout.take().unwrap()).lines();
    let mut seen: HashMap<(String, String), String> = HashMap::new();

    let mut wait_for = async |want: &[(&str, &str, &str)], what: &str| {
        let deadline = tokio::time::Instant::now() + FOLLOW;
        loop {
            if want.iter().all(|(n, f, ip)| {
                seen.get(&(n.to_string(), f.to_string()))
                    .map(String::as_str)
                    == Some(*ip)
            }) {
                return;
            }
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("erl did not see {what} in {FOLLOW:?}; last: {seen:?}"))
                .expect("read erl output")
                .expect("erl exited");
            let mut parts = line.splitn(3, ' ');
            if let (Some(n), Some(f), Some(r)) = (parts.next(), parts.next(), parts.next()) {
                seen.insert((n.into(), f.into()), r.into());
            }
        }
    };

    wait_for(
        &[
            ("chat-1.xmpp-internal-svc", "inet", "10.244.1.11"),
            ("chat-1", "inet", "10.244.1.11"),
            (
                "chat-1.xmpp-internal-svc.chat.svc.cluster.local",
                "inet",
                "10.244.1.11",
            ),
            ("chat-1.xmpp-internal-svc", "inet6", "fd00:10:244::11"),
        ],
        "the first addresses",
    )
    .await;

    // The pod is re-created with new addresses: the running VM follows.
    let status = chat1.status.as_mut().unwrap();
    status.pod_ip = Some("10.244.7.21".into());
    status.pod_ips = Some(vec![
        k8s_openapi::api::core::v1::PodIP {
            ip: "10.244.7.21".into(),
        },
        k8s_openapi::api::core::v1::PodIP {
            ip: "fd00:10:244::7:21".into(),
        },
    ]);
    api.upsert_pod(chat1);
    wait_for(
        &[
            ("chat-1.xmpp-internal-svc", "inet", "10.244.7.21"),
            ("chat-1", "inet", "10.244.7.21"),
            (
                "chat-1.xmpp-internal-svc.chat.svc.cluster.local",
                "inet",
                "10.244.7.21",
            ),
            ("chat-1.xmpp-internal-svc", "inet6", "fd00:10:244::7:21"),
        ],
        "the changed addresses",
    )
    .await;
    assert!(d.running());
    let _ = erl.kill().await;
}
