//! Listening sockets as epmd opens them: one per address, SO_REUSEADDR,
//! IPv6 sockets v6-only, loopback additions allowed to fail; or the sockets
//! systemd hands over (LISTEN_FDS).

use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use std::net::TcpListener;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BindError {
    /// Another EPMD already holds the port: epmd logs it and exits 0.
    #[error("there is already an EPMD running at port {port} on {addr}")]
    InUse { addr: IpAddr, port: u16 },
    #[error("failed to listen on {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("unable to bind any address")]
    NoneBound,
    #[error("systemd socket activation: {0}")]
    Systemd(String),
}

fn listen_on(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(libc::SOMAXCONN)?;
    Ok(s.into())
}

/// Bind every address in `addrs` on `port`. Loopback addresses that were
/// only added implicitly (the host may lack IPv6) are skipped on error,
/// like epmd's "nonfatal" sockets; any address in use is fatal.
pub fn bind_all(addrs: &[IpAddr], port: u16) -> Result<Vec<TcpListener>, BindError> {
    let mut out = Vec::new();
    for ip in addrs {
        let addr = SocketAddr::new(*ip, port);
        match listen_on(addr) {
            Ok(l) => out.push(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(BindError::InUse { addr: *ip, port });
            }
            Err(e) if ip.is_loopback() || is_unsupported_family(&e) => {
                tracing::debug!(%addr, error = %e, "skipping address");
            }
            Err(source) => return Err(BindError::Io { addr, source }),
        }
    }
    if out.is_empty() {
        return Err(BindError::NoneBound);
    }
    Ok(out)
}

fn is_unsupported_family(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EPROTONOSUPPORT) | Some(libc::EADDRNOTAVAIL)
    )
}

/// accept4() a pending connection, already non-blocking and close-on-exec
/// (std's accept would need a further fcntl to make it non-blocking).
pub fn accept_nonblocking(listener: &Socket) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    let (stream, addr) = listener.accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
    let peer = addr.as_socket().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "unexpected peer address family",
        )
    })?;
    Ok((stream.into(), peer))
}

/// Listening sockets passed by systemd (sd_listen_fds protocol: LISTEN_PID
/// is ours, LISTEN_FDS sockets start at fd 3). Must run before anything
/// else opens a descriptor that could be mistaken for them (the async
/// runtime opens its epoll and eventfd descriptors when it is built).
pub fn from_systemd() -> Result<Vec<TcpListener>, BindError> {
    use std::os::fd::FromRawFd;
    let pid: u32 = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| BindError::Systemd("LISTEN_PID is not set".into()))?;
    if pid != std::process::id() {
        return Err(BindError::Systemd(format!(
            "LISTEN_PID {pid} is not this process"
        )));
    }
    let n: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|p| p.parse().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| BindError::Systemd("LISTEN_FDS is not a positive number".into()))?;
    let mut out = Vec::new();
    for fd in 3..3 + n {
        // SAFETY: systemd passed these descriptors to us (LISTEN_PID is
        // ours) and nothing else in this process has taken them: this runs
        // before the runtime or any other code opens descriptors.
        let l = unsafe { TcpListener::from_raw_fd(fd) };
        l.set_nonblocking(true)
            .map(|_| out.push(l))
            .map_err(|e| BindError::Systemd(format!("fd {fd}: {e}")))?;
    }
    Ok(out)
}
