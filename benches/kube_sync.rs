//! Kubernetes mode costs, measured on the real binary against the in-tree
//! test API server:
//! - latency from an API change (a pod's IP changes) to the hosts file
//!   being renamed into place with the new address, p50/p99/max, seen
//!   through inotify (IN_MOVED_TO on the output directory);
//! - the daemon's RSS with 0, 1 000 and 10 000 pods in the table.
//!
//! `cargo bench --bench kube_sync` runs the full measurement; under
//! `cargo test --benches` (no `--bench` flag) it runs a small smoke pass.

#[path = "../tests/support/mod.rs"]
mod support;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use support::apiserver::{self, TestApiServer, indexed_ip as ip_of};
use support::daemon::Daemon;

const SVC: &str = "xmpp-internal-svc";

fn sts_pod(i: usize, ip: &str) -> Pod {
    let name = format!("chat-{i}");
    apiserver::sts_pod(
        "chat",
        &name,
        SVC,
        &[ip],
        i.is_multiple_of(2),
        &[("app", "xmpp")],
    )
}

/// The address of the n-th change: unique across the run, so every change
/// really changes the file.
fn changed_ip(n: usize) -> String {
    format!("172.16.{}.{}", n / 250, n % 250 + 1)
}

/// VmRSS and VmHWM of `pid`, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Renames into `dir`, as instants, from an inotify watch on a thread.
fn watch_renames(dir: &Path) -> mpsc::Receiver<Instant> {
    let (tx, rx) = mpsc::channel();
    let c = CString::new(dir.as_os_str().as_bytes()).expect("path without NUL");
    // SAFETY: plain syscalls on a descriptor this thread owns.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    assert!(fd >= 0, "inotify_init1");
    let wd = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_MOVED_TO) };
    assert!(wd >= 0, "inotify_add_watch");
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 || tx.send(Instant::now()).is_err() {
                break;
            }
        }
    });
    rx
}

struct Figures {
    pods: usize,
    ready_after: Duration,
    rss_ready_kib: u64,
    rss_after_kib: u64,
    hwm_kib: u64,
    hosts_bytes: u64,
    lat: Vec<Duration>,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn run(rt: &tokio::runtime::Runtime, pods: usize, events: usize) -> Figures {
    let api = rt
        .block_on(TestApiServer::start("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    for i in 0..pods {
        api.upsert_pod(sts_pod(i, &ip_of(i)));
    }
    let t0 = Instant::now();
    let log = std::env::var("KUBE_SYNC_LOG").unwrap_or_else(|_| "warn".into());
    let mut d = Daemon::start_full(&api, "chat", None, &["--selector", "app=xmpp"], &log);
    rt.block_on(d.wait_ready(Duration::from_secs(120)));
    let ready_after = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let (rss_ready_kib, _) = rss_kib(d.pid());

    let renames = watch_renames(&d.out_dir());
    let hosts = d.hosts_path();
    let mut lat = Vec::with_capacity(events);
    for e in 0..events {
        let i = if pods == 0 {
            0
        } else {
            (e * 7919) % pods.max(1)
        };
        let ip = changed_ip(e);
        let needle = format!("{ip}\tchat-{i} ");
        while renames.try_recv().is_ok() {}
        let start = Instant::now();
        api.upsert_pod(sts_pod(i, &ip));
        loop {
            let at = renames
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no rename within 30 s:\n{}", d.log()));
            let text = std::fs::read_to_string(&hosts).unwrap_or_default();
            if text.contains(&needle) {
                lat.push(at - start);
                break;
            }
        }
    }
    let (rss_after_kib, hwm_kib) = rss_kib(d.pid());
    let hosts_bytes = std::fs::metadata(&hosts).map(|m| m.len()).unwrap_or(0);
    assert!(d.running());
    lat.sort();
    Figures {
        pods,
        ready_after,
        rss_ready_kib,
        rss_after_kib,
        hwm_kib,
        hosts_bytes,
        lat,
    }
}

/// In-process cost of one hosts-file render for `pods` peers (no I/O).
fn render_cost(pods: usize) -> Duration {
    let mut table = kube_epmd::peers::PeerTable::default();
    let mut relist = kube_epmd::peers::PeerTable::default();
    for i in 0..pods {
        relist.apply(&sts_pod(i, &ip_of(i)));
    }
    table.replace(relist);
    let rounds = 20;
    let start = Instant::now();
    let mut bytes = 0;
    for _ in 0..rounds {
        bytes += kube_epmd::files::render::render_hosts(&table, "cluster.local").len();
    }
    assert!(bytes > 0);
    start.elapsed() / rounds
}

fn main() {
    // `-- PODS:EVENTS ...` overrides the plan.
    let custom: Vec<(usize, usize)> = std::env::args()
        .skip(1)
        .filter_map(|a| {
            let (p, e) = a.split_once(':')?;
            Some((p.parse().ok()?, e.parse().ok()?))
        })
        .collect();
    let full = std::env::args().any(|a| a == "--bench");
    let plan: &[(usize, usize)] = if !custom.is_empty() {
        &custom
    } else if full {
        &[(0, 0), (1, 200), (1_000, 200), (10_000, 100)]
    } else {
        &[(50, 5)]
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "{:>7} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>8}",
        "pods",
        "ready_ms",
        "rss_KiB",
        "rss2_KiB",
        "hwm_KiB",
        "hosts_B",
        "p50_ms",
        "p99_ms",
        "max_ms"
    );
    for &(pods, _) in plan {
        println!(
            "render_hosts, {pods} pods: {:.3} ms",
            render_cost(pods).as_secs_f64() * 1e3
        );
    }
    for &(pods, events) in plan {
        let f = run(&rt, pods, events.max(if pods > 0 { 1 } else { 0 }));
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{:>7} {:>9.0} {:>9} {:>9} {:>9} {:>10} {:>10.2} {:>10.2} {:>8.2}",
            f.pods,
            ms(f.ready_after),
            f.rss_ready_kib,
            f.rss_after_kib,
            f.hwm_kib,
            f.hosts_bytes,
            ms(pct(&f.lat, 0.5)),
            ms(pct(&f.lat, 0.99)),
            ms(f.lat.last().copied().unwrap_or_default()),
        );
    }
}
