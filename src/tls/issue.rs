//! Issuing this pod's distribution certificate: a cluster CA (certificate
//! and key, PEM) plus the pod's node host names and a validity give a
//! fresh key and a leaf certificate signed by the CA. Pure: PEM text in,
//! PEM text out, the clock passed in; no I/O. X.509 is rcgen's (writing)
//! and x509-parser's (reading the CA), none is hand-written here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use super::inspect::{self, CertInfo, InspectError};

/// How far back a leaf's notBefore is set, for clocks that lag this one
/// (a peer whose clock is behind would otherwise refuse a certificate
/// "not yet valid" for its first seconds).
pub const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("the CA certificate: {0}")]
    CaCert(#[source] InspectError),
    #[error(
        "the CA key is not a PKCS#8 PEM private key (\"BEGIN PRIVATE KEY\"; convert an RSA or \
         EC key with `openssl pkcs8 -topk8 -nocrypt -in ca.key -out ca.pkcs8.key`): {0}"
    )]
    CaKey(#[source] rcgen::Error),
    #[error(
        "the CA key belongs to no certificate in the CA file (no public key there is the key's)"
    )]
    KeyMismatch,
    #[error("the CA certificate is not a CA (basicConstraints CA:TRUE is missing)")]
    NotCa,
    #[error("the CA certificate expired at {0} (unix time); renew the CA Secret")]
    CaExpired(i64),
    #[error("the CA certificate is not valid before {0} (unix time); check the clock")]
    CaNotYetValid(i64),
    #[error("no host name to put in the certificate")]
    NoNames,
    #[error("{0:?} is not a DNS name for a certificate")]
    BadName(String),
    #[error("cannot build the certificate: {0}")]
    Build(String),
}

/// A cluster CA ready to sign.
pub struct Ca {
    /// The CA file as given (PEM, one or more CAs), for the VM's
    /// cacertfile.
    pub cert_pem: String,
    /// The signing CA's (the certificate of the key).
    pub info: CertInfo,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("info", &self.info).finish()
    }
}

impl Ca {
    /// Parse the CA bundle `cert_pem` and the signing key: the signing CA
    /// is the bundle's certificate whose public key is the key's, and it
    /// must be a CA. Every certificate of the bundle stays trusted (the
    /// VM's cacertfile is the whole bundle): that is how a CA is rotated
    /// without a gap (README, "Rotating the CA"). Validity is checked
    /// when issuing, against the clock then.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, IssueError> {
        let certs = inspect::all_certs(cert_pem.as_bytes()).map_err(IssueError::CaCert)?;
        if certs.is_empty() {
            return Err(IssueError::CaCert(InspectError::NoCertificate));
        }
        let key = KeyPair::from_pem(key_pem).map_err(IssueError::CaKey)?;
        let (der, info) = certs
            .into_iter()
            .find(|(_, info)| info.public_key.as_slice() == key.public_key_raw())
            .ok_or(IssueError::KeyMismatch)?;
        if !info.is_ca {
            return Err(IssueError::NotCa);
        }
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(der), key)
            .map_err(|e| IssueError::CaCert(InspectError::Parse(e.to_string())))?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            info,
            issuer,
        })
    }

    /// What this CA was read from, to notice a change: the CA file and
    /// the signing key's certificate (its public key).
    pub fn source_id(&self) -> String {
        let key: String = self
            .info
            .public_key
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{key}\n{}", self.cert_pem)
    }

    /// Whether the CA can sign at `now`.
    pub fn check_valid_at(&self, now: SystemTime) -> Result<(), IssueError> {
        let t = unix(now);
        if t >= self.info.not_after {
            return Err(IssueError::CaExpired(self.info.not_after));
        }
        if t < self.info.not_before {
            return Err(IssueError::CaNotYetValid(self.info.not_before));
        }
        Ok(())
    }
}

/// A freshly issued certificate and its key.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    /// PKCS#8 PEM ("BEGIN PRIVATE KEY"), which OTP's ssl reads.
    pub key_pem: String,
    pub info: CertInfo,
    /// True when the CA expires before `now + validity`: the leaf ends
    /// with the CA.
    pub capped_by_ca: bool,
}

/// Issue a leaf for `names` (DNS subjectAltNames, the first also the
/// subject CN) valid from `now - BACKDATE` to `now + validity` (or the
/// CA's notAfter if sooner), for both TLS server and client use: a node
/// accepts connections and makes them. A new P-256 key each time; the
/// serial is rcgen's, derived from that key, so it differs every time.
pub fn issue(
    ca: &Ca,
    names: &[String],
    now: SystemTime,
    validity: Duration,
) -> Result<Leaf, IssueError> {
    ca.check_valid_at(now)?;
    let first = names.first().ok_or(IssueError::NoNames)?;
    let mut sans = Vec::with_capacity(names.len());
    for n in names {
        if !crate::peers::is_dns_name(n) {
            return Err(IssueError::BadName(n.clone()));
        }
        let ia5 = n
            .clone()
            .try_into()
            .map_err(|_| IssueError::BadName(n.clone()))?;
        sans.push(SanType::DnsName(ia5));
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, first.as_str());
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let wanted_end = unix(now).saturating_add(validity.as_secs() as i64);
    let capped = wanted_end > ca.info.not_after;
    let end = wanted_end.min(ca.info.not_after);
    let start = unix(now)
        .saturating_sub(BACKDATE.as_secs() as i64)
        .max(ca.info.not_before);
    params.not_before = datetime(start)?;
    params.not_after = datetime(end)?;
    let key = KeyPair::generate().map_err(|e| IssueError::Build(e.to_string()))?;
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(|e| IssueError::Build(e.to_string()))?;
    let cert_pem = cert.pem();
    let info =
        inspect::first_cert(cert_pem.as_bytes()).map_err(|e| IssueError::Build(e.to_string()))?;
    Ok(Leaf {
        cert_pem,
        key_pem: key.serialize_pem(),
        info,
        capped_by_ca: capped,
    })
}

/// Seconds since the Unix epoch (negative before it).
pub fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

fn datetime(secs: i64) -> Result<OffsetDateTime, IssueError> {
    OffsetDateTime::from_unix_timestamp(secs).map_err(|e| IssueError::Build(e.to_string()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Whether the first certificate of `cert_pem` names the first of
    /// `ca_pem` as its issuer and carries its signature.
    pub(crate) fn signed_by(cert_pem: &str, ca_pem: &str) -> bool {
        let first = |pem: &str| {
            x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
                .next()
                .unwrap()
                .unwrap()
        };
        let (cert, ca) = (first(cert_pem), first(ca_pem));
        let (x, ca_x) = (cert.parse_x509().unwrap(), ca.parse_x509().unwrap());
        x.issuer() == ca_x.subject() && x.verify_signature(Some(ca_x.public_key())).is_ok()
    }

    /// A self-signed CA valid from `from` to `to` (unix seconds).
    pub(crate) fn test_ca(from: i64, to: i64) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, "kube-epmd test CA");
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = OffsetDateTime::from_unix_timestamp(from).unwrap();
        p.not_after = OffsetDateTime::from_unix_timestamp(to).unwrap();
        let cert = p.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn names() -> Vec<String> {
        ["chat-0", "chat-0.svc", "chat-0.svc.ns"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn a_leaf_has_every_name_both_usages_and_the_validity_asked() {
        let now = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let (cert, key) = test_ca(1_900_000_000, 2_100_000_000);
        let ca = Ca::from_pem(&cert, &key).unwrap();
        let leaf = issue(&ca, &names(), now, Duration::from_secs(3600)).unwrap();
        assert_eq!(leaf.info.not_after, 2_000_003_600);
        assert_eq!(leaf.info.not_before, 2_000_000_000 - 60);
        assert_eq!(leaf.info.dns_names, names());
        assert!(!leaf.info.is_ca);
        assert!(!leaf.capped_by_ca);
        assert!(leaf.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let (_, x) = x509_parser::pem::parse_x509_pem(leaf.cert_pem.as_bytes()).unwrap();
        let x = x.parse_x509().unwrap();
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert_eq!(
            x.issuer().to_string(),
            "CN=kube-epmd test CA",
            "signed by the CA"
        );
        // A new key and serial every time.
        let again = issue(&ca, &names(), now, Duration::from_secs(3600)).unwrap();
        assert_ne!(again.info.serial, leaf.info.serial);
        assert_ne!(again.key_pem, leaf.key_pem);
    }

    #[test]
    fn a_leaf_ends_with_its_ca() {
        let now = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let (cert, key) = test_ca(1_900_000_000, 2_000_000_100);
        let ca = Ca::from_pem(&cert, &key).unwrap();
        let leaf = issue(&ca, &names(), now, Duration::from_secs(3600)).unwrap();
        assert_eq!(leaf.info.not_after, 2_000_000_100);
        assert!(leaf.capped_by_ca);
    }

    #[test]
    fn an_expired_or_mismatched_ca_is_a_clear_error() {
        let now = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let (cert, key) = test_ca(1_800_000_000, 1_900_000_000);
        let ca = Ca::from_pem(&cert, &key).unwrap();
        let e = issue(&ca, &names(), now, Duration::from_secs(60)).unwrap_err();
        assert!(matches!(e, IssueError::CaExpired(1_900_000_000)), "{e}");
        assert!(e.to_string().contains("expired at 1900000000"), "{e}");
        let (_, other_key) = test_ca(1_800_000_000, 2_100_000_000);
        let e = Ca::from_pem(&cert, &other_key).unwrap_err();
        assert!(matches!(e, IssueError::KeyMismatch), "{e}");
        let e = Ca::from_pem(&cert, "not a key").unwrap_err();
        assert!(e.to_string().contains("PKCS#8"), "{e}");
        let e = Ca::from_pem("garbage", &key).unwrap_err();
        assert!(matches!(e, IssueError::CaCert(_)), "{e}");
    }

    /// A CA rotation's bundle: old and new CA in one file, in either
    /// order; the key picks the signer, and the bundle is what is trusted.
    #[test]
    fn a_bundle_of_cas_signs_with_the_keys_certificate() {
        let now = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let (old, old_key) = test_ca(1_900_000_000, 2_100_000_000);
        let (new, new_key) = test_ca(1_950_000_000, 2_200_000_000);
        let bundle = format!("{old}{new}");
        for (key, signer) in [(&old_key, &old), (&new_key, &new)] {
            let ca = Ca::from_pem(&bundle, key).unwrap();
            assert_eq!(ca.cert_pem, bundle, "the whole bundle is trusted");
            let want = inspect::first_cert(signer.as_bytes()).unwrap();
            assert_eq!(ca.info, want, "the key's certificate signs");
            let leaf = issue(&ca, &names(), now, Duration::from_secs(3600)).unwrap();
            assert!(signed_by(&leaf.cert_pem, signer), "signed by the key's CA");
        }
        let (_, stranger_key) = test_ca(1_900_000_000, 2_100_000_000);
        let e = Ca::from_pem(&bundle, &stranger_key).unwrap_err();
        assert!(matches!(e, IssueError::KeyMismatch), "{e}");
    }

    #[test]
    fn a_leaf_is_not_a_ca_and_a_bad_name_is_refused() {
        let now = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let (cert, key) = test_ca(1_900_000_000, 2_100_000_000);
        let ca = Ca::from_pem(&cert, &key).unwrap();
        let leaf = issue(&ca, &names(), now, Duration::from_secs(60)).unwrap();
        let e = Ca::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap_err();
        assert!(matches!(e, IssueError::NotCa), "{e}");
        let e = issue(&ca, &["Bad Name".into()], now, Duration::from_secs(60)).unwrap_err();
        assert!(matches!(e, IssueError::BadName(_)), "{e}");
        let e = issue(&ca, &[], now, Duration::from_secs(60)).unwrap_err();
        assert!(matches!(e, IssueError::NoNames), "{e}");
    }
}
