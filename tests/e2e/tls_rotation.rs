//! Issue 16 in network namespaces: a certificate renewed by the sidecar is
//! presented to new connections without restarting the VM, and a CA that
//! has expired is a clear error, a metric and, once the certificate in
//! place has run out, a /readyz 503. Plain `erl` nodes over `inet_tls`
//! with each pod's sidecar-written optfile (as deploy/ runs them).
//!
//! Pods 0 and 1 renew every 30 s (`--tls-validity 300s
//! --tls-renew-fraction 0.1`): a node in pod 1 dials pod 0's distribution
//! port with a plain TLS client and reads the certificate it is shown,
//! until it is not the first one (OTP's distribution PEM cache re-reads a
//! replaced file within about 120 s). Pod 2 issues 40 s certificates from
//! its own copy of the CA, which is then replaced by an expired CA.

use std::path::Path;
use std::time::{Duration, Instant};

use kube_epmd::tls::{OPTFILE, inspect};

use crate::cluster::{Cluster, SUBDOMAIN, pod_ip, pod_name, set_mode};
use crate::erlang::{ErlNode, Naming, compile_ctl};
use crate::lifecycle::tls::{cluster_ca, make_ca_valid};
use crate::{check, report, run};

/// Bound on the renewed certificate reaching new connections: OTP's
/// 120 s PEM cache period, a renewal period (30 s), and slack.
const PRESENT_LIMIT: Duration = Duration::from_secs(200);

fn node(k: usize) -> String {
    format!("n{k}@{}.{SUBDOMAIN}", pod_name(k))
}

/// The serial of pod `k`'s certificate as its sidecar last wrote it
/// (lower-case hex without leading zeros, as Erlang prints it).
fn written_serial(c: &Cluster, k: usize) -> Result<String, String> {
    let pem = c.pods[k].out_dir.join("dist.pem");
    let bytes = std::fs::read(&pem).map_err(|e| format!("{}: {e}", pem.display()))?;
    let info = inspect::first_cert(&bytes).map_err(|e| format!("{}: {e}", pem.display()))?;
    Ok(info.serial.trim_start_matches('0').to_string())
}

/// What pod `to`'s distribution listener presents to a new TLS
/// connection from `from`'s node (with `from`'s own certificate; the
/// server's name is checked against the certificate, as distribution
/// does): the certificate's serial.
async fn presented_serial(
    c: &Cluster,
    from: &mut ErlNode,
    from_k: usize,
    to: usize,
) -> Result<String, String> {
    let port = c
        .registered(to, &format!("n{to}"))?
        .ok_or(format!("n{to} is not registered in pod {to}"))?;
    let out = &c.pods[from_k].out_dir;
    let (cert, ca) = (out.join("dist.pem"), out.join("dist-ca.pem"));
    let host = format!("{}.{SUBDOMAIN}", pod_name(to));
    let expr = format!(
        "{{ok, _}} = application:ensure_all_started(ssl), \
         {{ok, S}} = ssl:connect(\"{ip}\", {port}, [{{certfile, \"{c}\"}}, {{keyfile, \"{c}\"}}, \
           {{cacertfile, \"{ca}\"}}, {{verify, verify_peer}}, \
           {{server_name_indication, \"{host}\"}}, {{versions, ['tlsv1.2']}}], 10000), \
         {{ok, Der}} = ssl:peercert(S), ssl:close(S), \
         list_to_atom(\"serial_\" ++ string:lowercase(integer_to_list(element(3, element(2, \
           public_key:pkix_decode_cert(Der, plain))), 16)))",
        ip = pod_ip(to),
        c = cert.display(),
        ca = ca.display(),
        host = host,
    );
    // An atom `serial_<hex>`: `~w` prints it as it is (a string or a
    // binary would come out as a list of numbers).
    let v = from
        .eval(&expr, Duration::from_secs(20))
        .await
        .map_err(|e| format!("{e}\nits output:\n{}", from.output()))?;
    v.strip_prefix("serial_")
        .map(str::to_string)
        .ok_or(format!("pod {from_k}: TLS client to pod {to} returned {v}"))
}

async fn scenario() -> Result<(), String> {
    let t_all = Instant::now();
    let mut c = Cluster::new("tr", 3).await?;
    let ca = cluster_ca(c.dir.path())?;
    let tls = |ca: &Path, validity: &str, fraction: &str| {
        vec![
            format!("--tls-ca-dir={}", ca.display()),
            format!("--tls-subdomain={SUBDOMAIN}"),
            format!("--tls-validity={validity}"),
            format!("--tls-renew-fraction={fraction}"),
        ]
    };
    // Pod 2 has its own copy of the CA Secret, to be replaced.
    let ca2 = c.path("pod2-ca");
    std::fs::create_dir_all(&ca2).map_err(|e| format!("{e}"))?;
    set_mode(&ca2, 0o700)?;
    for f in ["ca.crt", "ca.key"] {
        std::fs::copy(ca.join(f), ca2.join(f)).map_err(|e| format!("{f}: {e}"))?;
    }
    for k in 0..3 {
        c.publish(k, false);
    }
    for k in 0..3 {
        c.sidecar_args = if k < 2 {
            tls(&ca, "300s", "0.1")
        } else {
            tls(&ca2, "40s", "0.5")
        };
        c.start_sidecar(k).await?;
    }
    let ebin = c.path("ebin");
    std::fs::create_dir_all(&ebin).map_err(|e| format!("{e}"))?;
    compile_ctl(&ebin)?;
    let mut nodes = Vec::new();
    for k in 0..3 {
        let p = &c.pods[k];
        let extra = vec![
            "-proto_dist".to_string(),
            "inet_tls".to_string(),
            "-ssl_dist_optfile".to_string(),
            p.out_dir.join(OPTFILE).display().to_string(),
        ];
        let n = ErlNode::start_args(
            &p.ns,
            &node(k),
            Naming::Long,
            &p.inetrc(),
            &ebin,
            (4200, 4210),
            &extra,
        )
        .await?;
        nodes.push(n);
    }
    for (k, n) in nodes.iter_mut().enumerate().skip(1) {
        check(n.ping(&node(0)).await?, || {
            format!("{} cannot reach {} over TLS", node(k), node(0))
        })?;
    }
    let pid0 = nodes[0]
        .eval("list_to_integer(os:getpid())", Duration::from_secs(5))
        .await?;

    // Expiry: pod 2's CA replaced by one that expired an hour ago.
    let (old_cert, old_key) = make_ca_valid("an expired CA", -7200, -3600)?;
    let swap = |name: &str, text: &str| -> Result<(), String> {
        let tmp = ca2.join(format!(".{name}.new"));
        std::fs::write(&tmp, text).map_err(|e| format!("{e}"))?;
        std::fs::rename(&tmp, ca2.join(name)).map_err(|e| format!("{e}"))
    };
    swap("ca.key", &old_key)?;
    swap("ca.crt", &old_cert)?;
    let t_swap = Instant::now();
    let metric = |body: &str| {
        body.lines()
            .find(|l| l.starts_with("kube_epmd_tls_errors_total{reason=\"ca_expired\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    c.wait(
        "pod 2's sidecar to count the expired CA",
        Duration::from_secs(30),
        |c| {
            c.admin_get(2, "/metrics")
                .is_ok_and(|(_, b)| metric(&b) >= 1.0)
        },
    )
    .await?;
    let counted = t_swap.elapsed();
    let (code, body) = c.admin_get(2, "/readyz")?;

    // Rotation: pod 0 renews; new connections see it, the VM stays.
    let first = written_serial(&c, 0)?;
    let first_end = {
        let pem = std::fs::read(c.pods[0].out_dir.join("dist.pem")).map_err(|e| format!("{e}"))?;
        inspect::first_cert(&pem)
            .map_err(|e| format!("{e}"))?
            .not_after
    };
    let shown = presented_serial(&c, &mut nodes[1], 1, 0).await?;
    check(shown == first, || {
        format!("pod 0 presents {shown}, its sidecar wrote {first}")
    })?;
    let t = Instant::now();
    c.wait("pod 0's sidecar to renew", Duration::from_secs(60), |c| {
        written_serial(c, 0).is_ok_and(|s| s != first)
    })
    .await?;
    let renewed_after = t.elapsed();
    let presented = loop {
        let s = presented_serial(&c, &mut nodes[1], 1, 0).await?;
        if s != first {
            break s;
        }
        check(t.elapsed() < PRESENT_LIMIT, || {
            format!(
                "pod 0 still presents {first} {:?} after start, sidecar wrote {:?}",
                t.elapsed(),
                written_serial(&c, 0)
            )
        })?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let presented_after = t.elapsed();
    check(
        kube_epmd::tls::issue::unix(std::time::SystemTime::now()) < first_end,
        || "the new certificate showed only after the old one expired".into(),
    )?;
    // The connection that was up stays up: pod 1's node saw no nodedown
    // of pod 0's.
    let events = nodes[1].events().await?;
    check(!events.contains(&format!("{{down,'{}'}}", node(0))), || {
        format!("pod 1's node saw its connection to pod 0 drop during the rotation: {events}")
    })?;
    let pid0_now = nodes[0]
        .eval("list_to_integer(os:getpid())", Duration::from_secs(5))
        .await?;
    check(pid0_now == pid0, || {
        format!("pod 0's VM changed: {pid0} -> {pid0_now}")
    })?;
    nodes[1]
        .eval(
            &format!("erlang:disconnect_node('{}')", node(0)),
            Duration::from_secs(5),
        )
        .await?;
    check(nodes[1].ping(&node(0)).await?, || {
        "pod 1 cannot reconnect to pod 0 after the renewal".into()
    })?;
    report!(
        "tls rotation: pod 0's sidecar renewed {renewed_after:?} after the first check; a new \
         connection from pod 1 was shown the new certificate ({presented}, was {first}) \
         {presented_after:?} after it, the VM unchanged (os pid {pid0}); reconnect ok"
    );

    // Pod 2: the error is said at once and counted; /readyz turns 503
    // when the certificate in place runs out.
    c.wait(
        "pod 2's /readyz to turn 503 once its certificate ran out",
        Duration::from_secs(60),
        |c| c.admin_get(2, "/readyz").is_ok_and(|(code, _)| code == 503),
    )
    .await?;
    let (_, readyz) = c.admin_get(2, "/readyz")?;
    let (_, metrics) = c.admin_get(2, "/metrics")?;
    check(readyz.contains("expired"), || {
        format!("pod 2 /readyz says {readyz:?}")
    })?;
    check(
        metrics.contains("kube_epmd_tls_certificate_valid 0"),
        || "pod 2: kube_epmd_tls_certificate_valid is not 0".into(),
    )?;
    let log = c.sidecar_log(2);
    let said = log
        .lines()
        .find(|l| l.contains("ca.crt") && l.contains("expired at"))
        .ok_or(format!("pod 2's log names no expired ca.crt:\n{log}"))?;
    // Its node's certificate has run out: pod 0 refuses it now.
    nodes[2]
        .eval(
            &format!("erlang:disconnect_node('{}')", node(0)),
            Duration::from_secs(5),
        )
        .await?;
    check(!nodes[2].ping(&node(0)).await?, || {
        "pod 2 still reaches pod 0 with an expired certificate".into()
    })?;
    report!(
        "tls expiry: pod 2's CA replaced by an expired one: counted {counted:?} after the swap, \
         /readyz then {code} ({body:?}); 503 {readyz:?} once its certificate ran out; \
         kube_epmd_tls_errors_total{{reason=\"ca_expired\"}} {}; log: {said}; its node is \
         refused by pod 0; total {:?}",
        metric(&metrics),
        t_all.elapsed()
    );
    Ok(())
}

/// Issue 16: rotation without a restart and a clear expiry, in netns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_netns, ignore = "needs root and ip netns (KUBE_EPMD_TEST_SKIP)")]
#[cfg_attr(skip_erl, ignore = "needs erl (KUBE_EPMD_TEST_SKIP=erl)")]
async fn tls_rotation_and_expiry_in_pods() {
    crate::support::prereq::erl_ssl();
    run("tls rotation and expiry", scenario()).await;
}
