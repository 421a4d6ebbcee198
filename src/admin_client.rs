//! `kube-epmd peers`: fetch `/peers` from a running daemon's admin
//! endpoint and print it for scripts. A plain HTTP/1.0 GET over a
//! blocking socket: one request, no need for an HTTP client stack.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::admin::PeersDoc;

const TIMEOUT: Duration = Duration::from_secs(5);
/// A peer table is small; anything larger is not our endpoint.
const MAX_RESPONSE: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    #[error("unsupported admin URL {0:?}: expected http://HOST:PORT[/PREFIX]")]
    BadUrl(String),
    #[error("cannot reach the admin endpoint {0}: {1}")]
    Connect(String, #[source] std::io::Error),
    #[error("admin endpoint {0} sent a malformed HTTP response")]
    BadResponse(String),
    #[error("admin endpoint answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("cannot parse the peer table: {0}")]
    Json(#[from] serde_json::Error),
}

/// GET `{url}/peers`; the body on 200.
pub fn fetch_peers(url: &str) -> Result<String, PeersError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| PeersError::BadUrl(url.into()))?;
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(PeersError::BadUrl(url.into()));
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let connect_err = |e| PeersError::Connect(url.into(), e);
    let addrs: Vec<_> = with_port.to_socket_addrs().map_err(connect_err)?.collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let mut s = stream.ok_or_else(|| connect_err(last))?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(connect_err)?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(connect_err)?;
    write!(
        s,
        "GET {prefix}/peers HTTP/1.0\r\nHost: {authority}\r\nAccept: application/json\r\n\r\n"
    )
    .map_err(connect_err)?;
    let mut raw = Vec::new();
    s.take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(connect_err)?;
    parse_response(url, &raw)
}

fn parse_response(url: &str, raw: &[u8]) -> Result<String, PeersError> {
    let bad = || PeersError::BadResponse(url.into());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad())?;
    let body = String::from_utf8_lossy(&raw[split + 4..]).into_owned();
    let status: u16 = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    if status != 200 {
        return Err(PeersError::Status {
            status,
            body: body.trim().to_string(),
        });
    }
    Ok(body)
}

/// One `hostname ip…` line per peer, in the daemon's order.
pub fn format_lines(doc: &PeersDoc) -> String {
    let mut out = String::new();
    for p in &doc.peers {
        out.push_str(&p.hostname);
        for ip in &p.ips {
            out.push(' ');
            out.push_str(ip);
        }
        out.push('\n');
    }
    out
}

/// The `peers` command; returns the exit code.
pub fn run(url: &str, json: bool, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let result = fetch_peers(url).and_then(|body| {
        let doc: PeersDoc = serde_json::from_str(&body)?;
        Ok((body, doc))
    });
    match result {
        Ok((body, doc)) => {
            if !doc.ready {
                let _ = writeln!(
                    err,
                    "kube-epmd peers: warning: the daemon has no complete pod list yet"
                );
            } else if !doc.healthy {
                let _ = writeln!(
                    err,
                    "kube-epmd peers: warning: stale table, the Kubernetes API is failing: {}",
                    doc.last_error.as_deref().unwrap_or("")
                );
            }
            let text = if json { body } else { format_lines(&doc) };
            if out.write_all(text.as_bytes()).is_err() {
                return 1;
            }
            0
        }
        Err(e) => {
            let _ = writeln!(err, "kube-epmd peers: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_checked() {
        let ok =
            parse_response("u", b"HTTP/1.1 200 OK\r\nContent-Type: x\r\n\r\n{\"a\":1}").unwrap();
        assert_eq!(ok, "{\"a\":1}");
        assert!(matches!(
            parse_response("u", b"HTTP/1.1 404 Not Found\r\n\r\nno peer table"),
            Err(PeersError::Status { status: 404, .. })
        ));
        assert!(matches!(
            parse_response("u", b"garbage"),
            Err(PeersError::BadResponse(_))
        ));
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(matches!(
            fetch_peers("https://x:1"),
            Err(PeersError::BadUrl(_))
        ));
        assert!(matches!(
            fetch_peers("http:///peers"),
            Err(PeersError::BadUrl(_))
        ));
    }

    #[test]
    fn lines_are_name_then_addresses() {
        let doc: PeersDoc = serde_json::from_str(
            r#"{"namespace":"chat","ready":true,"healthy":true,"peers":[
              {"pod":"chat-0","namespace":"chat","hostname":"chat-0","names":["chat-0"],
               "ips":["10.0.0.1","fd00::1"],"ready":false,"terminating":false,"self":true}]}"#,
        )
        .unwrap();
        assert_eq!(format_lines(&doc), "chat-0 10.0.0.1 fd00::1\n");
    }
}
