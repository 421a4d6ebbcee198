//! Kubernetes mode: watch the peer pods (and, when asked, one
//! StatefulSet) and keep the output files current. Data flows one way:
//! API events → [`pod_watch`] → peer table → [`crate::files`] writer →
//! hosts file; the admin endpoint reads a [`DiscoveryView`] and never
//! writes.

pub mod pod_watch;
pub mod relist;
pub mod replicas;
pub mod status;
pub mod watch_error;
pub mod watch_loop;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::info;

use crate::files::disk::{self, HostsFile, ReplicasFile};
use crate::files::{self, render};
use crate::metrics::DiscoveryMetrics;
use crate::peers::PeerTable;
pub use status::{Health, SyncStatus};

/// Where the service account's namespace is mounted in a pod.
pub const SA_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Files(#[from] disk::SetupError),
    #[error(
        "--statefulset {0:?} is not a valid StatefulSet name (lower-case letters, digits, '-', '.')"
    )]
    StatefulSetName(String),
}

/// Kubernetes mode settings, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub namespace: String,
    pub selector: Option<String>,
    /// The StatefulSet whose replica count goes to `<output-dir>/replicas`.
    pub statefulset: Option<String>,
    /// This pod's name, to mark it in `/peers`.
    pub pod_name: Option<String>,
    pub cluster_domain: String,
    /// Made absolute at start: the inetrc names the hosts file by its
    /// absolute path (inet_db needs one).
    pub output_dir: PathBuf,
}

impl Settings {
    pub fn hosts_path(&self) -> PathBuf {
        self.output_dir.join(files::HOSTS_FILE)
    }

    pub fn inetrc_path(&self) -> PathBuf {
        self.output_dir.join(files::INETRC_FILE)
    }

    pub fn replicas_path(&self) -> PathBuf {
        self.output_dir.join(files::REPLICAS_FILE)
    }
}

/// The namespace to watch: explicit (flag or POD_NAMESPACE), else the
/// service account's, else the client's default (kubeconfig context).
pub fn resolve_namespace(explicit: Option<&str>, client: &Client) -> String {
    if let Some(ns) = explicit.map(str::trim).filter(|s| !s.is_empty()) {
        return ns.to_string();
    }
    read_namespace_file(Path::new(SA_NAMESPACE_FILE))
        .unwrap_or_else(|| client.default_namespace().to_string())
}

fn read_namespace_file(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// A read-only view of what discovery knows, for the admin endpoint. The
/// tasks that keep it current run on their own; this holds no task.
#[derive(Debug, Clone)]
pub struct DiscoveryView {
    pub settings: Arc<Settings>,
    pub table: watch::Receiver<PeerTable>,
    pub status: Arc<SyncStatus>,
    pub metrics: Arc<DiscoveryMetrics>,
    /// True once a complete list is in the hosts file.
    pub hosts_on_disk: watch::Receiver<bool>,
    /// The StatefulSet's desired replicas, when watched and known.
    pub replicas: watch::Receiver<Option<u32>>,
}

impl DiscoveryView {
    pub fn health(&self) -> Health {
        self.status.health(*self.hosts_on_disk.borrow())
    }
}

/// Prepare the output files, then spawn the watches and the hosts file
/// writer on the current runtime. The inetrc is (re)written here on every
/// start, before anything can report ready; the hosts file it names exists
/// from here on (loopback only until the first list, or as a previous run
/// left it). A replicas file left by a previous run is removed.
pub fn start(client: Client, mut settings: Settings) -> Result<DiscoveryView, SetupError> {
    if let Some(name) = &settings.statefulset
        && !crate::peers::is_dns_name(name)
    {
        return Err(SetupError::StatefulSetName(name.clone()));
    }
    settings.output_dir = disk::output_dir(&settings.output_dir)?;
    let hosts_path = settings.hosts_path();
    let mut hosts = HostsFile::open(hosts_path.clone());
    if !hosts.exists() {
        let empty = render::render_hosts(&PeerTable::default(), &settings.cluster_domain);
        hosts
            .update(empty)
            .map_err(|e| disk::SetupError::Write(hosts_path.clone(), e))?;
    }
    let replicas_path = settings.replicas_path();
    let replicas_file = ReplicasFile::open(replicas_path.clone())
        .map_err(|e| disk::SetupError::Write(replicas_path, e))?;
    let inetrc = settings.inetrc_path();
    disk::replace_file(&inetrc, render::render_inetrc(&hosts_path).as_bytes(), None)
        .map_err(|e| disk::SetupError::Write(inetrc.clone(), e))?;
    info!(
        inetrc = %inetrc.display(),
        hosts = %hosts_path.display(),
        namespace = %settings.namespace,
        selector = settings.selector.as_deref().unwrap_or(""),
        statefulset = settings.statefulset.as_deref().unwrap_or(""),
        "resolver files in place; watching pods"
    );

    let settings = Arc::new(settings);
    let status = Arc::new(SyncStatus::default());
    let metrics = Arc::new(DiscoveryMetrics::new(
        settings.statefulset.is_some(),
        &watch_error::REASONS,
    ));
    let (table_tx, table_rx) = watch::channel(PeerTable::default());
    let (on_disk_tx, on_disk_rx) = watch::channel(false);

    let api: Api<Pod> = Api::namespaced(client.clone(), &settings.namespace);
    let mut config = watcher::Config::default();
    if let Some(sel) = &settings.selector {
        config = config.labels(sel);
    }
    tokio::spawn(files::writer::run(
        table_rx.clone(),
        hosts,
        settings.cluster_domain.clone(),
        on_disk_tx,
        metrics.clone(),
    ));
    tokio::spawn(pod_watch::run(
        api,
        config,
        table_tx,
        status.clone(),
        metrics.clone(),
    ));
    let (replicas_tx, replicas_rx) = watch::channel(None);
    if let Some(name) = &settings.statefulset {
        let api: Api<StatefulSet> = Api::namespaced(client, &settings.namespace);
        tokio::spawn(replicas::run(
            api,
            name.clone(),
            replicas_file,
            replicas_tx,
            metrics.clone(),
        ));
    }
    Ok(DiscoveryView {
        settings,
        table: table_rx,
        status,
        metrics,
        hosts_on_disk: on_disk_rx,
        replicas: replicas_rx,
    })
}
