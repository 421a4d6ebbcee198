//! `kube-epmd peers`: fetch `/peers` from a running daemon's admin
//! endpoint and print it for scripts.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::admin::PeersDoc;

const TIMEOUT: Duration = Duration::from_secs(5);
/// A peer table is small; anything larger is not our endpoint.
const MAX_RESPONSE: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    #[error("unsupported admin URL {0:?}: expected http://HOST:PORT[/PREFIX]")]
    BadUrl(String),
    #[error("cannot get the peer table from {0}: {1}")]
    Http(String, String),
    #[error("admin endpoint answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("cannot parse the peer table: {0}")]
    Json(#[from] serde_json::Error),
}

/// GET `{url}/peers`; the body on 200.
pub fn fetch_peers(url: &str) -> Result<String, PeersError> {
    let uri: hyper::Uri = format!("{}/peers", url.trim_end_matches('/'))
        .parse()
        .map_err(|_| PeersError::BadUrl(url.into()))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none_or(str::is_empty) {
        return Err(PeersError::BadUrl(url.into()));
    }
    let failed = |e: &dyn std::fmt::Display| PeersError::Http(url.into(), e.to_string());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(&e))?;
    runtime.block_on(async {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let exchange = async {
            let resp = client.get(uri).await.map_err(|e| failed(&e))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| failed(&e))?
                .to_bytes();
            Ok::<_, PeersError>((status, body))
        };
        let (status, body) = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|e| failed(&e))??;
        let body = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            return Err(PeersError::Status {
                status: status.as_u16(),
                body: body.trim().to_string(),
            });
        }
        Ok(body)
    })
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
