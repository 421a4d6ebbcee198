//! Checks of rendered kustomizations shared by the manifest tests
//! (`#[path = "support/manifests.rs"] mod manifests;`): render with the real
//! `kubectl kustomize`, read every object into its k8s-openapi type and
//! name any field the type lacks, and check the wiring every kube-epmd
//! deployment shares (RBAC, selectors, headless service, the sidecar's
//! command line through kube-epmd's own parser, ports, hardening).
//!
//! Used by the ejabberd deployment's tests (tests/deploy.rs) and the
//! RabbitMQ example's (tests/deploy_rabbitmq.rs): what is particular to one
//! application (container name, client ports, capabilities, the Role's
//! StatefulSet rule) is a parameter.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use clap::parser::ValueSource;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, Namespace, PodSpec, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube_epmd::cli::{Args, DEFAULT_KUBE_ADMIN_PORT, PortRange, normalize_epmd_flags};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

// Nested #[path] resolves next to this file: tests/support/prereq.rs.
#[path = "prereq.rs"]
pub mod prereq;

/// The distribution window of the whole design.
pub const DIST: PortRange = PortRange {
    min: 4200,
    max: 4210,
};
pub const EPMD_PORT: i32 = 4369;
pub const SIDECAR: &str = "kube-epmd";

// ---------------------------------------------------------------- rendering

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `kubectl kustomize DIR`, as `kubectl apply -k DIR` would build it.
pub fn render(dir: &str) -> String {
    prereq::kubectl();
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo_path(dir))
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubectl: {e}"));
    if !out.status.success() {
        // The kustomizations use kustomize v5 syntax (kubectl 1.27+);
        // Debian bookworm's kubernetes-client (1.20) embeds kustomize v2.
        let version = Command::new("kubectl")
            .args(["version", "--client"])
            .output()
            .map(|v| String::from_utf8_lossy(&v.stdout).into_owned())
            .unwrap_or_default();
        panic!(
            "kubectl kustomize {dir} failed (needs kubectl 1.27+ / kustomize v5; this is:\n{version})\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).expect("kustomize output is UTF-8")
}

/// All YAML documents of a stream, as JSON values (what the API server gets).
pub fn parse_documents(yaml: &str) -> Result<Vec<Value>, String> {
    serde_saphyr::from_multiple::<Value>(yaml).map_err(|e| e.to_string())
}

pub fn rendered_objects(dir: &str) -> Vec<Value> {
    let docs = parse_documents(&render(dir))
        .unwrap_or_else(|e| panic!("{dir}: rendered YAML does not parse: {e}"));
    assert!(!docs.is_empty(), "{dir} renders no objects");
    docs
}

/// Paths where `back` (the round trip through the typed struct) differs from
/// `rendered`. A key missing from `back` is one the type does not have.
pub fn diff(path: &str, rendered: &Value, back: &Value, out: &mut Vec<String>) {
    match (rendered, back) {
        (Value::Object(r), Value::Object(b)) => {
            for (k, rv) in r {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(bv) => diff(&p, rv, bv, out),
                    None => out.push(format!("{p}: unknown field (dropped on round trip)")),
                }
            }
            for k in b.keys().filter(|k| !r.contains_key(*k)) {
                out.push(format!("{path}.{k}: appeared on round trip"));
            }
        }
        (Value::Array(r), Value::Array(b)) if r.len() == b.len() => {
            for (i, (rv, bv)) in r.iter().zip(b).enumerate() {
                diff(&format!("{path}[{i}]"), rv, bv, out);
            }
        }
        (r, b) if r != b => out.push(format!("{path}: {r} became {b}")),
        _ => {}
    }
}

pub fn roundtrip_as<T: DeserializeOwned + Serialize>(obj: &Value) -> Vec<String> {
    let typed: T = match serde_json::from_value(obj.clone()) {
        Ok(t) => t,
        Err(e) => return vec![format!("does not deserialize: {e}")],
    };
    let back = serde_json::to_value(&typed).expect("k8s-openapi types serialize");
    let mut out = Vec::new();
    diff("", obj, &back, &mut out);
    out
}

/// Problems of one rendered object: wrong type, or fields its type lacks.
pub fn unknown_fields(obj: &Value) -> Vec<String> {
    let api = obj["apiVersion"].as_str().unwrap_or("");
    let kind = obj["kind"].as_str().unwrap_or("");
    match (api, kind) {
        ("v1", "Namespace") => roundtrip_as::<Namespace>(obj),
        ("v1", "ServiceAccount") => roundtrip_as::<ServiceAccount>(obj),
        ("v1", "Service") => roundtrip_as::<Service>(obj),
        ("v1", "ConfigMap") => roundtrip_as::<ConfigMap>(obj),
        ("apps/v1", "StatefulSet") => roundtrip_as::<StatefulSet>(obj),
        ("rbac.authorization.k8s.io/v1", "Role") => roundtrip_as::<Role>(obj),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => roundtrip_as::<RoleBinding>(obj),
        ("networking.k8s.io/v1", "NetworkPolicy") => roundtrip_as::<NetworkPolicy>(obj),
        ("policy/v1", "PodDisruptionBudget") => roundtrip_as::<PodDisruptionBudget>(obj),
        _ => vec![format!(
            "no k8s-openapi type is checked for {api}/{kind}: add it to unknown_fields()"
        )],
    }
}

pub fn object_id(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["kind"].as_str().unwrap_or("?"),
        obj["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The objects `dir` renders, after asserting that each is a known type
/// without unknown fields and that all the kinds a kube-epmd deployment is
/// made of are there (and `extra_kinds`).
pub fn assert_typed_objects(dir: &str, extra_kinds: &[&str]) -> Vec<Value> {
    let objs = rendered_objects(dir);
    let problems: Vec<String> = objs
        .iter()
        .flat_map(|o| {
            unknown_fields(o)
                .into_iter()
                .map(move |p| format!("{}{p}", object_id(o)))
        })
        .collect();
    assert!(problems.is_empty(), "{dir}:\n{}", problems.join("\n"));
    let kinds: BTreeSet<&str> = objs.iter().filter_map(|o| o["kind"].as_str()).collect();
    for k in [
        "StatefulSet",
        "Service",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "ConfigMap",
    ]
    .iter()
    .chain(extra_kinds)
    {
        assert!(kinds.contains(k), "{dir} renders no {k}");
    }
    objs
}

/// The rendered objects of one kustomization, by type.
pub struct Manifests {
    pub statefulset: StatefulSet,
    pub services: BTreeMap<String, Service>,
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub network_policy: NetworkPolicy,
    pub pdb: PodDisruptionBudget,
    pub config_maps: BTreeMap<String, ConfigMap>,
}

pub fn one<T: DeserializeOwned>(objs: &[Value], kind: &str) -> T {
    let found: Vec<&Value> = objs.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}");
    serde_json::from_value(found[0].clone()).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

pub fn by_name<T: DeserializeOwned>(objs: &[Value], kind: &str) -> BTreeMap<String, T> {
    objs.iter()
        .filter(|o| o["kind"] == kind)
        .map(|o| {
            let name = o["metadata"]["name"].as_str().expect("named").to_string();
            let t = serde_json::from_value(o.clone()).unwrap_or_else(|e| panic!("{kind}: {e}"));
            (name, t)
        })
        .collect()
}

impl Manifests {
    pub fn load(dir: &str) -> Manifests {
        let objs = rendered_objects(dir);
        Manifests {
            statefulset: one(&objs, "StatefulSet"),
            services: by_name(&objs, "Service"),
            service_account: one(&objs, "ServiceAccount"),
            role: one(&objs, "Role"),
            role_binding: one(&objs, "RoleBinding"),
            network_policy: one(&objs, "NetworkPolicy"),
            pdb: one(&objs, "PodDisruptionBudget"),
            config_maps: by_name(&objs, "ConfigMap"),
        }
    }

    pub fn pod(&self) -> &PodSpec {
        self.statefulset
            .spec
            .template
            .spec
            .as_ref()
            .expect("StatefulSet has a pod template")
    }

    pub fn pod_labels(&self) -> BTreeMap<String, String> {
        self.statefulset
            .spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default()
    }

    pub fn selector(&self) -> BTreeMap<String, String> {
        self.statefulset
            .spec
            .selector
            .match_labels
            .clone()
            .unwrap_or_default()
    }

    pub fn sidecar(&self) -> &Container {
        self.pod()
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == SIDECAR)
            .expect("kube-epmd is an init container (native sidecar)")
    }

    /// The application container `name` (ejabberd, rabbitmq, ...).
    pub fn container(&self, name: &str) -> &Container {
        self.pod()
            .containers
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name}"))
    }

    pub fn all_containers(&self) -> impl Iterator<Item = &Container> {
        let pod = self.pod();
        pod.init_containers.iter().flatten().chain(&pod.containers)
    }

    /// The text of `key` in the ConfigMap that volume `volume` mounts.
    pub fn config_file(&self, volume: &str, key: &str) -> Result<String, String> {
        let cm_name = self
            .pod()
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == volume)
            .and_then(|v| v.config_map.as_ref())
            .map(|c| c.name.clone())
            .ok_or(format!("volume {volume} is not a ConfigMap"))?;
        self.config_maps
            .get(&cm_name)
            .and_then(|cm| cm.data.as_ref())
            .and_then(|d| d.get(key))
            .cloned()
            .ok_or(format!(
                "ConfigMap {cm_name} (volume {volume}) has no key {key}"
            ))
    }
}

pub fn port_number(p: &IntOrString, container_ports: &BTreeMap<String, i32>) -> Option<i32> {
    match p {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(name) => container_ports.get(name).copied(),
    }
}

/// The API server's rule for port names (IANA_SVC_NAME): at most 15
/// characters, lower-case letters, digits and single inner hyphens, at
/// least one letter. k8s-openapi does not check values, only field names.
pub fn valid_port_name(n: &str) -> bool {
    (1..=15).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && n.bytes().any(|b| b.is_ascii_lowercase())
        && !n.starts_with('-')
        && !n.ends_with('-')
        && !n.contains("--")
}

/// Every named and numbered port the pod's containers declare.
pub fn container_ports(m: &Manifests) -> (BTreeMap<String, i32>, BTreeSet<i32>) {
    let mut named = BTreeMap::new();
    let mut numbers = BTreeSet::new();
    for c in m.all_containers() {
        for p in c.ports.iter().flatten() {
            numbers.insert(p.container_port);
            if let Some(n) = &p.name {
                assert!(valid_port_name(n), "invalid container port name {n:?}");
                assert!(
                    named.insert(n.clone(), p.container_port).is_none(),
                    "port name {n} declared twice in the pod"
                );
            }
        }
    }
    (named, numbers)
}

pub fn env<'a>(c: &'a Container, name: &str) -> Option<&'a EnvVar> {
    c.env.iter().flatten().find(|e| e.name == name)
}

pub fn field_ref(c: &Container, name: &str) -> Option<String> {
    env(c, name)
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.clone())
}

pub fn subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    !small.is_empty() && small.iter().all(|(k, v)| big.get(k) == Some(v))
}

/// The Role lets kube-epmd read pods and, when it is given `--statefulset`
/// (`statefulset`), that one StatefulSet by name only (its replica count),
/// and nothing else.
pub fn check_role(role: &Role, statefulset: Option<&str>) -> Result<(), String> {
    let rules = role.rules.as_deref().unwrap_or_default();
    let (pods, sts) = match (rules, statefulset) {
        ([pods], None) => (pods, None),
        ([pods, sts], Some(name)) => (pods, Some((sts, name))),
        (_, None) => {
            return Err(format!(
                "Role must have exactly one rule (pods), has {}",
                rules.len()
            ));
        }
        (_, Some(_)) => {
            return Err(format!(
                "Role must have exactly two rules (pods, the StatefulSet), has {}",
                rules.len()
            ));
        }
    };
    let want: BTreeSet<&str> = ["get", "list", "watch"].into();
    for rule in rules {
        let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        if rule.verbs.len() != 3 || verbs != want {
            return Err(format!(
                "Role verbs are {:?}, want get, list, watch",
                rule.verbs
            ));
        }
        if rule.non_resource_urls.is_some() {
            return Err("Role rule must not name URLs".into());
        }
    }
    if pods.api_groups.as_deref() != Some(&["".to_string()][..]) {
        return Err(format!("Role apiGroups {:?}, want [\"\"]", pods.api_groups));
    }
    if pods.resources.as_deref() != Some(&["pods".to_string()][..]) {
        return Err(format!("Role resources {:?}, want [pods]", pods.resources));
    }
    if pods.resource_names.is_some() {
        return Err("the pods rule must not name resources (pods come and go)".into());
    }
    if let Some((sts, name)) = sts {
        if sts.api_groups.as_deref() != Some(&["apps".to_string()][..])
            || sts.resources.as_deref() != Some(&["statefulsets".to_string()][..])
        {
            return Err(format!(
                "second Role rule is {:?} {:?}, want apps statefulsets",
                sts.api_groups, sts.resources
            ));
        }
        if sts.resource_names.as_deref() != Some(&[name.to_string()][..]) {
            return Err(format!(
                "the statefulsets rule names {:?}, want exactly [{name}]",
                sts.resource_names
            ));
        }
    }
    Ok(())
}

/// ServiceAccount ← RoleBinding → Role, and the pods run as that account.
pub fn check_rbac_wiring(m: &Manifests) -> Result<(), String> {
    let sa_name = m.service_account.metadata.name.as_deref().unwrap_or("");
    let sa_ns = m.service_account.metadata.namespace.as_deref();
    let role_name = m.role.metadata.name.as_deref().unwrap_or("");
    let rb = &m.role_binding;
    if rb.role_ref.api_group.as_deref() != Some("rbac.authorization.k8s.io")
        || rb.role_ref.kind != "Role"
        || rb.role_ref.name != role_name
    {
        return Err(format!(
            "RoleBinding roleRef {:?} is not Role {role_name}",
            rb.role_ref
        ));
    }
    let subjects = rb.subjects.as_deref().unwrap_or_default();
    let [s] = subjects else {
        return Err(format!(
            "RoleBinding has {} subjects, want 1",
            subjects.len()
        ));
    };
    if s.kind != "ServiceAccount" || s.name != sa_name || s.namespace.as_deref() != sa_ns {
        return Err(format!(
            "RoleBinding subject {s:?} is not ServiceAccount {sa_name} in {sa_ns:?}"
        ));
    }
    let ns = |o: &Option<String>| o.clone();
    if ns(&m.role.metadata.namespace) != ns(&rb.metadata.namespace)
        || ns(&rb.metadata.namespace) != ns(&m.service_account.metadata.namespace)
        || ns(&m.statefulset.metadata.namespace) != ns(&rb.metadata.namespace)
    {
        return Err(
            "Role, RoleBinding, ServiceAccount and StatefulSet are not in one namespace".into(),
        );
    }
    if m.pod().service_account_name.as_deref() != Some(sa_name) {
        return Err(format!(
            "pods run as {:?}, not as ServiceAccount {sa_name}",
            m.pod().service_account_name
        ));
    }
    Ok(())
}

/// Every selector picks exactly this StatefulSet's pods.
pub fn check_selectors(m: &Manifests) -> Result<(), String> {
    let labels = m.pod_labels();
    let sel = m.selector();
    if !subset(&sel, &labels) {
        return Err(format!(
            "StatefulSet selector {sel:?} does not match its pod labels {labels:?}"
        ));
    }
    for (name, svc) in &m.services {
        let s = svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        if s != sel {
            return Err(format!(
                "Service {name} selects {s:?}, the StatefulSet {sel:?}"
            ));
        }
    }
    let pdb = m.pdb.spec.as_ref().and_then(|s| s.selector.as_ref());
    if pdb.and_then(|s| s.match_labels.clone()).unwrap_or_default() != sel {
        return Err(format!("PodDisruptionBudget selects {pdb:?}, not {sel:?}"));
    }
    let np = m
        .network_policy
        .spec
        .as_ref()
        .ok_or("NetworkPolicy has no spec")?;
    if np
        .pod_selector
        .as_ref()
        .and_then(|s| s.match_labels.clone())
        .unwrap_or_default()
        != sel
    {
        return Err(format!(
            "NetworkPolicy applies to {:?}, not {sel:?}",
            np.pod_selector
        ));
    }
    Ok(())
}

/// The StatefulSet's serviceName is the headless service that carries the
/// Erlang ports (the pods' subdomain).
pub fn check_headless_service(m: &Manifests) -> Result<(), String> {
    let spec = &m.statefulset.spec;
    let name = spec
        .service_name
        .as_deref()
        .ok_or("StatefulSet has no serviceName")?;
    let svc = m
        .services
        .get(name)
        .ok_or(format!("no Service {name} (the StatefulSet's serviceName)"))?;
    let s = svc.spec.as_ref().ok_or("headless service has no spec")?;
    if s.cluster_ip.as_deref() != Some("None") {
        return Err(format!(
            "Service {name} is not headless (clusterIP {:?})",
            s.cluster_ip
        ));
    }
    if s.publish_not_ready_addresses != Some(true) {
        return Err(format!("Service {name} must publish not-ready pods"));
    }
    let ports: BTreeSet<i32> = s.ports.iter().flatten().map(|p| p.port).collect();
    let want: BTreeSet<i32> = std::iter::once(EPMD_PORT)
        .chain(i32::from(DIST.min)..=i32::from(DIST.max))
        .collect();
    if ports != want {
        return Err(format!(
            "Service {name} ports {ports:?}, want 4369 and 4200-4210"
        ));
    }
    if spec.replicas != Some(3) {
        return Err(format!("StatefulSet replicas {:?}, want 3", spec.replicas));
    }
    Ok(())
}

/// The sidecar's environment as the flags clap would have read from it:
/// lets the real parser validate names and values without touching this
/// test process's environment. Downward-API values get realistic stand-ins.
/// As in clap, a flag given on the command line wins over its variable.
pub fn env_as_flags(c: &Container, given: &clap::ArgMatches) -> Result<Vec<String>, String> {
    let cmd = Args::command();
    let mut flags = Vec::new();
    for e in c.env.iter().flatten() {
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|n| n == e.name.as_str()))
            .ok_or(format!(
                "kube-epmd reads no environment variable {}",
                e.name
            ))?;
        if given.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            continue;
        }
        let long = arg
            .get_long()
            .ok_or(format!("{} has no --long flag", e.name))?;
        let value = match (
            &e.value,
            e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()),
        ) {
            (Some(v), _) => v.clone(),
            (None, Some(f)) => match f.field_path.as_str() {
                "metadata.name" => "chat-0".into(),
                "metadata.namespace" => "xmpp".into(),
                "status.podIP" => "10.0.0.10".into(),
                other => return Err(format!("{}: unexpected fieldRef {other}", e.name)),
            },
            _ => return Err(format!("{}: neither a value nor a fieldRef", e.name)),
        };
        if arg.get_action().takes_values() {
            flags.push(format!("--{long}={value}"));
        } else if !matches!(
            value.as_str(),
            "" | "0" | "false" | "no" | "off" | "n" | "f"
        ) {
            flags.push(format!("--{long}"));
        }
    }
    Ok(flags)
}

/// What the real parser makes of the sidecar's command line and environment.
pub fn sidecar_args(c: &Container) -> Result<Args, String> {
    if c.command.is_some() {
        return Err("kube-epmd must use the image's entrypoint (set args, not command)".into());
    }
    let reject = |e: clap::Error| format!("kube-epmd rejects its arguments: {e}");
    let mut argv: Vec<String> = std::iter::once("kube-epmd".to_string())
        .chain(c.args.iter().flatten().cloned())
        .collect();
    let given = Args::command()
        .try_get_matches_from(normalize_epmd_flags(argv.clone().into_iter()))
        .map_err(reject)?;
    argv.extend(env_as_flags(c, &given)?);
    Args::parse_from_epmd(argv).map_err(reject)
}

pub fn parse_selector(s: &str) -> Result<BTreeMap<String, String>, String> {
    s.split(',')
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .ok_or(format!("selector term {kv:?} is not key=value"))?;
            if k.ends_with('!') || v.starts_with('=') {
                return Err(format!("selector term {kv:?} is not an equality"));
            }
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// Service ports reach declared container ports; `app` declares the client
/// ports and the distribution window; the NetworkPolicy opens the client
/// ports to all and the Erlang ports (4369, the window) to this cluster's
/// pods only.
pub fn check_ports(m: &Manifests, app: &str, client_ports: &[i32]) -> Result<(), String> {
    let (named, numbers) = container_ports(m);
    let in_init: BTreeSet<String> = m
        .pod()
        .init_containers
        .iter()
        .flatten()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| p.name.clone())
        .collect();
    let mut erlang = BTreeSet::new();
    let mut client = BTreeSet::new();
    for (name, svc) in &m.services {
        let spec = svc
            .spec
            .as_ref()
            .ok_or(format!("Service {name} has no spec"))?;
        let headless = spec.cluster_ip.as_deref() == Some("None");
        for p in spec.ports.iter().flatten() {
            if !p.name.as_deref().is_some_and(valid_port_name) {
                return Err(format!(
                    "Service {name}: port {} needs a valid name",
                    p.port
                ));
            }
            // A named targetPort is resolved against the pod's containers,
            // and Kubernetes before 1.32 does not look at init containers,
            // where the native sidecar's ports live.
            let n = match p.target_port.clone().unwrap_or(IntOrString::Int(p.port)) {
                IntOrString::Int(n) => n,
                IntOrString::String(s) if in_init.contains(&s) => {
                    return Err(format!(
                        "Service {name}: targetPort {s:?} is a name of an init container's \
                         port; use the number (such names resolve only from Kubernetes 1.32)"
                    ));
                }
                IntOrString::String(s) => *named.get(&s).ok_or(format!(
                    "Service {name} targets port {s:?}, which no container names"
                ))?,
            };
            if !numbers.contains(&n) {
                return Err(format!(
                    "Service {name} targets {n}, which no container declares"
                ));
            }
            if n != p.port {
                return Err(format!(
                    "Service {name} maps {} to {n}: keep them equal",
                    p.port
                ));
            }
            if headless {
                erlang.insert(n)
            } else {
                client.insert(n)
            };
        }
    }
    let want_client: BTreeSet<i32> = client_ports.iter().copied().collect();
    if client != want_client {
        return Err(format!(
            "client service ports {client:?}, want {want_client:?}"
        ));
    }
    let declared: BTreeSet<i32> = m
        .container(app)
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    for p in client_ports
        .iter()
        .copied()
        .chain(i32::from(DIST.min)..=i32::from(DIST.max))
    {
        if !declared.contains(&p) {
            return Err(format!("{app} container does not declare port {p}"));
        }
    }
    if !m
        .sidecar()
        .ports
        .iter()
        .flatten()
        .any(|p| p.container_port == EPMD_PORT)
    {
        return Err("the kube-epmd container must declare 4369".into());
    }

    let np = m
        .network_policy
        .spec
        .as_ref()
        .ok_or("NetworkPolicy has no spec")?;
    if np.policy_types.as_deref() != Some(&["Ingress".to_string()][..]) {
        return Err(format!(
            "NetworkPolicy policyTypes {:?}, want [Ingress]",
            np.policy_types
        ));
    }
    let sel = m.selector();
    let (mut open, mut same_app) = (BTreeSet::new(), BTreeSet::new());
    for rule in np.ingress.iter().flatten() {
        let mut ports = BTreeSet::new();
        for p in rule.ports.iter().flatten() {
            if p.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                return Err(format!("NetworkPolicy port {p:?} is not TCP"));
            }
            let start = p
                .port
                .as_ref()
                .and_then(|p| port_number(p, &named))
                .ok_or(format!("NetworkPolicy port {p:?} is not a declared port"))?;
            ports.extend(start..=p.end_port.unwrap_or(start));
        }
        match rule.from.as_deref() {
            None | Some([]) => open.extend(ports),
            Some(peers) => {
                for peer in peers {
                    let from = peer
                        .pod_selector
                        .as_ref()
                        .and_then(|s| s.match_labels.clone());
                    if peer.ip_block.is_some()
                        || peer.namespace_selector.is_some()
                        || from.as_ref() != Some(&sel)
                    {
                        return Err(format!(
                            "NetworkPolicy admits {peer:?}: only this cluster's pods may reach the Erlang ports"
                        ));
                    }
                }
                same_app.extend(ports);
            }
        }
    }
    if open != client {
        return Err(format!(
            "NetworkPolicy opens {open:?} to everyone, want exactly the client ports {client:?}"
        ));
    }
    if same_app != erlang {
        return Err(format!(
            "NetworkPolicy opens {same_app:?} to the cluster's pods, want exactly the Erlang ports {erlang:?}"
        ));
    }
    Ok(())
}

/// What every deployment needs of the sidecar: native sidecar, accepted
/// command line in Kubernetes mode, the distribution window, 4369, exactly
/// the StatefulSet's pods, its pod name and namespace, a startup probe on
/// /readyz, and a writable emptyDir as output directory. Returns the parsed
/// arguments for the application-specific checks.
pub fn check_sidecar_common(m: &Manifests) -> Result<Args, String> {
    let c = m.sidecar();
    if c.restart_policy.as_deref() != Some("Always") {
        return Err("kube-epmd needs restartPolicy: Always (native sidecar)".into());
    }
    let args = sidecar_args(c)?;
    if !args.kube.kubernetes {
        return Err("kube-epmd does not run in Kubernetes mode".into());
    }
    if args.client_command().is_some() || args.command.is_some() {
        return Err("kube-epmd is started as a client command, not as the daemon".into());
    }
    if args.dist_port_range() != Some(DIST) {
        let got = args
            .dist_port_range()
            .map_or("no range".into(), |r| r.to_string());
        return Err(format!("kube-epmd enforces {got}, want {DIST}"));
    }
    if args.epmd.port != EPMD_PORT as u16 {
        return Err(format!(
            "kube-epmd listens on {}, Erlang looks on 4369",
            args.epmd.port
        ));
    }
    let sel = parse_selector(
        args.kube
            .selector
            .as_deref()
            .ok_or("kube-epmd has no --selector")?,
    )?;
    if sel != m.selector() {
        return Err(format!(
            "kube-epmd watches {sel:?}, the StatefulSet's pods are {:?}",
            m.selector()
        ));
    }
    if field_ref(c, "POD_NAME").as_deref() != Some("metadata.name")
        || field_ref(c, "POD_NAMESPACE").as_deref() != Some("metadata.namespace")
    {
        return Err("POD_NAME and POD_NAMESPACE must come from the downward API".into());
    }
    if args.kube.pod_name.is_none() || args.kube.namespace.is_none() {
        return Err("kube-epmd did not get its pod name and namespace".into());
    }
    let admin = admin_port(&args)?;
    let (named, _) = container_ports(m);
    let probe = c
        .startup_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .ok_or("kube-epmd needs an HTTP startup probe")?;
    if probe.path.as_deref() != Some("/readyz")
        || port_number(&probe.port, &named) != Some(i32::from(admin))
    {
        return Err(format!(
            "startup probe {probe:?} is not /readyz on the admin port {admin}"
        ));
    }
    let out = output_dir(m, &args)?;
    let is_empty_dir = m
        .pod()
        .volumes
        .iter()
        .flatten()
        .any(|v| v.name == out.volume && v.empty_dir.is_some());
    if !is_empty_dir || out.read_only {
        return Err(format!(
            "{} must be a writable emptyDir in kube-epmd",
            out.path
        ));
    }
    Ok(args)
}

/// The port the admin endpoint (and so the probes) listens on: `--admin-addr`
/// when given, else kube-epmd's own Kubernetes-mode default (`[::]:9090`,
/// both families). An address the kubelet cannot reach on every cluster is
/// refused: the probes go to the pod IP, IPv4 or IPv6.
pub fn admin_port(args: &Args) -> Result<u16, String> {
    let Some(addr) = args.kube.admin_addr else {
        return Ok(DEFAULT_KUBE_ADMIN_PORT);
    };
    if addr.ip() == std::net::Ipv4Addr::UNSPECIFIED {
        return Err(format!(
            "--admin-addr={addr} listens on IPv4 only: the probes fail on an IPv6-only \
             cluster; drop it (the default [::]:{DEFAULT_KUBE_ADMIN_PORT} takes both families)"
        ));
    }
    if !addr.ip().is_unspecified() {
        return Err(format!(
            "--admin-addr={addr} listens on one address: the probes go to the pod IP, \
             which no manifest knows; use [::]:{}",
            addr.port()
        ));
    }
    Ok(addr.port())
}

/// kube-epmd's output directory and the sidecar's mount of it.
pub struct OutputDir {
    pub path: String,
    pub volume: String,
    pub read_only: bool,
}

pub fn output_dir(m: &Manifests, args: &Args) -> Result<OutputDir, String> {
    let path = args
        .kube
        .output_dir
        .to_str()
        .ok_or("output dir is not UTF-8")?;
    let mount = m
        .sidecar()
        .volume_mounts
        .iter()
        .flatten()
        .find(|v| v.mount_path == path)
        .ok_or(format!(
            "nothing is mounted at kube-epmd's output dir {path}"
        ))?;
    Ok(OutputDir {
        path: path.to_string(),
        volume: mount.name.clone(),
        read_only: mount.read_only == Some(true),
    })
}

/// The application container `app` sees kube-epmd's directory at the same
/// path (the inetrc names the hosts file by absolute path) and as a whole
/// (no subPath: the hosts file is replaced by rename, which a subPath mount
/// would not show).
pub fn check_app_sees_output_dir(
    m: &Manifests,
    app: &str,
    args: &Args,
) -> Result<OutputDir, String> {
    let out = output_dir(m, args)?;
    if !m
        .container(app)
        .volume_mounts
        .iter()
        .flatten()
        .any(|v| v.name == out.volume && v.mount_path == out.path && v.sub_path.is_none())
    {
        return Err(format!(
            "{app} does not see kube-epmd's directory at {}",
            out.path
        ));
    }
    Ok(out)
}

/// Kubernetes expands `$(VAR)` in an env value only from variables defined
/// earlier in the same container.
pub fn check_env_expansion(c: &Container) -> Result<(), String> {
    let mut defined = BTreeSet::new();
    for e in c.env.iter().flatten() {
        let mut rest = e.value.as_deref().unwrap_or("");
        while let Some(i) = rest.find("$(") {
            let (var, tail) = rest[i + 2..]
                .split_once(')')
                .ok_or(format!("{}: unclosed $(", e.name))?;
            if !defined.contains(var) {
                return Err(format!("{} uses $({var}) before it is defined", e.name));
            }
            rest = tail;
        }
        defined.insert(e.name.as_str());
    }
    Ok(())
}

/// No container carries a cookie in a literal env value or on its command
/// line (`-setcookie` shows in every process listing).
pub fn check_no_literal_cookie(m: &Manifests) -> Result<(), String> {
    for ct in m.all_containers() {
        for e in ct.env.iter().flatten() {
            if e.name.to_ascii_uppercase().contains("COOKIE") && e.value.is_some() {
                return Err(format!(
                    "{} has a literal value in {}: use a Secret",
                    e.name, ct.name
                ));
            }
        }
        if ct
            .args
            .iter()
            .chain(ct.command.iter())
            .flatten()
            .any(|a| a.contains("setcookie"))
        {
            return Err(format!("{} passes a cookie on its command line", ct.name));
        }
    }
    Ok(())
}

/// Non-root, read-only root filesystem, no privilege escalation, all
/// capabilities dropped (`allowed_caps` names what a container may add
/// back), requests and memory limits everywhere, the API token mounted
/// into kube-epmd only.
pub fn check_hardening(m: &Manifests, allowed_caps: &[(&str, &str)]) -> Result<(), String> {
    let pod_sc = m.pod().security_context.clone().unwrap_or_default();
    if m.pod().automount_service_account_token != Some(false) {
        return Err("the pod must not automount the API token (only kube-epmd gets it)".into());
    }
    for c in m.all_containers() {
        let sc = c.security_context.clone().unwrap_or_default();
        let non_root = sc.run_as_non_root.or(pod_sc.run_as_non_root) == Some(true)
            && sc
                .run_as_user
                .or(pod_sc.run_as_user)
                .is_some_and(|u| u != 0);
        if !non_root {
            return Err(format!("{} may run as root", c.name));
        }
        if sc.read_only_root_filesystem != Some(true)
            || sc.allow_privilege_escalation != Some(false)
        {
            return Err(format!(
                "{}: needs readOnlyRootFilesystem and no privilege escalation",
                c.name
            ));
        }
        let caps = sc.capabilities.unwrap_or_default();
        if caps.drop.as_deref() != Some(&["ALL".to_string()][..]) {
            return Err(format!("{} must drop ALL capabilities", c.name));
        }
        for a in caps.add.unwrap_or_default() {
            if !allowed_caps.contains(&(c.name.as_str(), a.as_str())) {
                return Err(format!("{} adds capability {a}", c.name));
            }
        }
        let res = c.resources.clone().unwrap_or_default();
        let req = res.requests.unwrap_or_default();
        let lim = res.limits.unwrap_or_default();
        if !req.contains_key("cpu") || !req.contains_key("memory") || !lim.contains_key("memory") {
            return Err(format!(
                "{} needs cpu+memory requests and a memory limit",
                c.name
            ));
        }
    }
    let tokens: Vec<&str> = m
        .pod()
        .volumes
        .iter()
        .flatten()
        .filter(|v| {
            v.projected.as_ref().is_some_and(|p| {
                p.sources
                    .iter()
                    .flatten()
                    .any(|s| s.service_account_token.is_some())
            })
        })
        .map(|v| v.name.as_str())
        .collect();
    for c in m.all_containers() {
        let has = c
            .volume_mounts
            .iter()
            .flatten()
            .any(|v| tokens.contains(&v.name.as_str()));
        if has != (c.name == SIDECAR) {
            return Err(format!(
                "{}: only kube-epmd may mount the API token",
                c.name
            ));
        }
    }
    Ok(())
}

/// One check of a deployment, named in the report of `run_checks`.
pub type Check = fn(&Manifests) -> Result<(), String>;

/// Every failing check, as `name: message`.
pub fn run_checks(m: &Manifests, checks: &[(&str, Check)]) -> Vec<String> {
    checks
        .iter()
        .filter_map(|(name, f)| f(m).err().map(|e| format!("{name}: {e}")))
        .collect()
}

// ------------------------------------------------- mutations for the tests

pub fn pod_mut(m: &mut Manifests) -> &mut PodSpec {
    m.statefulset.spec.template.spec.as_mut().expect("pod")
}

pub fn sidecar_mut(m: &mut Manifests) -> &mut Container {
    pod_mut(m)
        .init_containers
        .as_mut()
        .and_then(|cs| cs.iter_mut().find(|c| c.name == SIDECAR))
        .expect("sidecar")
}

pub fn container_mut<'a>(m: &'a mut Manifests, name: &str) -> &'a mut Container {
    pod_mut(m)
        .containers
        .iter_mut()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// Distribution over TLS: the CA Secret `secret` is one volume, mounted
/// read-only at `ca_dir` (the sidecar's `--tls-ca-dir`) in the sidecar and
/// in no other container.
pub fn check_ca_in_sidecar_only(m: &Manifests, secret: &str, ca_dir: &Path) -> Result<(), String> {
    let volumes: Vec<&str> = m
        .pod()
        .volumes
        .iter()
        .flatten()
        .filter(|v| {
            v.secret
                .as_ref()
                .is_some_and(|s| s.secret_name.as_deref() == Some(secret))
        })
        .map(|v| v.name.as_str())
        .collect();
    let [volume] = volumes[..] else {
        return Err(format!(
            "want one volume of Secret {secret}, found {volumes:?}"
        ));
    };
    for c in m.all_containers() {
        let mounts: Vec<_> = c
            .volume_mounts
            .iter()
            .flatten()
            .filter(|v| v.name == volume)
            .collect();
        if c.name == m.sidecar().name {
            let ok = matches!(&mounts[..], [v] if Path::new(&v.mount_path) == ca_dir
                && v.read_only == Some(true));
            if !ok {
                return Err(format!(
                    "the sidecar mounts {volume} as {mounts:?}, want once, read-only, at {}",
                    ca_dir.display()
                ));
            }
        } else if !mounts.is_empty() {
            return Err(format!("{} must not mount the CA ({volume})", c.name));
        }
    }
    Ok(())
}

/// The TLS settings the sidecar's arguments give pod `pod` of namespace
/// `namespace` (the names its certificate carries): TLS must be on.
pub fn sidecar_tls_settings(args: &Args, pod: &str, namespace: &str) -> kube_epmd::tls::Settings {
    args.tls
        .settings(
            Some(pod),
            Some(namespace),
            &args.kube.cluster_domain,
            &args.kube.output_dir,
        )
        .expect("TLS settings")
        .expect("TLS on")
}
