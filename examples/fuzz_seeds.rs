//! Writes the fuzz seed corpus (fuzz/seeds/{decode,connection}/) from
//! requests encoded by the crate's own codec, so the seeds always match
//! the wire format, plus every request captured from real clients in
//! proto/vectors (see proto/capture.py), as real nodes and epmd's client
//! sent them.
//!
//!     cargo run --example fuzz_seeds -- fuzz/seeds

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use kube_epmd::codec::{Alive2, Request, encode_request};

fn frame(req: &Request) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_request(req, &mut b);
    b.to_vec()
}

fn alive(name: &str, highest_version: u16, extra: &[u8]) -> Request {
    Request::Alive2(Alive2 {
        highest_version,
        extra: extra.to_vec(),
        ..Alive2::erlang_node(name, 4200)
    })
}

/// The connection target's input: a flags byte, then [len][chunk]...
fn chunked(flags: u8, frame: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = vec![flags];
    for c in frame.chunks(chunk.clamp(1, 255)) {
        out.push(c.len() as u8);
        out.extend_from_slice(c);
    }
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(dir.join(name), bytes)
}

/// The request bytes (`> ` line) of each captured vector, by file stem.
fn captured() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/proto/vectors");
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        let text = std::fs::read_to_string(&path)?;
        let Some(hex) = text.lines().find_map(|l| l.strip_prefix("> ")) else {
            continue;
        };
        let bytes: Option<Vec<u8>> = hex
            .split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).ok())
            .collect();
        let Some(bytes) = bytes else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: bad hex in the request line", path.display()),
            ));
        };
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push((format!("captured_{stem}"), bytes));
    }
    out.sort();
    Ok(out)
}

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/seeds".into()),
    );
    let mut frames: Vec<(String, Vec<u8>)> = [
        ("alive2_v6", frame(&alive("ejabberd", 6, b""))),
        ("alive2_v5_extra", frame(&alive("n1", 5, b"\x01\x02extra"))),
        ("alive2_utf8", frame(&alive("nœud", 6, b""))),
        (
            "port_please2",
            frame(&Request::PortPlease2 {
                name: b"held".to_vec(),
            }),
        ),
        // epmd strips one trailing NUL from the name
        (
            "port_please2_nul",
            frame(&Request::PortPlease2 {
                name: b"held\0".to_vec(),
            }),
        ),
        (
            "port_please2_miss",
            frame(&Request::PortPlease2 {
                name: b"nobody".to_vec(),
            }),
        ),
        ("names", frame(&Request::Names)),
        ("dump", frame(&Request::Dump)),
        ("kill", frame(&Request::Kill)),
        (
            "stop_held",
            frame(&Request::Stop {
                name: b"held".to_vec(),
            }),
        ),
        (
            "stop_other",
            frame(&Request::Stop {
                name: b"other".to_vec(),
            }),
        ),
        ("zero_length", vec![0, 0]),
        ("oversized", vec![0x0b, 0xf2, b'n']),
        ("unknown_code", vec![0, 1, b'p']),
        ("surplus", vec![0, 1, b'n', b'n']),
    ]
    .into_iter()
    .map(|(n, f)| (n.to_string(), f))
    .collect();
    frames.extend(captured()?);
    let decode = root.join("decode");
    let connection = root.join("connection");
    std::fs::create_dir_all(&decode)?;
    std::fs::create_dir_all(&connection)?;
    for (name, f) in &frames {
        write(&decode, name, f)?;
        // local + relaxed, whole frame in one read
        write(
            &connection,
            &format!("{name}_whole"),
            &chunked(0b011, f, 255),
        )?;
        // byte by byte, as a slow client sends it
        write(&connection, &format!("{name}_drip"), &chunked(0b011, f, 1))?;
        // from a non-local peer, sidecar KILL policy
        write(
            &connection,
            &format!("{name}_remote"),
            &chunked(0b100, f, 3),
        )?;
    }
    println!("wrote {} seeds under {}", frames.len() * 4, root.display());
    Ok(())
}
