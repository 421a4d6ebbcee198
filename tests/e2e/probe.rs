//! Talking to a pod from the test process: EPMD NAMES and HTTP GET over
//! sockets opened inside the hub namespace (the host has no route to the
//! pods), with every step bounded by a timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::netns::Netns;

const IO_LIMIT: Duration = Duration::from_secs(3);

/// Connect from inside `ns`, send `request`, read until the peer closes.
pub fn exchange(ns: &Netns, addr: SocketAddr, request: &[u8]) -> Result<Vec<u8>, String> {
    tokio::task::block_in_place(|| {
        ns.enter(|| {
            let mut s = TcpStream::connect_timeout(&addr, IO_LIMIT)
                .map_err(|e| format!("connect {addr}: {e}"))?;
            s.set_read_timeout(Some(IO_LIMIT)).ok();
            s.set_write_timeout(Some(IO_LIMIT)).ok();
            s.write_all(request)
                .map_err(|e| format!("write to {addr}: {e}"))?;
            let mut reply = Vec::new();
            s.read_to_end(&mut reply)
                .map_err(|e| format!("read from {addr}: {e}"))?;
            Ok(reply)
        })
    })
}

/// NAMES_REQ to the EPMD at `ip`:4369: the `name X at port N` lines.
pub fn epmd_names(ns: &Netns, ip: &str) -> Result<String, String> {
    let addr: SocketAddr = format!("{ip}:4369").parse().map_err(|e| format!("{e}"))?;
    let reply = exchange(ns, addr, &[0, 1, b'n'])?;
    if reply.len() < 4 {
        return Err(format!("short NAMES reply from {addr}: {reply:?}"));
    }
    Ok(String::from_utf8_lossy(&reply[4..]).into_owned())
}

/// The port EPMD at `ip` lists for node `alive`, if registered.
pub fn registered_port(ns: &Netns, ip: &str, alive: &str) -> Result<Option<u16>, String> {
    let names = epmd_names(ns, ip)?;
    Ok(names.lines().find_map(|l| {
        let rest = l.strip_prefix("name ")?;
        let (name, port) = rest.split_once(" at port ")?;
        (name == alive).then(|| port.trim().parse().ok()).flatten()
    }))
}

/// HTTP/1.0 GET; returns status code and body.
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let raw = exchange(ns, addr, req.as_bytes())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path} from {addr}: no header end in {text:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("GET {path} from {addr}: bad status line in {head:?}"))?;
    Ok((code, body.to_string()))
}
