//! Where the certificate material comes from, read from the mounted
//! Secret: a CA to issue from (`ca.crt`, `ca.key`: `--tls-ca-dir`), or a
//! certificate someone else issues and renews (cert-manager's `tls.crt`,
//! `tls.key`, `ca.crt`: `--tls-cert-dir`). Reads files; decides nothing.

use std::path::{Path, PathBuf};

use super::inspect::{self, CertInfo};
use super::issue::{Ca, IssueError};

/// Files of a CA Secret (`kubectl create secret tls` names them
/// tls.crt/tls.key; a generic Secret with these keys works as well).
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
/// cert-manager's Certificate Secret.
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Issue from the CA in this directory.
    CaDir(PathBuf),
    /// Copy the certificate in this directory (cert-manager's).
    CertDir(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{0}: {1}")]
    Ca(PathBuf, #[source] IssueError),
    #[error("{0}: {1}")]
    Cert(PathBuf, #[source] inspect::InspectError),
    #[error("{0} holds no private key (\"BEGIN ... PRIVATE KEY\")")]
    NoKey(PathBuf),
}

impl SourceError {
    /// The metric label: `kube_epmd_tls_errors_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            SourceError::Read(..) => "source_unreadable",
            SourceError::Ca(_, IssueError::CaExpired(_)) => "ca_expired",
            SourceError::Ca(..) | SourceError::Cert(..) | SourceError::NoKey(_) => "source_invalid",
        }
    }
}

fn read(path: PathBuf) -> Result<String, SourceError> {
    std::fs::read_to_string(&path).map_err(|e| SourceError::Read(path, e))
}

/// The CA of `dir`.
pub fn read_ca(dir: &Path) -> Result<Ca, SourceError> {
    let cert_path = dir.join(CA_CERT);
    let cert = read(cert_path.clone())?;
    let key = read(dir.join(CA_KEY))?;
    Ca::from_pem(&cert, &key).map_err(|e| SourceError::Ca(cert_path, e))
}

/// A certificate issued elsewhere, as found in `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provided {
    /// The chain as given (leaf first).
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    pub info: CertInfo,
}

pub fn read_provided(dir: &Path) -> Result<Provided, SourceError> {
    let cert_path = dir.join(TLS_CERT);
    let key_path = dir.join(TLS_KEY);
    let ca_path = dir.join(CA_CERT);
    let cert_pem = read(cert_path.clone())?;
    let key_pem = read(key_path.clone())?;
    let ca_pem = read(ca_path.clone())?;
    let info =
        inspect::first_cert(cert_pem.as_bytes()).map_err(|e| SourceError::Cert(cert_path, e))?;
    inspect::first_cert(ca_pem.as_bytes()).map_err(|e| SourceError::Cert(ca_path, e))?;
    if !key_pem.contains("PRIVATE KEY-----") {
        return Err(SourceError::NoKey(key_path));
    }
    Ok(Provided {
        cert_pem,
        key_pem,
        ca_pem,
        info,
    })
}
