//! End to end: pods as network namespaces, each running kube-epmd in
//! Kubernetes mode (fed by the in-tree test API server) beside a real
//! Erlang node or a real ejabberd, as the sidecar and ejabberd share a
//! pod's network namespace. See tests/e2e/README.md for the layout and
//! how to run; every scenario prints its measured figures as `[e2e]`
//! lines (written past the test harness's capture).
//!
//! Needs root and `ip netns`; without them every test prints SKIP and
//! passes. Everything else missing (erl, ejabberd) is a failure.

#[path = "../support/mod.rs"]
mod support;

mod cluster;
mod ejabberd;
mod erlang;
mod lifecycle;
mod mesh;
mod netns;
mod probe;
mod rabbitmq;
mod scenarios;

use std::io::Write;
use std::sync::OnceLock;

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

/// Why the suite cannot run here (checked once), or None.
pub fn skip_reason() -> Option<&'static str> {
    static WHY: OnceLock<Option<String>> = OnceLock::new();
    WHY.get_or_init(netns::unsupported).as_deref()
}

/// Run one scenario: SKIP when the machine cannot, PASS/FAIL otherwise.
pub async fn run<F>(name: &str, f: F)
where
    F: std::future::Future<Output = Result<(), String>>,
{
    if let Some(why) = skip_reason() {
        report!("SKIP {name}: {why}");
        return;
    }
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
