//! Plain-mode harness: start kube-epmd or OTP's C epmd on a free port, talk
//! raw EPMD bytes to either, and clean up.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// OTP's own epmd from Debian's erlang-base: the reference implementation.
pub fn c_epmd_path() -> PathBuf {
    super::prereq::erl()
}

pub fn kube_epmd_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kube-epmd"))
}

pub use super::daemon::free_port;

/// Which implementation a [`Daemon`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    Kube,
    C,
}

/// A running EPMD, killed when dropped.
pub struct Daemon {
    pub port: u16,
    pub which: Impl,
    child: Child,
}

impl Daemon {
    pub fn start(which: Impl, extra: &[&str]) -> Daemon {
        Self::start_on(which, free_port(), extra)
    }

    pub fn start_on(which: Impl, port: u16, extra: &[&str]) -> Daemon {
        let bin = match which {
            Impl::Kube => kube_epmd_path(),
            Impl::C => c_epmd_path(),
        };
        let mut cmd = Command::new(bin);
        cmd.arg("-port").arg(port.to_string()).args(extra);
        cmd.env_remove("ERL_EPMD_PORT")
            .env_remove("ERL_EPMD_ADDRESS")
            .env_remove("ERL_EPMD_RELAXED_COMMAND_CHECK")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // Logs go to a file (a pipe nobody reads could fill and block the
        // daemon); it is shown if the daemon fails to start.
        let log_path =
            std::env::temp_dir().join(format!("kube-epmd-test-{}-{port}.log", std::process::id()));
        let log = std::fs::File::create(&log_path).expect("daemon log file");
        cmd.stderr(log);
        let child = cmd.spawn().expect("spawn epmd");
        let mut d = Daemon { port, which, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        // Up when it answers on loopback AND the listener is its own (the
        // free port may have been taken by someone else meanwhile).
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err()
            || !super::identity::listens_alone(d.child.id(), port)
        {
            let exited = d.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                if exited.is_none() {
                    d.kill();
                }
                let err = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("{which:?} epmd on port {port} did not start ({exited:?}): {err}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(&log_path);
        d
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Has the process exited (e.g. after an accepted KILL_REQ)?
    pub fn exited_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Poll `cond` until it holds; panic with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a client saw after sending something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub bytes: Vec<u8>,
    /// The daemon closed the connection (EOF or reset) rather than keep it.
    pub closed: bool,
}

pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).expect("connect");
    s.set_nodelay(true).ok();
    s
}

/// Read whatever arrives until the peer closes or `quiet` passes with no data.
pub fn read_reply(s: &mut TcpStream, quiet: Duration) -> Observed {
    s.set_read_timeout(Some(quiet)).ok();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => {
                return Observed {
                    bytes,
                    closed: true,
                };
            }
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Observed {
                    bytes,
                    closed: false,
                };
            }
            Err(_) => {
                return Observed {
                    bytes,
                    closed: true,
                };
            }
        }
    }
}

/// Longest wait for an event the daemon owes us (a reply, a close).
pub const EVENT_LIMIT: Duration = Duration::from_secs(10);

/// A barrier: a NAMES request on a connection of its own, read to the
/// end. Both epmds serve one event at a time (a select loop; a
/// single-threaded runtime), so once it is answered the daemon has dealt
/// with what it had received before it, and what that made it send (a
/// reply, a FIN) is already in our socket buffers: loopback delivers at
/// once. Returns false if the daemon is gone.
pub fn settle(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))) else {
        return false;
    };
    if s.write_all(&frame(b"n")).is_err() {
        return false;
    }
    let o = read_reply(&mut s, EVENT_LIMIT);
    o.closed && o.bytes.len() >= 4
}

/// What the daemon on `port` has sent on `s` and whether it closed it,
/// decided by events rather than a quiet spell: two barriers (the second
/// also covers anything the first overtook), then a read of what is
/// there without waiting. If the daemon is gone, wait for the EOF.
pub fn read_settled(s: &mut TcpStream, port: u16) -> Observed {
    if !(settle(port) && settle(port)) {
        return read_reply(s, EVENT_LIMIT);
    }
    s.set_nonblocking(true).expect("nonblocking");
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    s.set_nonblocking(false).expect("blocking");
    Observed { bytes, closed }
}

/// Block until `s` has data or the peer closed it (or `limit` passes),
/// consuming nothing.
pub fn wait_readable(s: &TcpStream, limit: Duration) {
    s.set_read_timeout(Some(limit)).ok();
    let _ = s.peek(&mut [0u8; 1]);
    s.set_read_timeout(None).ok();
}

/// What the daemon sent on `s` once at least `want` bytes (or the close)
/// arrived, plus whatever the settling barrier shows after that.
pub fn read_at_least(s: &mut TcpStream, port: u16, want: usize) -> Observed {
    let deadline = Instant::now() + EVENT_LIMIT;
    let mut seen = Observed {
        bytes: Vec::new(),
        closed: false,
    };
    loop {
        wait_readable(s, deadline.saturating_duration_since(Instant::now()));
        let o = read_settled(s, port);
        seen.bytes.extend_from_slice(&o.bytes);
        seen.closed = o.closed;
        if seen.closed || seen.bytes.len() >= want || Instant::now() >= deadline {
            return seen;
        }
    }
}

/// Open a connection, send `req`, collect the reply (every request sent
/// this way gets one, or a close).
pub fn exchange(port: u16, req: &[u8]) -> Observed {
    exchange_keep(port, req).1
}

/// Same, but hand back the socket (for registrations held open).
pub fn exchange_keep(port: u16, req: &[u8]) -> (TcpStream, Observed) {
    let mut s = connect(port);
    s.write_all(req).expect("write");
    let o = read_at_least(&mut s, port, 1);
    (s, o)
}

/// A length-prefixed frame around `payload`.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

/// An ALIVE2_REQ frame.
pub fn alive2(name: &[u8], port: u16, highest: u16, extra: &[u8]) -> Vec<u8> {
    let mut p = vec![b'x'];
    p.extend_from_slice(&port.to_be_bytes());
    p.push(77); // normal Erlang node
    p.push(0); // tcp/ipv4
    p.extend_from_slice(&highest.to_be_bytes());
    p.extend_from_slice(&5u16.to_be_bytes());
    p.extend_from_slice(&(name.len() as u16).to_be_bytes());
    p.extend_from_slice(name);
    p.extend_from_slice(&(extra.len() as u16).to_be_bytes());
    p.extend_from_slice(extra);
    frame(&p)
}

pub fn port_please(name: &[u8]) -> Vec<u8> {
    let mut p = vec![b'z'];
    p.extend_from_slice(name);
    frame(&p)
}

/// Run a command, return (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.stdin(Stdio::null()).output().expect("run command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
