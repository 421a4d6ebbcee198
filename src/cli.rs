//! Command line and environment, drop-in for OTP's `epmd`.
//!
//! `epmd` spells its long flags with a single dash (`-port 4369`, `-names`).
//! clap only knows `--long`, so [`normalize_epmd_flags`] rewrites the
//! single-dash spellings epmd accepts before clap sees them; the usual
//! `--long` forms work as well. Flags win over environment variables, as in
//! epmd.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};

/// epmd's single-dash long flags, rewritten to `--flag` for clap.
const EPMD_LONG_FLAGS: &[&str] = &[
    "-port",
    "-address",
    "-debug",
    "-daemon",
    "-relaxed_command_check",
    "-packet_timeout",
    "-delay_accept",
    "-delay_write",
    "-systemd",
    "-names",
    "-started",
    "-dump",
    "-kill",
    "-stop",
];

pub use crate::server::{DEFAULT_PORT, PortRange};

/// The distribution port window Kubernetes mode pins by default (ejabberd's
/// `FIREWALL_WINDOW` has no default upstream: the deploy sets it to this).
pub const DEFAULT_KUBE_DIST_RANGE: PortRange = PortRange {
    min: 4200,
    max: 4210,
};

#[derive(Debug, Parser)]
#[command(
    name = "kube-epmd",
    version,
    about = "Erlang Port Mapper Daemon, drop-in for OTP's epmd, with Kubernetes peer discovery",
    after_help = "epmd's single-dash spellings (-port, -names, -kill, ...) are accepted too."
)]
pub struct Args {
    #[command(flatten)]
    pub epmd: EpmdArgs,

    #[command(flatten)]
    pub kube: KubeArgs,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The flags OTP's epmd has, plus the few this daemon adds to plain mode.
#[derive(Debug, ClapArgs)]
pub struct EpmdArgs {
    /// Port to listen on (and to contact for client commands).
    #[arg(long, env = "ERL_EPMD_PORT", default_value_t = DEFAULT_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,

    /// Addresses to listen on, separated by commas or spaces. 127.0.0.1 and
    /// ::1 are always added; an empty list means 0.0.0.0 and ::.
    #[arg(long, env = "ERL_EPMD_ADDRESS")]
    pub address: Option<String>,

    /// More logging; repeat for more detail (as epmd's -d).
    #[arg(short = 'd', long = "debug", action = clap::ArgAction::Count)]
    pub debug: u8,

    /// Detach from the terminal and run in the background.
    #[arg(long)]
    pub daemon: bool,

    /// Allow `-kill` with live nodes and `-stop NAME`.
    /// Also set by the presence of ERL_EPMD_RELAXED_COMMAND_CHECK.
    #[arg(long = "relaxed_command_check", alias = "relaxed-command-check")]
    pub relaxed_command_check: bool,

    /// Seconds a non-registration connection may stay idle before it is closed.
    /// Counted as epmd does, in whole seconds checked once a second (every
    /// 5 s from 5 up): a client pausing exactly this long is kept.
    #[arg(long = "packet_timeout", alias = "packet-timeout", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub packet_timeout: u64,

    /// Test aid from epmd: sleep this many seconds before each accept.
    #[arg(long = "delay_accept", alias = "delay-accept", default_value_t = 0)]
    pub delay_accept: u64,

    /// Test aid from epmd: sleep this many seconds before each reply.
    #[arg(long = "delay_write", alias = "delay-write", default_value_t = 0)]
    pub delay_write: u64,

    /// Take the listening sockets from systemd socket activation (LISTEN_FDS).
    #[arg(long)]
    pub systemd: bool,

    /// Client: list the names registered with the running EPMD.
    #[arg(long, group = "client")]
    pub names: bool,

    /// Client: exit 0 if an EPMD answers, 1 otherwise, printing nothing.
    #[arg(long, group = "client")]
    pub started: bool,

    /// Client: print the running EPMD's registered and old names.
    #[arg(long, group = "client")]
    pub dump: bool,

    /// Client: ask the running EPMD to exit.
    #[arg(long, group = "client")]
    pub kill: bool,

    /// Client: forcibly unregister NAME (needs relaxed command check on the daemon).
    #[arg(long, value_name = "NAME", group = "client")]
    pub stop: Option<String>,

    /// Refuse registrations whose distribution port lies outside MIN-MAX
    /// ("off" disables; Kubernetes mode defaults to 4200-4210).
    #[arg(long, value_name = "MIN-MAX", env = "KUBE_EPMD_DIST_PORT_RANGE")]
    pub dist_port_range: Option<RangeSetting>,

    /// Most connections served at once. At the limit a new connection makes
    /// room by closing the oldest one still waiting for its request; if none
    /// is waiting (all are registrations or being answered) it is closed.
    #[arg(long, env = "KUBE_EPMD_MAX_CONNECTIONS", default_value_t = 65_536,
          value_parser = clap::value_parser!(u32).range(16..))]
    pub max_connections: u32,

    /// Log format.
    #[arg(long, env = "KUBE_EPMD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// The admin endpoint in Kubernetes mode: every address of both families
/// (bound with IPV6_V6ONLY off), so probes work on IPv4, IPv6 and
/// dual-stack clusters alike.
pub const DEFAULT_KUBE_ADMIN_ADDR: &str = "[::]:9090";
pub const DEFAULT_KUBE_ADMIN_PORT: u16 = 9090;

/// Kubernetes mode: watch peer pods and feed the VM's resolver.
#[derive(Debug, Clone, ClapArgs)]
pub struct KubeArgs {
    /// Run in Kubernetes mode (discovery, resolver files, admin endpoint).
    #[arg(long, env = "KUBE_EPMD_KUBERNETES")]
    pub kubernetes: bool,

    /// Namespace to watch (default: POD_NAMESPACE, else the service account's).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,

    /// Label selector of the peer pods, e.g. app=xmpp.
    #[arg(long, env = "KUBE_EPMD_SELECTOR")]
    pub selector: Option<String>,

    /// This pod's name.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// StatefulSet whose desired replica count is written to
    /// <output-dir>/replicas (watched by name only: RBAC may be limited to
    /// it with resourceNames).
    #[arg(long, env = "KUBE_EPMD_STATEFULSET")]
    pub statefulset: Option<String>,

    /// Cluster DNS domain used to build fully qualified peer names.
    #[arg(
        long,
        env = "KUBE_EPMD_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    pub cluster_domain: String,

    /// Directory for the generated hosts file and inetrc.
    #[arg(
        long,
        env = "KUBE_EPMD_OUTPUT_DIR",
        default_value = "/var/run/kube-epmd"
    )]
    pub output_dir: PathBuf,

    /// Address of the HTTP admin endpoint (/healthz, /readyz, /metrics, /peers).
    /// [default with --kubernetes: [::]:9090, IPv6 and IPv4 alike; plain
    /// mode: none]
    #[arg(
        long,
        env = "KUBE_EPMD_ADMIN_ADDR",
        default_value_if("kubernetes", "true", Some(DEFAULT_KUBE_ADMIN_ADDR))
    )]
    pub admin_addr: Option<SocketAddr>,

    /// In Kubernetes mode, let a local KILL_REQ stop the daemon (off: answer
    /// as epmd would, but keep running).
    #[arg(long, env = "KUBE_EPMD_ALLOW_KILL")]
    pub allow_kill: bool,
}

/// Erlang distribution over mutual TLS: the certificate for this pod's
/// VM, written with its ssl_dist_optfile into --output-dir.
#[derive(Debug, Clone, ClapArgs)]
pub struct TlsArgs {
    /// Issue the VM's distribution certificate from the cluster CA in DIR
    /// (ca.crt, and ca.key in PKCS#8 PEM: a Secret mounted into this
    /// container only). Writes <output-dir>/ssl_dist.conf, dist.pem and
    /// dist-ca.pem.
    #[arg(
        long,
        value_name = "DIR",
        env = "KUBE_EPMD_TLS_CA_DIR",
        conflicts_with = "tls_cert_dir"
    )]
    pub tls_ca_dir: Option<PathBuf>,

    /// Copy the certificate in DIR (cert-manager's tls.crt, tls.key,
    /// ca.crt) for the VM instead, and again whenever it changes.
    #[arg(long, value_name = "DIR", env = "KUBE_EPMD_TLS_CERT_DIR")]
    pub tls_cert_dir: Option<PathBuf>,

    /// Validity of each certificate issued from --tls-ca-dir: a number and
    /// a unit, s, m, h or d (10s to 397d).
    #[arg(long, value_name = "DURATION", env = "KUBE_EPMD_TLS_VALIDITY",
          default_value = "24h", value_parser = parse_validity)]
    pub tls_validity: Duration,

    /// Renew once this fraction of a certificate's validity has passed
    /// (0.1 to 0.9).
    #[arg(long, value_name = "FRACTION", env = "KUBE_EPMD_TLS_RENEW_FRACTION",
          default_value_t = 0.5, value_parser = parse_fraction)]
    pub tls_renew_fraction: f64,

    /// This pod's host name, the host part of its node names [default:
    /// --pod-name, which is a StatefulSet pod's host name].
    #[arg(long, value_name = "NAME", env = "KUBE_EPMD_TLS_HOSTNAME")]
    pub tls_hostname: Option<String>,

    /// The pod's subdomain (its StatefulSet's headless Service, e.g.
    /// xmpp-internal-svc): adds the long forms host.subdomain,
    /// host.subdomain.<namespace>, ….svc, ….svc.<cluster-domain>.
    #[arg(long, value_name = "NAME", env = "KUBE_EPMD_TLS_SUBDOMAIN")]
    pub tls_subdomain: Option<String>,
}

impl TlsArgs {
    /// Whether distribution TLS is asked for.
    pub fn enabled(&self) -> bool {
        self.tls_ca_dir.is_some() || self.tls_cert_dir.is_some()
    }

    /// The settings, or why they cannot be: `pod_name` and `namespace`
    /// (needed with a subdomain) come from the Kubernetes flags.
    pub fn settings(
        &self,
        pod_name: Option<&str>,
        namespace: Option<&str>,
        cluster_domain: &str,
        output_dir: &std::path::Path,
    ) -> Result<Option<crate::tls::Settings>, String> {
        use crate::tls::Source;
        let source = match (&self.tls_ca_dir, &self.tls_cert_dir) {
            (Some(d), None) => Source::CaDir(d.clone()),
            (None, Some(d)) => Source::CertDir(d.clone()),
            (Some(_), Some(_)) => {
                return Err("--tls-ca-dir and --tls-cert-dir exclude each other".into());
            }
            (None, None) => {
                if self.tls_hostname.is_some() || self.tls_subdomain.is_some() {
                    return Err("--tls-hostname and --tls-subdomain need --tls-ca-dir \
                                (or --tls-cert-dir)"
                        .into());
                }
                return Ok(None);
            }
        };
        let nonempty = |o: Option<&str>| {
            o.map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let hostname = nonempty(self.tls_hostname.as_deref())
            .or_else(|| nonempty(pod_name))
            .ok_or_else(|| {
                "distribution TLS needs this pod's host name: set --tls-hostname \
                 (KUBE_EPMD_TLS_HOSTNAME) or --pod-name (POD_NAME)"
                    .to_string()
            })?;
        let subdomain = nonempty(self.tls_subdomain.as_deref());
        let namespace = nonempty(namespace);
        for (what, v) in [
            ("--tls-hostname", Some(&hostname)),
            ("--tls-subdomain", subdomain.as_ref()),
            ("--namespace", namespace.as_ref()),
        ] {
            if let Some(v) = v
                && (!crate::peers::is_dns_name(v) || v.contains('.'))
            {
                return Err(format!(
                    "{what} {v:?} is not a DNS label (lower-case letters, digits, '-')"
                ));
            }
        }
        let domain = cluster_domain.trim_matches('.');
        if !domain.is_empty() && !crate::peers::is_dns_name(domain) {
            return Err(format!(
                "--cluster-domain {cluster_domain:?} is not a DNS name"
            ));
        }
        let names = match (&subdomain, &namespace) {
            (Some(_), None) => {
                return Err(
                    "--tls-subdomain needs the namespace for the long names: set \
                            --namespace (POD_NAMESPACE)"
                        .into(),
                );
            }
            (sub, ns) => crate::tls::pod_names(
                &hostname,
                sub.as_deref(),
                ns.as_deref().unwrap_or(""),
                cluster_domain,
            ),
        };
        if matches!(source, Source::CertDir(_)) && self.tls_validity != DEFAULT_TLS_VALIDITY {
            return Err(
                "--tls-validity applies to --tls-ca-dir: with --tls-cert-dir the \
                        validity is cert-manager's (the Certificate's duration)"
                    .into(),
            );
        }
        Ok(Some(crate::tls::Settings {
            source,
            names,
            validity: self.tls_validity,
            renew_fraction: self.tls_renew_fraction,
            output_dir: output_dir.to_path_buf(),
        }))
    }
}

pub const DEFAULT_TLS_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// `10s`, `90m`, `24h`, `30d`: one number and one unit.
pub fn parse_validity(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit: write e.g. 24h (s, m, h or d)"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: write e.g. 24h (s, m, h or d)"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .ok_or_else(|| format!("{s:?} is not a duration: write e.g. 24h (s, m, h or d)"))?;
    if !(10..=397 * 86_400).contains(&secs) {
        return Err(format!("{s:?} is out of range: 10s to 397d"));
    }
    Ok(Duration::from_secs(secs))
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let f: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number (e.g. 0.5)"))?;
    if !(0.1..=0.9).contains(&f) {
        return Err(format!("{s} is out of range: 0.1 to 0.9"));
    }
    Ok(f)
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the peer table of a running kube-epmd (from its admin endpoint).
    Peers {
        /// Admin endpoint to ask.
        #[arg(
            long,
            env = "KUBE_EPMD_ADMIN_URL",
            default_value = "http://127.0.0.1:9090"
        )]
        url: String,
        /// Print JSON instead of one "name ip..." line per peer.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// `--dist-port-range` as given: a range or explicitly off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSetting {
    Off,
    Range(PortRange),
}

impl std::str::FromStr for RangeSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") || s.eq_ignore_ascii_case("none") {
            return Ok(RangeSetting::Off);
        }
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("expected MIN-MAX (e.g. 4200-4210) or off, got {s:?}"))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{v:?} is not a port number (1-65535)"))
        };
        let (min, max) = (parse(a)?, parse(b)?);
        if min > max {
            return Err(format!(
                "range {min}-{max} is empty: MIN must not exceed MAX"
            ));
        }
        Ok(RangeSetting::Range(PortRange { min, max }))
    }
}

/// A client command given on the command line, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCommand {
    Names,
    Started,
    Dump,
    Kill,
    Stop(String),
}

impl Args {
    /// Parse a full argv (program name first), accepting epmd's spellings.
    /// An argument that is not UTF-8 is an error naming it.
    pub fn parse_from_epmd<I, T>(argv: I) -> Result<Args, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString>,
    {
        let argv = argv
            .into_iter()
            .map(|a| {
                a.into().into_string().map_err(|bad| {
                    clap::Error::raw(
                        clap::error::ErrorKind::InvalidUtf8,
                        format!("argument {bad:?} is not valid UTF-8\n"),
                    )
                })
            })
            .collect::<Result<Vec<String>, _>>()?;
        Args::try_parse_from(normalize_epmd_flags(argv.into_iter()))
    }

    pub fn client_command(&self) -> Option<ClientCommand> {
        let e = &self.epmd;
        if e.names {
            Some(ClientCommand::Names)
        } else if e.started {
            Some(ClientCommand::Started)
        } else if e.dump {
            Some(ClientCommand::Dump)
        } else if e.kill {
            Some(ClientCommand::Kill)
        } else {
            e.stop.clone().map(ClientCommand::Stop)
        }
    }

    /// Relaxed command check from the flag or, as epmd does, from the mere
    /// presence of ERL_EPMD_RELAXED_COMMAND_CHECK.
    pub fn relaxed(&self) -> bool {
        self.epmd.relaxed_command_check
            || std::env::var_os("ERL_EPMD_RELAXED_COMMAND_CHECK").is_some()
    }

    /// The distribution port range in force: explicit setting, else the
    /// Kubernetes default, else none.
    pub fn dist_port_range(&self) -> Option<PortRange> {
        match self.epmd.dist_port_range {
            Some(RangeSetting::Off) => None,
            Some(RangeSetting::Range(r)) => Some(r),
            None if self.kube.kubernetes => Some(DEFAULT_KUBE_DIST_RANGE),
            None => None,
        }
    }

    pub fn packet_timeout(&self) -> Duration {
        Duration::from_secs(self.epmd.packet_timeout)
    }

    /// Listen addresses as epmd computes them from `-address`.
    pub fn listen_addrs(&self) -> Result<Vec<IpAddr>, String> {
        parse_address_list(self.epmd.address.as_deref())
    }
}

/// epmd flags that take a value: the token after them is never a flag.
const EPMD_VALUE_FLAGS: &[&str] = &[
    "-port",
    "-address",
    "-packet_timeout",
    "-delay_accept",
    "-delay_write",
    "-stop",
];

/// Rewrite `-port` → `--port` and friends; everything else passes through,
/// except that an unknown single-dash word (`-bogus`) is reported whole
/// rather than as clap's "unexpected argument '-b'".
pub fn normalize_epmd_flags(argv: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut value_next = false;
    for a in argv {
        let is_value = std::mem::take(&mut value_next);
        if is_value || out.is_empty() {
            out.push(a);
        } else if EPMD_LONG_FLAGS.contains(&a.as_str()) {
            value_next = EPMD_VALUE_FLAGS.contains(&a.as_str());
            out.push(format!("-{a}"));
        } else if a.len() > 2
            && a.starts_with('-')
            && !a.starts_with("--")
            && !a[1..].bytes().all(|b| b == b'd')
        {
            // clap reports the whole token as an unknown long flag.
            out.push(format!("-{a}"));
        } else {
            out.push(a);
        }
    }
    out
}

/// epmd's `-address` rule: a list split on commas and spaces; loopback
/// (127.0.0.1 and ::1) is always listened on; no list (or an empty one)
/// means every address (0.0.0.0 and ::).
pub fn parse_address_list(list: Option<&str>) -> Result<Vec<IpAddr>, String> {
    let tokens: Vec<&str> = list
        .unwrap_or("")
        .split([',', ' '])
        .filter(|t| !t.is_empty())
        .collect();
    if tokens.is_empty() {
        return Ok(vec![
            IpAddr::from([0, 0, 0, 0]),
            IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 0]),
        ]);
    }
    let mut addrs = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
    ];
    for t in tokens {
        let ip: IpAddr = t
            .parse()
            .map_err(|_| format!("cannot parse IP address {t:?} in -address"))?;
        // Every given address, 127.0.0.2 too (epmd adds loopback only when
        // it is not given): only exact repeats are dropped.
        if !addrs.contains(&ip) {
            addrs.push(ip);
        }
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::parse_from_epmd(std::iter::once("kube-epmd").chain(args.iter().copied()))
    }

    #[test]
    fn epmd_single_dash_flags_parse() {
        let a = parse(&["-port", "4370", "-d", "-d", "-relaxed_command_check"]).unwrap();
        assert_eq!(a.epmd.port, 4370);
        assert_eq!(a.epmd.debug, 2);
        assert!(a.relaxed());
        let a = parse(&["-stop", "foo"]).unwrap();
        assert_eq!(a.client_command(), Some(ClientCommand::Stop("foo".into())));
        let a = parse(&["--names"]).unwrap();
        assert_eq!(a.client_command(), Some(ClientCommand::Names));
    }

    #[test]
    fn bad_flags_are_errors() {
        assert!(parse(&["-port", "0"]).is_err());
        assert!(parse(&["-port", "abc"]).is_err());
        assert!(parse(&["-bogus"]).is_err());
        assert!(parse(&["-names", "-kill"]).is_err());
        assert!(parse(&["--dist-port-range", "4210-4200"]).is_err());
        assert!(parse(&["--packet_timeout", "0"]).is_err());
    }

    #[test]
    fn dist_range_defaults_follow_mode() {
        assert_eq!(parse(&[]).unwrap().dist_port_range(), None);
        let k = parse(&["--kubernetes"]).unwrap();
        assert_eq!(k.dist_port_range(), Some(DEFAULT_KUBE_DIST_RANGE));
        let k = parse(&["--kubernetes", "--dist-port-range", "off"]).unwrap();
        assert_eq!(k.dist_port_range(), None);
        let p = parse(&["--dist-port-range", "9000-9001"]).unwrap();
        assert_eq!(
            p.dist_port_range(),
            Some(PortRange {
                min: 9000,
                max: 9001
            })
        );
    }

    #[test]
    fn tls_flags_are_checked_strictly() {
        assert_eq!(parse_validity("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_validity("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_validity("30d"), Ok(Duration::from_secs(30 * 86_400)));
        for bad in ["", "24", "h", "9s", "398d", "1.5h", "-1h", "24x", "1h30m"] {
            assert!(parse_validity(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&["--tls-ca-dir", "/a", "--tls-cert-dir", "/b"]).is_err());
        assert!(parse(&["--tls-renew-fraction", "0.95"]).is_err());
        assert!(parse(&["--tls-validity", "5s"]).is_err());
        let out = std::path::Path::new("/out");
        let settings = |args: &[&str], pod: Option<&str>, ns: Option<&str>| {
            parse(args)
                .unwrap()
                .tls
                .settings(pod, ns, "cluster.local", out)
        };
        assert_eq!(settings(&[], None, None), Ok(None));
        assert!(settings(&["--tls-hostname", "x"], None, None).is_err());
        let e = settings(&["--tls-ca-dir", "/ca"], None, None).unwrap_err();
        assert!(e.contains("--tls-hostname"), "{e}");
        let s = settings(
            &["--tls-ca-dir", "/ca", "--tls-subdomain", "svc"],
            Some("chat-0"),
            Some("ns"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            s.names[..2],
            ["chat-0".to_string(), "chat-0.svc".to_string()]
        );
        assert_eq!(s.names.len(), 5);
        assert_eq!(s.output_dir, out);
        let e = settings(
            &["--tls-ca-dir", "/ca", "--tls-subdomain", "svc"],
            Some("chat-0"),
            None,
        )
        .unwrap_err();
        assert!(e.contains("namespace"), "{e}");
        let e = settings(
            &["--tls-ca-dir", "/ca", "--tls-hostname", "Chat_0"],
            None,
            None,
        )
        .unwrap_err();
        assert!(e.contains("DNS label"), "{e}");
        let e = settings(
            &["--tls-cert-dir", "/cm", "--tls-validity", "1h"],
            Some("a"),
            None,
        )
        .unwrap_err();
        assert!(e.contains("cert-manager"), "{e}");
    }

    #[test]
    fn address_list_follows_epmd() {
        let all = parse_address_list(None).unwrap();
        assert!(all.iter().all(|a| a.is_unspecified()));
        let l = parse_address_list(Some("10.0.0.5, 127.0.0.1,::1")).unwrap();
        assert_eq!(
            l,
            vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
                IpAddr::from([10, 0, 0, 5]),
            ]
        );
        // A loopback-range address other than 127.0.0.1 is listened on too.
        let l = parse_address_list(Some("127.0.0.2")).unwrap();
        assert!(l.contains(&IpAddr::from([127, 0, 0, 2])), "{l:?}");
        assert!(parse_address_list(Some("nonsense")).is_err());
    }
}
