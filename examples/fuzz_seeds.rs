//! Writes the fuzz seed corpus (fuzz/seeds/{decode,connection}/) from
//! requests encoded by the crate's own codec, so the seeds always match
//! the wire format. proto/vectors has no captured frames yet; when it does,
//! they belong here too.
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

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/seeds".into()),
    );
    let frames: Vec<(&str, Vec<u8>)> = vec![
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
    ];
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
