//! The epmd-compatible command line: client commands print what OTP's
//! `epmd` prints and exit with the same codes, against either daemon;
//! daemon flags and environment behave as epmd's.

mod support;

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use support::epmd::*;

fn client(which: Impl, port: u16, args: &[&str]) -> (i32, String, String) {
    let bin = match which {
        Impl::Kube => kube_epmd_path(),
        Impl::C => c_epmd_path(),
    };
    run(Command::new(bin)
        .arg("-port")
        .arg(port.to_string())
        .args(args)
        .env_remove("ERL_EPMD_PORT"))
}

/// Register the same nodes on a daemon; returns the held connections.
fn register(port: u16, names: &[&str]) -> Vec<TcpStream> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let (s, o) = exchange_keep(port, &alive2(n.as_bytes(), 4200 + i as u16, 6, b""));
            assert_eq!(o.bytes[..2], [b'v', 0], "register {n}");
            s
        })
        .collect()
}

#[test]
fn names_output_is_identical_for_every_client_daemon_pair() {
    let c = Daemon::start(Impl::C, &[]);
    let k = Daemon::start(Impl::Kube, &[]);
    let _hc = register(c.port, &["alpha", "beta"]);
    let _hk = register(k.port, &["alpha", "beta"]);
    let norm = |out: String, port: u16| out.replace(&port.to_string(), "PORT");
    let reference = norm(client(Impl::C, c.port, &["-names"]).1, c.port);
    assert!(
        reference.starts_with("epmd: up and running on port PORT with data:\n"),
        "{reference}"
    );
    assert!(reference.contains("name beta at port 4201\nname alpha at port 4200\n"));
    for (cl, d) in [(Impl::Kube, &c), (Impl::C, &k), (Impl::Kube, &k)] {
        let (code, out, _) = client(cl, d.port, &["-names"]);
        assert_eq!(code, 0);
        assert_eq!(
            norm(out, d.port),
            reference,
            "{cl:?} client vs {:?}",
            d.which
        );
    }
}

#[test]
fn started_reports_whether_a_daemon_answers() {
    let k = Daemon::start(Impl::Kube, &[]);
    assert_eq!(
        client(Impl::Kube, k.port, &["-started"]),
        (0, String::new(), String::new())
    );
    let nobody = free_port();
    for which in [Impl::C, Impl::Kube] {
        assert_eq!(client(which, nobody, &["-started"]).0, 1, "{which:?}");
    }
}

#[test]
fn no_daemon_gives_epmds_message() {
    let nobody = free_port();
    let c = client(Impl::C, nobody, &["-names"]);
    let k = client(Impl::Kube, nobody, &["-names"]);
    assert_eq!(c.0, 1);
    assert_eq!(k, c);
    assert_eq!(k.2, "epmd: Cannot connect to local epmd\n");
}

#[test]
fn kill_and_stop_outputs_match() {
    for flags in [&[][..], &["-relaxed_command_check"][..]] {
        let mut outs = Vec::new();
        for which in [Impl::C, Impl::Kube] {
            let mut d = Daemon::start(which, flags);
            let _held = register(d.port, &["victim"]);
            let stop_unknown = client(which, d.port, &["-stop", "nobody"]);
            let stop = client(which, d.port, &["-stop", "victim"]);
            let kill = client(which, d.port, &["-kill"]);
            let exited = d.exited_within(Duration::from_secs(3)).is_some();
            outs.push((stop_unknown, stop, kill, exited));
        }
        assert_eq!(
            outs[0], outs[1],
            "flags {flags:?}: C (left) vs kube (right)"
        );
    }
}

#[test]
fn kill_output_and_exit_codes() {
    let mut k = Daemon::start(Impl::Kube, &[]);
    let _held = register(k.port, &["n"]);
    assert_eq!(
        client(Impl::Kube, k.port, &["-kill"]),
        (
            1,
            "Killing not allowed - living nodes in database.\n".into(),
            String::new()
        )
    );
    drop(_held);
    wait_until(Duration::from_secs(5), "node to unregister", || {
        client(Impl::Kube, k.port, &["-names"]).1.lines().count() == 1
    });
    assert_eq!(
        client(Impl::Kube, k.port, &["-kill"]),
        (0, "Killed\n".into(), String::new())
    );
    assert!(k.exited_within(Duration::from_secs(5)).is_some());
}

#[test]
fn dump_output_matches_modulo_descriptors() {
    let c = Daemon::start(Impl::C, &[]);
    let k = Daemon::start(Impl::Kube, &[]);
    let mut hc = register(c.port, &["d1", "d2"]);
    let mut hk = register(k.port, &["d1", "d2"]);
    // d1 becomes an "old/unused" name, d2 stays active.
    drop(hc.remove(0));
    drop(hk.remove(0));
    // Both have seen d1's connection close: it left NAMES.
    for port in [c.port, k.port] {
        wait_until(EVENT_LIMIT, "d1 to leave NAMES", || {
            !client(Impl::C, port, &["-names"]).1.contains("name d1 at")
        });
    }
    let strip = |s: String, port: u16| {
        s.replace(&port.to_string(), "PORT")
            .split("fd = ")
            .map(|p| p.trim_start_matches(|c: char| c.is_ascii_digit()))
            .collect::<Vec<_>>()
            .join("fd = #")
    };
    let co = strip(client(Impl::C, c.port, &["-dump"]).1, c.port);
    let ko = strip(client(Impl::Kube, k.port, &["-dump"]).1, k.port);
    assert!(co.contains("old/unused name <d1>"), "{co:?}");
    assert!(co.contains("active name     <d2>"), "{co:?}");
    assert_eq!(ko, co);
}

#[test]
fn env_port_is_honoured_and_flags_win() {
    let k = Daemon::start(Impl::Kube, &[]);
    let (code, out, _) = run(Command::new(kube_epmd_path())
        .arg("-names")
        .env("ERL_EPMD_PORT", k.port.to_string()));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("port {}", k.port)));
    let (code, _, _) = run(Command::new(kube_epmd_path())
        .args(["-port", &k.port.to_string(), "-names"])
        .env("ERL_EPMD_PORT", free_port().to_string()));
    assert_eq!(code, 0);
}

#[test]
fn port_in_use_exits_zero_like_epmd() {
    let k = Daemon::start(Impl::Kube, &[]);
    let (code, _, err) = run(Command::new(kube_epmd_path())
        .args(["-port", &k.port.to_string()])
        .env("RUST_LOG", "warn"));
    assert_eq!(code, 0);
    assert!(err.contains("already"), "{err}");
    // A sidecar that cannot hold the port must fail visibly instead.
    let (code, _, err) = run(Command::new(kube_epmd_path())
        .args(["--kubernetes", "-port", &k.port.to_string()])
        .env("RUST_LOG", "warn"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already"), "{err}");
}

#[test]
fn bad_flags_name_the_problem_and_fail() {
    for args in [
        &["-port", "notaport"][..],
        &["-bogus"],
        &["-address", "300.1.1.1"],
        &["--dist-port-range", "5-1"],
        &["-packet_timeout", "0"],
    ] {
        let (code, out, err) = run(Command::new(kube_epmd_path()).args(args));
        assert_ne!(code, 0, "{args:?} accepted");
        assert!(out.is_empty(), "{args:?}: {out}");
        let shown = args.iter().find(|a| err.contains(*a));
        assert!(
            shown.is_some(),
            "{args:?}: message does not name the problem: {err}"
        );
    }
}

#[test]
fn address_flag_limits_listening_to_loopback_plus_given() {
    // -address 127.0.0.2: the daemon listens there and on loopback (always
    // added, as in epmd), on nothing else: 127.0.0.3 (any address but
    // these) is refused. A daemon that ignored -address would listen on
    // the wildcard and accept there.
    let mut listening = Vec::new();
    for which in [Impl::C, Impl::Kube] {
        let port = free_port();
        let d = Daemon::start_on(which, port, &["-address", "127.0.0.2"]);
        let given = std::net::SocketAddr::from(([127, 0, 0, 2], port));
        let other = std::net::SocketAddr::from(([127, 0, 0, 3], port));
        assert!(
            TcpStream::connect(given).is_ok(),
            "{which:?}: {given} refused"
        );
        assert!(
            TcpStream::connect(other).is_err(),
            "{which:?}: {other} accepted: -address ignored"
        );
        assert_eq!(client(which, port, &["-names"]).0, 0, "{which:?}: loopback");
        let addrs = support::identity::listen_addrs(d.pid(), port);
        assert!(
            addrs.iter().all(|a| !a.is_unspecified()),
            "{which:?} listens on a wildcard: {addrs:?}"
        );
        listening.push(addrs);
    }
    // The same set of addresses as OTP's epmd.
    assert_eq!(listening[1], listening[0], "kube-epmd vs C epmd");
}

#[test]
fn dist_port_range_refuses_ports_outside() {
    let k = Daemon::start(Impl::Kube, &["--dist-port-range", "4200-4210"]);
    let (_a, o) = exchange_keep(k.port, &alive2(b"inside", 4210, 6, b""));
    assert_eq!(o.bytes[..2], [b'v', 0]);
    let (_b, o) = exchange_keep(k.port, &alive2(b"outside", 4211, 6, b""));
    assert_eq!(o.bytes, b"v\x01\0\0\0\x63");
    assert!(!o.closed);
    let (_, out, _) = client(Impl::Kube, k.port, &["-names"]);
    assert!(
        out.contains("name inside") && !out.contains("outside"),
        "{out}"
    );
}

#[test]
fn sigterm_stops_cleanly() {
    let mut k = Daemon::start(Impl::Kube, &[]);
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(k.pid() as i32, libc::SIGTERM) };
    let st = k
        .exited_within(Duration::from_secs(5))
        .expect("exit on SIGTERM");
    assert_eq!(st.code(), Some(0));
}

#[test]
fn daemon_flag_detaches_and_serves() {
    let port = free_port();
    let (code, _, _) =
        run(Command::new(kube_epmd_path()).args(["-daemon", "-port", &port.to_string()]));
    assert_eq!(code, 0);
    wait_until(Duration::from_secs(10), "detached daemon to answer", || {
        client(Impl::C, port, &["-names"]).0 == 0
    });
    // Nothing registered: epmd -kill stops it.
    assert_eq!(client(Impl::C, port, &["-kill"]).1, "Killed\n");
    wait_until(Duration::from_secs(5), "daemon to exit", || {
        client(Impl::Kube, port, &["-started"]).0 == 1
    });
}

#[test]
fn systemd_socket_activation() {
    use std::os::unix::process::CommandExt;
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let mut cmd = Command::new("sh");
    // exec keeps the shell's pid, so LISTEN_PID=$$ names kube-epmd itself.
    cmd.arg("-c")
        .arg(format!(
            "LISTEN_PID=$$ LISTEN_FDS=1 exec {} -systemd -port {port}",
            kube_epmd_path().display()
        ))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: dup2 is async-signal-safe; fd is open in the parent.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep FD_CLOEXEC: clear it explicitly.
            if (fd != 3 && libc::dup2(fd, 3) < 0) || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn");
    drop(listener);
    let (_held, o) = exchange_keep(port, &alive2(b"sd", 4200, 6, b""));
    assert_eq!(
        o.bytes[..2],
        [b'v', 0],
        "registration over the inherited socket"
    );
    assert!(
        client(Impl::C, port, &["-names"])
            .1
            .contains("name sd at port 4200")
    );
    let _ = child.kill();
    let _ = child.wait();
}
