//! Erlang distribution over mutual TLS with certificates kube-epmd issues
//! (`--tls-ca-dir`), between real VMs (`erl -proto_dist inet_tls
//! -ssl_dist_optfile <the file the sidecar wrote>`).
//!
//! Set-up: loopback, one host. Each "pod" is a kube-epmd issuing for its
//! own names (`tls-a`, `tls-a.svc`, ... from --tls-hostname and
//! --tls-subdomain); pod A's kube-epmd is also the EPMD every VM uses
//! (the others listen on ports nobody asks). The VMs resolve the pod
//! names through an inetrc hosts file (all 127.0.0.1), so a node dials
//! `a@tls-a.svc` and checks the certificate against `tls-a.svc`, as in a
//! pod.
//!
//! `cargo test --test tls_dist -- --nocapture` prints the figures (time to
//! cluster, connection setup, TLS vs plain).

mod support;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use kube_epmd::tls::{inspect, issue, optfile};
use rcgen::{CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose};
use support::daemon::{ChildGuard, free_port};
use support::prereq;

const COOKIE: &str = "kube-epmd-tls-test";
/// Every pod's names, all on loopback.
const HOSTS: &str = "127.0.0.1\tlocalhost tls-a tls-a.svc tls-b tls-b.svc tls-c tls-c.svc \
                     tls-x tls-x.svc tls-n tls-n.svc\n";

/// A CA valid from `from` to `to` (seconds relative to now): certificate
/// and PKCS#8 key, PEM.
fn make_ca(cn: &str, from: i64, to: i64) -> (String, String) {
    let now = issue::unix(SystemTime::now());
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = time::OffsetDateTime::from_unix_timestamp(now + from).unwrap();
    p.not_after = time::OffsetDateTime::from_unix_timestamp(now + to).unwrap();
    let cert = p.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The test's scratch space: CA, resolver files, logs.
struct World {
    dir: tempfile::TempDir,
    ca_dir: PathBuf,
    inetrc: PathBuf,
    /// The EPMD every VM registers with (pod A's kube-epmd).
    epmd_port: u16,
}

/// Directory `dir` (created) holding `files`, as a Secret mounted there
/// would: each (name, contents).
fn secret_dir(dir: PathBuf, files: &[(&str, &str)]) -> PathBuf {
    std::fs::create_dir_all(&dir).unwrap();
    for (name, contents) in files {
        std::fs::write(dir.join(name), contents).unwrap();
    }
    dir
}

impl World {
    fn new() -> World {
        prereq::erl_ssl();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = make_ca("kube-epmd tls test CA", -3600, 86_400);
        let ca_dir = secret_dir(
            dir.path().join("ca"),
            &[("ca.crt", &cert), ("ca.key", &key)],
        );
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, HOSTS).unwrap();
        let inetrc = dir.path().join("inetrc");
        std::fs::write(
            &inetrc,
            format!(
                "{{hosts_file, \"{}\"}}.\n{{lookup, [file, native]}}.\n",
                hosts.display()
            ),
        )
        .unwrap();
        World {
            dir,
            ca_dir,
            inetrc,
            epmd_port: free_port(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Pod `host`'s sidecar, issuing from `ca_dir` into `<dir>/<host>`.
    /// The first one started is the EPMD.
    fn sidecar(&self, host: &str, ca_dir: &Path, extra: &[&str]) -> Sidecar {
        self.sidecar_from(host, "--tls-ca-dir", ca_dir, extra)
    }

    /// Pod `host`'s sidecar with its certificate source `flag dir`
    /// (`--tls-ca-dir` or `--tls-cert-dir`).
    fn sidecar_from(&self, host: &str, flag: &str, dir: &Path, extra: &[&str]) -> Sidecar {
        let out = self.path(host);
        let admin_port = free_port();
        let epmd_port = if Path::new(&self.path("epmd-taken")).exists() {
            free_port()
        } else {
            std::fs::write(self.path("epmd-taken"), "").unwrap();
            self.epmd_port
        };
        let log = self.path(&format!("{host}-sidecar.log"));
        let child = Command::new(support::daemon::binary())
            .args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
            .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
            .arg("--output-dir")
            .arg(&out)
            .arg(flag)
            .arg(dir)
            .args(["--tls-hostname", host, "--tls-subdomain", "svc"])
            .args(["--namespace", "tls-test"])
            .args(extra)
            .env("RUST_LOG", "kube_epmd=info")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("spawn kube-epmd");
        let s = Sidecar {
            child: ChildGuard(child),
            out,
            admin_port,
            log,
        };
        wait_until(
            Duration::from_secs(20),
            "the sidecar's admin endpoint",
            || s.get("/healthz").is_some(),
        );
        s
    }

    /// An `erl` for node `name@host` with the given optfile (None: plain
    /// TCP distribution).
    fn erl(&self, node: &str, optfile: Option<&Path>) -> Command {
        let mut c = Command::new("erl");
        c.args(["-noshell", "-start_epmd", "false", "-name", node])
            .args(["-setcookie", COOKIE])
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_INETRC", &self.inetrc)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        if let Some(f) = optfile {
            c.args(["-proto_dist", "inet_tls", "-ssl_dist_optfile"])
                .arg(f);
        }
        c
    }

    /// A node that stays up until dropped, logging to `<node>.log`, with
    /// `extra` VM arguments; it runs `eval` first (e.g. a ping).
    fn node(&self, node: &str, optfile: Option<&Path>, extra: &[&str], eval: &str) -> Node {
        let log = self.path(&format!("{node}.log"));
        let f = File::create(&log).unwrap();
        let child = self
            .erl(node, optfile)
            .args(extra)
            .args(["-eval", &format!("{eval}, receive stop -> ok end.")])
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("start erl");
        let short = node.split('@').next().unwrap().to_string();
        let n = Node {
            child: ChildGuard(child),
            log,
        };
        wait_until(
            Duration::from_secs(20),
            &format!("{node} to register"),
            || self.names().contains(&format!("name {short} at port")),
        );
        n
    }

    /// Evaluate `expr` on a fresh node and return its value as `~w` prints it.
    fn eval(&self, node: &str, optfile: Option<&Path>, expr: &str) -> String {
        let mut c = self.erl(node, optfile);
        // The value on a line of its own behind a marker: ssl may log a
        // TLS alert to the same output after it, before the VM halts.
        c.args([
            "-eval",
            &format!("io:format(\"~nEVAL-RESULT ~w~n\", [begin {expr} end]), halt()."),
        ]);
        let out = run(c, Duration::from_secs(60));
        out.lines()
            .find_map(|l| l.strip_prefix("EVAL-RESULT "))
            .unwrap_or_else(|| panic!("{node} printed no result for {expr}:\n{out}"))
            .trim()
            .to_string()
    }

    fn names(&self) -> String {
        let out = Command::new(support::daemon::binary())
            .args(["-port", &self.epmd_port.to_string(), "-names"])
            .output()
            .expect("kube-epmd -names");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

struct Sidecar {
    child: ChildGuard,
    out: PathBuf,
    admin_port: u16,
    log: PathBuf,
}

impl Sidecar {
    fn optfile(&self) -> PathBuf {
        self.out.join("ssl_dist.conf")
    }

    fn cert(&self) -> inspect::CertInfo {
        inspect::first_cert(&std::fs::read(self.out.join("dist.pem")).unwrap()).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on the admin endpoint: (status, body).
    fn get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.admin_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).ok()?;
        let (head, body) = raw.split_once("\r\n\r\n")?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, body.to_string()))
    }

    fn metric(&self, prefix: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics")?;
        body.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

struct Node {
    child: ChildGuard,
    log: PathBuf,
}

impl Node {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        matches!(self.child.0.try_wait(), Ok(None))
    }
}

/// Run `c` to its end (killed after `limit`): stdout and stderr together.
fn run(mut c: Command, limit: Duration) -> String {
    let out = tempfile::NamedTempFile::new().unwrap();
    let f = out.reopen().unwrap();
    let mut child = c
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "timed out after {limit:?}: {}",
                std::fs::read_to_string(out.path()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::read_to_string(out.path()).unwrap_or_default()
}

fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[cfg_attr(skip_erl, ignore = "needs erl (KUBE_EPMD_TEST_SKIP=erl)")]
fn nodes_cluster_over_tls_and_strangers_are_refused() {
    let w = World::new();
    let a = w.sidecar("tls-a", &w.ca_dir, &[]);
    let b = w.sidecar("tls-b", &w.ca_dir, &[]);
    let c = w.sidecar("tls-c", &w.ca_dir, &[]);
    assert_eq!(a.get("/readyz").map(|r| r.0), Some(200), "{}", a.log());
    let names = a.cert().dns_names;
    assert_eq!(
        names,
        [
            "tls-a",
            "tls-a.svc",
            "tls-a.svc.tls-test",
            "tls-a.svc.tls-test.svc",
            "tls-a.svc.tls-test.svc.cluster.local"
        ]
    );
    let mut na = w.node("a@tls-a.svc", Some(&a.optfile()), &[], "ok");
    let _nb = w.node(
        "b@tls-b.svc",
        Some(&b.optfile()),
        &[],
        "pong = net_adm:ping('a@tls-a.svc')",
    );
    // A third node joins both; each sees the others.
    let out = w.eval(
        "c@tls-c.svc",
        Some(&c.optfile()),
        "{net_adm:ping('a@tls-a.svc'), net_adm:ping('b@tls-b.svc'), \
          lists:sort(rpc:call('a@tls-a.svc', erlang, nodes, []))}",
    );
    assert_eq!(
        out,
        "{pong,pong,['b@tls-b.svc','c@tls-c.svc']}",
        "a: {}",
        na.log()
    );

    // The right cookie but no certificate: refused, and A says why.
    let nocert = w.path("nocert.conf");
    let ca = a.out.join("dist-ca.pem");
    std::fs::write(
        &nocert,
        format!(
            "[{{server, [{{cacertfile, \"{ca}\"}}, {{verify, verify_peer}}]}},\n \
             {{client, [{{cacertfile, \"{ca}\"}}, {{verify, verify_peer}}]}}].\n",
            ca = ca.display()
        ),
    )
    .unwrap();
    let out = w.eval("n@tls-n.svc", Some(&nocert), "net_adm:ping('a@tls-a.svc')");
    assert_eq!(out, "pang");
    wait_until(Duration::from_secs(10), "A to log the refusal", || {
        na.log().contains("no_client_certificate_provided")
    });

    // A certificate from another CA, for the right kind of names: refused.
    let foreign = w.path("foreign");
    std::fs::create_dir(&foreign).unwrap();
    let (fcert, fkey) = make_ca("a foreign CA", -3600, 86_400);
    let fca = issue::Ca::from_pem(&fcert, &fkey).unwrap();
    let leaf = issue::issue(
        &fca,
        &["tls-x".into(), "tls-x.svc".into()],
        SystemTime::now(),
        Duration::from_secs(3600),
    )
    .unwrap();
    std::fs::write(
        foreign.join("dist.pem"),
        format!("{}{}", leaf.cert_pem, leaf.key_pem),
    )
    .unwrap();
    // It trusts our CA (it could know it: the CA certificate is public),
    // so only its own certificate is the stranger.
    std::fs::copy(&ca, foreign.join("dist-ca.pem")).unwrap();
    let fopt = foreign.join("ssl_dist.conf");
    std::fs::write(
        &fopt,
        optfile::render(&foreign.join("dist.pem"), &foreign.join("dist-ca.pem")),
    )
    .unwrap();
    let out = w.eval("x@tls-x.svc", Some(&fopt), "net_adm:ping('a@tls-a.svc')");
    assert_eq!(out, "pang");
    wait_until(Duration::from_secs(10), "A to log the unknown CA", || {
        na.log().contains("Unknown CA")
    });
    // A node without TLS at all, the right cookie: refused.
    let out = w.eval("p@tls-n.svc", None, "net_adm:ping('a@tls-a.svc')");
    assert_eq!(out, "pang");
    // The cluster is untouched.
    let out = w.eval(
        "c2@tls-c.svc",
        Some(&c.optfile()),
        "lists:sort(rpc:call('a@tls-a.svc', erlang, nodes, []))",
    );
    assert_eq!(out, "['b@tls-b.svc','c2@tls-c.svc']", "a: {}", na.log());
    assert!(na.running());
}

/// cert-manager's files (`--tls-cert-dir`: `tls.crt`, `tls.key`,
/// `ca.crt` of a Certificate's Secret) instead of a CA: the sidecar copies
/// them for the VM, nodes cluster with them, and a renewal (new files in
/// the Secret) is copied within the 10 s poll.
#[test]
#[cfg_attr(skip_erl, ignore = "needs erl (KUBE_EPMD_TEST_SKIP=erl)")]
fn certificates_from_cert_manager_files_cluster_and_renewals_are_copied() {
    let w = World::new();
    let ca = issue::Ca::from_pem(
        &std::fs::read_to_string(w.ca_dir.join("ca.crt")).unwrap(),
        &std::fs::read_to_string(w.ca_dir.join("ca.key")).unwrap(),
    )
    .unwrap();
    // What cert-manager would put in each pod's Secret.
    let secret = |host: &str| {
        let names = [host.to_string(), format!("{host}.svc")];
        let leaf = issue::issue(&ca, &names, SystemTime::now(), Duration::from_secs(3600)).unwrap();
        let d = secret_dir(
            w.path(&format!("{host}-certificate")),
            &[
                ("tls.crt", &leaf.cert_pem),
                ("tls.key", &leaf.key_pem),
                ("ca.crt", &ca.cert_pem),
            ],
        );
        (d, leaf.info.serial)
    };
    let (a_dir, _) = secret("tls-a");
    let (b_dir, b_serial) = secret("tls-b");
    let a = w.sidecar_from("tls-a", "--tls-cert-dir", &a_dir, &[]);
    let b = w.sidecar_from("tls-b", "--tls-cert-dir", &b_dir, &[]);
    for s in [&a, &b] {
        assert_eq!(s.get("/readyz").map(|r| r.0), Some(200), "{}", s.log());
    }
    assert_eq!(
        b.cert().serial,
        b_serial,
        "the Secret's certificate, copied"
    );
    let mut na = w.node("a@tls-a.svc", Some(&a.optfile()), &[], "ok");
    let out = w.eval(
        "b@tls-b.svc",
        Some(&b.optfile()),
        "net_adm:ping('a@tls-a.svc')",
    );
    assert_eq!(out, "pong", "a: {}", na.log());
    // cert-manager renews: new files in the Secret, copied by the sidecar.
    let (_, renewed) = secret("tls-b");
    assert_ne!(renewed, b_serial);
    wait_until(Duration::from_secs(20), "the renewal to be copied", || {
        b.cert().serial == renewed
    });
    assert_eq!(
        b.metric("kube_epmd_tls_certificates_written_total"),
        Some(2.0),
        "{}",
        b.log()
    );
    let out = w.eval(
        "b2@tls-b.svc",
        Some(&b.optfile()),
        "net_adm:ping('a@tls-a.svc')",
    );
    assert_eq!(out, "pong", "a: {}", na.log());
    assert!(na.running());
}

/// Rotating the cluster CA without a gap (README, "Rotating the CA"):
/// four pods, each at another step of the rotation, each with its own
/// sidecar reading its own copy of the Secret. Neighbouring steps connect;
/// skipping step 1 (a pod that trusts only the old CA meeting a
/// certificate of the new one) does not, which is why the steps exist.
#[test]
#[cfg_attr(skip_erl, ignore = "needs erl (KUBE_EPMD_TEST_SKIP=erl)")]
fn a_ca_rotation_through_a_bundle_connects_each_step_to_the_next() {
    let w = World::new();
    let old = std::fs::read_to_string(w.ca_dir.join("ca.crt")).unwrap();
    let old_key = std::fs::read_to_string(w.ca_dir.join("ca.key")).unwrap();
    let (new, new_key) = make_ca("the new cluster CA", -3600, 86_400);
    let secret = |name: &str, cert: String, key: &str| {
        secret_dir(w.path(name), &[("ca.crt", &cert), ("ca.key", key)])
    };
    // Before: the old CA. Step 1: both trusted, the old key signs. Step 2:
    // both, the new key signs (the old CA listed first: the key picks the
    // signer). Step 3: the new CA alone.
    let before = w.sidecar("tls-a", &w.ca_dir, &[]);
    let step1 = w.sidecar(
        "tls-b",
        &secret("step1", format!("{old}{new}"), &old_key),
        &[],
    );
    let step2 = w.sidecar(
        "tls-c",
        &secret("step2", format!("{old}{new}"), &new_key),
        &[],
    );
    let step3 = w.sidecar("tls-x", &secret("step3", new.clone(), &new_key), &[]);
    for s in [&before, &step1, &step2, &step3] {
        assert_eq!(s.get("/readyz").map(|r| r.0), Some(200), "{}", s.log());
    }
    // The signer's end is what the CA metric shows.
    let new_end = inspect::first_cert(new.as_bytes()).unwrap().not_after;
    assert_eq!(
        step2.metric("kube_epmd_tls_ca_expiry_timestamp_seconds"),
        Some(new_end as f64)
    );
    let na = w.node("a@tls-a.svc", Some(&before.optfile()), &[], "ok");
    let nb = w.node("b@tls-b.svc", Some(&step1.optfile()), &[], "ok");
    let _nc = w.node("c@tls-c.svc", Some(&step2.optfile()), &[], "ok");
    let out = w.eval(
        "b2@tls-b.svc",
        Some(&step1.optfile()),
        "{net_adm:ping('a@tls-a.svc'), net_adm:ping('c@tls-c.svc')}",
    );
    assert_eq!(out, "{pong,pong}", "step 1 meets before and step 2");
    let out = w.eval(
        "c2@tls-c.svc",
        Some(&step2.optfile()),
        "{net_adm:ping('b@tls-b.svc'), net_adm:ping('a@tls-a.svc')}",
    );
    assert_eq!(
        out,
        "{pong,pang}",
        "step 2 meets step 1, not a pod that trusts only the old CA; a: {}",
        na.log()
    );
    let out = w.eval(
        "x@tls-x.svc",
        Some(&step3.optfile()),
        "{net_adm:ping('c@tls-c.svc'), net_adm:ping('b@tls-b.svc')}",
    );
    assert_eq!(
        out,
        "{pong,pang}",
        "step 3 meets step 2, not a certificate of the old CA; b: {}",
        nb.log()
    );
}

#[test]
#[cfg_attr(skip_erl, ignore = "needs erl (KUBE_EPMD_TEST_SKIP=erl)")]
fn an_expired_ca_or_certificate_is_a_clear_error_and_a_metric() {
    let w = World::new();
    // The CA has expired: no certificate, a metric, /readyz says why.
    let (cert, key) = make_ca("an expired CA", -7200, -3600);
    let old = secret_dir(w.path("old-ca"), &[("ca.crt", &cert), ("ca.key", &key)]);
    let expired = w.sidecar("tls-a", &old, &[]);
    wait_until(Duration::from_secs(10), "the ca_expired metric", || {
        expired.metric("kube_epmd_tls_errors_total{reason=\"ca_expired\"}") >= Some(1.0)
    });
    let (code, body) = expired.get("/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("no distribution TLS certificate") && body.contains("expired at"),
        "{body}"
    );
    assert!(
        expired
            .metric("kube_epmd_tls_ca_expiry_timestamp_seconds")
            .unwrap()
            > 0.0
    );
    assert_eq!(expired.metric("kube_epmd_tls_certificate_valid"), Some(0.0));
    let log = expired.log();
    assert!(
        log.contains("ERROR") && log.contains("the CA certificate expired at"),
        "{log}"
    );
    assert!(!expired.out.join("dist.pem").exists());

    // A certificate left to expire (its sidecar gone): its VM is refused
    // by a peer, which says "Certificate Expired".
    let peer = w.sidecar("tls-b", &w.ca_dir, &[]);
    let npeer = w.node("b@tls-b.svc", Some(&peer.optfile()), &[], "ok");
    let mut dying = w.sidecar(
        "tls-x",
        &w.ca_dir,
        &["--tls-validity", "10s", "--tls-renew-fraction", "0.9"],
    );
    let cert = dying.cert();
    let _ = dying.child.0.kill();
    let _ = dying.child.0.wait();
    let wait = (cert.not_after - issue::unix(SystemTime::now()) + 1).max(0) as u64;
    std::thread::sleep(Duration::from_secs(wait));
    let out = w.eval(
        "x@tls-x.svc",
        Some(&dying.optfile()),
        "net_adm:ping('b@tls-b.svc')",
    );
    assert_eq!(out, "pang");
    wait_until(
        Duration::from_secs(10),
        "the peer to log the expiry",
        || npeer.log().contains("Certificate Expired"),
    );
}

/// Capture the distribution port while a known marker crosses between
/// two nodes: with TLS it is nowhere in the capture, with plain TCP (the
/// control run) it is. Prints connection figures for both.
#[test]
#[cfg_attr(skip_erl, ignore = "needs erl (KUBE_EPMD_TEST_SKIP=erl)")]
#[cfg_attr(
    skip_tcpdump,
    ignore = "needs tcpdump and root (KUBE_EPMD_TEST_SKIP=tcpdump)"
)]
fn a_capture_shows_no_plaintext_after_the_handshake_and_figures() {
    let tcpdump = prereq::tcpdump();
    let w = World::new();
    let a = w.sidecar("tls-a", &w.ca_dir, &[]);
    let b = w.sidecar("tls-b", &w.ca_dir, &[]);
    let marker = format!("KUBE-EPMD-MARKER-{}", std::process::id());
    let mut figures = Vec::new();
    for (label, tls) in [("plain", false), ("tls", true)] {
        let port = free_port();
        let port_s = port.to_string();
        let opt_a = tls.then(|| a.optfile());
        let opt_b = tls.then(|| b.optfile());
        let pcap = w.path(&format!("{label}.pcap"));
        let dump_log = w.path(&format!("{label}-tcpdump.log"));
        let mut dump = ChildGuard(
            Command::new(&tcpdump)
                .args(["-i", "lo", "-U", "-s", "0", "-w"])
                .arg(&pcap)
                .args(["tcp", "port", &port_s])
                .stdout(Stdio::null())
                .stderr(File::create(&dump_log).unwrap())
                .spawn()
                .expect("start tcpdump"),
        );
        wait_until(Duration::from_secs(10), "tcpdump to listen", || {
            std::fs::read_to_string(&dump_log).is_ok_and(|l| l.contains("listening on"))
        });
        let node_a = format!("a{label}@tls-a.svc");
        let _na = w.node(
            &node_a,
            opt_a.as_deref(),
            &[
                "-kernel",
                "inet_dist_listen_min",
                &port_s,
                "inet_dist_listen_max",
                &port_s,
            ],
            "ok",
        );
        // One cold VM: boot, connect, marker both ways; then 20 fresh
        // connections timed inside the VM (EPMD lookup + TCP + TLS + the
        // distribution handshake).
        let started = Instant::now();
        let out = w.eval(
            &format!("b{label}@tls-b.svc"),
            opt_b.as_deref(),
            &format!(
                "A = '{node_a}', pong = net_adm:ping(A), \
                 {{Boot, _}} = erlang:statistics(wall_clock), \
                 Echo = rpc:call(A, erlang, iolist_to_binary, [[<<\"{marker}\">>]]), \
                 true = Echo =:= <<\"{marker}\">>, \
                 Times = [begin erlang:disconnect_node(A), timer:sleep(20), \
                   T0 = erlang:monotonic_time(microsecond), pong = net_adm:ping(A), \
                   erlang:monotonic_time(microsecond) - T0 end || _ <- lists:seq(1, 20)], \
                 S = lists:sort(Times), {{Boot, lists:nth(10, S), lists:nth(19, S)}}"
            ),
        );
        let whole = started.elapsed();
        std::thread::sleep(Duration::from_millis(300));
        // -U wrote every packet as it came.
        let _ = dump.0.kill();
        let _ = dump.0.wait();
        let bytes = std::fs::read(&pcap).unwrap();
        assert!(bytes.len() > 1000, "{label}: almost nothing captured");
        let found = bytes
            .windows(marker.len())
            .any(|win| win == marker.as_bytes());
        if tls {
            assert!(!found, "the marker crossed in plaintext over TLS");
        } else {
            assert!(
                found,
                "control run: the marker should be visible over plain TCP"
            );
        }
        let f: Vec<&str> = out
            .trim_matches(|c| c == '{' || c == '}')
            .split(',')
            .collect();
        let [boot, p50, p95] = f[..] else {
            panic!("{label}: {out}")
        };
        figures.push(format!(
            "{label}: VM start to first pong {boot} ms; connection setup (20 reconnects) \
             p50 {p50} us, p95 {p95} us; whole eval {whole:?}"
        ));
    }
    for f in &figures {
        println!("{f}");
    }
}
