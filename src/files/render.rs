//! What kube-epmd writes for the Erlang VM, as text: the hosts file in
//! /etc/hosts format built from the peer table, and the inetrc that makes
//! the VM read it. Pure: bytes out, no I/O (see `disk` for that).

use std::fmt::Write as _;
use std::path::Path;

use crate::peers::PeerTable;

/// Loopback lines every hosts file starts with, as in /etc/hosts: the VM
/// looks `localhost` up in this file first (`{lookup, [file, native]}`).
const LOOPBACK: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// The hosts file text for `table`: loopback lines, then one line per
/// peer address with every name form, in (namespace, pod) order, so equal
/// tables give byte-identical files.
pub fn render_hosts(table: &PeerTable, cluster_domain: &str) -> String {
    let mut out = String::with_capacity(64 + table.len() * 200);
    out.push_str("# Written by kube-epmd from the Kubernetes API; replaced as pods change.\n");
    out.push_str(LOOPBACK);
    let mut names = String::new();
    for peer in table.iter() {
        names.clear();
        peer.write_names(cluster_domain, &mut names);
        for ip in &peer.ips {
            // Writing into a String cannot fail.
            let _ = write!(out, "{ip}\t");
            out.push_str(&names);
            out.push('\n');
        }
    }
    out
}

/// The inetrc text: read peers from `hosts` first, then the system
/// resolver (so anything else still resolves as before).
pub fn render_inetrc(hosts: &Path) -> String {
    format!(
        "%% Written by kube-epmd: resolve peer pods from the hosts file it keeps current.\n\
         {{hosts_file, \"{}\"}}.\n\
         {{lookup, [file, native]}}.\n",
        erlang_string_escape(&hosts.to_string_lossy())
    )
}

fn erlang_string_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn pod(name: &str, ips: &[&str]) -> Pod {
        crate::peers::tests::pod(name, ips, "Running", true)
    }

    #[test]
    fn hosts_text_is_deterministic_with_all_names_per_address() {
        let mut a = PeerTable::default();
        a.apply(&pod("chat-1", &["10.0.0.2", "fd00::2"]));
        a.apply(&pod("chat-0", &["10.0.0.1"]));
        let mut b = PeerTable::default();
        b.apply(&pod("chat-0", &["10.0.0.1"]));
        b.apply(&pod("chat-1", &["10.0.0.2", "fd00::2"]));
        let text = render_hosts(&a, "cluster.local");
        assert_eq!(text, render_hosts(&b, "cluster.local"));
        let lines: Vec<_> = text.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "127.0.0.1\tlocalhost",
                "::1\tlocalhost ip6-localhost ip6-loopback",
                "10.0.0.1\tchat-0 chat-0.xmpp-internal-svc chat-0.xmpp-internal-svc.chat chat-0.xmpp-internal-svc.chat.svc chat-0.xmpp-internal-svc.chat.svc.cluster.local",
                "10.0.0.2\tchat-1 chat-1.xmpp-internal-svc chat-1.xmpp-internal-svc.chat chat-1.xmpp-internal-svc.chat.svc chat-1.xmpp-internal-svc.chat.svc.cluster.local",
                "fd00::2\tchat-1 chat-1.xmpp-internal-svc chat-1.xmpp-internal-svc.chat chat-1.xmpp-internal-svc.chat.svc chat-1.xmpp-internal-svc.chat.svc.cluster.local",
            ]
        );
    }

    #[test]
    fn inetrc_points_at_the_hosts_file() {
        assert_eq!(
            render_inetrc(Path::new("/run/k\"e/hosts")),
            "%% Written by kube-epmd: resolve peer pods from the hosts file it keeps current.\n\
             {hosts_file, \"/run/k\\\"e/hosts\"}.\n{lookup, [file, native]}.\n"
        );
    }
}
