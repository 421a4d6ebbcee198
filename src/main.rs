//! The binary's edge: parse the command line, run a client command or the
//! daemon, and turn errors into messages and exit codes.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kube_epmd::admin::{self, AdminState};
use kube_epmd::background::{Background, SpawnError};
use kube_epmd::cli::{Args, Command, DEFAULT_KUBE_ADMIN_PORT, KubeArgs};
use kube_epmd::kubernetes::{self, Settings};
use kube_epmd::metrics::Metrics;
use kube_epmd::server::{self, BindError, Config, KillPolicy, Shared};
use kube_epmd::{admin_client, client, logging, process, tls};
use tokio::sync::watch;
use tracing::{info, warn};

fn main() -> ExitCode {
    // args_os: a non-UTF-8 argument is a clap error (message, exit 2), not
    // the panic std::env::args() gives.
    let args = match Args::parse_from_epmd(std::env::args_os()) {
        Ok(a) => a,
        // clap prints the problem (or --help) and picks the exit code.
        Err(e) => e.exit(),
    };
    if let Some(Command::Peers { url, json }) = &args.command {
        let code = admin_client::run(url, *json, &mut std::io::stdout(), &mut std::io::stderr());
        return ExitCode::from(code as u8);
    }
    if let Some(cmd) = args.client_command() {
        let code = client::run(
            &cmd,
            args.epmd.port,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        );
        return ExitCode::from(code as u8);
    }
    match run_daemon(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kube-epmd: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run_daemon(args: Args) -> anyhow::Result<()> {
    let addrs = args.listen_addrs().map_err(anyhow::Error::msg)?;
    if args.epmd.daemon {
        process::daemonize().context("cannot detach as a daemon")?;
    }
    logging::init(args.epmd.log_format, args.epmd.debug);
    // Keep headroom for listeners, the admin server, files and the API
    // client, so the limit below is reached before descriptors run out.
    const SPARE_FDS: u64 = 64;
    let mut max_conn = args.epmd.max_connections as usize;
    match process::raise_nofile(max_conn as u64 + SPARE_FDS) {
        Ok(n) if n < max_conn as u64 + SPARE_FDS => {
            max_conn = n.saturating_sub(SPARE_FDS).max(16) as usize;
            // Expected wherever the hard limit is below the default: say it
            // once, quietly; the limit in force is what matters.
            info!(
                nofile = n,
                max_connections = max_conn,
                "connection limit lowered to fit the descriptor limit"
            );
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot raise RLIMIT_NOFILE"),
    }
    let config = Config {
        port: args.epmd.port,
        packet_timeout: args.packet_timeout(),
        delay_accept: Duration::from_secs(args.epmd.delay_accept),
        delay_write: Duration::from_secs(args.epmd.delay_write),
        relaxed: args.relaxed(),
        kill: if args.kube.kubernetes && !args.kube.allow_kill {
            KillPolicy::Survive
        } else {
            KillPolicy::Epmd
        },
        dist_range: args.dist_port_range(),
        max_connections: max_conn,
        debug: args.epmd.debug > 0,
    };
    // systemd's sockets before the runtime: LISTEN_FDS start at fd 3,
    // where the runtime would otherwise open its own descriptors.
    let inherited = if args.epmd.systemd {
        Some(server::from_systemd()?)
    } else {
        None
    };
    // One thread for EPMD: requests are answered inline by the accept loop
    // (see server::connection), so worker threads would only add stacks,
    // malloc arenas and wake-ups. Blocking work must go to spawn_blocking.
    // Kubernetes work and the admin endpoint get a second thread of their
    // own (see `background`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async_main(args, addrs, config, inherited))
}

/// The EPMD listening sockets, or None when the port is taken in plain mode
/// (epmd exits 0 there: `erl` starts one on every boot).
fn listen(
    args: &Args,
    addrs: &[std::net::IpAddr],
    port: u16,
) -> anyhow::Result<Option<Vec<std::net::TcpListener>>> {
    match server::bind_all(addrs, port) {
        Ok(l) => Ok(Some(l)),
        Err(e @ BindError::InUse { .. }) if !args.kube.kubernetes => {
            warn!("{e}; exiting");
            Ok(None)
        }
        Err(e @ BindError::InUse { addr, port }) => {
            // A sidecar that cannot hold 4369 is a failure the pod must
            // show, not a clean exit: say who holds it and how to keep it
            // free.
            Err(anyhow::Error::new(e).context(port_taken(addr, port)))
        }
        Err(e) => Err(e.into()),
    }
}

async fn async_main(
    args: Args,
    addrs: Vec<std::net::IpAddr>,
    config: Config,
    inherited: Option<Vec<std::net::TcpListener>>,
) -> anyhow::Result<()> {
    // Handlers first: once the port accepts connections a SIGTERM must mean
    // a clean shutdown, not the default (death).
    let signalled = on_signal();
    let listeners = match inherited {
        Some(l) => l,
        None => match listen(&args, &addrs, config.port)? {
            Some(l) => l,
            None => return Ok(()),
        },
    };
    let metrics = Arc::new(Metrics::default());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Discovery, its files and the admin endpoint run on a thread and
    // runtime of their own (see `background`). Set up before EPMD serves:
    // the inetrc must be in place before anything can report ready, and a
    // configuration error should stop us early.
    let background = start_background(&args, metrics.clone(), shutdown_rx.clone()).await?;
    tokio::spawn(async move {
        signalled.await;
        let _ = shutdown_tx.send(true);
    });
    info!(
        port = config.port,
        addresses = ?addrs,
        dist_port_range = ?config.dist_range.map(|r| r.to_string()),
        "kube-epmd listening"
    );
    server::serve(listeners, Shared::new(config, metrics), shutdown_rx).await;
    // The background thread ends with the process; nothing there holds
    // state a clean exit must save (files are replaced atomically).
    drop(background);
    info!("kube-epmd stopped");
    Ok(())
}

/// Why Kubernetes mode cannot start when the EPMD port is taken, naming the
/// holder (asked with NAMES) and how to keep it from starting.
fn port_taken(addr: std::net::IpAddr, port: u16) -> String {
    let target = match addr {
        a if a.is_unspecified() && a.is_ipv6() => std::net::Ipv6Addr::LOCALHOST.into(),
        a if a.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        a => a,
    };
    let holder = client::describe_holder((target, port).into(), Duration::from_secs(2));
    format!(
        "Kubernetes mode needs the EPMD port for itself, but another process holds it: \
         {holder}. That is usually OTP's epmd, which `erl` starts unless told \
         `-start_epmd false`: add that flag to the application's Erlang options (ejabberd: \
         ERL_OPTIONS; RabbitMQ: ERL_ZFLAGS=\"-start_epmd false\" in the broker's environment, \
         so that its epmd-starter helper inherits it; any release: ERL_ZFLAGS), then restart \
         the pod"
    )
}

/// Start the background thread when there is anything for it to do
/// (Kubernetes mode, or an admin endpoint in plain mode), and wait until
/// discovery has written its files and the admin endpoint listens.
async fn start_background(
    args: &Args,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Option<Background>> {
    let kube = args.kube.clone();
    // Kubernetes mode's default comes from clap (`--help` shows it), which
    // sees `--kubernetes` and KUBE_EPMD_KUBERNETES=true; other spellings of
    // true in the environment ("1", "yes") get it here.
    let admin_addr = kube.admin_addr.or_else(|| {
        kube.kubernetes.then(|| {
            std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, DEFAULT_KUBE_ADMIN_PORT))
        })
    });
    let tls_args = args.tls.clone();
    if !kube.kubernetes && admin_addr.is_none() && !tls_args.enabled() {
        return Ok(None);
    }
    let setup = move || async move {
        let discovery = if kube.kubernetes {
            Some(start_discovery(&kube).await?)
        } else {
            None
        };
        // The namespace for the certificate's long names: the one
        // discovery resolved, else the flag (plain mode).
        let namespace = discovery
            .as_ref()
            .map(|d| d.settings.namespace.clone())
            .or_else(|| kube.namespace.clone());
        let tls = match tls_args
            .settings(
                kube.pod_name.as_deref(),
                namespace.as_deref(),
                &kube.cluster_domain,
                &kube.output_dir,
            )
            .map_err(anyhow::Error::msg)
            .context("distribution TLS")?
        {
            Some(settings) => {
                Some(tls::start(settings).context("cannot prepare the distribution TLS files")?)
            }
            None => None,
        };
        let admin = match admin_addr {
            Some(addr) => Some((
                addr,
                admin::bind(addr)
                    .with_context(|| format!("cannot listen on the admin address {addr}"))?,
            )),
            None => None,
        };
        anyhow::Ok(async move {
            let Some((addr, listener)) = admin else {
                let _ = shutdown.wait_for(|s| *s).await;
                return;
            };
            info!(%addr, "admin endpoint listening");
            let state = Arc::new(AdminState {
                metrics,
                discovery,
                tls,
            });
            if let Err(e) = admin::serve(listener, state, shutdown).await {
                warn!(error = %e, "admin endpoint stopped");
            }
        })
    };
    match Background::spawn("kube-epmd-bg", setup).await {
        Ok(bg) => Ok(Some(bg)),
        Err(SpawnError::Setup(e)) => Err(e),
        Err(e) => Err(e.into()),
    }
}

/// Kubernetes mode: build the API client (in-cluster or KUBECONFIG),
/// resolve the settings, write the resolver files and start watching.
async fn start_discovery(k: &KubeArgs) -> anyhow::Result<kubernetes::DiscoveryView> {
    // kube's error already spells out its causes: no context chain, or
    // `{:#}` would print them twice.
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot configure the Kubernetes client (in-cluster service account or KUBECONFIG): {e}"
        )
    })?;
    let settings = Settings {
        namespace: kubernetes::resolve_namespace(k.namespace.as_deref(), &client),
        selector: k.selector.clone().filter(|s| !s.trim().is_empty()),
        statefulset: k.statefulset.clone().filter(|s| !s.trim().is_empty()),
        pod_name: k.pod_name.clone().filter(|s| !s.is_empty()),
        cluster_domain: k.cluster_domain.clone(),
        output_dir: k.output_dir.clone(),
    };
    kubernetes::start(client, settings).context("cannot prepare the resolver files")
}

/// Register SIGTERM and SIGINT handlers now; the future resolves when one
/// arrives.
fn on_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            // Without signal handlers the default action (exit) still applies.
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = int.recv() => info!("SIGINT received"),
        }
    }
}
