//! Erlang distribution over mutual TLS: the sidecar gives its VM a
//! short-lived certificate for every host form of its pod, signed by the
//! cluster CA (mounted into the sidecar only) or provided by cert-manager,
//! writes the VM's `ssl_dist_optfile`, and renews the certificate before
//! it expires. The VM runs `-proto_dist inet_tls -ssl_dist_optfile
//! <output-dir>/ssl_dist.conf`.
//!
//! - [`issue`]: CA + names + validity → certificate and key (pure);
//! - [`optfile`]: the optfile's text (pure);
//! - [`inspect`]: reading certificates (pure);
//! - [`source`]: reading the mounted Secret;
//! - [`rotate`]: the task that issues, renews and writes;
//! - [`status`]: what `/readyz` says about it.

pub mod inspect;
pub mod issue;
pub mod optfile;
pub mod rotate;
pub mod source;
pub mod status;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use crate::files::disk;
use crate::metrics::TlsMetrics;
use crate::peers::PeerPod;
pub use source::Source;
pub use status::{TlsHealth, TlsStatus};

/// The VM's `-ssl_dist_optfile`.
pub const OPTFILE: &str = "ssl_dist.conf";
/// Certificate chain, then private key (the optfile's certfile and keyfile).
pub const CERT_FILE: &str = "dist.pem";
/// The CA the peers' certificates are checked against (cacertfile).
pub const CA_FILE: &str = "dist-ca.pem";

/// ssl's default PEM cache check interval (`ssl_pem_cache_clean`): how
/// long a running VM may keep presenting a replaced certificate.
pub const OTP_PEM_CACHE_INTERVAL: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub source: Source,
    /// DNS names for the certificate: every host form of this pod.
    pub names: Vec<String>,
    pub validity: Duration,
    /// Renew once this fraction of the validity has passed.
    pub renew_fraction: f64,
    /// Absolute (the optfile names the files by absolute path).
    pub output_dir: PathBuf,
}

impl Settings {
    pub fn cert_path(&self) -> PathBuf {
        self.output_dir.join(CERT_FILE)
    }

    pub fn ca_path(&self) -> PathBuf {
        self.output_dir.join(CA_FILE)
    }

    pub fn optfile_path(&self) -> PathBuf {
        self.output_dir.join(OPTFILE)
    }
}

/// Every host form a node of this pod may be named with, as the hosts
/// file lists them for the pod (see [`PeerPod::names`]): `hostname`, and
/// with a subdomain (the headless Service) `hostname.subdomain`,
/// `….namespace`, `….svc`, `….svc.<cluster-domain>`.
pub fn pod_names(
    hostname: &str,
    subdomain: Option<&str>,
    namespace: &str,
    cluster_domain: &str,
) -> Vec<String> {
    PeerPod {
        pod: hostname.to_string(),
        namespace: namespace.to_string(),
        hostname: hostname.to_string(),
        subdomain: subdomain.map(str::to_string),
        ips: Vec::new(),
        ready: false,
        terminating: false,
    }
    .names(cluster_domain)
}

/// What the admin endpoint reads.
#[derive(Debug, Clone)]
pub struct TlsView {
    pub settings: Arc<Settings>,
    pub status: Arc<TlsStatus>,
    pub metrics: Arc<TlsMetrics>,
}

impl TlsView {
    pub fn health(&self) -> TlsHealth {
        self.status.health(issue::unix(SystemTime::now()))
    }
}

/// Write the optfile, make the first attempt at a certificate now (a
/// failure is reported, not fatal: the task retries, `/readyz` says why),
/// and spawn the rotation task on the current runtime.
pub fn start(mut settings: Settings) -> Result<TlsView, disk::SetupError> {
    settings.output_dir = disk::output_dir(&settings.output_dir)?;
    let optfile = settings.optfile_path();
    let text = optfile::render(&settings.cert_path(), &settings.ca_path());
    disk::replace_file(&optfile, text.as_bytes(), None)
        .map_err(|e| disk::SetupError::Write(optfile.clone(), e))?;
    let margin = settings.validity.mul_f64(1.0 - settings.renew_fraction);
    if margin < OTP_PEM_CACHE_INTERVAL + rotate::RETRY {
        warn!(
            margin_seconds = margin.as_secs(),
            "the certificate is renewed less than ~2 min before it expires: a VM re-reads \
             replaced certificate files only every ssl_pem_cache_clean ms (120000 by default), \
             so it may present an expired one; lower it (erl -ssl ssl_pem_cache_clean MS) or \
             raise --tls-validity"
        );
    }
    info!(
        optfile = %optfile.display(),
        source = ?settings.source,
        names = ?settings.names,
        validity_seconds = settings.validity.as_secs(),
        "distribution TLS: optfile in place"
    );
    let settings = Arc::new(settings);
    let status = Arc::new(TlsStatus::default());
    let metrics = Arc::new(TlsMetrics::new());
    let mut rotator = rotate::Rotator::new(settings.clone(), status.clone(), metrics.clone());
    let first = rotator.step(SystemTime::now());
    tokio::spawn(rotate::run(rotator, first));
    Ok(TlsView {
        settings,
        status,
        metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_are_the_hosts_file_forms() {
        assert_eq!(
            pod_names("chat-0", Some("xmpp-internal-svc"), "xmpp", "cluster.local"),
            [
                "chat-0",
                "chat-0.xmpp-internal-svc",
                "chat-0.xmpp-internal-svc.xmpp",
                "chat-0.xmpp-internal-svc.xmpp.svc",
                "chat-0.xmpp-internal-svc.xmpp.svc.cluster.local",
            ]
        );
        assert_eq!(
            pod_names("chat-0", None, "xmpp", "cluster.local"),
            ["chat-0"]
        );
    }
}
