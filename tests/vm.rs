//! Real Erlang VMs (Debian's erlang-base) registering with kube-epmd:
//! distribution works through it, and nodes re-register by themselves
//! after the daemon restarts.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::epmd::*;

/// An `erl` node that stays up until dropped.
struct Node {
    child: Child,
}

impl Node {
    fn start(name: &str, epmd_port: u16) -> Node {
        let child = erl(name, epmd_port)
            .args(["-eval", "receive stop -> ok end"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start erl");
        Node { child }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn erl(name: &str, epmd_port: u16) -> Command {
    let mut c = Command::new("erl");
    c.args([
        "-noshell",
        "-start_epmd",
        "false",
        "-name",
        &format!("{name}@127.0.0.1"),
        "-setcookie",
        "kube-epmd-test",
    ])
    .env("ERL_EPMD_PORT", epmd_port.to_string())
    // A crashing VM writes erl_crash.dump into its working directory:
    // never the repository.
    .current_dir(std::env::temp_dir())
    .stdin(Stdio::null());
    c
}

/// Evaluate `expr` on a fresh node and return what it printed.
fn eval(name: &str, epmd_port: u16, expr: &str) -> String {
    let (code, out, err) =
        run(erl(name, epmd_port)
            .args(["-eval", &format!("io:format(\"~p~n\", [{expr}]), halt().")]));
    assert_eq!(code, 0, "erl failed: {err}");
    out.trim().to_string()
}

fn names(port: u16) -> String {
    run(Command::new(kube_epmd_path()).args(["-port", &port.to_string(), "-names"])).1
}

#[test]
fn two_vms_register_ping_and_rpc() {
    let d = Daemon::start(Impl::Kube, &[]);
    let _a = Node::start("alpha", d.port);
    wait_until(Duration::from_secs(20), "alpha to register", || {
        names(d.port).contains("name alpha at port")
    });
    let out = eval(
        "beta",
        d.port,
        "{net_adm:ping('alpha@127.0.0.1'), rpc:call('alpha@127.0.0.1', erlang, node, []), \
          lists:sort([N || {N, _} <- element(2, net_adm:names())])}",
    );
    assert_eq!(out, "{pong,'alpha@127.0.0.1',[\"alpha\",\"beta\"]}");
    // OTP's own client sees the same registrations through kube-epmd.
    let (code, out, _) =
        run(Command::new(c_epmd_path()).args(["-port", &d.port.to_string(), "-names"]));
    assert_eq!(code, 0);
    assert!(out.contains("name alpha at port"), "{out}");
}

#[test]
fn nodes_reregister_after_daemon_restart() {
    let port = free_port();
    let mut d = Daemon::start_on(Impl::Kube, port, &[]);
    let _a = Node::start("gamma", port);
    wait_until(Duration::from_secs(20), "gamma to register", || {
        names(port).contains("name gamma at port")
    });
    d.kill();
    let restarted = Instant::now();
    let _d2 = Daemon::start_on(Impl::Kube, port, &[]);
    wait_until(Duration::from_secs(30), "gamma to re-register", || {
        names(port).contains("name gamma at port")
    });
    println!(
        "re-registration after restart took {:?}",
        restarted.elapsed()
    );
    let out = eval("delta", port, "net_adm:ping('gamma@127.0.0.1')");
    assert_eq!(out, "pong");
}
