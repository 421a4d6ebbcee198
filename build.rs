//! Turns the test opt-out variable into cfgs, so a test whose prerequisite
//! the user chose to go without is reported as *ignored* by libtest (never
//! as passed). Without the variable every such test runs and fails naming
//! what is missing. The list and the rule are in README.md ("Set-up").
//!
//!   KUBE_EPMD_TEST_SKIP=root,ejabberd cargo test

/// Prerequisites a test may need, each with the cfg its tests are ignored
/// under. `root` implies `netns`, `otp-suite` and `tcpdump` (all need root).
const PREREQS: &[(&str, &[&str])] = &[
    (
        "root",
        &["skip_root", "skip_netns", "skip_otp_suite", "skip_tcpdump"],
    ),
    ("netns", &["skip_netns", "skip_otp_suite"]),
    ("erl", &["skip_erl", "skip_otp_suite"]),
    ("ejabberd", &["skip_ejabberd"]),
    ("rabbitmq", &["skip_rabbitmq"]),
    ("kubectl", &["skip_kubectl"]),
    ("busybox", &["skip_busybox"]),
    ("forky", &["skip_forky"]),
    ("tcpdump", &["skip_tcpdump"]),
    ("nofile", &["skip_nofile"]),
    ("otp-suite", &["skip_otp_suite"]),
];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=KUBE_EPMD_TEST_SKIP");
    let mut all: Vec<&str> = PREREQS
        .iter()
        .flat_map(|(_, c)| c.iter().copied())
        .collect();
    all.sort();
    all.dedup();
    for cfg in &all {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    let wanted = std::env::var("KUBE_EPMD_TEST_SKIP").unwrap_or_default();
    let mut on: Vec<&str> = Vec::new();
    for word in wanted
        .split([',', ' '])
        .map(str::trim)
        .filter(|w| !w.is_empty())
    {
        match PREREQS.iter().find(|(name, _)| *name == word) {
            Some((_, cfgs)) => on.extend(cfgs.iter().copied()),
            None => {
                let known: Vec<&str> = PREREQS.iter().map(|(n, _)| *n).collect();
                // A typo must not silently run (and fail) or skip the wrong tests.
                panic!(
                    "KUBE_EPMD_TEST_SKIP: unknown prerequisite {word:?}; known: {}",
                    known.join(", ")
                );
            }
        }
    }
    on.sort();
    on.dedup();
    for cfg in on {
        println!("cargo::rustc-cfg={cfg}");
    }
}
