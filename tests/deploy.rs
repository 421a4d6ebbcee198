//! The Kubernetes manifests under deploy/, checked as the API server and the
//! containers would see them.
//!
//! Every kustomization is rendered by the real `kubectl kustomize`, every
//! object is read into its k8s-openapi type, and the objects are checked
//! against each other: labels and selectors, the headless service, RBAC
//! wiring, ports from container to Service to NetworkPolicy, the sidecar's
//! command line (through the real clap parser) and the files ejabberd reads.
//!
//! k8s-openapi ignores fields it does not know, so "deserializes" alone would
//! let a misspelled key through. Each object is therefore serialized back and
//! compared with what kustomize rendered: a key that does not survive the
//! round trip is not a field of that type, and the test names its path.

#[allow(dead_code)]
#[path = "support/manifests.rs"]
mod manifests;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::core::v1::{Container, EnvVar};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use manifests::{
    Check, DIST, Manifests, assert_typed_objects, check_app_sees_output_dir,
    check_ca_in_sidecar_only, check_env_expansion, check_hardening, check_headless_service,
    check_no_literal_cookie, check_ports, check_rbac_wiring, check_role, check_selectors,
    check_sidecar_common, container_mut, env, field_ref, parse_documents, prereq, rendered_objects,
    repo_path, run_checks, sidecar_args, sidecar_mut, sidecar_tls_settings, unknown_fields,
    valid_port_name,
};
use serde_json::Value;

/// Every kustomization a user may apply.
const KUSTOMIZATIONS: &[&str] = &[
    "deploy",
    "deploy/base",
    "deploy/overlays/short-names",
    "deploy/overlays/tls-dist",
];

const CLIENT_PORTS: [i32; 3] = [5222, 5269, 5280];
const EJABBERD: &str = "ejabberd";
/// ejabberdctl exports ERL_INETRC=$CONFIG_DIR/inetrc; the image fixes CONFIG_DIR.
const EJABBERD_CONF_DIR: &str = "/opt/ejabberd/conf";

// ------------------------------------------------------------------- checks

/// What every lifecycle event relies on (issue 10): pods created and
/// scaled in parallel (after all went down, Mnesia needs them all up),
/// one-at-a-time rolling updates, scaled-away volumes deleted, and the
/// sidecar reporting this StatefulSet's replica count to the entrypoint.
fn check_lifecycle(m: &Manifests) -> Result<(), String> {
    let spec = &m.statefulset.spec;
    if spec.pod_management_policy.as_deref() != Some("Parallel") {
        return Err(format!(
            "podManagementPolicy {:?}: after all pods went down, OrderedReady creates only \
             chat-0, whose Mnesia waits for the others for ever; want Parallel",
            spec.pod_management_policy
        ));
    }
    let strategy = spec.update_strategy.as_ref();
    if strategy.and_then(|u| u.type_.as_deref()) != Some("RollingUpdate")
        || strategy
            .and_then(|u| u.rolling_update.as_ref())
            .and_then(|r| r.max_unavailable.as_ref())
            .is_some_and(|v| *v != IntOrString::Int(1))
    {
        return Err(format!(
            "updateStrategy {strategy:?}: want RollingUpdate one pod at a time"
        ));
    }
    // Claims outlive their pods: `whenScaled: Delete` removed every volume
    // on a scale to 0 (issue 21); a scaled-away node's retained database
    // is set aside by the entrypoint when it comes back.
    let policy = spec.persistent_volume_claim_retention_policy.as_ref();
    for (what, got) in [
        ("whenScaled", policy.and_then(|p| p.when_scaled.as_deref())),
        (
            "whenDeleted",
            policy.and_then(|p| p.when_deleted.as_deref()),
        ),
    ] {
        // Unset means Retain (the API's default).
        if got.is_some_and(|g| g != "Retain") {
            return Err(format!(
                "{what} is {got:?}: every claim must be retained (scale to 0 and back keeps the data)"
            ));
        }
    }
    let args = sidecar_args(m.sidecar())?;
    let name = m.statefulset.metadata.name.as_deref().unwrap_or("");
    if args.kube.statefulset.as_deref() != Some(name) {
        return Err(format!(
            "kube-epmd --statefulset is {:?}, want {name}: the entrypoint needs its replicas file",
            args.kube.statefulset
        ));
    }
    check_role(&m.role, Some(name))
}

/// The sidecar (what every deployment needs of it, see
/// `check_sidecar_common`) and its files where ejabberd reads them.
fn check_sidecar(m: &Manifests) -> Result<(), String> {
    let args = check_sidecar_common(m)?;
    let out = check_app_sees_output_dir(m, EJABBERD, &args)?;
    let ej = m.container(EJABBERD);
    // ejabberdctl forces ERL_INETRC=$CONFIG_DIR/inetrc: the file goes there.
    let inetrc = format!("{EJABBERD_CONF_DIR}/inetrc");
    if !ej.volume_mounts.iter().flatten().any(|v| {
        v.name == out.volume && v.mount_path == inetrc && v.sub_path.as_deref() == Some("inetrc")
    }) {
        return Err(format!("kube-epmd's inetrc is not mounted at {inetrc}"));
    }
    let hosts = env(ej, "KUBE_EPMD_HOSTS_FILE").and_then(|e| e.value.clone());
    if hosts.as_deref() != Some(&format!("{}/hosts", out.path)[..]) {
        return Err(format!(
            "the cluster script reads {hosts:?}, kube-epmd writes {}/hosts",
            out.path
        ));
    }
    Ok(())
}

/// Value of `NAME=...` in a shell fragment (ejabberdctl.cfg), quotes removed.
fn shell_var(text: &str, name: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('='))
        .map(|v| v.trim_matches('"').to_string())
        .next_back()
}

/// ejabberd: node name, cookie, distribution window, no epmd of its own.
fn check_ejabberd(m: &Manifests) -> Result<(), String> {
    let c = m.container(EJABBERD);
    check_env_expansion(c)?;
    let node = env(c, "ERLANG_NODE_ARG")
        .and_then(|e| e.value.clone())
        .ok_or("no ERLANG_NODE_ARG")?;
    let subdomain = m.statefulset.spec.service_name.clone().unwrap_or_default();
    let long = format!("ejabberd@$(POD_NAME).{subdomain}");
    if node != "ejabberd@$(POD_NAME)" && node != long {
        return Err(format!(
            "ERLANG_NODE_ARG {node:?}: want ejabberd@$(POD_NAME) or {long}, names kube-epmd resolves"
        ));
    }
    if field_ref(c, "POD_NAME").as_deref() != Some("metadata.name") {
        return Err("ejabberd's POD_NAME must come from metadata.name".into());
    }
    check_no_literal_cookie(m)?;
    let cookie = env(c, "ERLANG_COOKIE")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.secret_key_ref.as_ref())
        .ok_or("ERLANG_COOKIE must come from a Secret")?;
    if cookie.optional == Some(true) {
        return Err("the cookie Secret must not be optional".into());
    }
    if env(c, "ERL_DIST_PORT").is_some() || env(c, "ERL_EPMD_PORT").is_some() {
        return Err("ERL_DIST_PORT / ERL_EPMD_PORT would bypass or move EPMD".into());
    }
    let cfg_mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|v| v.mount_path == format!("{EJABBERD_CONF_DIR}/ejabberdctl.cfg"))
        .ok_or("ejabberdctl.cfg is not mounted into the conf dir")?;
    let cfg = m.config_file(&cfg_mount.name, cfg_mount.sub_path.as_deref().unwrap_or(""))?;
    let window =
        shell_var(&cfg, "FIREWALL_WINDOW").ok_or("ejabberdctl.cfg sets no FIREWALL_WINDOW")?;
    if window != DIST.to_string() {
        return Err(format!(
            "FIREWALL_WINDOW={window}, kube-epmd enforces {DIST}"
        ));
    }
    let opts = shell_var(&cfg, "ERL_OPTIONS").unwrap_or_default();
    if !opts.contains("-start_epmd false") {
        return Err(format!("ERL_OPTIONS={opts:?} lacks -start_epmd false"));
    }
    if shell_var(&cfg, "ERL_DIST_PORT").is_some() {
        return Err("ejabberdctl.cfg sets ERL_DIST_PORT (bypasses EPMD)".into());
    }
    // The listeners ejabberd.yml opens are the ones the services expose.
    let yml_mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|v| v.mount_path == format!("{EJABBERD_CONF_DIR}/ejabberd.yml"))
        .ok_or("ejabberd.yml is not mounted into the conf dir")?;
    let yml = m.config_file(&yml_mount.name, yml_mount.sub_path.as_deref().unwrap_or(""))?;
    let conf: Value = serde_saphyr::from_str(&yml).map_err(|e| format!("ejabberd.yml: {e}"))?;
    let listen: BTreeSet<i64> = conf["listen"]
        .as_array()
        .ok_or("ejabberd.yml has no listen list")?
        .iter()
        .filter_map(|l| l["port"].as_i64())
        .collect();
    let want: BTreeSet<i64> = CLIENT_PORTS.iter().map(|p| i64::from(*p)).collect();
    if listen != want {
        return Err(format!(
            "ejabberd.yml listens on {listen:?}, the services expose {want:?}"
        ));
    }
    Ok(())
}

/// The container runs the cluster script from its ConfigMap, and the startup
/// probe waits for the flag that script writes.
fn check_cluster_script(m: &Manifests) -> Result<(), String> {
    let c = m.container(EJABBERD);
    let cmd = c.command.as_deref().unwrap_or_default();
    let script_path = cmd
        .iter()
        .find(|a| a.ends_with(".sh"))
        .ok_or("ejabberd does not run the cluster script")?;
    let (dir, file) = script_path
        .rsplit_once('/')
        .ok_or("script path is not absolute")?;
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|v| v.mount_path == dir)
        .ok_or(format!("nothing is mounted at {dir}"))?;
    let script = m.config_file(&mount.name, file)?;
    let flag = script
        .split("CLUSTER_READY_FLAG:-")
        .nth(1)
        .and_then(|s| s.split('}').next())
        .ok_or("the script defines no ready flag")?;
    let probe = c
        .startup_probe
        .as_ref()
        .and_then(|p| p.exec.as_ref())
        .and_then(|e| e.command.clone())
        .unwrap_or_default();
    if !probe.iter().any(|a| a.contains(flag)) {
        return Err(format!(
            "ejabberd's startup probe {probe:?} does not wait for {flag}"
        ));
    }
    let (flag_dir, _) = flag.rsplit_once('/').unwrap_or(("", ""));
    if !c
        .volume_mounts
        .iter()
        .flatten()
        .any(|v| v.mount_path == flag_dir && v.read_only != Some(true))
    {
        return Err(format!("{flag_dir} (ready flag) is not writable"));
    }
    Ok(())
}

/// ejabberd's client ports and distribution window, wired through the
/// Services and the NetworkPolicy.
fn ports(m: &Manifests) -> Result<(), String> {
    check_ports(m, EJABBERD, &CLIENT_PORTS)
}

/// The capabilities a container may add back after dropping ALL.
const ALLOWED_CAPS: &[(&str, &str)] = &[(EJABBERD, "NET_BIND_SERVICE")];

fn hardening(m: &Manifests) -> Result<(), String> {
    check_hardening(m, ALLOWED_CAPS)
}

fn all_checks(m: &Manifests) -> Vec<String> {
    let checks: [(&str, Check); 10] = [
        ("role", |m| {
            check_role(
                &m.role,
                Some(m.statefulset.metadata.name.as_deref().unwrap_or("")),
            )
        }),
        ("lifecycle", check_lifecycle),
        ("rbac wiring", check_rbac_wiring),
        ("selectors", check_selectors),
        ("headless service", check_headless_service),
        ("ports", ports),
        ("sidecar", check_sidecar),
        ("ejabberd", check_ejabberd),
        ("cluster script", check_cluster_script),
        ("hardening", hardening),
    ];
    run_checks(m, &checks)
}

// -------------------------------------------------------------------- tests

#[test]
#[cfg_attr(skip_kubectl, ignore = "needs kubectl >= 1.27 (KUBE_EPMD_TEST_SKIP)")]
fn every_rendered_object_is_a_known_type_without_unknown_fields() {
    for dir in KUSTOMIZATIONS {
        assert_typed_objects(dir, &[]);
    }
}

#[test]
#[cfg_attr(skip_kubectl, ignore = "needs kubectl >= 1.27 (KUBE_EPMD_TEST_SKIP)")]
fn cross_references_hold_in_every_kustomization() {
    for dir in KUSTOMIZATIONS {
        let problems = all_checks(&Manifests::load(dir));
        assert!(problems.is_empty(), "{dir}:\n{}", problems.join("\n"));
    }
}

#[test]
#[cfg_attr(skip_kubectl, ignore = "needs kubectl >= 1.27 (KUBE_EPMD_TEST_SKIP)")]
fn overlays_differ_only_in_the_node_name() {
    let base = Manifests::load("deploy");
    let short = Manifests::load("deploy/overlays/short-names");
    let node =
        |m: &Manifests| env(m.container(EJABBERD), "ERLANG_NODE_ARG").and_then(|e| e.value.clone());
    assert_eq!(
        node(&base).as_deref(),
        Some("ejabberd@$(POD_NAME).xmpp-internal-svc")
    );
    assert_eq!(node(&short).as_deref(), Some("ejabberd@$(POD_NAME)"));
}

/// What `kubectl apply -k deploy/` deploys is distribution over mutual
/// TLS (the tls-dist overlay as it is), and so are the short names; plain
/// TCP distribution is deploy/base.
#[test]
#[cfg_attr(skip_kubectl, ignore = "needs kubectl >= 1.27 (KUBE_EPMD_TEST_SKIP)")]
fn the_default_is_distribution_over_tls() {
    assert_eq!(
        manifests::render("deploy"),
        manifests::render("deploy/overlays/tls-dist")
    );
    let opts = |m: &Manifests| {
        shell_var(
            &m.config_file("ejabberd-config", "ejabberdctl.cfg")
                .expect("ejabberdctl.cfg"),
            "ERL_OPTIONS",
        )
        .unwrap_or_default()
    };
    for dir in ["deploy", "deploy/overlays/short-names"] {
        let m = Manifests::load(dir);
        let args = sidecar_args(m.sidecar()).expect("sidecar arguments parse");
        assert!(args.tls.tls_ca_dir.is_some(), "{dir}: no --tls-ca-dir");
        assert!(opts(&m).contains("-proto_dist inet_tls"), "{dir}");
    }
    let base = Manifests::load("deploy/base");
    assert!(
        sidecar_args(base.sidecar())
            .unwrap()
            .tls
            .tls_ca_dir
            .is_none()
    );
    assert!(!opts(&base).contains("inet_tls"));
}

/// The tls-dist overlay: the sidecar issues from the CA Secret, which only
/// the sidecar mounts; ejabberd (and every hidden node started from
/// ejabberdctl.cfg's ERL_OPTIONS) runs inet_tls with the optfile the
/// sidecar writes into the shared directory; nothing else differs from
/// the base's ejabberdctl.cfg.
#[test]
#[cfg_attr(skip_kubectl, ignore = "needs kubectl >= 1.27 (KUBE_EPMD_TEST_SKIP)")]
fn tls_overlay_mounts_the_ca_in_the_sidecar_only_and_runs_inet_tls() {
    let base = Manifests::load("deploy/base");
    let m = Manifests::load("deploy/overlays/tls-dist");
    let args = sidecar_args(m.sidecar()).expect("sidecar arguments parse");
    let ca_dir = args.tls.tls_ca_dir.clone().expect("--tls-ca-dir");
    let settings = sidecar_tls_settings(&args, "chat-0", "xmpp");
    assert_eq!(
        settings.names,
        [
            "chat-0",
            "chat-0.xmpp-internal-svc",
            "chat-0.xmpp-internal-svc.xmpp",
            "chat-0.xmpp-internal-svc.xmpp.svc",
            "chat-0.xmpp-internal-svc.xmpp.svc.cluster.local"
        ]
    );
    check_ca_in_sidecar_only(&m, "kube-epmd-dist-ca", &ca_dir).expect("CA mounts");
    let cfg = |m: &Manifests| {
        m.config_file("ejabberd-config", "ejabberdctl.cfg")
            .expect("ejabberdctl.cfg")
    };
    let optfile = args.kube.output_dir.join(kube_epmd::tls::OPTFILE);
    let opts = shell_var(&cfg(&m), "ERL_OPTIONS").unwrap_or_default();
    assert_eq!(
        opts,
        format!(
            "-start_epmd false -proto_dist inet_tls -ssl_dist_optfile {}",
            optfile.display()
        )
    );
    // The optfile is in the directory ejabberd sees at the same path.
    let shared = m
        .container(EJABBERD)
        .volume_mounts
        .iter()
        .flatten()
        .any(|v| optfile.starts_with(&v.mount_path) && v.sub_path.is_none());
    assert!(shared, "ejabberd does not see {}", optfile.display());
    let strip = |t: String| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("ERL_OPTIONS="))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        strip(cfg(&m)),
        strip(cfg(&base)),
        "only ERL_OPTIONS differs"
    );
}

#[test]
#[cfg_attr(skip_kubectl, ignore = "needs kubectl >= 1.27 (KUBE_EPMD_TEST_SKIP)")]
fn unknown_field_check_names_a_misspelled_key() {
    let objs = rendered_objects("deploy");
    let sts = objs
        .iter()
        .find(|o| o["kind"] == "StatefulSet")
        .expect("StatefulSet");
    assert!(unknown_fields(sts).is_empty());

    let mut typo = sts.clone();
    typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolciy"] = "Always".into();
    assert_eq!(
        unknown_fields(&typo),
        vec![
            ".spec.template.spec.containers[0].imagePullPolciy: unknown field (dropped on round trip)"
        ]
    );

    let mut nested = objs
        .iter()
        .find(|o| o["kind"] == "Service")
        .expect("Service")
        .clone();
    nested["spec"]["ports"][0]["tagetPort"] = 4369.into();
    assert_eq!(
        unknown_fields(&nested),
        vec![".spec.ports[0].tagetPort: unknown field (dropped on round trip)"]
    );

    // A field of the wrong shape does not deserialize at all.
    let mut shape = sts.clone();
    shape["spec"]["replicas"] = "three".into();
    let problems = unknown_fields(&shape);
    assert!(
        problems.len() == 1 && problems[0].starts_with("does not deserialize"),
        "{problems:?}"
    );

    let mut kind = sts.clone();
    kind["kind"] = "Deployment".into();
    assert!(unknown_fields(&kind)[0].contains("no k8s-openapi type"));
}

#[test]
fn port_names_follow_the_api_rules() {
    for ok in ["epmd", "dist-4200", "xmpp-c2s", "http", "a23456789012345"] {
        assert!(valid_port_name(ok), "{ok}");
    }
    for bad in [
        "",
        "4200",
        "dist_4200",
        "Dist",
        "-epmd",
        "epmd-",
        "a--b",
        "distribution-4200",
    ] {
        assert!(!valid_port_name(bad), "{bad}");
    }
}

#[test]
fn duplicated_key_is_a_parse_error() {
    // The original recipe's mistake: a second `containers:` silently replaced
    // the first in lenient parsers.
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec:\n  containers:\n    - name: a\n      image: a\n  containers:\n    - name: b\n      image: b\n";
    let err = parse_documents(yaml).expect_err("duplicate key must not parse");
    assert!(err.to_lowercase().contains("duplicate"), "{err}");
}

#[test]
#[cfg_attr(skip_kubectl, ignore = "needs kubectl >= 1.27 (KUBE_EPMD_TEST_SKIP)")]
fn role_check_rejects_anything_but_read_on_pods_and_the_statefulset() {
    let m = Manifests::load("deploy");
    check_role(&m.role, Some("chat")).expect("the shipped Role passes");
    assert!(check_role(&m.role, Some("other")).is_err());
    let rule = |i: usize, f: &dyn Fn(&mut k8s_openapi::api::rbac::v1::PolicyRule)| {
        let mut r = m.role.clone();
        f(&mut r.rules.as_mut().expect("rules")[i]);
        check_role(&r, Some("chat"))
    };
    for i in [0, 1] {
        assert!(rule(i, &|r| r.verbs.push("create".into())).is_err());
        assert!(rule(i, &|r| r.verbs.retain(|v| v != "watch")).is_err());
        assert!(rule(i, &|r| r.verbs.push("get".into())).is_err());
        assert!(rule(i, &|r| r.resources = Some(vec!["*".into()])).is_err());
        assert!(rule(i, &|r| r.api_groups = Some(vec!["*".into()])).is_err());
    }
    assert!(
        rule(0, &|r| r.resources =
            Some(vec!["pods".into(), "secrets".into()]))
        .is_err()
    );
    assert!(rule(0, &|r| r.resource_names = Some(vec!["chat-0".into()])).is_err());
    assert!(rule(1, &|r| r.resource_names = None).is_err());
    assert!(
        rule(1, &|r| r.resource_names =
            Some(vec!["chat".into(), "x".into()]))
        .is_err()
    );
    let mut three = m.role.clone();
    let extra = three.rules.as_ref().expect("rules")[0].clone();
    three.rules.as_mut().expect("rules").push(extra);
    assert!(check_role(&three, Some("chat")).is_err());
}

#[test]
#[cfg_attr(skip_kubectl, ignore = "needs kubectl >= 1.27 (KUBE_EPMD_TEST_SKIP)")]
fn lifecycle_check_wants_parallel_pods_and_the_replicas_feed() {
    let m = Manifests::load("deploy");
    check_lifecycle(&m).expect("the shipped StatefulSet passes");
    let mut bad = Manifests::load("deploy");
    bad.statefulset.spec.pod_management_policy = Some("OrderedReady".into());
    assert!(check_lifecycle(&bad).unwrap_err().contains("Parallel"));
    let mut bad = Manifests::load("deploy");
    bad.statefulset.spec.pod_management_policy = None;
    assert!(check_lifecycle(&bad).is_err());
    let mut bad = Manifests::load("deploy");
    sidecar_mut(&mut bad)
        .args
        .as_mut()
        .expect("args")
        .retain(|a| !a.starts_with("--statefulset"));
    assert!(check_lifecycle(&bad).unwrap_err().contains("--statefulset"));
    // Either policy at Delete loses claims (scale to 0 deleted every one,
    // issue 21).
    for field in ["whenScaled", "whenDeleted"] {
        let mut bad = Manifests::load("deploy");
        let policy = bad
            .statefulset
            .spec
            .persistent_volume_claim_retention_policy
            .as_mut()
            .expect("deploy/ sets a claim retention policy");
        let delete = Some("Delete".to_string());
        match field {
            "whenScaled" => policy.when_scaled = delete,
            _ => policy.when_deleted = delete,
        }
        assert!(check_lifecycle(&bad).unwrap_err().contains(field));
    }
}

fn ejabberd_mut(m: &mut Manifests) -> &mut Container {
    container_mut(m, EJABBERD)
}

#[test]
#[cfg_attr(skip_kubectl, ignore = "needs kubectl >= 1.27 (KUBE_EPMD_TEST_SKIP)")]
fn cross_reference_checks_catch_broken_wiring() {
    let fresh = || Manifests::load("deploy");
    let mut m = fresh();
    m.statefulset.spec.service_name = Some("xmpp-svc".into());
    assert!(
        check_headless_service(&m).is_err(),
        "serviceName must be the headless service"
    );

    let mut m = fresh();
    m.role_binding.subjects.as_mut().expect("subjects")[0].name = "default".into();
    assert!(
        check_rbac_wiring(&m).is_err(),
        "RoleBinding must bind the pods' ServiceAccount"
    );

    let mut m = fresh();
    m.services
        .get_mut("xmpp-svc")
        .and_then(|s| s.spec.as_mut())
        .expect("svc")
        .selector = Some([("app.kubernetes.io/name".to_string(), "other".to_string())].into());
    assert!(
        check_selectors(&m).is_err(),
        "a Service selecting other pods"
    );

    let mut m = fresh();
    let svc = m
        .services
        .get_mut("xmpp-internal-svc")
        .and_then(|s| s.spec.as_mut());
    svc.expect("headless svc").ports.as_mut().expect("ports")[0].target_port =
        Some(IntOrString::String("epmd".into()));
    assert!(
        ports(&m).unwrap_err().contains("is a name"),
        "a named targetPort (the sidecar's `epmd`, declared on an init container)"
    );

    let mut m = fresh();
    let np = m.network_policy.spec.as_mut().expect("np");
    np.ingress.as_mut().expect("rules")[0].from = None;
    assert!(ports(&m).is_err(), "EPMD open to everyone");

    let mut m = fresh();
    for a in sidecar_mut(&mut m).args.iter_mut().flatten() {
        if a.starts_with("--dist-port-range") {
            *a = "--dist-port-range=4200-4299".into();
        }
    }
    assert!(check_sidecar(&m).unwrap_err().contains("4200-4299"));

    let mut m = fresh();
    sidecar_mut(&mut m)
        .args
        .as_mut()
        .expect("args")
        .push("--no-such-flag".into());
    assert!(check_sidecar(&m).unwrap_err().contains("rejects"));

    // The admin port: kube-epmd's default ([::]:9090, both families) unless
    // --admin-addr says otherwise; an IPv4-only wildcard fails on IPv6-only
    // clusters, one address fails wherever the pod IP is another.
    let with_admin = |addr: &str| {
        let mut m = fresh();
        sidecar_mut(&mut m)
            .args
            .as_mut()
            .expect("args")
            .push(format!("--admin-addr={addr}"));
        check_sidecar(&m)
    };
    assert!(
        with_admin("0.0.0.0:9090")
            .unwrap_err()
            .contains("IPv4 only")
    );
    assert!(
        with_admin("127.0.0.1:9090")
            .unwrap_err()
            .contains("one address")
    );
    assert!(
        with_admin("[::]:9091")
            .unwrap_err()
            .contains("not /readyz on the admin port 9091")
    );
    with_admin("[::]:9090").expect("the default, spelt out");

    let mut m = fresh();
    sidecar_mut(&mut m).env.as_mut().expect("env").push(EnvVar {
        name: "KUBE_EPMD_SELECTR".into(),
        value: Some("app=x".into()),
        ..Default::default()
    });
    assert!(check_sidecar(&m).unwrap_err().contains("KUBE_EPMD_SELECTR"));

    let mut m = fresh();
    sidecar_mut(&mut m).env.as_mut().expect("env").push(EnvVar {
        name: "KUBE_EPMD_SELECTOR".into(),
        value: Some("app=other".into()),
        ..Default::default()
    });
    // Flags win over the environment, as in epmd: still the right pods.
    check_sidecar(&m).expect("the --selector flag wins over the env var");

    let mut m = fresh();
    let ej = ejabberd_mut(&mut m);
    ej.env.as_mut().expect("env").push(EnvVar {
        name: "ERLANG_COOKIE".into(),
        value: Some("secret".into()),
        ..Default::default()
    });
    assert!(check_ejabberd(&m).unwrap_err().contains("literal"));

    let mut m = fresh();
    let ej = ejabberd_mut(&mut m);
    let envs = ej.env.as_mut().expect("env");
    let node = envs
        .iter()
        .position(|e| e.name == "ERLANG_NODE_ARG")
        .expect("node");
    let moved = envs.remove(node);
    envs.insert(0, moved);
    assert!(
        check_ejabberd(&m)
            .unwrap_err()
            .contains("before it is defined")
    );

    let mut m = fresh();
    let ej = ejabberd_mut(&mut m);
    ej.volume_mounts
        .as_mut()
        .expect("mounts")
        .retain(|v| v.sub_path.as_deref() != Some("inetrc"));
    assert!(check_sidecar(&m).unwrap_err().contains("inetrc"));

    let mut m = fresh();
    sidecar_mut(&mut m)
        .security_context
        .as_mut()
        .expect("sc")
        .read_only_root_filesystem = Some(false);
    assert!(hardening(&m).is_err());
}

// ------------------------------------------------------ the cluster script

fn script() -> PathBuf {
    repo_path("deploy/base/ejabberd/cluster-entrypoint.sh")
}

/// The shells to run the script with: the system `sh`, and BusyBox (what
/// the Alpine-based ejabberd image has: ash, awk, sort, cut).
fn shells() -> Vec<(String, Option<tempfile::TempDir>)> {
    let mut out = vec![("sh".to_string(), None)];
    // BusyBox is required (the image runs the script with nothing else):
    // missing, the test fails naming it unless KUBE_EPMD_TEST_SKIP=busybox.
    let bb = prereq::busybox();
    let dir = tempfile::tempdir().expect("tempdir");
    for applet in ["sh", "awk", "sort", "cut"] {
        std::os::unix::fs::symlink(&bb, dir.path().join(applet)).expect("symlink");
    }
    out.push((dir.path().join("sh").display().to_string(), Some(dir)));
    out
}

#[test]
fn cluster_script_is_valid_shell() {
    let out = Command::new("sh")
        .arg("-n")
        .arg(script())
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ------------------------------------------------------ the image recipe

/// The Dockerfile's final stage and the sidecar spec agree: same non-root
/// user, the binary as entrypoint (the spec passes args only), the ports.
#[test]
#[cfg_attr(skip_kubectl, ignore = "needs kubectl >= 1.27 (KUBE_EPMD_TEST_SKIP)")]
fn image_recipe_matches_the_sidecar() {
    let dockerfile = std::fs::read_to_string(repo_path("Dockerfile")).expect("Dockerfile");
    let final_stage = dockerfile.rsplit("\nFROM ").next().expect("a final stage");
    let line = |instr: &str| {
        final_stage
            .lines()
            .find_map(|l| l.strip_prefix(instr))
            .map(str::trim)
            .unwrap_or_else(|| panic!("final stage has no {instr}"))
    };
    assert!(
        !final_stage.contains("RUN "),
        "the final stage runs nothing (no shell in it)"
    );
    assert_eq!(line("ENTRYPOINT "), r#"["/usr/local/bin/kube-epmd"]"#);
    let (uid, gid) = line("USER ").split_once(':').expect("USER uid:gid");
    let m = Manifests::load("deploy");
    let sc = m.sidecar().security_context.clone().unwrap_or_default();
    assert_eq!(sc.run_as_user.map(|u| u.to_string()).as_deref(), Some(uid));
    assert_eq!(sc.run_as_group.map(|g| g.to_string()).as_deref(), Some(gid));
    let exposed: BTreeSet<i32> = line("EXPOSE ")
        .split_whitespace()
        .map(|p| p.parse().expect("port"))
        .collect();
    let declared: BTreeSet<i32> = m
        .sidecar()
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(exposed, declared);
    assert!(
        dockerfile.contains("cargo build --release --locked --bin kube-epmd"),
        "the image builds the committed lockfile's release binary"
    );
}

/// The hidden helper node of cluster-entrypoint.sh runs the erl that
/// ejabberdctl runs. In the ejabberd image that is the release's
/// `ERL="${SCRIPT_DIR%/*}/erts-${ERTS_VSN#erts-}/bin/erl"`, reached through
/// the /usr/local/bin wrapper that `exec`s the release's script: a fake
/// layout of exactly that shape (outside /opt, so the fallback glob cannot
/// be what finds it).
#[test]
fn cluster_script_finds_the_erl_ejabberdctl_uses() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let exe = |p: &Path, text: &str| {
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    };
    let release = root.join("opt/ejabberd-25.10");
    exe(
        &root.join("usr/local/bin/ejabberdctl"),
        &format!(
            "#!/bin/sh\nexport SPOOL_DIR=/opt/ejabberd/database\nexec /{}/bin/ejabberdctl \"$@\"\n",
            release.display()
        ),
    );
    exe(
        &release.join("bin/ejabberdctl"),
        "#!/bin/sh\nSCRIPT_DIR=\"$(cd \"$(dirname \"$0\")\" && pwd -P)\"\n\
         ERTS_VSN=\"erts-16.1\"\nERL=\"${SCRIPT_DIR%/*}/erts-${ERTS_VSN#erts-}/bin/erl\"\n",
    );
    let erl = release.join("erts-16.1/bin/erl");
    exe(&erl, "#!/bin/sh\n");
    for sh in shells() {
        let mut path = std::ffi::OsString::from(root.join("usr/local/bin"));
        if let Some(d) = &sh.1 {
            path.push(":");
            path.push(d.path());
        }
        path.push(":/usr/bin:/bin");
        let out = Command::new(&sh.0)
            .arg(script())
            .arg("erl")
            .env_clear()
            .env("PATH", &path)
            .env("POD_NAME", "chat-0")
            .env("ERLANG_NODE_ARG", "ejabberd@chat-0.xmpp-internal-svc")
            .output()
            .expect("run sh");
        let got = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}: {got}", sh.0);
        assert_eq!(
            Path::new(got.trim()).canonicalize().ok(),
            erl.canonicalize().ok(),
            "{}: found {got:?}",
            sh.0
        );
    }
}
