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
#[path = "support/prereq.rs"]
mod prereq;

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
use kube_epmd::cli::{Args, PortRange, normalize_epmd_flags};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Every kustomization a user may apply.
const KUSTOMIZATIONS: &[&str] = &["deploy", "deploy/overlays/short-names"];

/// The distribution window of the whole design (ejabberd FIREWALL_WINDOW).
const DIST: PortRange = PortRange {
    min: 4200,
    max: 4210,
};
const EPMD_PORT: i32 = 4369;
const CLIENT_PORTS: [i32; 3] = [5222, 5269, 5280];
const SIDECAR: &str = "kube-epmd";
const EJABBERD: &str = "ejabberd";
/// ejabberdctl exports ERL_INETRC=$CONFIG_DIR/inetrc; the image fixes CONFIG_DIR.
const EJABBERD_CONF_DIR: &str = "/opt/ejabberd/conf";

// ---------------------------------------------------------------- rendering

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `kubectl kustomize DIR`, as `kubectl apply -k DIR` would build it.
fn render(dir: &str) -> String {
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
fn parse_documents(yaml: &str) -> Result<Vec<Value>, String> {
    serde_saphyr::from_multiple::<Value>(yaml).map_err(|e| e.to_string())
}

fn rendered_objects(dir: &str) -> Vec<Value> {
    let docs = parse_documents(&render(dir))
        .unwrap_or_else(|e| panic!("{dir}: rendered YAML does not parse: {e}"));
    assert!(!docs.is_empty(), "{dir} renders no objects");
    docs
}

// ------------------------------------------------------- unknown-field check

/// Paths where `back` (the round trip through the typed struct) differs from
/// `rendered`. A key missing from `back` is one the type does not have.
fn diff(path: &str, rendered: &Value, back: &Value, out: &mut Vec<String>) {
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

fn roundtrip_as<T: DeserializeOwned + Serialize>(obj: &Value) -> Vec<String> {
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
fn unknown_fields(obj: &Value) -> Vec<String> {
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

fn object_id(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["kind"].as_str().unwrap_or("?"),
        obj["metadata"]["name"].as_str().unwrap_or("?")
    )
}

// ------------------------------------------------------------ typed objects

/// The rendered objects of one kustomization, by type.
struct Manifests {
    statefulset: StatefulSet,
    services: BTreeMap<String, Service>,
    service_account: ServiceAccount,
    role: Role,
    role_binding: RoleBinding,
    network_policy: NetworkPolicy,
    pdb: PodDisruptionBudget,
    config_maps: BTreeMap<String, ConfigMap>,
}

fn one<T: DeserializeOwned>(objs: &[Value], kind: &str) -> T {
    let found: Vec<&Value> = objs.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}");
    serde_json::from_value(found[0].clone()).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

fn by_name<T: DeserializeOwned>(objs: &[Value], kind: &str) -> BTreeMap<String, T> {
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
    fn load(dir: &str) -> Manifests {
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

    fn pod(&self) -> &PodSpec {
        self.statefulset
            .spec
            .template
            .spec
            .as_ref()
            .expect("StatefulSet has a pod template")
    }

    fn pod_labels(&self) -> BTreeMap<String, String> {
        self.statefulset
            .spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default()
    }

    fn selector(&self) -> BTreeMap<String, String> {
        self.statefulset
            .spec
            .selector
            .match_labels
            .clone()
            .unwrap_or_default()
    }

    fn sidecar(&self) -> &Container {
        self.pod()
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == SIDECAR)
            .expect("kube-epmd is an init container (native sidecar)")
    }

    fn ejabberd(&self) -> &Container {
        self.pod()
            .containers
            .iter()
            .find(|c| c.name == EJABBERD)
            .expect("ejabberd container")
    }

    fn all_containers(&self) -> impl Iterator<Item = &Container> {
        let pod = self.pod();
        pod.init_containers.iter().flatten().chain(&pod.containers)
    }

    /// The text of `key` in the ConfigMap that volume `volume` mounts.
    fn config_file(&self, volume: &str, key: &str) -> Result<String, String> {
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

fn port_number(p: &IntOrString, container_ports: &BTreeMap<String, i32>) -> Option<i32> {
    match p {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(name) => container_ports.get(name).copied(),
    }
}

/// The API server's rule for port names (IANA_SVC_NAME): at most 15
/// characters, lower-case letters, digits and single inner hyphens, at
/// least one letter. k8s-openapi does not check values, only field names.
fn valid_port_name(n: &str) -> bool {
    (1..=15).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && n.bytes().any(|b| b.is_ascii_lowercase())
        && !n.starts_with('-')
        && !n.ends_with('-')
        && !n.contains("--")
}

/// Every named and numbered port the pod's containers declare.
fn container_ports(m: &Manifests) -> (BTreeMap<String, i32>, BTreeSet<i32>) {
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

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a EnvVar> {
    c.env.iter().flatten().find(|e| e.name == name)
}

fn field_ref(c: &Container, name: &str) -> Option<String> {
    env(c, name)
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.clone())
}

fn subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    !small.is_empty() && small.iter().all(|(k, v)| big.get(k) == Some(v))
}

// ------------------------------------------------------------------- checks

/// The Role lets kube-epmd read pods, and the one StatefulSet `statefulset`
/// (its replica count, by name only), and nothing else.
fn check_role(role: &Role, statefulset: &str) -> Result<(), String> {
    let rules = role.rules.as_deref().unwrap_or_default();
    let [pods, sts] = rules else {
        return Err(format!(
            "Role must have exactly two rules (pods, the StatefulSet), has {}",
            rules.len()
        ));
    };
    let want: BTreeSet<&str> = ["get", "list", "watch"].into();
    for rule in [pods, sts] {
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
    if sts.api_groups.as_deref() != Some(&["apps".to_string()][..])
        || sts.resources.as_deref() != Some(&["statefulsets".to_string()][..])
    {
        return Err(format!(
            "second Role rule is {:?} {:?}, want apps statefulsets",
            sts.api_groups, sts.resources
        ));
    }
    if sts.resource_names.as_deref() != Some(&[statefulset.to_string()][..]) {
        return Err(format!(
            "the statefulsets rule names {:?}, want exactly [{statefulset}]",
            sts.resource_names
        ));
    }
    Ok(())
}

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
    if spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p.when_scaled.as_deref())
        != Some("Delete")
    {
        return Err("whenScaled must be Delete: a scaled-away node comes back empty".into());
    }
    let args = sidecar_args(m.sidecar())?;
    let name = m.statefulset.metadata.name.as_deref().unwrap_or("");
    if args.kube.statefulset.as_deref() != Some(name) {
        return Err(format!(
            "kube-epmd --statefulset is {:?}, want {name}: the entrypoint needs its replicas file",
            args.kube.statefulset
        ));
    }
    check_role(&m.role, name)
}

/// ServiceAccount ← RoleBinding → Role, and the pods run as that account.
fn check_rbac_wiring(m: &Manifests) -> Result<(), String> {
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
fn check_selectors(m: &Manifests) -> Result<(), String> {
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
fn check_headless_service(m: &Manifests) -> Result<(), String> {
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

/// Service ports reach declared container ports; the NetworkPolicy opens the
/// client ports to all and the Erlang ports to this cluster's pods only.
fn check_ports(m: &Manifests) -> Result<(), String> {
    let (named, numbers) = container_ports(m);
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
            // Numbers only: a named targetPort is resolved against the
            // pod's containers, and Kubernetes before 1.32 does not look at
            // init containers, where the native sidecar's port lives.
            let n = match p.target_port.clone().unwrap_or(IntOrString::Int(p.port)) {
                IntOrString::Int(n) => n,
                IntOrString::String(s) => {
                    return Err(format!(
                        "Service {name}: targetPort {s:?} is a name; use the number \
                         (named ports on init containers resolve only from Kubernetes 1.32)"
                    ));
                }
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
    if client != CLIENT_PORTS.into() {
        return Err(format!(
            "client service ports {client:?}, want {CLIENT_PORTS:?}"
        ));
    }
    let ej: BTreeSet<i32> = m
        .ejabberd()
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    for p in CLIENT_PORTS
        .iter()
        .chain(&(i32::from(DIST.min)..=i32::from(DIST.max)).collect::<Vec<_>>())
    {
        if !ej.contains(p) {
            return Err(format!("ejabberd container does not declare port {p}"));
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

/// The sidecar's environment as the flags clap would have read from it:
/// lets the real parser validate names and values without touching this
/// test process's environment. Downward-API values get realistic stand-ins.
/// As in clap, a flag given on the command line wins over its variable.
fn env_as_flags(c: &Container, given: &clap::ArgMatches) -> Result<Vec<String>, String> {
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
fn sidecar_args(c: &Container) -> Result<Args, String> {
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

fn parse_selector(s: &str) -> Result<BTreeMap<String, String>, String> {
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

/// The sidecar: native sidecar, accepted command line, the right peers,
/// files where ejabberd reads them, a probe on its readiness.
fn check_sidecar(m: &Manifests) -> Result<(), String> {
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
            "kube-epmd listens on {}, ejabberd looks on 4369",
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
    let admin = args
        .kube
        .admin_addr
        .ok_or("set --admin-addr so the probes can be checked")?;
    let (named, _) = container_ports(m);
    let probe = c
        .startup_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .ok_or("kube-epmd needs an HTTP startup probe")?;
    if probe.path.as_deref() != Some("/readyz")
        || port_number(&probe.port, &named) != Some(i32::from(admin.port()))
    {
        return Err(format!(
            "startup probe {probe:?} is not /readyz on the admin port {}",
            admin.port()
        ));
    }
    // Its output directory: an emptyDir, mounted at the same path in both
    // containers (the inetrc names the hosts file by absolute path).
    let out_dir = args
        .kube
        .output_dir
        .to_str()
        .ok_or("output dir is not UTF-8")?;
    let vol = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|v| v.mount_path == out_dir)
        .ok_or(format!(
            "nothing is mounted at kube-epmd's output dir {out_dir}"
        ))?;
    let is_empty_dir = m
        .pod()
        .volumes
        .iter()
        .flatten()
        .any(|v| v.name == vol.name && v.empty_dir.is_some());
    if !is_empty_dir || vol.read_only == Some(true) {
        return Err(format!(
            "{out_dir} must be a writable emptyDir in kube-epmd"
        ));
    }
    let ej = m.ejabberd();
    let mounted = |path: &str, sub: Option<&str>| {
        ej.volume_mounts
            .iter()
            .flatten()
            .any(|v| v.name == vol.name && v.mount_path == path && v.sub_path.as_deref() == sub)
    };
    if !mounted(out_dir, None) {
        return Err(format!(
            "ejabberd does not see kube-epmd's directory at {out_dir}"
        ));
    }
    let inetrc = format!("{EJABBERD_CONF_DIR}/inetrc");
    if !mounted(&inetrc, Some("inetrc")) {
        return Err(format!("kube-epmd's inetrc is not mounted at {inetrc}"));
    }
    let hosts = env(ej, "KUBE_EPMD_HOSTS_FILE").and_then(|e| e.value.clone());
    if hosts.as_deref() != Some(&format!("{out_dir}/hosts")[..]) {
        return Err(format!(
            "the cluster script reads {hosts:?}, kube-epmd writes {out_dir}/hosts"
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
    let c = m.ejabberd();
    // Kubernetes expands $(VAR) only from variables defined earlier.
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
    let c = m.ejabberd();
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

/// Non-root, no capabilities beyond what the image needs, read-only root,
/// resource requests and memory limits everywhere.
fn check_hardening(m: &Manifests) -> Result<(), String> {
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
        let added = caps.add.unwrap_or_default();
        let allowed: &[&str] = if c.name == EJABBERD {
            &["NET_BIND_SERVICE"]
        } else {
            &[]
        };
        if added.iter().any(|a| !allowed.contains(&a.as_str())) {
            return Err(format!("{} adds capabilities {added:?}", c.name));
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

type Check = fn(&Manifests) -> Result<(), String>;

fn all_checks(m: &Manifests) -> Vec<String> {
    let checks: [(&str, Check); 10] = [
        ("role", |m| {
            check_role(
                &m.role,
                m.statefulset.metadata.name.as_deref().unwrap_or(""),
            )
        }),
        ("lifecycle", check_lifecycle),
        ("rbac wiring", check_rbac_wiring),
        ("selectors", check_selectors),
        ("headless service", check_headless_service),
        ("ports", check_ports),
        ("sidecar", check_sidecar),
        ("ejabberd", check_ejabberd),
        ("cluster script", check_cluster_script),
        ("hardening", check_hardening),
    ];
    checks
        .iter()
        .filter_map(|(name, f)| f(m).err().map(|e| format!("{name}: {e}")))
        .collect()
}

// -------------------------------------------------------------------- tests

#[test]
#[cfg_attr(skip_kubectl, ignore = "needs kubectl >= 1.27 (KUBE_EPMD_TEST_SKIP)")]
fn every_rendered_object_is_a_known_type_without_unknown_fields() {
    for dir in KUSTOMIZATIONS {
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
        ] {
            assert!(kinds.contains(k), "{dir} renders no {k}");
        }
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
    let node = |m: &Manifests| env(m.ejabberd(), "ERLANG_NODE_ARG").and_then(|e| e.value.clone());
    assert_eq!(
        node(&base).as_deref(),
        Some("ejabberd@$(POD_NAME).xmpp-internal-svc")
    );
    assert_eq!(node(&short).as_deref(), Some("ejabberd@$(POD_NAME)"));
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
    check_role(&m.role, "chat").expect("the shipped Role passes");
    assert!(check_role(&m.role, "other").is_err());
    let rule = |i: usize, f: &dyn Fn(&mut k8s_openapi::api::rbac::v1::PolicyRule)| {
        let mut r = m.role.clone();
        f(&mut r.rules.as_mut().expect("rules")[i]);
        check_role(&r, "chat")
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
    assert!(check_role(&three, "chat").is_err());
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
    let mut bad = Manifests::load("deploy");
    if let Some(p) = bad
        .statefulset
        .spec
        .persistent_volume_claim_retention_policy
        .as_mut()
    {
        p.when_scaled = Some("Retain".into());
    }
    assert!(check_lifecycle(&bad).is_err());
}

fn pod_mut(m: &mut Manifests) -> &mut PodSpec {
    m.statefulset.spec.template.spec.as_mut().expect("pod")
}

fn sidecar_mut(m: &mut Manifests) -> &mut Container {
    pod_mut(m)
        .init_containers
        .as_mut()
        .and_then(|cs| cs.iter_mut().find(|c| c.name == SIDECAR))
        .expect("sidecar")
}

fn ejabberd_mut(m: &mut Manifests) -> &mut Container {
    pod_mut(m)
        .containers
        .iter_mut()
        .find(|c| c.name == EJABBERD)
        .expect("ejabberd")
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
        check_ports(&m).unwrap_err().contains("is a name"),
        "a named targetPort (the sidecar's `epmd`, declared on an init container)"
    );

    let mut m = fresh();
    let np = m.network_policy.spec.as_mut().expect("np");
    np.ingress.as_mut().expect("rules")[0].from = None;
    assert!(check_ports(&m).is_err(), "EPMD open to everyone");

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
    assert!(check_hardening(&m).is_err());
}

// ------------------------------------------------------ the cluster script

fn script() -> PathBuf {
    repo_path("deploy/base/ejabberd/cluster-entrypoint.sh")
}

/// The hosts file kube-epmd's own renderer writes for StatefulSet pods
/// (namespace `xmpp`, subdomain `xmpp-internal-svc`) with these IPs.
fn kube_epmd_hosts(pods: &[(&str, &[&str])]) -> String {
    let mut table = kube_epmd::peers::PeerTable::default();
    for (name, ips) in pods {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "xmpp"},
            "spec": {"hostname": name, "subdomain": "xmpp-internal-svc", "containers": []},
            "status": {
                "phase": "Running",
                "podIP": ips[0],
                "podIPs": ips.iter().map(|ip| serde_json::json!({"ip": ip})).collect::<Vec<_>>(),
            },
        }))
        .expect("pod");
        assert!(table.apply(&pod), "{name} is not a peer");
    }
    kube_epmd::files::render::render_hosts(&table, "cluster.local")
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

/// `cluster-entrypoint.sh peers` as the ejabberd container runs it.
fn script_peers(
    shell: &(String, Option<tempfile::TempDir>),
    node: &str,
    pod: &str,
    hosts: &Path,
) -> Vec<String> {
    let path = match &shell.1 {
        Some(dir) => dir.path().as_os_str().to_owned(),
        None => std::env::var_os("PATH").unwrap_or_default(),
    };
    let out = Command::new(&shell.0)
        .arg(script())
        .arg("peers")
        .env_clear()
        .env("PATH", path)
        .env("POD_NAME", pod)
        .env("ERLANG_NODE_ARG", node)
        .env("KUBE_EPMD_HOSTS_FILE", hosts)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{}: {}",
        shell.0,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(String::from)
        .collect()
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

#[test]
#[cfg_attr(skip_busybox, ignore = "needs busybox (KUBE_EPMD_TEST_SKIP)")]
fn cluster_script_finds_peers_in_the_hosts_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = dir.path().join("hosts");
    // What kube-epmd itself writes (its real renderer), for pods of every
    // kind the script must sort out, plus one hand-written line that
    // separates with spaces.
    let mut hosts_text = kube_epmd_hosts(&[
        ("chat-2", &["10.1.0.12", "fd00::12"]),
        ("chat-0", &["10.1.0.10"]),
        ("chat-10", &["10.1.0.20"]),
        ("chatter-3", &["10.1.0.30"]),
        ("chat-x", &["10.1.0.31"]),
    ]);
    hosts_text
        .push_str("10.1.0.11 chat-1 chat-1.xmpp-internal-svc chat-1.xmpp-internal-svc.xmpp\n");
    std::fs::write(&hosts, hosts_text).expect("write hosts");

    for sh in shells() {
        assert_eq!(
            script_peers(&sh, "ejabberd@chat-1.xmpp-internal-svc", "chat-1", &hosts),
            [
                "ejabberd@chat-0.xmpp-internal-svc",
                "ejabberd@chat-2.xmpp-internal-svc",
                "ejabberd@chat-10.xmpp-internal-svc"
            ]
        );
        assert_eq!(
            script_peers(&sh, "ejabberd@chat-0", "chat-0", &hosts),
            ["ejabberd@chat-1", "ejabberd@chat-2", "ejabberd@chat-10"]
        );
        // Alone (a fresh cluster's first pod): no peers, so chat-0 seeds.
        let alone = dir.path().join("alone");
        std::fs::write(
            &alone,
            "127.0.0.1 localhost\n10.1.0.10 chat-0 chat-0.xmpp-internal-svc\n",
        )
        .expect("write");
        assert!(
            script_peers(&sh, "ejabberd@chat-0.xmpp-internal-svc", "chat-0", &alone).is_empty()
        );
        // No hosts file yet: no peers, no error.
        assert!(
            script_peers(
                &sh,
                "ejabberd@chat-0",
                "chat-0",
                &dir.path().join("missing")
            )
            .is_empty()
        );
    }
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
