//! OTP's own EPMD test suite (erts/epmd/test/epmd_SUITE.erl of the
//! installed OTP, fetched from Debian's source package by
//! scripts/fetch-otp-suite.sh) run under Common Test against kube-epmd,
//! and against OTP's C epmd as the reference.
//!
//! The suite drives whatever `epmd` it finds (os:find_executable) on its
//! fixed port 2243 and stops it with KILL_REQ, so every run happens in a
//! network namespace of its own (`unshare -n`): it can neither meet nor
//! kill another epmd. The suite's own pauses make it slow (about 4 min in
//! one piece), so its cases are split across shards, each in its own
//! namespace; every case still runs alone against a fresh daemon. A
//! hook (tests/otp/epmd_under_test_cth.erl) puts the daemon under test
//! first in PATH and reports what the suite finds, which is checked.
//!
//! In OTP 25.2.3 the suite has 33 cases; two need an ssh proxy host and
//! skip themselves, so a full pass is 31 ok, 0 failed, 2 skipped.

#[allow(dead_code)]
#[path = "support/prereq.rs"]
mod prereq;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SHARDS: usize = 6;
const EXPECTED_OK: u32 = 31;
const EXPECTED_CASES: u32 = 33;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Where scripts/fetch-otp-suite.sh put the suite (or KUBE_EPMD_OTP_SUITE).
fn suite_dir() -> PathBuf {
    let dir = std::env::var_os("KUBE_EPMD_OTP_SUITE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo("target/otp-src"));
    if !dir.join("epmd_SUITE.erl").is_file() || !dir.join("ts_install_cth.erl").is_file() {
        panic!(
            "missing prerequisite `otp-suite`: no epmd_SUITE.erl in {}\n  fix: bash \
             scripts/fetch-otp-suite.sh (and apt-get install erlang-common-test erlang-dev)\n  \
             or opt out: KUBE_EPMD_TEST_SKIP=otp-suite cargo test",
            dir.display()
        );
    }
    dir
}

fn checked(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The suite's top-level entries (`case` or `group NAME`), from its all/0.
fn entries(ebin: &Path, cwd: &Path) -> Vec<String> {
    let out = checked(
        Command::new("erl")
            .args(["-noshell", "-start_epmd", "false", "-pa"])
            .arg(ebin)
            .args([
                "-eval",
                "[io:format(\"~s~n\", [case E of {group, G} -> [\"group \", atom_to_list(G)]; \
                 C -> atom_to_list(C) end]) || E <- epmd_SUITE:all()], halt().",
            ])
            .current_dir(cwd),
        "erl listing epmd_SUITE:all()",
    );
    out.lines().map(str::to_string).collect()
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    ok: u32,
    failed: u32,
    skipped: u32,
    cases: u32,
}

/// Parse Common Test's "TEST COMPLETE, 5 ok, 1 failed, 2 skipped of 8
/// test cases" line.
fn tally(output: &str) -> Option<Tally> {
    let line = output.lines().rev().find(|l| l.contains("TEST COMPLETE"))?;
    let rest = line.split("TEST COMPLETE,").nth(1)?;
    let mut t = Tally::default();
    let words: Vec<&str> = rest.split([',', ' ']).filter(|w| !w.is_empty()).collect();
    for pair in words.windows(2) {
        let n = pair[0].parse().ok();
        match (n, pair[1]) {
            (Some(n), "ok") => t.ok = n,
            (Some(n), "failed") => t.failed = n,
            (Some(n), "skipped") => t.skipped = n,
            _ => {}
        }
    }
    let of = words.iter().position(|w| *w == "of")?;
    t.cases = words.get(of + 1)?.parse().ok()?;
    Some(t)
}

/// Run the whole suite against `epmd` (a binary that acts as epmd).
fn run_suite(label: &str, epmd: &Path) -> Tally {
    prereq::netns();
    prereq::erl();
    for tool in ["ct_run", "erlc", "unshare"] {
        if prereq::which(tool).is_none() {
            panic!(
                "missing prerequisite `otp-suite`: no {tool} on PATH\n  fix: apt-get install \
                 erlang-common-test erlang-dev util-linux\n  or opt out: \
                 KUBE_EPMD_TEST_SKIP=otp-suite cargo test"
            );
        }
    }
    let src = suite_dir();
    // Kept after the run (Common Test's HTML logs, each shard's output),
    // replaced by the next run.
    let work = repo("target/otp-epmd-suite").join(label);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("work dir");
    let ebin = work.join("ebin");
    std::fs::create_dir(&ebin).expect("ebin");
    checked(
        Command::new("erlc")
            .arg("-o")
            .arg(&ebin)
            .arg(src.join("epmd_SUITE.erl"))
            .arg(src.join("ts_install_cth.erl"))
            .arg(repo("tests/otp/epmd_under_test_cth.erl")),
        "erlc (is erlang-dev installed? the suite includes common_test/include/ct.hrl)",
    );
    // The directory whose `epmd` the suite finds.
    let bin = work.as_path().join("bin");
    std::fs::create_dir(&bin).expect("bin");
    std::os::unix::fs::symlink(epmd, bin.join("epmd")).expect("symlink epmd");

    let all = entries(&ebin, work.as_path());
    assert!(all.len() > 20, "epmd_SUITE:all() looks wrong: {all:?}");
    let mut shards: Vec<Vec<&String>> = vec![Vec::new(); SHARDS];
    for (i, e) in all.iter().enumerate() {
        shards[i % SHARDS].push(e);
    }

    let suite_dir = ebin.display().to_string();
    let mut running = Vec::new();
    for (i, entries) in shards.iter().enumerate() {
        let dir = work.as_path().join(format!("shard{i}"));
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).expect("shard dir");
        let mut spec = format!(
            "{{logdir, {:?}}}.\n{{auto_compile, false}}.\n{{ct_hooks, [epmd_under_test_cth]}}.\n",
            logs
        );
        let cases: Vec<&str> = entries
            .iter()
            .filter(|e| !e.starts_with("group "))
            .map(|e| e.as_str())
            .collect();
        if !cases.is_empty() {
            spec += &format!(
                "{{cases, {suite_dir:?}, epmd_SUITE, [{}]}}.\n",
                cases.join(", ")
            );
        }
        for g in entries.iter().filter_map(|e| e.strip_prefix("group ")) {
            spec += &format!("{{groups, {suite_dir:?}, epmd_SUITE, {g}}}.\n");
        }
        let spec_path = dir.join("shard.spec");
        std::fs::write(&spec_path, spec).expect("spec");
        let found = dir.join("found");
        let log = std::fs::File::create(dir.join("ct_run.out")).expect("log");
        // A private network namespace with only loopback: port 2243 and
        // the KILL_REQs the suite sends stay inside it.
        let child = Command::new("unshare")
            .args(["-n", "sh", "-c"])
            .arg(
                "ip link set lo up && readlink /proc/self/ns/net > netns && \
                 exec ct_run -noshell -pa \"$1\" -spec \"$2\"",
            )
            .arg("sh")
            .arg(&ebin)
            .arg(&spec_path)
            .env("EPMD_UNDER_TEST_DIR", &bin)
            .env("EPMD_UNDER_TEST_FOUND", &found)
            .env("RUST_LOG", "warn")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn unshare/ct_run");
        running.push((dir, found, child));
    }

    let deadline = Instant::now() + Duration::from_secs(15 * 60);
    // Wait for every shard and clean up after all of them before judging.
    let mut results = Vec::new();
    for (dir, found, mut child) in running {
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait ct_run") {
                break Some(st);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if status.is_none() {
            // SAFETY: kill has no memory effects; the group is ours.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        }
        let _ = child.wait();
        // Whatever the shard left running (the suite's epmd, which Erlang
        // ports start in a session of their own; the `epmd -daemon` that
        // ct_run's distributed node starts) lives in the shard's private
        // namespace: everything there is ours.
        if let Ok(ns) = std::fs::read_to_string(dir.join("netns")) {
            kill_namespace(ns.trim());
        }
        // Not UTF-8 throughout: epmd logs the suite's Latin-1 node names.
        let out =
            String::from_utf8_lossy(&std::fs::read(dir.join("ct_run.out")).unwrap_or_default())
                .into_owned();
        let used = std::fs::read_to_string(&found).unwrap_or_default();
        results.push((dir, status, out, used));
    }
    let mut total = Tally::default();
    let mut report = String::new();
    for (dir, status, out, used) in &results {
        let t = tally(out);
        let right_epmd = std::fs::canonicalize(used).ok() == std::fs::canonicalize(epmd).ok();
        if t.is_none_or(|t| t.failed > 0) || !right_epmd {
            report += &format!(
                "--- {} (exit {status:?}, epmd found: {used:?}) ---\n{out}\n",
                dir.display()
            );
        }
        assert!(
            right_epmd,
            "epmd_SUITE found {used:?}, not the epmd under test {epmd:?}\n{report}"
        );
        let t = t.unwrap_or_else(|| panic!("ct_run gave no TEST COMPLETE line:\n{report}"));
        total.ok += t.ok;
        total.failed += t.failed;
        total.skipped += t.skipped;
        total.cases += t.cases;
    }
    eprintln!(
        "epmd_SUITE against {}: {} ok, {} failed, {} skipped of {} cases",
        epmd.display(),
        total.ok,
        total.failed,
        total.skipped,
        total.cases
    );
    assert!(
        total.failed == 0 && total.ok == EXPECTED_OK && total.cases == EXPECTED_CASES,
        "epmd_SUITE against {}: {total:?}, want {EXPECTED_OK} ok of {EXPECTED_CASES}\n{report}",
        epmd.display()
    );
    total
}

/// SIGKILL every process whose network namespace is `ns` (as read from
/// /proc/PID/ns/net), a namespace this test created.
fn kill_namespace(ns: &str) {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.filter_map(|e| e.ok()) {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if std::fs::read_link(p.path().join("ns/net")).is_ok_and(|l| l.to_str() == Some(ns)) {
            // SAFETY: kill has no memory effects; the process is ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
#[cfg_attr(
    skip_otp_suite,
    ignore = "needs root, erl, common_test and the suite (KUBE_EPMD_TEST_SKIP)"
)]
fn otp_epmd_suite_passes_against_kube_epmd() {
    run_suite("kube-epmd", Path::new(env!("CARGO_BIN_EXE_kube-epmd")));
}

/// The reference run, for comparison, on demand (`cargo test --test
/// otp_epmd_suite -- --ignored`): if OTP's own epmd does not pass here,
/// the machine is the problem. Not in every run: on a loaded machine the
/// suite itself races the C epmd now and then (alive_req_too_large: the C
/// epmd closes with the oversized request unread, the reset discards its
/// reply before the suite reads it), which says nothing about kube-epmd.
#[test]
#[ignore = "comparison run against OTP's C epmd: cargo test --test otp_epmd_suite -- --ignored"]
fn otp_epmd_suite_passes_against_c_epmd() {
    run_suite("c-epmd", &prereq::erl());
}

#[test]
fn tally_reads_common_tests_summary() {
    let t = tally("x\nTesting a.b: TEST COMPLETE, 30 ok, 1 failed, 2 skipped of 33 test cases\n")
        .expect("parsed");
    assert_eq!((t.ok, t.failed, t.skipped, t.cases), (30, 1, 2, 33));
    let t = tally("Testing a.b: TEST COMPLETE, 8 ok, 0 failed of 8 test cases").expect("parsed");
    assert_eq!((t.ok, t.failed, t.skipped, t.cases), (8, 0, 0, 8));
    assert!(tally("Testing a.b: Starting test").is_none());
}
