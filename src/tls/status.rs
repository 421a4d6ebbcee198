//! What the TLS side reports: the certificate in place for the VM and the
//! last error, for `/readyz`. Written by the rotation task, read by the
//! admin endpoint.

use std::sync::Mutex;

use super::inspect::CertInfo;

#[derive(Debug, Default)]
pub struct TlsStatus {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default, Clone)]
struct Inner {
    on_disk: Option<CertInfo>,
    last_error: Option<String>,
}

/// Readiness as far as TLS goes, and what to say about it ("" when all is
/// well).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsHealth {
    pub ready: bool,
    pub message: String,
}

impl TlsStatus {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        // A panic while holding the lock leaves plain data: still usable.
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    pub fn written(&self, info: CertInfo) {
        self.with(|i| i.on_disk = Some(info));
    }

    /// Record `error`; returns whether it differs from the last one (so
    /// the caller logs a persisting failure once, not every retry).
    pub fn failed(&self, error: String) -> bool {
        self.with(|i| i.last_error.replace(error.clone()).as_deref() != Some(error.as_str()))
    }

    /// Clear the last error; returns whether there was one.
    pub fn succeeded(&self) -> bool {
        self.with(|i| i.last_error.take().is_some())
    }

    pub fn on_disk(&self) -> Option<CertInfo> {
        self.with(|i| i.on_disk.clone())
    }

    /// Ready once a certificate is in place and until it expires: the VM
    /// can then make and take distribution connections. A failing source
    /// with a valid certificate in place stays ready, saying so.
    pub fn health(&self, now: i64) -> TlsHealth {
        let Inner {
            on_disk,
            last_error,
        } = self.with(|i| i.clone());
        let why = last_error.map(|e| format!(": {e}")).unwrap_or_default();
        match on_disk {
            None => TlsHealth {
                ready: false,
                message: format!("no distribution TLS certificate written yet{why}"),
            },
            Some(c) if now >= c.not_after => TlsHealth {
                ready: false,
                message: format!(
                    "the distribution TLS certificate expired at {} (unix){why}",
                    c.not_after
                ),
            },
            Some(c) if !why.is_empty() => TlsHealth {
                ready: true,
                message: format!(
                    "TLS failing, the certificate in place is valid until {} (unix){why}",
                    c.not_after
                ),
            },
            Some(_) => TlsHealth {
                ready: true,
                message: String::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(not_after: i64) -> CertInfo {
        CertInfo {
            not_before: 0,
            not_after,
            serial: "01".into(),
            is_ca: false,
            dns_names: vec![],
            public_key: vec![],
        }
    }

    #[test]
    fn ready_from_the_first_certificate_until_it_expires() {
        let s = TlsStatus::default();
        assert!(!s.health(10).ready);
        assert!(s.failed("CA unreadable".into()));
        assert!(!s.failed("CA unreadable".into()), "same error: not new");
        let h = s.health(10);
        assert!(!h.ready);
        assert!(h.message.contains("CA unreadable"), "{h:?}");
        s.written(cert(100));
        let h = s.health(10);
        assert!(h.ready && h.message.contains("valid until 100"), "{h:?}");
        assert!(s.succeeded());
        assert_eq!(s.health(10).message, "");
        let h = s.health(100);
        assert!(!h.ready && h.message.contains("expired at 100"), "{h:?}");
    }
}
