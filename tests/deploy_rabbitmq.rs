//! The RabbitMQ example (deploy/examples/rabbitmq), checked as the API
//! server and the containers would see it: rendered by the real `kubectl
//! kustomize`, every object read into its k8s-openapi type with unknown
//! fields named, the wiring every kube-epmd deployment shares (RBAC,
//! selectors, headless service, the sidecar's command line through
//! kube-epmd's own parser, ports, NetworkPolicy, hardening), and what
//! RabbitMQ needs beside kube-epmd: its inetrc, distribution ports inside
//! the window, `ERL_ZFLAGS="-start_epmd false"`, node names that the
//! classic-config peer list and kube-epmd's hosts file agree on, and the
//! cookie from a Secret (the copy script is run for real).
//!
//! tests/e2e/rabbitmq.rs runs the same rabbitmq.conf and environment with
//! Debian's rabbitmq-server in network-namespace pods.

#[allow(dead_code)]
#[path = "support/manifests.rs"]
mod manifests;

use std::collections::BTreeMap;
use std::process::Command;

use k8s_openapi::api::core::v1::{Container, EnvVar};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use manifests::{
    Check, DIST, Manifests, assert_typed_objects, check_app_sees_output_dir,
    check_ca_in_sidecar_only, check_env_expansion, check_hardening, check_headless_service,
    check_no_literal_cookie, check_ports, check_rbac_wiring, check_role, check_selectors,
    check_sidecar_common, container_mut, env, field_ref, object_id, pod_mut, run_checks,
    sidecar_args, sidecar_mut, sidecar_tls_settings,
};

const KUSTOMIZATION: &str = "deploy/examples/rabbitmq";
/// The example over mutual TLS (an overlay of it).
const TLS_KUSTOMIZATION: &str = "deploy/examples/rabbitmq-tls-dist";
const APP: &str = "rabbitmq";
const AMQP: i32 = 5672;
/// Where RabbitMQ (3.9 and later) reads extra configuration files.
const CONF_D: &str = "/etc/rabbitmq/conf.d/";

fn load() -> Manifests {
    Manifests::load(KUSTOMIZATION)
}

fn value(c: &Container, name: &str) -> Option<String> {
    env(c, name).and_then(|e| e.value.clone())
}

/// The rabbitmq.conf mounted into conf.d, as `key -> value`.
fn rabbitmq_conf(m: &Manifests) -> Result<BTreeMap<String, String>, String> {
    let c = m.container(APP);
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|v| v.mount_path.starts_with(CONF_D) && v.mount_path.ends_with(".conf"))
        .ok_or(format!("no configuration file is mounted into {CONF_D}"))?;
    let text = m.config_file(&mount.name, mount.sub_path.as_deref().unwrap_or(""))?;
    let mut conf = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or(format!("rabbitmq.conf: not `key = value`: {line:?}"))?;
        if conf
            .insert(k.trim().to_string(), v.trim().to_string())
            .is_some()
        {
            return Err(format!("rabbitmq.conf sets {} twice", k.trim()));
        }
    }
    Ok(conf)
}

// ------------------------------------------------------------------- checks

/// kube-epmd's files reach RabbitMQ: its directory at the same path (the
/// inetrc names the hosts file by absolute path; no subPath, the hosts file
/// is replaced by rename) and ERL_INETRC naming its inetrc.
fn check_sidecar(m: &Manifests) -> Result<(), String> {
    let args = check_sidecar_common(m)?;
    let out = check_app_sees_output_dir(m, APP, &args)?;
    let c = m.container(APP);
    let inetrc = format!("{}/inetrc", out.path);
    if value(c, "ERL_INETRC").as_deref() != Some(&inetrc[..]) {
        return Err(format!(
            "ERL_INETRC is {:?}, kube-epmd writes {inetrc}",
            value(c, "ERL_INETRC")
        ));
    }
    Ok(())
}

fn port_var(c: &Container, name: &str) -> Result<u16, String> {
    let v = value(c, name).ok_or(format!(
        "{name} unset: RabbitMQ's default lies outside {DIST} and kube-epmd refuses it"
    ))?;
    v.parse().map_err(|e| format!("{name}={v:?}: {e}"))
}

/// Distribution ports inside kube-epmd's window, set the way RabbitMQ
/// reads them, and no OTP epmd started by any VM of the container.
fn check_distribution(m: &Manifests) -> Result<(), String> {
    let c = m.container(APP);
    let node = port_var(c, "RABBITMQ_DIST_PORT")?;
    let (min, max) = (
        port_var(c, "RABBITMQ_CTL_DIST_PORT_MIN")?,
        port_var(c, "RABBITMQ_CTL_DIST_PORT_MAX")?,
    );
    let inside = |p: u16| (DIST.min..=DIST.max).contains(&p);
    if !inside(node) || !inside(min) || !inside(max) || min > max {
        return Err(format!(
            "broker port {node}, CLI ports {min}-{max}: all must lie in {DIST}"
        ));
    }
    if (min..=max).contains(&node) {
        return Err(format!(
            "the CLI range {min}-{max} holds the broker's port {node}"
        ));
    }
    // RabbitMQ overrides these; setting them suggests they matter.
    for e in c.env.iter().flatten() {
        if e.value
            .as_deref()
            .is_some_and(|v| v.contains("inet_dist_listen"))
        {
            return Err(format!(
                "{} sets inet_dist_listen_*, which RabbitMQ ignores: use RABBITMQ_DIST_PORT",
                e.name
            ));
        }
    }
    let zflags = value(c, "ERL_ZFLAGS").unwrap_or_default();
    let words: Vec<&str> = zflags.split_whitespace().collect();
    if !words.windows(2).any(|w| w == ["-start_epmd", "false"]) {
        return Err(format!(
            "ERL_ZFLAGS={zflags:?}: needs -start_epmd false, or RabbitMQ's epmd-starter \
             starts OTP's epmd whenever 4369 is free"
        ));
    }
    if env(c, "ERL_DIST_PORT").is_some() || env(c, "ERL_EPMD_PORT").is_some() {
        return Err("ERL_DIST_PORT / ERL_EPMD_PORT would bypass or move EPMD".into());
    }
    Ok(())
}

/// Node names: long names built from the pod name under the headless
/// service, and the classic-config peer list naming exactly every replica
/// the same way (the names kube-epmd's hosts file resolves).
fn check_node_names(m: &Manifests) -> Result<(), String> {
    let c = m.container(APP);
    check_env_expansion(c)?;
    if field_ref(c, "POD_NAME").as_deref() != Some("metadata.name") {
        return Err("rabbitmq's POD_NAME must come from metadata.name".into());
    }
    let subdomain = m.statefulset.spec.service_name.clone().unwrap_or_default();
    let want = format!("rabbit@$(POD_NAME).{subdomain}");
    if value(c, "RABBITMQ_NODENAME").as_deref() != Some(&want[..]) {
        return Err(format!(
            "RABBITMQ_NODENAME {:?}, want {want}",
            value(c, "RABBITMQ_NODENAME")
        ));
    }
    if value(c, "RABBITMQ_USE_LONGNAME").as_deref() != Some("true") {
        return Err("long node names need RABBITMQ_USE_LONGNAME=true".into());
    }
    let conf = rabbitmq_conf(m)?;
    if conf
        .get("cluster_formation.peer_discovery_backend")
        .map(String::as_str)
        != Some("classic_config")
    {
        return Err("rabbitmq.conf: peer_discovery_backend must be classic_config".into());
    }
    let listed: BTreeMap<&str, &str> = conf
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("cluster_formation.classic_config.nodes.")
                .map(|i| (i, v.as_str()))
        })
        .collect();
    let sts = m.statefulset.metadata.name.clone().unwrap_or_default();
    let replicas = m.statefulset.spec.replicas.unwrap_or(1);
    let want: BTreeMap<String, String> = (0..replicas)
        .map(|i| ((i + 1).to_string(), format!("rabbit@{sts}-{i}.{subdomain}")))
        .collect();
    let got: BTreeMap<String, String> = listed
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if got != want {
        return Err(format!(
            "classic_config lists {got:?}, the StatefulSet's nodes are {want:?}"
        ));
    }
    Ok(())
}

/// The copy script's lines, and where it reads the Secret.
fn cookie_script(c: &Container) -> Result<&str, String> {
    match c.command.as_deref() {
        Some([sh, dash_c, script]) if sh == "/bin/sh" && dash_c == "-c" => Ok(script),
        other => Err(format!(
            "rabbitmq's command {other:?} is not /bin/sh -c SCRIPT"
        )),
    }
}

/// The cookie comes from a required Secret, is copied into a writable HOME
/// by the container's command, and appears nowhere in plain text.
fn check_cookie(m: &Manifests) -> Result<(), String> {
    check_no_literal_cookie(m)?;
    let c = m.container(APP);
    let (vol, secret) = m
        .pod()
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.secret.as_ref().map(|s| (v, s)))
        .ok_or("no Secret volume holds the cookie")?;
    if secret.optional == Some(true) || secret.secret_name.is_none() {
        return Err("the cookie Secret must be named and not optional".into());
    }
    // Secret files belong to root; fsGroup must be able to read the copy's source.
    let mode = secret.default_mode.unwrap_or(0o644);
    let fs_group = m.pod().security_context.as_ref().and_then(|s| s.fs_group);
    if mode & 0o040 == 0 || fs_group.is_none() {
        return Err(format!(
            "Secret mode {mode:o} with fsGroup {fs_group:?}: the rabbitmq user cannot read it"
        ));
    }
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|v| v.name == vol.name)
        .ok_or("the cookie Secret is not mounted into rabbitmq")?;
    let item = secret
        .items
        .iter()
        .flatten()
        .next()
        .map(|i| i.path.clone())
        .ok_or("name the Secret's key with items (cookie -> file)")?;
    let source = format!("{}/{item}", mount.mount_path);
    let script = cookie_script(c)?;
    if !script.contains(&source) || !script.contains("$HOME/.erlang.cookie") {
        return Err(format!(
            "the command does not copy {source} to $HOME/.erlang.cookie:\n{script}"
        ));
    }
    let home = value(c, "HOME").ok_or("set HOME (the cookie's directory)")?;
    if !c
        .volume_mounts
        .iter()
        .flatten()
        .any(|v| v.mount_path == home && v.read_only != Some(true))
    {
        return Err(format!("HOME {home} is not a writable mount"));
    }
    Ok(())
}

fn all_checks(m: &Manifests) -> Vec<String> {
    let checks: [(&str, Check); 10] = [
        ("role", |m| check_role(&m.role, None)),
        ("rbac wiring", check_rbac_wiring),
        ("selectors", check_selectors),
        ("headless service", check_headless_service),
        ("ports", |m| check_ports(m, APP, &[AMQP])),
        ("sidecar", check_sidecar),
        ("distribution", check_distribution),
        ("node names", check_node_names),
        ("cookie", check_cookie),
        ("hardening", |m| check_hardening(m, &[])),
    ];
    run_checks(m, &checks)
}

// -------------------------------------------------------------------- tests

#[test]
#[cfg_attr(skip_kubectl, ignore = "needs kubectl >= 1.27 (KUBE_EPMD_TEST_SKIP)")]
fn every_rendered_object_is_a_known_type_without_unknown_fields() {
    let objs = assert_typed_objects(KUSTOMIZATION, &["Namespace"]);
    let kinds: Vec<&str> = objs.iter().filter_map(|o| o["kind"].as_str()).collect();
    // Everything in one namespace, and no Secret: the cookie is created by hand.
    assert!(
        !kinds.contains(&"Secret"),
        "the example must not ship a cookie"
    );
    for o in objs.iter().filter(|o| o["kind"] != "Namespace") {
        assert_eq!(o["metadata"]["namespace"], "rabbitmq", "{}", object_id(o));
    }
}

#[test]
#[cfg_attr(skip_kubectl, ignore = "needs kubectl >= 1.27 (KUBE_EPMD_TEST_SKIP)")]
fn cross_references_hold() {
    let problems = all_checks(&load());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
#[cfg_attr(skip_kubectl, ignore = "needs kubectl >= 1.27 (KUBE_EPMD_TEST_SKIP)")]
fn sidecar_is_started_like_the_ejabberd_one() {
    // Same image, same arguments apart from what names the workload (the
    // pod selector; the StatefulSet whose replica count the ejabberd entry
    // point reads): one kube-epmd for every Erlang workload.
    // Plain against the plain base, TLS against the TLS default (the
    // subdomain names each workload's headless Service).
    let rabbit = load();
    let ejabberd = Manifests::load("deploy/base");
    let args = |m: &Manifests| -> Vec<String> {
        m.sidecar()
            .args
            .iter()
            .flatten()
            .filter(|a| {
                !a.starts_with("--selector")
                    && !a.starts_with("--statefulset")
                    && !a.starts_with("--tls-subdomain")
            })
            .cloned()
            .collect()
    };
    assert_eq!(args(&rabbit), args(&ejabberd));
    assert_eq!(
        args(&Manifests::load(TLS_KUSTOMIZATION)),
        args(&Manifests::load("deploy"))
    );
    assert_eq!(rabbit.sidecar().image, ejabberd.sidecar().image);
    assert_eq!(
        rabbit.sidecar().startup_probe,
        ejabberd.sidecar().startup_probe
    );
}

/// The TLS overlay: every check of the example still holds; the sidecar
/// issues from the CA Secret, which only the sidecar mounts, for the pod's
/// names under the headless Service; the broker and the CLI (through the
/// container's environment, which `kubectl exec` inherits) run inet_tls
/// with the optfile the sidecar writes into the shared directory; nothing
/// else in the broker's container differs.
#[test]
#[cfg_attr(skip_kubectl, ignore = "needs kubectl >= 1.27 (KUBE_EPMD_TEST_SKIP)")]
fn tls_overlay_mounts_the_ca_in_the_sidecar_only_and_runs_inet_tls() {
    assert_typed_objects(TLS_KUSTOMIZATION, &["Namespace"]);
    let base = load();
    let m = Manifests::load(TLS_KUSTOMIZATION);
    let problems = all_checks(&m);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let args = sidecar_args(m.sidecar()).expect("sidecar arguments parse");
    let ca_dir = args.tls.tls_ca_dir.clone().expect("--tls-ca-dir");
    let settings = sidecar_tls_settings(&args, "rmq-0", "rabbitmq");
    assert!(
        settings
            .names
            .contains(&"rmq-0.rmq-internal-svc".to_string()),
        "the certificate lacks the node names' host: {:?}",
        settings.names
    );
    check_ca_in_sidecar_only(&m, "kube-epmd-dist-ca", &ca_dir).expect("CA mounts");
    let optfile = args.kube.output_dir.join(kube_epmd::tls::OPTFILE);
    let want = format!(
        "-proto_dist inet_tls -ssl_dist_optfile {}",
        optfile.display()
    );
    let app = m.container(APP);
    for var in [
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
        "RABBITMQ_CTL_ERL_ARGS",
    ] {
        assert_eq!(value(app, var).as_deref(), Some(want.as_str()), "{var}");
    }
    let shared = app
        .volume_mounts
        .iter()
        .flatten()
        .any(|v| optfile.starts_with(&v.mount_path) && v.sub_path.is_none());
    assert!(shared, "the broker does not see {}", optfile.display());
    let mut app = app.clone();
    if let Some(env) = app.env.as_mut() {
        env.retain(|e| !e.name.ends_with("_ERL_ARGS"));
    }
    assert_eq!(
        &app,
        base.container(APP),
        "only the two erl argument variables differ"
    );
}

/// Runs the container's command with `sh`, the Secret at a temporary
/// path and a stand-in `rabbitmq-server` that reports what it finds.
fn run_cookie_script(secret_dir: &std::path::Path, home: &std::path::Path) -> String {
    let m = load();
    let c = m.container(APP);
    let script = cookie_script(c).expect("cookie script");
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|v| v.name == "erlang-cookie")
        .expect("cookie mount");
    let script = script.replace(&mount.mount_path, &secret_dir.to_string_lossy());
    let bin = home.parent().expect("parent").join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let stub = bin.join("rabbitmq-server");
    std::fs::write(
        &stub,
        "#!/bin/sh\nstat -c '%a' \"$HOME/.erlang.cookie\"\ncat \"$HOME/.erlang.cookie\"\n",
    )
    .expect("stub");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .env("HOME", home)
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "cookie script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[cfg_attr(skip_kubectl, ignore = "needs kubectl >= 1.27 (KUBE_EPMD_TEST_SKIP)")]
fn cookie_script_leaves_an_owner_only_copy_and_runs_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&secret).expect("secret dir");
    std::fs::create_dir_all(&home).expect("home");
    std::fs::write(secret.join("cookie"), "first-cookie").expect("cookie");
    // Erlang refuses a cookie file that group or others may read.
    assert_eq!(run_cookie_script(&secret, &home), "600\nfirst-cookie");
    // A restart after the Secret was rotated replaces the old, read-only copy.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        home.join(".erlang.cookie"),
        std::fs::Permissions::from_mode(0o400),
    )
    .expect("chmod");
    std::fs::write(secret.join("cookie"), "second-cookie").expect("cookie");
    assert_eq!(run_cookie_script(&secret, &home), "600\nsecond-cookie");
}

fn app_mut(m: &mut Manifests) -> &mut Container {
    container_mut(m, APP)
}

fn set_env(m: &mut Manifests, name: &str, v: Option<&str>) {
    let envs = app_mut(m).env.as_mut().expect("env");
    envs.retain(|e| e.name != name);
    if let Some(v) = v {
        envs.push(EnvVar {
            name: name.into(),
            value: Some(v.into()),
            ..Default::default()
        });
    }
}

fn edit_conf(m: &mut Manifests, f: impl Fn(&str) -> String) {
    for cm in m.config_maps.values_mut() {
        for text in cm.data.iter_mut().flat_map(|d| d.values_mut()) {
            *text = f(text);
        }
    }
}

#[test]
#[cfg_attr(skip_kubectl, ignore = "needs kubectl >= 1.27 (KUBE_EPMD_TEST_SKIP)")]
fn checks_catch_what_breaks_rabbitmq_behind_kube_epmd() {
    let broken = |f: &dyn Fn(&mut Manifests), check: Check, want: &str| {
        let mut m = load();
        f(&mut m);
        let err = check(&m).expect_err(want);
        assert!(err.contains(want), "{want:?} not in: {err}");
    };
    // The failures: RabbitMQ's default ports, refused by kube-epmd.
    broken(
        &|m| set_env(m, "RABBITMQ_DIST_PORT", None),
        check_distribution,
        "RABBITMQ_DIST_PORT unset",
    );
    broken(
        &|m| set_env(m, "RABBITMQ_CTL_DIST_PORT_MAX", Some("35682")),
        check_distribution,
        "must lie in 4200-4210",
    );
    broken(
        &|m| set_env(m, "RABBITMQ_CTL_DIST_PORT_MIN", Some("4200")),
        check_distribution,
        "holds the broker's port",
    );
    broken(
        &|m| {
            set_env(
                m,
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                Some("-kernel inet_dist_listen_min 4200 inet_dist_listen_max 4210"),
            )
        },
        check_distribution,
        "RabbitMQ ignores",
    );
    // -start_epmd false where the epmd-starter does not see it.
    broken(
        &|m| {
            set_env(m, "ERL_ZFLAGS", None);
            set_env(
                m,
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                Some("-start_epmd false"),
            );
        },
        check_distribution,
        "ERL_ZFLAGS",
    );
    broken(
        &|m| set_env(m, "ERL_INETRC", Some("/etc/rabbitmq/inetrc")),
        check_sidecar,
        "ERL_INETRC",
    );
    broken(
        &|m| {
            app_mut(m)
                .volume_mounts
                .as_mut()
                .expect("mounts")
                .retain(|v| v.mount_path != "/var/run/kube-epmd")
        },
        check_sidecar,
        "does not see kube-epmd's directory",
    );
    // Names the hosts file does not have, or a peer list that misses one.
    broken(
        &|m| set_env(m, "RABBITMQ_NODENAME", Some("rabbit@$(POD_NAME)")),
        check_node_names,
        "RABBITMQ_NODENAME",
    );
    broken(
        &|m| {
            edit_conf(m, |t| {
                t.replace("nodes.3 = rabbit@rmq-2", "nodes.3 = rabbit@rmq-3")
            })
        },
        check_node_names,
        "classic_config lists",
    );
    broken(
        &|m| m.statefulset.spec.replicas = Some(5),
        check_node_names,
        "classic_config lists",
    );
    broken(
        &|m| edit_conf(m, |t| t.replace("classic_config\n", "k8s\n")),
        check_node_names,
        "classic_config",
    );
    // POD_NAME defined after the variable that expands it.
    broken(
        &|m| {
            let envs = app_mut(m).env.as_mut().expect("env");
            let pod = envs.remove(0);
            envs.push(pod);
        },
        check_node_names,
        "before it is defined",
    );
    // The cookie.
    broken(
        &|m| set_env(m, "RABBITMQ_ERLANG_COOKIE", Some("secret")),
        check_cookie,
        "literal",
    );
    broken(
        &|m| {
            for v in pod_mut(m).volumes.iter_mut().flatten() {
                if let Some(s) = v.secret.as_mut() {
                    s.optional = Some(true);
                }
            }
        },
        check_cookie,
        "not optional",
    );
    broken(
        &|m| {
            for v in pod_mut(m).volumes.iter_mut().flatten() {
                if let Some(s) = v.secret.as_mut() {
                    s.default_mode = Some(0o400);
                }
            }
        },
        check_cookie,
        "cannot read",
    );
    // Shared wiring, with this example's objects.
    broken(
        &|m| {
            let np = m.network_policy.spec.as_mut().expect("np");
            np.ingress.as_mut().expect("rules")[0].from = None;
        },
        |m| check_ports(m, APP, &[AMQP]),
        "to everyone",
    );
    broken(
        &|m| {
            for a in sidecar_mut(m).args.iter_mut().flatten() {
                if a.starts_with("--selector") {
                    *a = "--selector=app.kubernetes.io/name=ejabberd".into();
                }
            }
        },
        check_sidecar,
        "kube-epmd watches",
    );
    broken(
        &|m| {
            let svc = m
                .services
                .get_mut("rmq-internal-svc")
                .and_then(|s| s.spec.as_mut());
            svc.expect("headless svc").ports.as_mut().expect("ports")[0].target_port =
                Some(IntOrString::String("epmd".into()));
        },
        |m| check_ports(m, APP, &[AMQP]),
        "a name of an init container's port",
    );
    broken(
        &|m| {
            m.role.rules.as_mut().expect("rules")[0]
                .verbs
                .push("list".into())
        },
        |m| check_role(&m.role, None),
        "want get, list, watch",
    );
}
