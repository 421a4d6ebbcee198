//! What an operator reads when a registration cannot go through: the refusal
//! names the settings of the program that registered (RabbitMQ's own
//! variables for its node names, `-kernel` flags otherwise), short-lived
//! helpers are logged once and then only counted, and a Kubernetes-mode
//! daemon that finds the EPMD port taken says who holds it.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::daemon::ChildGuard;
use support::epmd::*;

/// Plain-mode kube-epmd pinning 4200-4210, logging at info to `log`, with
/// an admin endpoint for its metrics. Returns (child, epmd port, admin port).
fn start_pinned(log: &Path) -> (ChildGuard, u16, u16) {
    let port = free_port();
    let admin = free_port();
    let child = Command::new(kube_epmd_path())
        .args(["-port", &port.to_string(), "-address", "127.0.0.1"])
        .args(["--dist-port-range", "4200-4210"])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .env("RUST_LOG", "info")
        .env_remove("ERL_EPMD_PORT")
        .env_remove("KUBE_EPMD_KUBERNETES")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn kube-epmd");
    let mut child = ChildGuard(child);
    wait_until(Duration::from_secs(10), "kube-epmd to listen", || {
        assert!(
            child.0.try_wait().ok().flatten().is_none(),
            "kube-epmd exited: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        TcpStream::connect(("127.0.0.1", port)).is_ok()
            && TcpStream::connect(("127.0.0.1", admin)).is_ok()
    });
    (child, port, admin)
}

/// GET /metrics from the admin endpoint.
fn metrics(admin: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", admin)).expect("admin");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("metrics");
    out
}

/// Register `name` on `port` and expect the refusal (result 1, kept open).
fn refused(epmd: u16, name: &str, port: u16) -> TcpStream {
    let (s, o) = exchange_keep(epmd, &alive2(name.as_bytes(), port, 6, b""));
    assert_eq!(o.bytes.get(..2), Some(&[b'v', 1][..]), "{name}: {o:?}");
    s
}

#[test]
fn refusals_name_the_programs_settings_and_helpers_are_logged_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("daemon.log");
    let (_d, epmd, admin) = start_pinned(&log);

    // RabbitMQ's defaults: broker on 25672, CLI tools 35672-35682, and the
    // epmd monitor's `erl -sname epmd-starter-N` once a minute on any port.
    let _b = refused(epmd, "rabbit", 25672);
    let _c = refused(epmd, "rabbitmqcli-713-rabbit", 35672);
    let _s: Vec<_> = (1..=3)
        .map(|i| refused(epmd, &format!("epmd-starter-{i}"), 40000 + i))
        .collect();
    let _e = refused(epmd, "ejabberd", 5000);

    // Each refusal is logged before its reply is written.
    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("registration refused"))
        .collect();
    let line = |node: &str| -> Vec<&str> {
        lines
            .iter()
            .copied()
            .filter(|l| l.contains(&format!("node={node} ")))
            .collect()
    };
    let broker = line("rabbit");
    assert_eq!(broker.len(), 1, "{text}");
    assert!(
        broker[0].contains("RABBITMQ_DIST_PORT=4200")
            && broker[0].contains("RABBITMQ_CTL_DIST_PORT_MIN=4201")
            && broker[0].contains("RABBITMQ_CTL_DIST_PORT_MAX=4210"),
        "{}",
        broker[0]
    );
    let cli = line("rabbitmqcli-713-rabbit");
    assert_eq!(cli.len(), 1, "{text}");
    assert!(
        cli[0].contains("RABBITMQ_CTL_DIST_PORT_MIN=4201"),
        "{}",
        cli[0]
    );
    let starters: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("epmd-starter"))
        .collect();
    assert_eq!(starters.len(), 1, "three starters, one line: {text}");
    assert!(
        starters[0].contains("ERL_ZFLAGS=\\\"-start_epmd false\\\"")
            || starters[0].contains("ERL_ZFLAGS=\"-start_epmd false\""),
        "{}",
        starters[0]
    );
    let other = line("ejabberd");
    assert_eq!(other.len(), 1, "{text}");
    assert!(
        other[0].contains("-kernel inet_dist_listen_min 4200 inet_dist_listen_max 4210")
            && !other[0].contains("RABBITMQ"),
        "{}",
        other[0]
    );

    // Every refusal is counted, the unlogged ones included.
    let m = metrics(admin);
    let count = |program: &str| {
        let key = format!(
            "kube_epmd_registrations_refused_total{{reason=\"port_outside_range\",program=\"{program}\"}} "
        );
        m.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    assert_eq!(count("rabbitmq_epmd_starter"), Some(3.0), "{m}");
    assert_eq!(count("rabbitmq"), Some(1.0), "{m}");
    assert_eq!(count("rabbitmq_cli"), Some(1.0), "{m}");
    assert_eq!(count("erlang"), Some(1.0), "{m}");
}

#[test]
fn kubernetes_mode_names_who_holds_the_epmd_port() {
    // OTP's epmd holds the port, as when an application's `erl` started it;
    // the node registered there proves the answer comes from this one.
    let c = Daemon::start(Impl::C, &[]);
    let (_held, o) = exchange_keep(c.port, &alive2(b"rabbit", 25672, 6, b""));
    assert_eq!(o.bytes[..2], [b'v', 0]);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(kube_epmd_path())
        .args(["--kubernetes", "-port", &c.port.to_string()])
        .args(["-address", "127.0.0.1"])
        .arg("--output-dir")
        .arg(dir.path())
        .env("KUBECONFIG", dir.path().join("no-kubeconfig"))
        .env("RUST_LOG", "warn")
        .env_remove("ERL_EPMD_PORT")
        .stdin(Stdio::null())
        .output()
        .expect("run kube-epmd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("EPMD on port {}", c.port))
            && err.contains("name rabbit at port 25672"),
        "the holder's NAMES answer is not shown: {err}"
    );
    assert!(
        err.contains("-start_epmd false") && err.contains("ERL_ZFLAGS"),
        "no way to prevent it: {err}"
    );
}
