//! End to end: pods as network namespaces, each running kube-epmd in
//! Kubernetes mode (fed by the in-tree test API server) beside a real
//! Erlang node or a real ejabberd, as the sidecar and ejabberd share a
//! pod's network namespace. See tests/e2e/README.md for the layout and
//! how to run; every scenario prints its measured figures as `[e2e]`
//! lines (written past the test harness's capture).
//!
//! Needs root and `ip netns`: without them every scenario FAILS naming
//! what is missing, unless `KUBE_EPMD_TEST_SKIP=root` (or `netns`) marks
//! them ignored (README.md, "Set-up"). Every scenario carries
//! `#[cfg_attr(skip_netns, ignore = "needs root and ip netns")]`; one
//! without it fails under the opt-out instead of passing unseen.

#[path = "../support/mod.rs"]
mod support;

mod chroot;
mod cluster;
mod ejabberd;
mod erlang;
mod exec;
mod lifecycle;
mod mesh;
mod netns;
mod probe;
mod rabbitmq;
mod scenarios;
mod tls_rotation;

use std::io::Write;

/// Print a line of the suite's report, bypassing libtest's capture so the
/// figures show in every run, passing or not.
#[macro_export]
macro_rules! report {
    ($($arg:tt)*) => {{
        $crate::report_line(&format!($($arg)*));
    }};
}

pub fn report_line(s: &str) {
    let line = format!("[e2e] {s}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// A scenario's assertion: `Err(what())` unless `cond` holds.
pub fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

/// Run one scenario: fails at once when the machine lacks root or
/// network namespaces (never a silent pass), PASS/FAIL otherwise.
pub async fn run<F>(name: &str, f: F)
where
    F: std::future::Future<Output = Result<(), String>>,
{
    support::prereq::netns();
    let t0 = std::time::Instant::now();
    report!("START {name}");
    match f.await {
        Ok(()) => report!("PASS {name} in {:?}", t0.elapsed()),
        Err(e) => {
            report!("FAIL {name} after {:?}: {e}", t0.elapsed());
            panic!("{name}: {e}");
        }
    }
}
