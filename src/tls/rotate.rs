//! The task that keeps the VM's certificate current: it issues one at
//! start and re-issues when a fraction of its validity has passed (or the
//! CA changed), or, with a certificate provided by cert-manager, copies it
//! whenever it changes. Files are replaced by rename, so the VM never
//! reads half a file.
//!
//! How a running VM picks the new certificate up (OTP's ssl, checked in
//! `ssl_pem_cache.erl`): `inet_tls_dist` builds the ssl options for every
//! new connection from the optfile's paths; ssl reads those files through
//! its PEM cache, which every `ssl_pem_cache_clean` ms (default 120 000)
//! drops each cached file whose mtime is not older than the previous
//! check. A replaced file has a fresh mtime, so new connections present
//! (and trust) the new files at most about two minutes after the rename;
//! connections already up are not touched (TLS does not re-authenticate
//! them). No action in the VM is needed, provided the old certificate
//! outlives that delay: renewal runs long before expiry (half the validity
//! by default). `ssl:clear_pem_cache/0` does not help: it clears the
//! cache of normal ssl connections, not distribution's own.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{debug, error, info, warn};

use super::Settings;
use super::inspect::{self, CertInfo};
use super::issue::{self, unix};
use super::source::{self, Source};
use super::status::TlsStatus;
use crate::files::disk;
use crate::metrics::TlsMetrics;

/// Retry after a failure.
pub const RETRY: Duration = Duration::from_secs(10);
/// How often the source is read again while nothing is due: a CA Secret
/// that becomes unreadable or expires shows in the metrics within this.
pub const RECHECK: Duration = Duration::from_secs(30);
/// How often a provided certificate (cert-manager) is checked for change.
pub const POLL_PROVIDED: Duration = Duration::from_secs(10);
/// The key file's mode: the VM's container reads it through the pod's
/// fsGroup; others cannot.
pub const KEY_FILE_MODE: u32 = 0o640;

/// When a certificate issued at `issued` and ending at `not_after` is
/// renewed: once `fraction` of that span has passed.
pub fn renew_at(issued: i64, not_after: i64, fraction: f64) -> i64 {
    let span = (not_after - issued).max(0) as f64;
    issued + (span * fraction).floor() as i64
}

#[derive(Debug)]
struct Current {
    info: CertInfo,
    renew_at: i64,
    /// The CA (or provided bundle) it came from, to notice a change.
    from: String,
}

/// The rotation state; one [`Rotator::step`] per wake-up.
#[derive(Debug)]
pub struct Rotator {
    settings: Arc<Settings>,
    status: Arc<TlsStatus>,
    metrics: Arc<TlsMetrics>,
    current: Option<Current>,
}

impl Rotator {
    pub fn new(settings: Arc<Settings>, status: Arc<TlsStatus>, metrics: Arc<TlsMetrics>) -> Self {
        Rotator {
            settings,
            status,
            metrics,
            current: None,
        }
    }

    /// Do what is due at `now`; returns how long to sleep before the next
    /// step.
    pub fn step(&mut self, now: SystemTime) -> Duration {
        let t = unix(now);
        let next = match self.settings.source.clone() {
            Source::CaDir(dir) => self.step_ca(&dir, now),
            Source::CertDir(dir) => self.step_provided(&dir, t),
        };
        let valid = self
            .current
            .as_ref()
            .is_some_and(|c| t >= c.info.not_before && t < c.info.not_after);
        self.metrics.certificate_valid.set(i64::from(valid));
        next
    }

    fn step_ca(&mut self, dir: &Path, now: SystemTime) -> Duration {
        let t = unix(now);
        let ca = match source::read_ca(dir) {
            Ok(ca) => ca,
            Err(e) => return self.fail(e.reason(), &e.to_string()),
        };
        self.metrics.ca_expiry_seconds.set(ca.info.not_after);
        // A new CA file or a new signing key (a CA rotation's second
        // step changes only the key) re-issues at once.
        let from = ca.source_id();
        let due = match &self.current {
            None => true,
            Some(c) => t >= c.renew_at || c.from != from,
        };
        if !due {
            self.recovered();
            return until(self.current.as_ref().map_or(t, |c| c.renew_at), t).min(RECHECK);
        }
        let leaf = match issue::issue(&ca, &self.settings.names, now, self.settings.validity) {
            Ok(l) => l,
            Err(e @ issue::IssueError::CaExpired(_)) => {
                let msg = format!("{}: {e}", dir.join(source::CA_CERT).display());
                return self.fail("ca_expired", &msg);
            }
            Err(e) => return self.fail("source_invalid", &format!("cannot issue: {e}")),
        };
        if leaf.capped_by_ca {
            warn!(
                ca_not_after = ca.info.not_after,
                "the CA expires before the validity asked: the certificate ends with the CA"
            );
        }
        let bundle = format!("{}{}", leaf.cert_pem, leaf.key_pem);
        if let Err(e) = self.write(&bundle, &ca.cert_pem) {
            return self.fail("write_failed", &e);
        }
        let renew = renew_at(t, leaf.info.not_after, self.settings.renew_fraction);
        info!(
            serial = %leaf.info.serial,
            not_after = leaf.info.not_after,
            renew_at = renew,
            names = ?leaf.info.dns_names,
            "distribution TLS certificate issued"
        );
        self.written(leaf.info, renew, from);
        until(renew, t).min(RECHECK)
    }

    fn step_provided(&mut self, dir: &Path, t: i64) -> Duration {
        let p = match source::read_provided(dir) {
            Ok(p) => p,
            Err(e) => return self.fail(e.reason(), &e.to_string()),
        };
        if let Ok(ca) = inspect::first_cert(p.ca_pem.as_bytes()) {
            self.metrics.ca_expiry_seconds.set(ca.not_after);
        }
        let from = format!("{}{}{}", p.cert_pem, p.key_pem, p.ca_pem);
        if self.current.as_ref().map(|c| &c.from) != Some(&from) {
            let mut bundle = p.cert_pem.clone();
            if !bundle.ends_with('\n') {
                bundle.push('\n');
            }
            bundle.push_str(&p.key_pem);
            if let Err(e) = self.write(&bundle, &p.ca_pem) {
                return self.fail("write_failed", &e);
            }
            info!(
                serial = %p.info.serial,
                not_after = p.info.not_after,
                "distribution TLS certificate copied from {}",
                dir.display()
            );
            self.written(p.info.clone(), i64::MAX, from);
        }
        if t >= p.info.not_after {
            let msg = format!(
                "{} expired at {} (unix): is cert-manager renewing it?",
                dir.join(source::TLS_CERT).display(),
                p.info.not_after
            );
            return self.fail("certificate_expired", &msg);
        }
        self.recovered();
        POLL_PROVIDED
    }

    /// The CA file first (what the new certificate is checked against),
    /// then certificate and key together.
    fn write(&self, bundle: &str, ca_pem: &str) -> Result<(), String> {
        let (cert, ca) = (self.settings.cert_path(), self.settings.ca_path());
        if std::fs::read_to_string(&ca).ok().as_deref() != Some(ca_pem) {
            disk::replace_file(&ca, ca_pem.as_bytes(), None).map_err(|e| err_at(&ca, e))?;
        }
        disk::replace_private_file(&cert, bundle.as_bytes(), KEY_FILE_MODE)
            .map_err(|e| err_at(&cert, e))
    }

    fn written(&mut self, info: CertInfo, renew_at: i64, from: String) {
        self.metrics.certificates_written.inc();
        self.metrics.certificate_expiry_seconds.set(info.not_after);
        self.status.written(info.clone());
        self.current = Some(Current {
            info,
            renew_at,
            from,
        });
        self.recovered();
    }

    fn fail(&self, reason: &'static str, msg: &str) -> Duration {
        self.metrics.error(reason);
        let in_place = self.current.as_ref().map(|c| c.info.not_after);
        if self.status.failed(msg.to_string()) {
            error!(
                reason,
                certificate_in_place_until = in_place,
                "distribution TLS certificate: {msg}; retrying every {}s",
                RETRY.as_secs()
            );
        } else {
            debug!(reason, "distribution TLS certificate still failing: {msg}");
        }
        RETRY
    }

    fn recovered(&self) {
        if self.status.succeeded() {
            info!("distribution TLS certificate source works again");
        }
    }
}

fn err_at(path: &Path, e: std::io::Error) -> String {
    format!("cannot write {}: {e}", path.display())
}

fn until(at: i64, now: i64) -> Duration {
    Duration::from_secs((at - now).max(1) as u64)
}

/// Run `rotator` forever, its first step after `first`. Each step reads
/// and writes small files: off the runtime.
pub async fn run(mut rotator: Rotator, first: Duration) {
    let mut delay = first;
    loop {
        tokio::time::sleep(delay).await;
        match tokio::task::spawn_blocking(move || {
            let d = rotator.step(SystemTime::now());
            (rotator, d)
        })
        .await
        {
            Ok((r, d)) => {
                rotator = r;
                delay = d;
            }
            Err(e) => {
                error!(error = %e, "distribution TLS rotation failed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::issue::tests::{signed_by, test_ca};
    use std::time::UNIX_EPOCH;

    #[test]
    fn renewal_comes_at_the_fraction_of_the_span() {
        assert_eq!(renew_at(1000, 1000 + 86_400, 0.5), 1000 + 43_200);
        assert_eq!(renew_at(1000, 1000 + 30, 0.5), 1015);
        assert_eq!(renew_at(1000, 900, 0.5), 1000, "already past: now");
    }

    fn rotator(
        source: Source,
        out: &Path,
        validity: u64,
    ) -> (Rotator, Arc<TlsMetrics>, Arc<TlsStatus>) {
        let settings = Arc::new(Settings {
            source,
            names: vec!["chat-0".into(), "chat-0.svc".into()],
            validity: Duration::from_secs(validity),
            renew_fraction: 0.5,
            output_dir: out.to_path_buf(),
        });
        let metrics = Arc::new(TlsMetrics::new());
        let status = Arc::new(TlsStatus::default());
        (
            Rotator::new(settings, status.clone(), metrics.clone()),
            metrics,
            status,
        )
    }

    #[test]
    fn issues_at_start_renews_at_half_and_fails_clearly_on_an_expired_ca() {
        let ca_dir = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let (cert, key) = test_ca(1_900_000_000, 2_000_000_100);
        std::fs::write(ca_dir.path().join("ca.crt"), &cert).unwrap();
        std::fs::write(ca_dir.path().join("ca.key"), &key).unwrap();
        let (mut r, m, status) = rotator(Source::CaDir(ca_dir.path().into()), out.path(), 60);
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(r.step(at(2_000_000_000)), Duration::from_secs(30));
        let first = std::fs::read_to_string(out.path().join("dist.pem")).unwrap();
        assert!(first.contains("BEGIN CERTIFICATE") && first.contains("BEGIN PRIVATE KEY"));
        assert_eq!(
            std::fs::read_to_string(out.path().join("dist-ca.pem")).unwrap(),
            cert
        );
        assert_eq!(m.certificate_expiry_seconds.get(), 2_000_000_060);
        assert_eq!(m.certificate_valid.get(), 1);
        assert_eq!(m.ca_expiry_seconds.get(), 2_000_000_100);
        // Not due yet: nothing written.
        r.step(at(2_000_000_010));
        assert_eq!(m.certificates_written.get(), 1);
        // Due: a new certificate, capped by the CA's end.
        r.step(at(2_000_000_030));
        assert_eq!(m.certificates_written.get(), 2);
        assert_eq!(m.certificate_expiry_seconds.get(), 2_000_000_090);
        assert_ne!(
            std::fs::read_to_string(out.path().join("dist.pem")).unwrap(),
            first
        );
        // The CA has expired: an error, counted, said by /readyz once the
        // certificate in place has expired too.
        assert_eq!(r.step(at(2_000_000_100)), RETRY);
        let expired = m
            .errors
            .get_or_create(&crate::metrics::ReasonLabels {
                reason: "ca_expired",
            })
            .get();
        assert_eq!(expired, 1);
        assert_eq!(m.certificate_valid.get(), 0);
        let h = status.health(2_000_000_100);
        assert!(!h.ready, "{h:?}");
        assert!(h.message.contains("expired at 2000000100"), "{h:?}");
    }

    /// A CA rotation: the bundle of both CAs, then the new key. Each
    /// change re-issues at once; the bundle is trusted throughout.
    #[test]
    fn a_ca_rotation_reissues_at_each_step() {
        let ca_dir = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let (old, old_key) = test_ca(1_900_000_000, 2_100_000_000);
        let (new, new_key) = test_ca(1_950_000_000, 2_200_000_000);
        let put = |cert: &str, key: &str| {
            std::fs::write(ca_dir.path().join("ca.crt"), cert).unwrap();
            std::fs::write(ca_dir.path().join("ca.key"), key).unwrap();
        };
        let (mut r, m, _) = rotator(Source::CaDir(ca_dir.path().into()), out.path(), 3600);
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let trusted = || std::fs::read_to_string(out.path().join("dist-ca.pem")).unwrap();
        let issuer_key = || {
            let pem = std::fs::read_to_string(out.path().join("dist.pem")).unwrap();
            [(&old, 'o'), (&new, 'n')]
                .into_iter()
                .find(|(ca, _)| signed_by(&pem, ca))
                .map(|(_, c)| c)
        };
        put(&old, &old_key);
        r.step(at(2_000_000_000));
        assert_eq!((trusted(), issuer_key()), (old.clone(), Some('o')));
        // Step 1: both trusted, the old key still signs.
        let both = format!("{old}{new}");
        put(&both, &old_key);
        r.step(at(2_000_000_010));
        assert_eq!(m.certificates_written.get(), 2);
        assert_eq!((trusted(), issuer_key()), (both.clone(), Some('o')));
        // Step 2: the same file, the new key: re-issued from the new CA.
        put(&both, &new_key);
        r.step(at(2_000_000_020));
        assert_eq!(m.certificates_written.get(), 3);
        assert_eq!((trusted(), issuer_key()), (both.clone(), Some('n')));
        assert_eq!(m.ca_expiry_seconds.get(), 2_200_000_000, "the signer's end");
        // Unchanged: nothing written.
        r.step(at(2_000_000_030));
        assert_eq!(m.certificates_written.get(), 3);
        // Step 3: the old CA dropped.
        put(&new, &new_key);
        r.step(at(2_000_000_040));
        assert_eq!((trusted(), issuer_key()), (new.clone(), Some('n')));
    }

    #[test]
    fn an_unreadable_ca_is_an_error_and_a_provided_certificate_is_copied_on_change() {
        let out = tempfile::tempdir().unwrap();
        let missing = out.path().join("no-such-dir");
        let (mut r, m, status) = rotator(Source::CaDir(missing), out.path(), 60);
        assert_eq!(r.step(SystemTime::now()), RETRY);
        let unreadable = m
            .errors
            .get_or_create(&crate::metrics::ReasonLabels {
                reason: "source_unreadable",
            })
            .get();
        assert_eq!(unreadable, 1);
        assert!(
            status.health(0).message.contains("cannot read"),
            "{:?}",
            status.health(0)
        );

        // cert-manager's files: copied, then again only when they change.
        let (ca_cert, ca_key) = test_ca(1_900_000_000, 2_100_000_000);
        let ca = crate::tls::issue::Ca::from_pem(&ca_cert, &ca_key).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let leaf = issue::issue(&ca, &["chat-0".into()], now, Duration::from_secs(3600)).unwrap();
        let cm = tempfile::tempdir().unwrap();
        std::fs::write(cm.path().join("tls.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(cm.path().join("tls.key"), &leaf.key_pem).unwrap();
        std::fs::write(cm.path().join("ca.crt"), &ca_cert).unwrap();
        let (mut r, m, _) = rotator(Source::CertDir(cm.path().into()), out.path(), 60);
        assert_eq!(r.step(now), POLL_PROVIDED);
        assert_eq!(m.certificates_written.get(), 1);
        r.step(now);
        assert_eq!(m.certificates_written.get(), 1, "unchanged: not rewritten");
        assert_eq!(m.certificate_expiry_seconds.get(), leaf.info.not_after);
        // Past its end: written stays, the error says who should renew it.
        assert_eq!(
            r.step(UNIX_EPOCH + Duration::from_secs(2_000_003_600)),
            RETRY
        );
        let expired = m
            .errors
            .get_or_create(&crate::metrics::ReasonLabels {
                reason: "certificate_expired",
            })
            .get();
        assert_eq!(expired, 1);
    }
}
