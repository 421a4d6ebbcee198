//! Issue 16: the ejabberd cluster over mutual TLS, as
//! deploy/overlays/tls-dist runs it. The [`Chat`] harness with every
//! kube-epmd issuing its pod's certificate from a test CA
//! (`--tls-ca-dir`, `--tls-subdomain xmpp-internal-svc`) and every pod's
//! ejabberdctl.cfg the overlay's (`-proto_dist inet_tls -ssl_dist_optfile`
//! the pod's own output directory): ejabberd, `ejabberdctl`, and the
//! entrypoint's hidden probe and beacon nodes (which source ERL_OPTIONS
//! from that file) all speak TLS only.
//!
//! Shown: 3 pods started in parallel on empty volumes make one cluster of
//! 3 (the entrypoint's probes and `ejabberdctl` work over TLS); a node
//! with the right cookie but without the cluster's certificate (plain
//! `inet_tcp`, or TLS with a certificate of another CA for the pod's own
//! names) reaches no ejabberd node, while one with the pod's certificate
//! reaches all; a capture of the distribution window in a pod while a
//! user is registered there holds neither the user's name nor its
//! password.

use std::fs::File;
use std::time::SystemTime;

use kube_epmd::tls::{issue, optfile};
use rcgen::{CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose};

use super::*;

/// A CA valid for a day (from an hour ago): certificate and PKCS#8 key, PEM.
fn make_ca(cn: &str) -> Result<(String, String), String> {
    make_ca_valid(cn, -3600, 86_400)
}

/// A CA valid from `from` to `to` seconds relative to now.
pub(crate) fn make_ca_valid(cn: &str, from: i64, to: i64) -> Result<(String, String), String> {
    let now = issue::unix(SystemTime::now());
    let key = KeyPair::generate().map_err(|e| format!("CA key: {e}"))?;
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let at = |s: i64| time::OffsetDateTime::from_unix_timestamp(s).map_err(|e| format!("{e}"));
    p.not_before = at(now + from)?;
    p.not_after = at(now + to)?;
    let cert = p.self_signed(&key).map_err(|e| format!("CA: {e}"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The cluster CA's directory as the Secret mounts it in the sidecar only
/// (root's, mode 0700 here: the ejabberd user cannot read it).
pub(crate) fn cluster_ca(dir: &Path) -> Result<PathBuf, String> {
    let ca = dir.join("cluster-ca");
    std::fs::create_dir_all(&ca).map_err(|e| format!("{e}"))?;
    set_mode(&ca, 0o700)?;
    let (cert, key) = make_ca("kube-epmd e2e cluster CA")?;
    write(&ca.join("ca.crt"), &cert)?;
    write(&ca.join("ca.key"), &key)?;
    Ok(ca)
}

/// An optfile for pod `k`'s names with a certificate from another CA
/// (which also is the only CA it trusts): right names, wrong issuer.
fn foreign_optfile(dir: &Path, k: usize) -> Result<PathBuf, String> {
    let d = dir.join("foreign");
    std::fs::create_dir_all(&d).map_err(|e| format!("{e}"))?;
    let (cert, key) = make_ca("not the cluster's CA")?;
    let ca = issue::Ca::from_pem(&cert, &key).map_err(|e| format!("foreign CA: {e:?}"))?;
    let host = pod_name(k);
    let names = vec![
        format!("{host}.{SUBDOMAIN}"),
        host.clone(),
        format!("{host}.{SUBDOMAIN}.{K8S_NS}"),
    ];
    let leaf = issue::issue(&ca, &names, SystemTime::now(), Duration::from_secs(3600))
        .map_err(|e| format!("foreign leaf: {e:?}"))?;
    let pem = d.join("dist.pem");
    let ca_pem = d.join("ca.pem");
    write(&pem, &format!("{}{}", leaf.cert_pem, leaf.key_pem))?;
    write(&ca_pem, &cert)?;
    let opt = d.join("ssl_dist.conf");
    write(&opt, &optfile::render(&pem, &ca_pem))?;
    Ok(opt)
}

/// An optfile that trusts the cluster's CA (pod `k`'s copy) but has no
/// certificate of its own: TLS, the right cookie, nothing to show.
fn no_certificate_optfile(dir: &Path, ca_pem: &Path) -> Result<PathBuf, String> {
    let opt = dir.join("no-certificate.conf");
    let ca = ca_pem.display();
    write(
        &opt,
        &format!(
            "[{{server, [{{cacertfile, \"{ca}\"}}, {{verify, verify_peer}}]}},\n \
             {{client, [{{cacertfile, \"{ca}\"}}, {{verify, verify_peer}}]}}].\n"
        ),
    )?;
    Ok(opt)
}

/// Which distribution a visitor node in a pod runs.
enum Visitor {
    /// The pod's own optfile (the control: it must reach every node).
    PodCertificate,
    /// Plain TCP distribution, no certificate at all.
    PlainTcp,
    /// TLS with this optfile: a certificate of another CA for the pod's
    /// own names, or none at all.
    ForeignCa(PathBuf),
}

impl Chat {
    /// A hidden node `name@chat-K.xmpp-internal-svc` with the cluster's
    /// cookie in pod `k` pings every ejabberd node: what each answered.
    async fn visit(&self, k: usize, name: &str, how: &Visitor) -> Result<Vec<String>, String> {
        let mut cmd = self.erl(k);
        let me = format!("{name}{}@{}.{SUBDOMAIN}", std::process::id(), pod_name(k));
        cmd.args(["-name", &me, "-hidden", "-noinput", "-noshell"])
            .args(["-start_epmd", "false", "-setcookie", COOKIE])
            .args(["-kernel", "inet_dist_listen_min", "4200"])
            .args(["-kernel", "inet_dist_listen_max", "4210"]);
        match how {
            Visitor::PodCertificate => {
                cmd.args(self.dist_args(k));
            }
            Visitor::PlainTcp => {
                cmd.args(["-proto_dist", "inet_tcp"]);
            }
            Visitor::ForeignCa(opt) => {
                cmd.args(["-proto_dist", "inet_tls", "-ssl_dist_optfile"])
                    .arg(opt);
            }
        }
        let targets: Vec<String> = ALL.iter().map(|&j| format!("'{}'", node(j))).collect();
        cmd.arg("-eval").arg(format!(
            "R = [net_adm:ping(N) || N <- [{}]], io:format(\"~w~n\", [R]), halt(0).",
            targets.join(", ")
        ));
        let what = format!("chat-{k}: visitor {me}");
        let out = output(cmd, &what, Duration::from_secs(60)).await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .rev()
            .find(|l| l.starts_with('['))
            .ok_or_else(|| {
                format!(
                    "{what} printed no answer: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
        Ok(line
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|w| w.trim().to_string())
            .collect())
    }
}

async fn tls_cluster(flavour: Flavour, tcpdump: PathBuf) -> Result<(), String> {
    let scratch = tempfile::Builder::new()
        .prefix("kee2e-tls-ca-")
        .tempdir()
        .map_err(|e| format!("tempdir: {e}"))?;
    let ca = cluster_ca(scratch.path())?;
    let mut chat = Chat::with_dist("tl", 3, &flavour, Some(ca)).await?;
    let name = match flavour {
        Flavour::Host => "tls cluster",
        Flavour::Root(_) => "tls cluster otp29",
    };
    chat.name = name;

    // First start on empty volumes, all pods at once, highest first: the
    // entrypoint's probes, beacons and ejabberdctl all over TLS.
    let t = Instant::now();
    chat.create(&[2, 1, 0]).await?;
    chat.wait_all_ready(&ALL).await?;
    let d = chat.wait_full(&ALL, FULL_LIMIT).await?;
    let first = t.elapsed();
    chat.schema_is(&ALL).await?;
    chat.one_seed()?;
    for k in ALL {
        let opt = chat.c.pods[k].out_dir.join(kube_epmd::tls::OPTFILE);
        check(opt.exists(), || format!("chat-{k}: no {}", opt.display()))?;
    }
    say!(
        chat,
        "first start over mutual TLS, 3 pods in parallel (2, 1, 0): one cluster of 3 in \
         {first:?} (list_cluster full {d:?} after the last Ready)"
    );

    // A capture of chat-1's distribution window (lo and eth0: ejabberdctl
    // to its node, and Mnesia's replication to the others) while a user is
    // registered there; then the user is read on every node.
    let pid = std::process::id();
    let user = format!("tlsmarkeruser{pid}");
    let password = format!("TlsMarkerPassword{pid}");
    let pcap = chat.c.path("dist-window.pcap");
    let dump_log = chat.c.path("tcpdump.log");
    let log = File::create(&dump_log).map_err(|e| format!("{e}"))?;
    let mut dump = chat.c.pods[1].ns.command(&tcpdump.to_string_lossy());
    dump.args(["-i", "any", "-U", "-s", "0", "-w"])
        .arg(&pcap)
        .args(["tcp", "portrange", "4200-4210"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    let mut dump = dump
        .spawn()
        .map_err(|e| format!("cannot start tcpdump: {e}"))?;
    chat.c
        .wait(
            "tcpdump to listen in chat-1",
            Duration::from_secs(10),
            |_| std::fs::read_to_string(&dump_log).is_ok_and(|l| l.contains("listening on")),
        )
        .await?;
    let t = Instant::now();
    chat.ctl_ok(1, &["register", &user, DOMAIN, &password])
        .await?;
    let registered = t.elapsed();
    chat.users_everywhere(&ALL, std::slice::from_ref(&user))
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = dump.start_kill();
    let _ = dump.wait().await;
    let bytes = std::fs::read(&pcap).map_err(|e| format!("{}: {e}", pcap.display()))?;
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    check(bytes.len() > 2000, || {
        format!("almost nothing captured ({} bytes)", bytes.len())
    })?;
    // TLS 1.2 application data records.
    check(has(&[0x17, 0x03, 0x03]), || {
        "no TLS 1.2 application data in the capture".into()
    })?;
    check(!has(user.as_bytes()), || {
        format!("the user name {user} crossed in plaintext")
    })?;
    check(!has(password.as_bytes()), || {
        "the password crossed in plaintext".into()
    })?;
    say!(
        chat,
        "capture of ports 4200-4210 in chat-1 (lo + eth0) while `ejabberdctl register` \
         ran ({registered:?}) and the user was read on every node: {} bytes, TLS records, \
         neither the user name nor the password in it",
        bytes.len()
    );

    // Visitors in chat-0 with the cluster's cookie: only the pod's own
    // certificate gets in.
    let foreign = foreign_optfile(chat.c.dir.path(), 0)?;
    let foreign = Visitor::ForeignCa(foreign);
    let ca_pem = chat.c.pods[0].out_dir.join("dist-ca.pem");
    let nocert = Visitor::ForeignCa(no_certificate_optfile(chat.c.dir.path(), &ca_pem)?);
    let t = Instant::now();
    let (own, plain, other, none) = tokio::join!(
        chat.visit(0, "visitorown", &Visitor::PodCertificate),
        chat.visit(0, "visitorplain", &Visitor::PlainTcp),
        chat.visit(0, "visitorforeign", &foreign),
        chat.visit(0, "visitornocert", &nocert),
    );
    let (own, plain, other, none) = (own?, plain?, other?, none?);
    check(none.iter().all(|r| r == "pang") && none.len() == 3, || {
        format!("TLS without a certificate reached a node: {none:?}")
    })?;
    check(own.iter().all(|r| r == "pong") && own.len() == 3, || {
        format!("with chat-0's own certificate: {own:?}, want pong from all 3")
    })?;
    check(
        plain.iter().all(|r| r == "pang") && plain.len() == 3,
        || format!("plain inet_tcp with the cookie reached a node: {plain:?}"),
    )?;
    check(
        other.iter().all(|r| r == "pang") && other.len() == 3,
        || format!("a certificate of another CA reached a node: {other:?}"),
    )?;
    // Refused by TLS itself, not lost on the way: chat-0's ejabberd logs
    // the plain handshake as a record it cannot read, and the visitor's
    // alert on chat-0's certificate (not of the visitor's CA).
    let log = chat.pods[0].logs.join("ejabberd.log");
    let alerts = [
        "Unexpected Message",
        "Unknown CA",
        "no_client_certificate_provided",
    ];
    chat.c
        .wait(
            "chat-0's ejabberd.log shows both refusals",
            Duration::from_secs(10),
            |_| {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                alerts.iter().all(|a| text.contains(a))
            },
        )
        .await?;
    say!(
        chat,
        "visitors in chat-0 with the cookie: own certificate {own:?}, plain inet_tcp \
         {plain:?}, another CA's certificate for chat-0's names {other:?}, TLS without a \
         certificate {none:?} ({:?}; chat-0's ejabberd.log: TLS alerts {alerts:?})",
        t.elapsed()
    );

    chat.delete(&ALL).await
}

/// Issue 16: the tls-dist overlay's ejabberd cluster (see the module).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_netns, ignore = "needs root and ip netns (KUBE_EPMD_TEST_SKIP)")]
#[cfg_attr(
    skip_ejabberd,
    ignore = "needs Debian's ejabberd (KUBE_EPMD_TEST_SKIP)"
)]
#[cfg_attr(skip_busybox, ignore = "needs busybox (KUBE_EPMD_TEST_SKIP)")]
#[cfg_attr(skip_tcpdump, ignore = "needs tcpdump (KUBE_EPMD_TEST_SKIP)")]
async fn tls_ejabberd_cluster() {
    crate::support::prereq::ejabberd();
    crate::support::prereq::busybox();
    let tcpdump = crate::support::prereq::tcpdump();
    run("tls ejabberd cluster", tls_cluster(Flavour::Host, tcpdump)).await;
}

/// [`tls_ejabberd_cluster`] with forky's ejabberd on OTP 29.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_netns, ignore = "needs root and ip netns (KUBE_EPMD_TEST_SKIP)")]
#[cfg_attr(
    skip_forky,
    ignore = "needs the forky root of scripts/forky-root.sh (KUBE_EPMD_TEST_SKIP)"
)]
#[cfg_attr(skip_tcpdump, ignore = "needs tcpdump (KUBE_EPMD_TEST_SKIP)")]
async fn tls_otp29_ejabberd_cluster() {
    let root = crate::support::prereq::forky_root();
    let tcpdump = crate::support::prereq::tcpdump();
    run(
        "tls otp29 ejabberd cluster",
        tls_cluster(Flavour::Root(root), tcpdump),
    )
    .await;
}

/// The lifecycle sequence over mutual TLS, with a CA of its own.
async fn tls_lifecycle(flavour: Flavour) -> Result<(), String> {
    let scratch = tempfile::Builder::new()
        .prefix("kee2e-tls-lc-ca-")
        .tempdir()
        .map_err(|e| format!("tempdir: {e}"))?;
    let ca = cluster_ca(scratch.path())?;
    lifecycle_dist(flavour, Some(ca)).await
}

lifecycle_test!(
    /// The whole lifecycle sequence of [`super::lifecycle_ejabberd_events`]
    /// over mutual TLS.
    tls_lifecycle_ejabberd_events,
    "tls lifecycle ejabberd events",
    host,
    tls_lifecycle
);
