//! The text of the VM's `ssl_dist_optfile` (`erl -proto_dist inet_tls
//! -ssl_dist_optfile FILE`): one Erlang term, `[{server, Opts}, {client,
//! Opts}].`, read once by the VM at start (file:consult). Pure.
//!
//! What it says, and why (OTP's ssl, `inet_tls_dist`):
//! - both sides present this pod's certificate and verify the peer's
//!   chain against the cluster CA (`verify_peer`), and the server refuses
//!   a client without a certificate (`fail_if_no_peer_cert`): mutual TLS;
//! - the host name check is ssl's own, on the client: `inet_tls_dist`
//!   connects with `server_name_indication` set to the host part of the
//!   node name it dials (`chat-1`, `chat-1.xmpp-internal-svc`, ...), and
//!   with `verify_peer` ssl checks that name against the server
//!   certificate's DNS names. Every certificate the sidecar issues lists
//!   all of its pod's host forms, so any naming (short, long, FQDN) works;
//! - certfile and keyfile are the same file (certificate chain, then key):
//!   ssl caches PEM files by name and re-reads a changed one (see
//!   `rotate`), so one file means a certificate and its key always change
//!   together, never a new certificate with the old key;
//! - TLS 1.2, the version later OTP releases default distribution to
//!   (`inet_tls_dist:dist_defaults/1`), so OTP 25 behaves the same.

use std::path::Path;

/// The optfile for a VM that reads the certificate and key from `cert`
/// and the CA bundle from `ca`, both absolute paths as the VM's container
/// sees them.
pub fn render(cert: &Path, ca: &Path) -> String {
    let cert = erlang_string(&cert.to_string_lossy());
    let ca = erlang_string(&ca.to_string_lossy());
    let common = format!(
        "{{certfile, {cert}}},\n    {{keyfile, {cert}}},\n    {{cacertfile, {ca}}},\n    \
         {{verify, verify_peer}},\n    {{secure_renegotiate, true}},\n    \
         {{versions, ['tlsv1.2']}}"
    );
    format!(
        "%% Written by kube-epmd: Erlang distribution over mutual TLS.\n\
         %% erl -proto_dist inet_tls -ssl_dist_optfile <this file>\n\
         [{{server,\n  [{common},\n    {{fail_if_no_peer_cert, true}}]}},\n \
         {{client,\n  [{common}]}}].\n"
    )
}

/// An Erlang string literal: `"` and `\` escaped; anything else (paths
/// are UTF-8 here) as is.
fn erlang_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_and_client_verify_the_peer_with_one_cert_and_key_file() {
        let text = render(
            Path::new("/var/run/kube-epmd/dist.pem"),
            Path::new("/var/run/kube-epmd/dist-ca.pem"),
        );
        assert_eq!(
            text,
            r#"%% Written by kube-epmd: Erlang distribution over mutual TLS.
%% erl -proto_dist inet_tls -ssl_dist_optfile <this file>
[{server,
  [{certfile, "/var/run/kube-epmd/dist.pem"},
    {keyfile, "/var/run/kube-epmd/dist.pem"},
    {cacertfile, "/var/run/kube-epmd/dist-ca.pem"},
    {verify, verify_peer},
    {secure_renegotiate, true},
    {versions, ['tlsv1.2']},
    {fail_if_no_peer_cert, true}]},
 {client,
  [{certfile, "/var/run/kube-epmd/dist.pem"},
    {keyfile, "/var/run/kube-epmd/dist.pem"},
    {cacertfile, "/var/run/kube-epmd/dist-ca.pem"},
    {verify, verify_peer},
    {secure_renegotiate, true},
    {versions, ['tlsv1.2']}]}].
"#
        );
    }

    #[test]
    fn paths_are_escaped_as_erlang_strings() {
        let text = render(Path::new("/a\"b\\c/x.pem"), Path::new("/ca.pem"));
        assert!(text.contains(r#"{certfile, "/a\"b\\c/x.pem"}"#), "{text}");
    }
}
