//! Reading certificates (PEM) for what the sidecar acts on: validity,
//! serial, names, whether it is a CA, and the public key (to match a CA
//! key against its certificate). Pure; x509-parser does the parsing.

use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("no PEM certificate (\"BEGIN CERTIFICATE\") in it")]
    NoCertificate,
    #[error("cannot parse it: {0}")]
    Parse(String),
}

/// What the sidecar needs to know of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Lower-case hex, colon-free.
    pub serial: String,
    pub is_ca: bool,
    /// DNS subjectAltNames, in order.
    pub dns_names: Vec<String>,
    /// The subjectPublicKey bits (for EC the point, for RSA the
    /// RSAPublicKey DER).
    pub public_key: Vec<u8>,
}

/// The first certificate in a PEM bundle (a chain starts with its leaf).
pub fn first_cert(pem: &[u8]) -> Result<CertInfo, InspectError> {
    match certs(pem).next() {
        Some(c) => c.map(|(_, info)| info),
        None => Err(InspectError::NoCertificate),
    }
}

/// Every certificate in a PEM bundle, in order: its DER and what it says.
/// Empty when there is none; an entry that does not parse is an error.
pub fn all_certs(pem: &[u8]) -> Result<Vec<(Vec<u8>, CertInfo)>, InspectError> {
    certs(pem).collect()
}

/// The certificates of a PEM bundle, parsed one at a time (other blocks,
/// such as a key, skipped).
fn certs(pem: &[u8]) -> impl Iterator<Item = Result<(Vec<u8>, CertInfo), InspectError>> + '_ {
    Pem::iter_from_buffer(pem).filter_map(|block| {
        let block = match block {
            Ok(b) if b.label != "CERTIFICATE" => return None,
            Ok(b) => b,
            Err(e) => return Some(Err(InspectError::Parse(e.to_string()))),
        };
        Some(cert_info(&block).map(|info| (block.contents, info)))
    })
}

fn cert_info(block: &Pem) -> Result<CertInfo, InspectError> {
    let x = block
        .parse_x509()
        .map_err(|e| InspectError::Parse(e.to_string()))?;
    let dns_names = match x.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                GeneralName::DNSName(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(InspectError::Parse(e.to_string())),
    };
    Ok(CertInfo {
        not_before: x.validity().not_before.timestamp(),
        not_after: x.validity().not_after.timestamp(),
        serial: x.raw_serial().iter().map(|b| format!("{b:02x}")).collect(),
        is_ca: x.is_ca(),
        dns_names,
        public_key: x.public_key().subject_public_key.data.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_ca_and_refuses_what_is_not_a_certificate() {
        let (cert, _) = crate::tls::issue::tests::test_ca(1_900_000_000, 2_100_000_000);
        let info = first_cert(cert.as_bytes()).unwrap();
        assert_eq!(
            (info.not_before, info.not_after),
            (1_900_000_000, 2_100_000_000)
        );
        assert!(info.is_ca);
        assert!(!info.serial.is_empty());
        assert!(matches!(first_cert(b""), Err(InspectError::NoCertificate)));
        let key_only = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            first_cert(key_only.as_bytes()),
            Err(InspectError::NoCertificate)
        ));
        let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            first_cert(broken.as_bytes()),
            Err(InspectError::Parse(_))
        ));
    }
}
