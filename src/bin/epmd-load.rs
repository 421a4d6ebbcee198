//! epmd-load: drive any EPMD on a loopback address with N concurrent
//! clients, one TCP connection per request as real nodes do, and report
//! throughput, latency and — given the daemon's pid — its CPU time per
//! request and its memory.
//!
//! The tool has to stay cheaper than the daemon it measures, so requests are
//! encoded once up front (with the crate's own codec) and each client is a
//! plain blocking thread by default: connect, write, read to EOF, close — no
//! event loop in between. `--engine tokio` runs the same loop as tasks on a
//! current-thread runtime, to compare the two costs (`tool_cpu_us/req`).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::BytesMut;
use clap::{Parser, ValueEnum};
use kube_epmd::codec::{self, Alive2, Request};

#[derive(Debug, Parser)]
#[command(
    name = "epmd-load",
    about = "Load generator for EPMD daemons (loopback only)"
)]
struct Opts {
    /// Address of the EPMD under test; must be a loopback address.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port of the EPMD under test.
    #[arg(long)]
    port: u16,
    /// Which requests to send.
    #[arg(long, value_enum, default_value_t = Mode::PortPlease)]
    mode: Mode,
    /// Concurrent clients, each with at most one request in flight.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Stop after this many seconds...
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// ...or after this many requests, whichever comes first.
    #[arg(long)]
    count: Option<u64>,
    /// The daemon's pid: report its CPU time per request and its RSS.
    #[arg(long)]
    pid: Option<u32>,
    /// Pin this tool to these CPUs (e.g. "1" or "0,1").
    #[arg(long, value_delimiter = ',')]
    cpu: Vec<usize>,
    /// Blocking threads, or tasks on a current-thread tokio runtime.
    #[arg(long, value_enum, default_value_t = Engine::Threads)]
    engine: Engine,
    /// Node name registered (and held) for port-please and mix.
    #[arg(long, default_value = "loadnode")]
    name: String,
    /// Distribution port announced in registrations.
    #[arg(long, default_value_t = 4200)]
    dist_port: u16,
    /// Hold this many idle connections (from 127.0.0.2) open during the run
    /// and report how many survive and the daemon's memory per connection.
    #[arg(long, default_value_t = 0)]
    hold_idle: usize,
    /// Per-request socket timeout in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Print one `key=value` line instead of the human summary.
    #[arg(long)]
    kv: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// PORT_PLEASE2 for a name the tool registers first and holds.
    PortPlease,
    /// NAMES_REQ.
    Names,
    /// ALIVE2_REQ, read the reply, close (register-then-unregister).
    AliveChurn,
    /// 8 PORT_PLEASE2 : 1 NAMES : 1 ALIVE2 churn.
    Mix,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::PortPlease => "port-please",
            Mode::Names => "names",
            Mode::AliveChurn => "alive-churn",
            Mode::Mix => "mix",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Engine {
    Threads,
    Tokio,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    PortPlease,
    Names,
    Alive,
}

/// Names each churn client cycles through: by the time a name comes round
/// again its previous connection has long been closed and unregistered.
const CHURN_SLOTS: u64 = 64;

/// Every request frame, encoded once.
struct Frames {
    port_please: Vec<u8>,
    names: Vec<u8>,
    /// `[client * CHURN_SLOTS + slot]`
    alive: Vec<Vec<u8>>,
}

fn frame(req: &Request) -> Vec<u8> {
    let mut b = BytesMut::new();
    codec::encode_request(req, &mut b);
    b.to_vec()
}

fn alive_req(name: &str, port: u16) -> Request {
    Request::Alive2(Alive2::erlang_node(name, port))
}

impl Frames {
    fn new(o: &Opts) -> Frames {
        let mut alive = Vec::new();
        for c in 0..o.clients as u64 {
            for s in 0..CHURN_SLOTS {
                alive.push(frame(&alive_req(&format!("lc{c}x{s}"), o.dist_port)));
            }
        }
        Frames {
            port_please: frame(&Request::PortPlease2 {
                name: o.name.as_bytes().to_vec(),
            }),
            names: frame(&Request::Names),
            alive,
        }
    }
}

fn kind_for(mode: Mode, seq: u64) -> Kind {
    match mode {
        Mode::PortPlease => Kind::PortPlease,
        Mode::Names => Kind::Names,
        Mode::AliveChurn => Kind::Alive,
        Mode::Mix => match seq % 10 {
            0 => Kind::Names,
            1 => Kind::Alive,
            _ => Kind::PortPlease,
        },
    }
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// A well-formed negative answer (registration refused, name missing).
    Refused,
}

/// Check a complete reply for `kind`.
fn judge(kind: Kind, reply: &[u8]) -> Result<Outcome, String> {
    match kind {
        Kind::PortPlease => match reply {
            [b'w', 0, ..] if reply.len() >= 12 => Ok(Outcome::Ok),
            [b'w', 1] => Ok(Outcome::Refused),
            _ => Err(format!("bad PORT2_RESP {reply:?}")),
        },
        Kind::Names if reply.len() >= 4 => Ok(Outcome::Ok),
        Kind::Names => Err(format!("short NAMES reply {reply:?}")),
        Kind::Alive => match reply {
            [b'v', 0, _, _, _, _] => Ok(Outcome::Ok),
            [b'v', 1, _, _, _, _] => Ok(Outcome::Refused),
            _ => Err(format!("bad ALIVE2 reply {reply:?}")),
        },
    }
}

/// What one client measured.
#[derive(Default)]
struct Tally {
    latencies_ns: Vec<u64>,
    refused: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn record(&mut self, started: Instant, r: Result<Outcome, String>) {
        match r {
            Ok(o) => {
                self.latencies_ns.push(started.elapsed().as_nanos() as u64);
                if o == Outcome::Refused {
                    self.refused += 1;
                }
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies_ns.extend(other.latencies_ns);
        self.refused += other.refused;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Shared stop conditions: a deadline and an optional request budget.
struct Budget {
    deadline: Instant,
    limit: Option<u64>,
    issued: AtomicU64,
}

impl Budget {
    /// The sequence number of the next request, or None when done.
    fn next(&self) -> Option<u64> {
        if Instant::now() >= self.deadline {
            return None;
        }
        let seq = self.issued.fetch_add(1, Ordering::Relaxed);
        match self.limit {
            Some(l) if seq >= l => None,
            _ => Some(seq),
        }
    }
}

struct Job {
    addr: SocketAddr,
    mode: Mode,
    frames: Frames,
    timeout: Duration,
}

impl Job {
    fn payload(&self, kind: Kind, client: usize, i: u64) -> &[u8] {
        match kind {
            Kind::PortPlease => &self.frames.port_please,
            Kind::Names => &self.frames.names,
            Kind::Alive => {
                &self.frames.alive[client * CHURN_SLOTS as usize + (i % CHURN_SLOTS) as usize]
            }
        }
    }
}

fn blocking_request(
    job: &Job,
    kind: Kind,
    payload: &[u8],
    buf: &mut Vec<u8>,
) -> Result<Outcome, String> {
    let mut s =
        TcpStream::connect_timeout(&job.addr, job.timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(job.timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(payload).map_err(|e| format!("write: {e}"))?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        // A registration is held open by the daemon: stop at the reply.
        if kind == Kind::Alive && buf.len() >= 6 {
            break;
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    judge(kind, buf)
}

fn run_threads(job: Arc<Job>, budget: Arc<Budget>, clients: usize) -> Tally {
    // Start all clients at once so none runs alone while others spawn.
    let start = Arc::new(Barrier::new(clients + 1));
    let handles: Vec<_> = (0..clients)
        .map(|client| {
            let (job, budget, start) = (job.clone(), budget.clone(), start.clone());
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut t = Tally::default();
                    let mut buf = Vec::with_capacity(4096);
                    let mut i = 0u64;
                    start.wait();
                    while let Some(seq) = budget.next() {
                        let kind = kind_for(job.mode, seq);
                        let payload = job.payload(kind, client, i);
                        i += 1;
                        let t0 = Instant::now();
                        let r = blocking_request(&job, kind, payload, &mut buf);
                        t.record(t0, r);
                    }
                    t
                })
                .expect("spawn client thread")
        })
        .collect();
    start.wait();
    let mut all = Tally::default();
    for h in handles {
        if let Ok(t) = h.join() {
            all.merge(t);
        }
    }
    all
}

async fn tokio_request(
    job: &Job,
    kind: Kind,
    payload: &[u8],
    buf: &mut Vec<u8>,
) -> Result<Outcome, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut s = tokio::net::TcpStream::connect(job.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(payload)
            .await
            .map_err(|e| format!("write: {e}"))?;
        buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            if kind == Kind::Alive && buf.len() >= 6 {
                break;
            }
            match s.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        Ok::<_, String>(())
    };
    tokio::time::timeout(job.timeout, io)
        .await
        .map_err(|_| "timeout".to_string())??;
    judge(kind, buf)
}

fn run_tokio(job: Arc<Job>, budget: Arc<Budget>, clients: usize) -> anyhow::Result<Tally> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for client in 0..clients {
            let (job, budget) = (job.clone(), budget.clone());
            tasks.spawn(async move {
                let mut t = Tally::default();
                let mut buf = Vec::with_capacity(4096);
                let mut i = 0u64;
                while let Some(seq) = budget.next() {
                    let kind = kind_for(job.mode, seq);
                    let payload = job.payload(kind, client, i);
                    i += 1;
                    let t0 = Instant::now();
                    let r = tokio_request(&job, kind, payload, &mut buf).await;
                    t.record(t0, r);
                }
                t
            });
        }
        let mut all = Tally::default();
        while let Some(r) = tasks.join_next().await {
            if let Ok(t) = r {
                all.merge(t);
            }
        }
        all
    }))
}

/// CPU time (user + system) and memory of a process, from /proc.
#[derive(Debug, Clone, Copy, Default)]
struct ProcSample {
    cpu: Duration,
    user: Duration,
    rss_kib: u64,
    hwm_kib: u64,
}

fn proc_sample(pid: u32) -> anyhow::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("no process {pid}"))?;
    // Fields after the parenthesised command: state is field 3, so utime
    // (14) and stime (15) are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let hz = rustix::param::clock_ticks_per_second().max(1);
    let ticks = tick(11) + tick(12);
    let user = Duration::from_nanos(tick(11) * 1_000_000_000 / hz);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(ProcSample {
        cpu: Duration::from_nanos(ticks * 1_000_000_000 / hz),
        user,
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
    })
}

fn self_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec.max(0) as u64, t.tv_nsec.max(0) as u32)
}

fn pin_to(cpus: &[usize]) -> anyhow::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    for &c in cpus {
        set.set(c);
    }
    rustix::thread::sched_setaffinity(None, &set)
        .map_err(|e| anyhow::anyhow!("sched_setaffinity: {e}"))
}

/// Raise our own descriptor limit so `--hold-idle` and many clients fit.
/// Failure only means fewer connections can be held, which the report shows.
fn raise_nofile(want: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    if cur.current.is_some_and(|c| c < want) {
        let wanted = Rlimit {
            current: Some(want),
            maximum: Some(want),
        };
        if setrlimit(Resource::Nofile, wanted).is_err() {
            let _ = setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: cur.maximum,
                    maximum: cur.maximum,
                },
            );
        }
    }
}

/// Open `n` connections from 127.0.0.2 that never send anything.
fn hold_idle(addr: SocketAddr, n: usize) -> (Vec<socket2::Socket>, u64) {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let mut held = Vec::with_capacity(n);
    let mut failed = 0u64;
    let mut failed_in_a_row = 0;
    let src: SocketAddr = match addr.ip() {
        IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 0),
        IpAddr::V6(_) => SocketAddr::new(addr.ip(), 0),
    };
    for _ in 0..n {
        let r = (|| -> io::Result<Socket> {
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            // Ports are then chosen per 4-tuple at connect time, so 20 000
            // held sockets do not use up the ephemeral range the load needs.
            if addr.is_ipv4() {
                let one: libc::c_int = 1;
                // SAFETY: setsockopt reads one int from a live socket.
                unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&s),
                        libc::IPPROTO_IP,
                        libc::IP_BIND_ADDRESS_NO_PORT,
                        &one as *const _ as *const libc::c_void,
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    );
                }
                s.bind(&SockAddr::from(src))?;
            }
            // A daemon that stops accepting lets the backlog fill, and then
            // connects hang: give up on one after a second.
            s.connect_timeout(&SockAddr::from(addr), Duration::from_secs(1))?;
            Ok(s)
        })();
        match r {
            Ok(s) => {
                held.push(s);
                failed_in_a_row = 0;
            }
            Err(_) => {
                failed += 1;
                failed_in_a_row += 1;
                if failed_in_a_row == 5 {
                    // The daemon takes no more: count the rest as failed.
                    failed = (n - held.len()) as u64;
                    break;
                }
            }
        }
    }
    (held, failed)
}

/// How many held sockets the daemon has not closed.
fn still_open(held: &[socket2::Socket]) -> usize {
    held.iter()
        .filter(|s| {
            let mut b = [std::mem::MaybeUninit::<u8>::uninit(); 1];
            s.set_nonblocking(true).ok();
            // Open and silent: WouldBlock. Closed: EOF or an error.
            matches!(s.peek(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        })
        .count()
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let o = Opts::parse();
    if !o.host.is_loopback() {
        bail!(
            "refusing to send traffic to {}: only loopback addresses are allowed",
            o.host
        );
    }
    if o.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if !o.cpu.is_empty() {
        pin_to(&o.cpu)?;
    }
    raise_nofile((o.hold_idle + o.clients + 256) as u64);
    let addr = SocketAddr::new(o.host, o.port);
    let timeout = Duration::from_millis(o.timeout_ms);

    // Port-please needs a registered name: register it and hold it open.
    let _registration = if matches!(o.mode, Mode::PortPlease | Mode::Mix) {
        let mut s = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("cannot reach EPMD at {addr}"))?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(&frame(&alive_req(&o.name, o.dist_port)))?;
        let mut reply = [0u8; 6];
        s.read_exact(&mut reply).context("no ALIVE2 reply")?;
        if reply[..2] != [b'v', 0] {
            bail!("could not register {:?}: reply {reply:?}", o.name);
        }
        Some(s)
    } else {
        None
    };

    let before_hold = o.pid.map(proc_sample).transpose()?;
    let (held, hold_failed) = hold_idle(addr, o.hold_idle);
    let open_before = if o.hold_idle > 0 {
        // Let the daemon accept them all before measuring its memory.
        std::thread::sleep(Duration::from_millis(500));
        still_open(&held)
    } else {
        0
    };

    let job = Arc::new(Job {
        addr,
        mode: o.mode,
        frames: Frames::new(&o),
        timeout,
    });
    let before = o.pid.map(proc_sample).transpose()?;
    let budget = Arc::new(Budget {
        deadline: Instant::now() + Duration::from_secs_f64(o.duration) + Duration::from_millis(50),
        limit: o.count,
        issued: AtomicU64::new(0),
    });
    let tool0 = self_cpu();
    let t0 = Instant::now();
    let mut tally = match o.engine {
        Engine::Threads => run_threads(job, budget, o.clients),
        Engine::Tokio => run_tokio(job, budget, o.clients)?,
    };
    let elapsed = t0.elapsed();
    let tool_cpu = self_cpu().saturating_sub(tool0);
    let after = o.pid.map(proc_sample).transpose()?;
    let open_after = if o.hold_idle > 0 {
        still_open(&held)
    } else {
        0
    };
    drop(held);

    tally.latencies_ns.sort_unstable();
    let done = tally.latencies_ns.len() as u64;
    let us = |ns: u64| ns as f64 / 1000.0;
    let rps = done as f64 / elapsed.as_secs_f64();
    let mut kv: Vec<(&str, String)> = vec![
        ("mode", o.mode.as_str().to_string()),
        ("clients", o.clients.to_string()),
        ("requests", done.to_string()),
        ("secs", format!("{:.2}", elapsed.as_secs_f64())),
        ("rps", format!("{rps:.0}")),
        (
            "p50_us",
            format!("{:.1}", us(percentile(&tally.latencies_ns, 0.50))),
        ),
        (
            "p99_us",
            format!("{:.1}", us(percentile(&tally.latencies_ns, 0.99))),
        ),
        (
            "max_us",
            format!("{:.1}", us(tally.latencies_ns.last().copied().unwrap_or(0))),
        ),
        ("refused", tally.refused.to_string()),
        ("errors", tally.errors.to_string()),
        (
            "tool_cpu_us_per_req",
            format!("{:.2}", tool_cpu.as_secs_f64() * 1e6 / done.max(1) as f64),
        ),
    ];
    if let (Some(b), Some(a)) = (before, after) {
        let cpu = a.cpu.saturating_sub(b.cpu);
        kv.push((
            "daemon_cpu_us_per_req",
            format!("{:.2}", cpu.as_secs_f64() * 1e6 / done.max(1) as f64),
        ));
        let user = a.user.saturating_sub(b.user);
        kv.push((
            "daemon_user_us_per_req",
            format!("{:.2}", user.as_secs_f64() * 1e6 / done.max(1) as f64),
        ));
        kv.push((
            "daemon_cpu_pct",
            format!("{:.0}", cpu.as_secs_f64() * 100.0 / elapsed.as_secs_f64()),
        ));
        kv.push(("rss_kib", a.rss_kib.to_string()));
        kv.push(("hwm_kib", a.hwm_kib.to_string()));
    }
    if o.hold_idle > 0 {
        kv.push(("held_open", open_after.to_string()));
        kv.push(("hold_failed", hold_failed.to_string()));
        if let (Some(b), Some(a)) = (before_hold, before) {
            // Per connection the daemon actually kept (C epmd keeps ~1016).
            let per =
                (a.rss_kib.saturating_sub(b.rss_kib) as f64 * 1024.0) / open_before.max(1) as f64;
            kv.push(("rss_before_hold_kib", b.rss_kib.to_string()));
            kv.push(("rss_held_kib", a.rss_kib.to_string()));
            kv.push(("bytes_per_idle_conn", format!("{per:.0}")));
        }
    }
    if o.kv {
        let line: Vec<String> = kv.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("{}", line.join(" "));
    } else {
        for (k, v) in &kv {
            println!("{k:>22}  {v}");
        }
    }
    if let Some(e) = tally.first_error {
        eprintln!("first error: {e}");
    }
    Ok(())
}
