//! Listening sockets as epmd opens them: one per address, SO_REUSEADDR,
//! IPv6 sockets v6-only, loopback additions allowed to fail; or the sockets
//! systemd hands over (LISTEN_FDS).

use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;
use tokio::net::TcpListener;

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

fn listen_on(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
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
            Ok(l) => {
                out.push(TcpListener::from_std(l).map_err(|source| BindError::Io { addr, source })?)
            }
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
pub fn accept_nonblocking(
    listener: &std::net::TcpListener,
) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: sockaddr_storage is plain data, large enough for any address.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the pointers are to our own storage and length, valid for the call.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: accept4 just returned this descriptor; nothing else owns it.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let peer = sockaddr_to_std(&storage).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "unexpected peer address family",
        )
    })?;
    Ok((stream, peer))
}

fn sockaddr_to_std(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Listening sockets passed by systemd (sd_listen_fds protocol: LISTEN_PID
/// is ours, LISTEN_FDS sockets start at fd 3).
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
        // SAFETY: systemd passed these descriptors to us and nothing else in
        // this process owns them.
        let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        l.set_nonblocking(true)
            .and_then(|_| TcpListener::from_std(l))
            .map(|l| out.push(l))
            .map_err(|e| BindError::Systemd(format!("fd {fd}: {e}")))?;
    }
    Ok(out)
}
