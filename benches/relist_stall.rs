//! Does Kubernetes work delay EPMD answers? The real binary in Kubernetes
//! mode watches 10 000 pods on the in-tree test API server; a client
//! process of its own (see [`client_process`]) asks PORT_PLEASE2 for a
//! registered node, one connection per request as `erl` does, and records
//! each answer's latency (connect → reply and close), one every 2 ms. Two
//! phases:
//! - `idle`: the watch is quiet;
//! - `relist`: the API server expires the watch (410 Gone) again and
//!   again, so the daemon re-lists and decodes every pod each time (and a
//!   changed pod makes it re-render and replace the hosts file).
//!
//! `cargo bench --bench relist_stall` runs 10 000 pods and 10 re-lists;
//! `-- PODS RELISTS` overrides. Under `cargo test --benches` it runs a
//! small smoke pass.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use support::apiserver::{self, TestApiServer, indexed_ip as ip_of};
use support::daemon::Daemon;

const SVC: &str = "xmpp-internal-svc";
const NODE: &[u8] = b"ejabberd";

fn sts_pod(i: usize, ip: &str) -> Pod {
    let name = format!("chat-{i}");
    apiserver::sts_pod("chat", &name, SVC, &[ip], true, &[("app", "xmpp")])
}

/// One PORT_PLEASE2 on a fresh connection; the reply must say "found".
fn port_please(addr: SocketAddr) -> Duration {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect to kube-epmd");
    s.set_nodelay(true).ok();
    s.write_all(&support::epmd::port_please(NODE))
        .expect("send PORT_PLEASE2");
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).expect("read PORT2_RESP");
    let took = start.elapsed();
    assert!(
        reply.len() > 2 && reply[0] == b'w' && reply[1] == 0,
        "PORT2_RESP is not a hit: {reply:?}"
    );
    took
}

/// Time between the starts of two requests. Paced rather than back to
/// back: every request leaves a TIME_WAIT socket, and tens of thousands of
/// them make connect() itself search for a free port for milliseconds,
/// which would be measured as the daemon's delay. A stall of the daemon
/// still catches every request sent during it.
const PACE: Duration = Duration::from_millis(2);

/// Set in the environment of the bench's own executable run as the
/// measuring client: the daemon's address.
const CLIENT_ENV: &str = "RELIST_STALL_CLIENT";

/// The client side, in a process of its own: ask every [`PACE`] until
/// stdin closes, then print one line per request, `SENT_NS TOOK_NS`
/// (nanoseconds after the client started).
///
/// Why a process: in the bench's process the client thread shares glibc's
/// malloc arenas with the test API server. When `expire_watches` drops the
/// retained LIST snapshots (10 000 pods), the freeing thread holds an arena
/// lock for ~10-13 ms, and the client's next allocation waited for it
/// (`__lll_lock_wait_private` in the client's stack) before it even sent its
/// request, while the daemon sat idle in epoll_wait: a stall of the
/// harness, counted as the daemon's.
fn client_process(addr: SocketAddr) {
    let stop = Arc::new(AtomicBool::new(false));
    let stop_reader = stop.clone();
    std::thread::spawn(move || {
        // The bench closes our stdin to end the phase.
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        stop_reader.store(true, Ordering::Relaxed);
    });
    let t0 = Instant::now();
    let mut lat = Vec::with_capacity(20_000);
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        lat.push((sent - t0, port_please(addr)));
        next += PACE;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            // Late (the daemon stalled): do not burst to catch up.
            next = now;
        }
    }
    let mut out = String::with_capacity(lat.len() * 24);
    for (sent, took) in lat {
        out.push_str(&format!("{} {}\n", sent.as_nanos(), took.as_nanos()));
    }
    std::io::stdout()
        .write_all(out.as_bytes())
        .expect("write latencies");
}

/// A running measuring client: [`client_process`] in a child process
/// (same scheduling policy as the bench, which a child inherits).
struct Client {
    child: std::process::Child,
    started: Instant,
}

impl Client {
    fn start(addr: SocketAddr) -> Client {
        let exe = std::env::current_exe().expect("the bench's own path");
        let child = std::process::Command::new(exe)
            .env(CLIENT_ENV, addr.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the measuring client");
        Client {
            child,
            started: Instant::now(),
        }
    }

    /// End the phase: every latency and when its request was sent.
    fn stop(mut self) -> Vec<(Instant, Duration)> {
        drop(self.child.stdin.take());
        let out = self.child.wait_with_output().expect("measuring client");
        assert!(out.status.success(), "measuring client: {}", out.status);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let mut f = l.split(' ').map(|n| n.parse::<u64>().expect("client line"));
                let (sent, took) = (f.next().unwrap(), f.next().unwrap());
                (
                    self.started + Duration::from_nanos(sent),
                    Duration::from_nanos(took),
                )
            })
            .collect()
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// Print the figures, and when each answer over 5 ms was asked (seconds
/// after `t0`), to line them up with the re-lists.
fn report(phase: &str, t0: Instant, samples: Vec<(Instant, Duration)>) {
    let slow_at: Vec<String> = samples
        .iter()
        .filter(|(_, d)| *d > Duration::from_millis(5))
        .map(|(at, d)| {
            format!(
                "{:.2}s:{:.1}ms",
                (*at - t0).as_secs_f64(),
                d.as_secs_f64() * 1e3
            )
        })
        .collect();
    let mut lat: Vec<Duration> = samples.into_iter().map(|(_, d)| d).collect();
    lat.sort();
    let slow = lat
        .iter()
        .filter(|d| **d > Duration::from_millis(5))
        .count();
    println!(
        "{phase:>7} {:>8} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>6}",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 0.999),
        lat.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        slow
    );
    if std::env::var_os("RELIST_STALL_VERBOSE").is_some() {
        println!("  slow answers asked at: {}", slow_at.join(" "));
    }
}

fn main() {
    if let Some(addr) = std::env::var_os(CLIENT_ENV) {
        let addr = addr.to_str().and_then(|a| a.parse().ok());
        client_process(addr.expect("RELIST_STALL_CLIENT is an address"));
        return;
    }
    let nums: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let full = std::env::args().any(|a| a == "--bench");
    let (pods, relists) = match nums.as_slice() {
        [p, r, ..] => (*p, *r),
        _ if full => (10_000, 10),
        _ => (200, 2),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let api = rt
        .block_on(TestApiServer::start("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    for i in 0..pods {
        api.upsert_pod(sts_pod(i, &ip_of(i)));
    }
    let mut d = Daemon::start_full(&api, "chat", None, &["--selector", "app=xmpp"], "warn");
    rt.block_on(d.wait_ready(Duration::from_secs(120)));
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, d.epmd_port));
    // The node whose port is asked for, registered for the whole run.
    let (_node, reg) =
        support::epmd::exchange_keep(d.epmd_port, &support::epmd::alive2(NODE, 4200, 6, b""));
    assert_eq!(reg.bytes.get(..2), Some(&[b'v', 0][..]), "ALIVE2 refused");
    let wait_watch = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while api.open_watches() != 1 {
            assert!(Instant::now() < deadline, "{what}:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_watch("no watch after the first list");

    println!("{pods} pods, {relists} re-lists (latency of PORT_PLEASE2 in ms)");
    println!(
        "{:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}",
        "phase", "requests", "p50", "p99", "p99.9", "max", ">5ms"
    );
    let c = Client::start(addr);
    let t0 = c.started;
    std::thread::sleep(Duration::from_secs(10));
    report("idle", t0, c.stop());

    let c = Client::start(addr);
    let lists = api.list_count();
    let started = Instant::now();
    let mut relist_at = Vec::new();
    for n in 0..relists {
        relist_at.push(format!("{:.2}", started.elapsed().as_secs_f64()));
        // A change the re-list brings in, so the hosts file is rewritten.
        api.upsert_pod(sts_pod(
            n % pods.max(1),
            &format!("172.16.0.{}", n % 250 + 1),
        ));
        api.expire_watches();
        wait_watch("no watch after a re-list");
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = started.elapsed();
    report("relist", started, c.stop());
    if std::env::var_os("RELIST_STALL_VERBOSE").is_some() {
        println!("  410s sent at (s): {}", relist_at.join(" "));
    }
    println!(
        "{} LIST pages in {:.1} s; daemon running: {}",
        api.list_count() - lists,
        took.as_secs_f64(),
        d.running()
    );
    assert!(d.running(), "{}", d.log());
}
