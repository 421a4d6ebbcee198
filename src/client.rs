//! The epmd client commands (`-names`, `-started`, `-dump`, `-kill`,
//! `-stop NAME`): same requests, same output, same exit codes as OTP's
//! epmd_cli.c, so scripts that grep epmd's output (ejabberdctl does) work.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use bytes::BytesMut;

use crate::cli::ClientCommand;
use crate::codec::{Request, encode_request};

/// Run `cmd` against the EPMD on localhost:`port`; returns the exit code.
pub fn run(cmd: &ClientCommand, port: u16, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let silent = matches!(cmd, ClientCommand::Started);
    if let ClientCommand::Stop(name) = cmd
        && name.len() > 1000
    {
        let _ = write!(out, "epmd: Name too long!");
        return 1;
    }
    let Some(mut s) = connect(port) else {
        if !silent {
            let _ = writeln!(err, "epmd: Cannot connect to local epmd");
        }
        return 1;
    };
    let req = match cmd {
        ClientCommand::Names | ClientCommand::Started => Request::Names,
        ClientCommand::Dump => Request::Dump,
        ClientCommand::Kill => Request::Kill,
        ClientCommand::Stop(name) => Request::Stop {
            name: name.as_bytes().to_vec(),
        },
    };
    let mut buf = BytesMut::new();
    encode_request(&req, &mut buf);
    if s.write_all(&buf).is_err() {
        let _ = writeln!(out, "epmd: Can't write to epmd");
        return 1;
    }
    let mut reply = Vec::new();
    let read_ok = s.read_to_end(&mut reply).is_ok() || !reply.is_empty();
    match cmd {
        ClientCommand::Names | ClientCommand::Started | ClientCommand::Dump => {
            if reply.len() < 4 {
                if !silent {
                    let _ = writeln!(out, "epmd: no response from local epmd");
                }
                return 1;
            }
            if !silent {
                let port = u32::from_be_bytes([reply[0], reply[1], reply[2], reply[3]]);
                // One write, as epmd's block-buffered stdout does: a reader
                // of the pipe (epmd_SUITE's names_stdout takes the first
                // chunk) sees the header and the names together.
                let mut text =
                    format!("epmd: up and running on port {port} with data:\n").into_bytes();
                text.extend_from_slice(&reply[4..]);
                let _ = out.write_all(&text);
            }
            0
        }
        ClientCommand::Kill => fixed_reply(&reply, 2, read_ok, out, |r| {
            if r == b"OK" {
                ("Killed\n".to_string(), 0)
            } else {
                (
                    "Killing not allowed - living nodes in database.\n".to_string(),
                    1,
                )
            }
        }),
        ClientCommand::Stop(_) => fixed_reply(&reply, 7, read_ok, out, |r| {
            (format!("{}\n", String::from_utf8_lossy(r)), 0)
        }),
    }
}

/// epmd reads exactly `len` bytes; fewer is reported as "responded with".
fn fixed_reply(
    reply: &[u8],
    len: usize,
    read_ok: bool,
    out: &mut dyn Write,
    full: impl FnOnce(&[u8]) -> (String, i32),
) -> i32 {
    if reply.len() >= len {
        let (text, code) = full(&reply[..len]);
        let _ = out.write_all(text.as_bytes());
        code
    } else if !read_ok {
        let _ = writeln!(out, "epmd: failed to read answer from local epmd");
        1
    } else {
        let _ = writeln!(
            out,
            "epmd: local epmd responded with <{}>",
            String::from_utf8_lossy(reply)
        );
        1
    }
}

/// Whoever holds the EPMD port at `addr`, described by what it answers to
/// NAMES (an EPMD lists its port and nodes; anything else is shown as the
/// bytes it sent). For the error when the port is taken: the holder is
/// usually OTP's epmd, started by an application's `erl`.
pub fn describe_holder(addr: SocketAddr, timeout: Duration) -> String {
    let answer = (|| {
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        let mut buf = BytesMut::new();
        encode_request(&Request::Names, &mut buf);
        s.write_all(&buf)?;
        let mut reply = Vec::new();
        // An EPMD closes after its answer; something else may not, so take
        // what came within the timeout.
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) if reply.len() < 64 * 1024 => reply.extend_from_slice(&chunk[..n]),
                Ok(_) => break,
                Err(e) if reply.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        Ok::<_, std::io::Error>(reply)
    })();
    match answer {
        Err(e) => format!("it does not answer NAMES at {addr} ({e})"),
        Ok(r) if r.len() >= 4 => {
            let port = u32::from_be_bytes([r[0], r[1], r[2], r[3]]);
            let nodes = String::from_utf8_lossy(&r[4..]);
            let nodes = nodes.trim_end();
            if nodes.is_empty() {
                format!("it answers NAMES as an EPMD on port {port} with no node registered")
            } else {
                format!(
                    "it answers NAMES as an EPMD on port {port} with: {}",
                    nodes.replace('\n', "; ")
                )
            }
        }
        Ok(r) => format!(
            "it does not answer NAMES as an EPMD (got {:?})",
            String::from_utf8_lossy(&r)
        ),
    }
}

/// epmd tries ::1 first, then 127.0.0.1.
fn connect(port: u16) -> Option<TcpStream> {
    let timeout = Duration::from_secs(5);
    [
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
    ]
    .iter()
    .find_map(|a| TcpStream::connect_timeout(a, timeout).ok())
    .inspect(|s| {
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    })
}
