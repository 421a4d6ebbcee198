//! The daemon as a process: a clean shutdown on SIGTERM (stop accepting,
//! close registrations at once, finish or drop what is in flight within a
//! bounded time, exit 0) and a clear error for an argument that is not
//! UTF-8.

mod support;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::process::Command;
use std::time::{Duration, Instant};

use support::epmd::*;

#[test]
fn sigterm_closes_registrations_and_connections_then_exits_zero() {
    let mut d = Daemon::start(Impl::Kube, &[]);
    let (mut node, o) = exchange_keep(d.port, &alive2(b"held", 4200, 6, b""));
    assert_eq!(o.bytes[..2], [b'v', 0]);
    assert!(!o.closed);
    // A client that has sent half a request.
    let mut waiting = connect(d.port);
    waiting.write_all(&[0]).expect("half a header");

    // SAFETY: kill(2) on our own child process.
    assert_eq!(unsafe { libc::kill(d.pid() as i32, libc::SIGTERM) }, 0);
    let t = Instant::now();

    // The node is told at once (EOF), not when the process happens to die:
    // the reads below return on EOF, the bound only stops a broken daemon.
    let o = read_reply(&mut node, Duration::from_secs(10));
    assert!(o.closed && o.bytes.is_empty(), "registration kept: {o:?}");
    let o = read_reply(&mut waiting, Duration::from_secs(10));
    assert!(o.closed && o.bytes.is_empty(), "waiting client kept: {o:?}");
    let st = d
        .exited_within(Duration::from_secs(10))
        .expect("no exit after SIGTERM");
    assert_eq!(st.code(), Some(0), "exit status {st:?}");
    // Shutdown is bounded by the drain period (2 s), not by the clients.
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        t.elapsed()
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", d.port)).is_err(),
        "still accepting after exit"
    );
}

#[test]
fn sigterm_lets_a_reply_in_flight_finish_or_drops_it_whole() {
    // -delay_write 1: every reply waits a second after its request is read.
    let mut d = Daemon::start(Impl::Kube, &["-delay_write", "1"]);
    let mut node = connect(d.port);
    node.write_all(&alive2(b"n", 4200, 6, b"")).expect("ALIVE2");
    node.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut reply = [0u8; 6];
    node.read_exact(&mut reply).expect("ALIVE2 reply");
    assert_eq!(reply[..2], [b'v', 0]);
    let mut names = connect(d.port);
    names.write_all(&frame(b"n")).expect("NAMES");
    // SAFETY: kill(2) on our own child process.
    assert_eq!(unsafe { libc::kill(d.pid() as i32, libc::SIGTERM) }, 0);
    let o = read_reply(&mut names, Duration::from_secs(10));
    assert!(o.closed, "{o:?}");
    // The whole NAMES reply or nothing: never a torn one.
    let whole = {
        let mut v = u32::from(d.port).to_be_bytes().to_vec();
        v.extend_from_slice(b"name n at port 4200\n");
        v
    };
    assert!(
        o.bytes.is_empty() || o.bytes == whole,
        "torn reply: {:?}",
        o.bytes
    );
    let st = d.exited_within(Duration::from_secs(10)).expect("exit");
    assert_eq!(st.code(), Some(0));
}

#[test]
fn a_non_utf8_argument_is_a_clear_error() {
    for args in [
        vec![OsStr::from_bytes(b"-stop"), OsStr::from_bytes(b"caf\xe9")],
        vec![OsStr::from_bytes(b"--selector"), OsStr::from_bytes(b"\xff")],
    ] {
        let out = Command::new(kube_epmd_path())
            .args(&args)
            .env_remove("ERL_EPMD_PORT")
            .output()
            .expect("run kube-epmd");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("is not valid UTF-8"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
