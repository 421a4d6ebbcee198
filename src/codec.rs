//! The EPMD wire codec: bytes in, typed messages out. No I/O here, so it can
//! be fuzzed and property-tested; `proto/EPMD.md` is the specification.
//!
//! Requests arrive as a 2-byte big-endian length followed by that many
//! payload bytes; replies carry no length prefix. Everything the C epmd
//! answers by closing the connection without a reply is a [`DecodeError`]
//! here; everything it answers with "result 1" is left to the registry.

use bytes::{BufMut, BytesMut};
use thiserror::Error;

pub const ALIVE2_REQ: u8 = b'x';
pub const ALIVE2_X_RESP: u8 = b'v';
pub const ALIVE2_RESP: u8 = b'y';
pub const PORT_PLEASE2_REQ: u8 = b'z';
pub const PORT2_RESP: u8 = b'w';
pub const NAMES_REQ: u8 = b'n';
pub const DUMP_REQ: u8 = b'd';
pub const KILL_REQ: u8 = b'k';
pub const STOP_REQ: u8 = b's';

/// epmd's `MAXSYMLEN`: longest node name (bytes) and extra field.
pub const MAX_SYMLEN: usize = 1020;
/// Largest payload epmd accepts: its input buffer is `3 * MAXSYMLEN` bytes
/// including the 2-byte length, and a full buffer is already an error.
pub const MAX_PAYLOAD: usize = 3 * MAX_SYMLEN - 3;
/// Most Unicode code points in a node name.
pub const MAX_NAME_CHARS: usize = 255;
/// HighestVersion from which nodes understand 32-bit creations (OTP 23+).
pub const X_RESP_MIN_VERSION: u16 = 6;

/// Why a request is answered by closing the connection, with no reply.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("invalid packet length {0} (must be 1..={MAX_PAYLOAD})")]
    BadLength(usize),
    #[error("{got} bytes after a packet announced as {want}")]
    TrailingBytes { want: usize, got: usize },
    #[error("unknown request code {0}")]
    UnknownCode(u8),
    #[error("ALIVE2_REQ too short or its lengths are inconsistent")]
    Alive2Truncated,
    #[error("node name contains a NUL byte")]
    NulInName,
    #[error("PORT_PLEASE2_REQ with an empty or invalid name")]
    BadPortPleaseName,
    #[error("STOP_REQ without a name")]
    StopWithoutName,
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Alive2(Alive2),
    PortPlease2 { name: Vec<u8> },
    Names,
    Dump,
    Kill,
    Stop { name: Vec<u8> },
}

impl Request {
    /// Short label for logs and metrics.
    pub fn kind(&self) -> RequestKind {
        match self {
            Request::Alive2(_) => RequestKind::Alive2,
            Request::PortPlease2 { .. } => RequestKind::PortPlease2,
            Request::Names => RequestKind::Names,
            Request::Dump => RequestKind::Dump,
            Request::Kill => RequestKind::Kill,
            Request::Stop { .. } => RequestKind::Stop,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    Alive2,
    PortPlease2,
    Names,
    Dump,
    Kill,
    Stop,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Alive2 => "alive2",
            RequestKind::PortPlease2 => "port_please2",
            RequestKind::Names => "names",
            RequestKind::Dump => "dump",
            RequestKind::Kill => "kill",
            RequestKind::Stop => "stop",
        }
    }
}

/// ALIVE2_REQ: a node announcing its distribution port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alive2 {
    pub port: u16,
    pub node_type: u8,
    pub protocol: u8,
    pub highest_version: u16,
    pub lowest_version: u16,
    /// Raw bytes: the registry checks length and UTF-8 (those earn "result 1",
    /// not a close).
    pub name: Vec<u8>,
    pub extra: Vec<u8>,
}

/// NodeType of a normal Erlang node (`M`, 77); hidden nodes send `H`.
pub const NODE_TYPE_NORMAL: u8 = 77;

impl Alive2 {
    /// What an OTP 23+ node sends: a normal node over TCP/IPv4 with
    /// distribution versions 5..=6 and no extra data.
    pub fn erlang_node(name: &str, port: u16) -> Alive2 {
        Alive2 {
            port,
            node_type: NODE_TYPE_NORMAL,
            protocol: 0,
            highest_version: 6,
            lowest_version: 5,
            name: name.as_bytes().to_vec(),
            extra: vec![],
        }
    }
}

impl NodeInfo {
    /// The registration [`Alive2::erlang_node`] makes.
    pub fn erlang_node(name: &str, port: u16) -> NodeInfo {
        NodeInfo {
            port,
            node_type: NODE_TYPE_NORMAL,
            protocol: 0,
            highest_version: 6,
            lowest_version: 5,
            name: name.into(),
            extra: vec![],
        }
    }
}

/// The payload length announced by a 2-byte header, if acceptable.
pub fn payload_len(header: [u8; 2]) -> Result<usize, DecodeError> {
    let len = u16::from_be_bytes(header) as usize;
    if len == 0 || len > MAX_PAYLOAD {
        return Err(DecodeError::BadLength(len));
    }
    Ok(len)
}

/// Decode one complete frame (header and payload, nothing after).
pub fn decode_frame(frame: &[u8]) -> Result<Request, DecodeError> {
    let header = match frame {
        [a, b, ..] => [*a, *b],
        _ => return Err(DecodeError::BadLength(frame.len())),
    };
    let want = payload_len(header)?;
    let payload = &frame[2..];
    if payload.len() > want {
        return Err(DecodeError::TrailingBytes {
            want,
            got: payload.len(),
        });
    }
    if payload.len() < want {
        return Err(DecodeError::BadLength(payload.len()));
    }
    decode_payload(payload)
}

/// Decode a request payload (without its length header).
pub fn decode_payload(p: &[u8]) -> Result<Request, DecodeError> {
    let (&code, body) = p.split_first().ok_or(DecodeError::BadLength(0))?;
    match code {
        ALIVE2_REQ => decode_alive2(p).map(Request::Alive2),
        PORT_PLEASE2_REQ => decode_port_please2(body),
        NAMES_REQ => Ok(Request::Names),
        DUMP_REQ => Ok(Request::Dump),
        KILL_REQ => Ok(Request::Kill),
        STOP_REQ => {
            // epmd treats the name as a C string: it ends at the first NUL.
            let name = body.split(|b| *b == 0).next().unwrap_or_default();
            if body.is_empty() {
                return Err(DecodeError::StopWithoutName);
            }
            Ok(Request::Stop {
                name: name.to_vec(),
            })
        }
        other => Err(DecodeError::UnknownCode(other)),
    }
}

fn be16(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// Layout (offsets within the payload, code at 0):
/// port@1 type@3 proto@4 high@5 low@7 nlen@9 name@11 elen@11+nlen extra.
/// Bytes after the extra field are ignored, as epmd does.
fn decode_alive2(p: &[u8]) -> Result<Alive2, DecodeError> {
    if p.len() <= 13 {
        return Err(DecodeError::Alive2Truncated);
    }
    let t = DecodeError::Alive2Truncated;
    let nlen = be16(p, 9).ok_or(t.clone())? as usize;
    if nlen + 13 > p.len() {
        return Err(t);
    }
    let elen = be16(p, 11 + nlen).ok_or(t.clone())? as usize;
    if elen + nlen + 13 > p.len() {
        return Err(t);
    }
    let name = &p[11..11 + nlen];
    if name.contains(&0) {
        return Err(DecodeError::NulInName);
    }
    let extra = &p[13 + nlen..13 + nlen + elen];
    Ok(Alive2 {
        port: be16(p, 1).ok_or(t.clone())?,
        node_type: p[3],
        protocol: p[4],
        highest_version: be16(p, 5).ok_or(t.clone())?,
        lowest_version: be16(p, 7).ok_or(t)?,
        name: name.to_vec(),
        extra: extra.to_vec(),
    })
}

fn decode_port_please2(body: &[u8]) -> Result<Request, DecodeError> {
    let name = body.strip_suffix(&[0]).unwrap_or(body);
    if name.is_empty() {
        return Err(DecodeError::BadPortPleaseName);
    }
    if name.contains(&0) {
        return Err(DecodeError::NulInName);
    }
    match std::str::from_utf8(name) {
        Ok(s) if s.chars().count() <= MAX_NAME_CHARS => Ok(Request::PortPlease2 {
            name: name.to_vec(),
        }),
        _ => Err(DecodeError::BadPortPleaseName),
    }
}

/// Why a node name cannot be registered ("result 1", socket kept open).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("node name is too long ({0} bytes, at most {MAX_SYMLEN})")]
    TooLongBytes(usize),
    #[error("node name is not valid UTF-8")]
    InvalidUtf8,
    #[error("node name has {0} code points, at most {MAX_NAME_CHARS}")]
    TooManyChars(usize),
    #[error("extra data is too long ({0} bytes, at most {MAX_SYMLEN})")]
    ExtraTooLong(usize),
}

/// The checks epmd's `node_reg2` makes before looking at the registry.
pub fn validate_alive2(req: &Alive2) -> Result<&str, NameError> {
    if req.name.len() > MAX_SYMLEN {
        return Err(NameError::TooLongBytes(req.name.len()));
    }
    let name = std::str::from_utf8(&req.name).map_err(|_| NameError::InvalidUtf8)?;
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(NameError::TooManyChars(chars));
    }
    if req.extra.len() > MAX_SYMLEN {
        return Err(NameError::ExtraTooLong(req.extra.len()));
    }
    Ok(name)
}

/// What a registered node tells PORT_PLEASE2 clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub port: u16,
    pub node_type: u8,
    pub protocol: u8,
    pub highest_version: u16,
    pub lowest_version: u16,
    pub name: String,
    pub extra: Vec<u8>,
}

/// Replies. Each encodes to exactly the bytes the C epmd writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response<'a> {
    /// Result of ALIVE2: `v` with 32-bit creation for HighestVersion ≥ 6,
    /// else `y` with 16-bit creation.
    Alive2 {
        ok: bool,
        creation: u32,
        highest_version: u16,
    },
    Port2Hit(&'a NodeInfo),
    Port2Miss,
    /// NAMES and DUMP both start with the daemon's port as 4 bytes.
    PortHeader(u16),
    /// One NAMES line.
    NameLine {
        name: &'a str,
        port: u16,
    },
    /// One DUMP line for a live node (C-string bytes, NUL included).
    DumpActive {
        name: &'a str,
        port: u16,
        fd: i32,
    },
    /// One DUMP line for a remembered, unregistered name.
    DumpOld {
        name: &'a str,
        port: u16,
        fd: i32,
    },
    /// KILL: `OK` (then the daemon exits) or `NO`.
    Kill {
        ok: bool,
    },
    /// STOP of a registered name.
    Stopped,
    /// STOP of an unknown name: epmd writes both words.
    StopNoExist,
}

impl Response<'_> {
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Response::Alive2 {
                ok,
                creation,
                highest_version,
            } => {
                let result = if *ok { 0 } else { 1 };
                if *highest_version >= X_RESP_MIN_VERSION {
                    out.put_u8(ALIVE2_X_RESP);
                    out.put_u8(result);
                    out.put_u32(*creation);
                } else {
                    out.put_u8(ALIVE2_RESP);
                    out.put_u8(result);
                    // epmd's put_int16 keeps the low 16 bits.
                    out.put_u16(*creation as u16);
                }
            }
            Response::Port2Hit(n) => {
                out.reserve(14 + n.name.len() + n.extra.len());
                out.put_u8(PORT2_RESP);
                out.put_u8(0);
                out.put_u16(n.port);
                out.put_u8(n.node_type);
                out.put_u8(n.protocol);
                out.put_u16(n.highest_version);
                out.put_u16(n.lowest_version);
                out.put_u16(n.name.len() as u16);
                out.put_slice(n.name.as_bytes());
                out.put_u16(n.extra.len() as u16);
                out.put_slice(&n.extra);
            }
            Response::Port2Miss => out.put_slice(&[PORT2_RESP, 1]),
            Response::PortHeader(port) => out.put_u32(u32::from(*port)),
            Response::NameLine { name, port } => {
                out.put_slice(b"name ");
                out.put_slice(name.as_bytes());
                out.put_slice(b" at port ");
                put_decimal(out, i64::from(*port));
                out.put_u8(b'\n');
            }
            Response::DumpActive { name, port, fd } => {
                out.put_slice(b"active name     <");
                out.put_slice(name.as_bytes());
                out.put_slice(b"> at port ");
                put_decimal(out, i64::from(*port));
                out.put_slice(b", fd = ");
                put_decimal(out, i64::from(*fd));
                out.put_slice(b"\n\0");
            }
            Response::DumpOld { name, port, fd } => {
                out.put_slice(b"old/unused name <");
                out.put_slice(name.as_bytes());
                out.put_slice(b">, port = ");
                put_decimal(out, i64::from(*port));
                out.put_slice(b", fd = ");
                put_decimal(out, i64::from(*fd));
                out.put_slice(b" \n\0");
            }
            Response::Kill { ok } => out.put_slice(if *ok { b"OK" } else { b"NO" }),
            Response::Stopped => out.put_slice(b"STOPPED"),
            Response::StopNoExist => out.put_slice(b"NOEXISTSTOPPED"),
        }
    }

    pub fn to_bytes(&self) -> BytesMut {
        let mut b = BytesMut::with_capacity(32);
        self.encode(&mut b);
        b
    }
}

fn put_decimal(out: &mut BytesMut, v: i64) {
    let mut buf = itoa::Buffer::new();
    out.put_slice(buf.format(v).as_bytes());
}

/// Encode a request as a client sends it (length prefix included).
pub fn encode_request(req: &Request, out: &mut BytesMut) {
    let start = out.len();
    out.put_u16(0);
    match req {
        Request::Alive2(a) => {
            out.put_u8(ALIVE2_REQ);
            out.put_u16(a.port);
            out.put_u8(a.node_type);
            out.put_u8(a.protocol);
            out.put_u16(a.highest_version);
            out.put_u16(a.lowest_version);
            out.put_u16(a.name.len() as u16);
            out.put_slice(&a.name);
            out.put_u16(a.extra.len() as u16);
            out.put_slice(&a.extra);
        }
        Request::PortPlease2 { name } => {
            out.put_u8(PORT_PLEASE2_REQ);
            out.put_slice(name);
        }
        Request::Names => out.put_u8(NAMES_REQ),
        Request::Dump => out.put_u8(DUMP_REQ),
        Request::Kill => out.put_u8(KILL_REQ),
        Request::Stop { name } => {
            out.put_u8(STOP_REQ);
            out.put_slice(name);
        }
    }
    let len = (out.len() - start - 2) as u16;
    out[start..start + 2].copy_from_slice(&len.to_be_bytes());
}

/// Client side: parse a PORT2_RESP. `Ok(None)` is a miss (`w 1`).
pub fn decode_port2_resp(b: &[u8]) -> Result<Option<NodeInfo>, DecodeError> {
    let t = DecodeError::BadLength(b.len());
    match b {
        [PORT2_RESP, 0, ..] => {}
        [PORT2_RESP, _, ..] => return Ok(None),
        [c, ..] => return Err(DecodeError::UnknownCode(*c)),
        [] => return Err(t),
    }
    let nlen = be16(b, 10).ok_or(t.clone())? as usize;
    let name = b.get(12..12 + nlen).ok_or(t.clone())?;
    let elen = be16(b, 12 + nlen).ok_or(t.clone())? as usize;
    let extra = b.get(14 + nlen..14 + nlen + elen).ok_or(t.clone())?;
    Ok(Some(NodeInfo {
        port: be16(b, 2).ok_or(t.clone())?,
        node_type: b[4],
        protocol: b[5],
        highest_version: be16(b, 6).ok_or(t.clone())?,
        lowest_version: be16(b, 8).ok_or(t)?,
        name: String::from_utf8(name.to_vec()).map_err(|_| DecodeError::BadPortPleaseName)?,
        extra: extra.to_vec(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(name: &[u8]) -> Alive2 {
        Alive2 {
            port: 4200,
            node_type: 77,
            protocol: 0,
            highest_version: 6,
            lowest_version: 5,
            name: name.to_vec(),
            extra: vec![],
        }
    }

    #[test]
    fn length_bounds_follow_epmd() {
        assert!(payload_len([0, 0]).is_err());
        assert_eq!(payload_len([0, 1]), Ok(1));
        assert_eq!(payload_len((3057u16).to_be_bytes()), Ok(3057));
        assert!(payload_len((3058u16).to_be_bytes()).is_err());
    }

    #[test]
    fn alive2_roundtrip_and_truncations() {
        let req = Request::Alive2(alive(b"foo"));
        let mut b = BytesMut::new();
        encode_request(&req, &mut b);
        assert_eq!(decode_frame(&b), Ok(req));
        // every strict prefix of the payload (with a consistent header) closes
        let payload = b[2..].to_vec();
        for cut in 1..payload.len() {
            let r = decode_payload(&payload[..cut]);
            assert!(r.is_err(), "prefix {cut} decoded: {r:?}");
        }
        // trailing bytes after the extra field are ignored, as in epmd
        let mut longer = payload.clone();
        longer.extend_from_slice(b"junk");
        assert!(decode_payload(&longer).is_ok());
    }

    #[test]
    fn nul_in_alive_name_closes() {
        let mut b = BytesMut::new();
        encode_request(&Request::Alive2(alive(b"a\0b")), &mut b);
        assert_eq!(decode_frame(&b), Err(DecodeError::NulInName));
    }

    #[test]
    fn port_please_strips_one_nul() {
        assert_eq!(
            decode_payload(b"zfoo\0"),
            Ok(Request::PortPlease2 {
                name: b"foo".to_vec()
            })
        );
        assert!(decode_payload(b"zfoo\0\0").is_err());
        assert!(decode_payload(b"z").is_err());
        assert!(decode_payload(b"z\0").is_err());
        assert!(decode_payload(b"z\xff").is_err());
        assert!(decode_payload("z".repeat(257).as_bytes()).is_err());
    }

    #[test]
    fn unknown_and_obsolete_codes_close() {
        for c in [b'a', b'p', b'?', 0, 255] {
            assert_eq!(decode_payload(&[c]), Err(DecodeError::UnknownCode(c)));
        }
    }

    #[test]
    fn validation_matches_node_reg2() {
        assert!(validate_alive2(&alive(&[b'a'; 1020])).is_err()); // 1020 chars > 255
        assert_eq!(
            validate_alive2(&alive(&[b'a'; 1021])),
            Err(NameError::TooLongBytes(1021))
        );
        assert_eq!(
            validate_alive2(&alive(b"\xc3")),
            Err(NameError::InvalidUtf8)
        );
        assert!(validate_alive2(&alive("é".repeat(255).as_bytes())).is_ok());
        let mut a = alive(b"x");
        a.extra = vec![1; 1021];
        assert_eq!(validate_alive2(&a), Err(NameError::ExtraTooLong(1021)));
    }

    #[test]
    fn replies_encode_as_epmd() {
        let enc = |r: Response| r.to_bytes().to_vec();
        assert_eq!(
            enc(Response::Alive2 {
                ok: true,
                creation: 0x01020304,
                highest_version: 6
            }),
            b"v\0\x01\x02\x03\x04"
        );
        assert_eq!(
            enc(Response::Alive2 {
                ok: false,
                creation: 99,
                highest_version: 5
            }),
            b"y\x01\0\x63"
        );
        assert_eq!(enc(Response::Port2Miss), b"w\x01");
        assert_eq!(
            enc(Response::NameLine {
                name: "foo",
                port: 4200
            }),
            b"name foo at port 4200\n"
        );
        assert_eq!(
            enc(Response::DumpOld {
                name: "a",
                port: 1,
                fd: 7
            }),
            b"old/unused name <a>, port = 1, fd = 7 \n\0"
        );
    }
}

/// The shared test vectors in proto/vectors/, captured from OTP's C epmd
/// and real `erl` nodes (see proto/capture.py): every request decodes and
/// re-encodes to the same bytes, every reply is what this codec would write.
#[cfg(test)]
mod vectors {
    use super::*;

    struct Vector {
        name: String,
        request: Vec<u8>,
        reply: Vec<u8>,
        closed: bool,
    }

    fn hex(line: &str) -> Vec<u8> {
        line.split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).expect("hex byte"))
            .collect()
    }

    fn load() -> Vec<Vector> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/proto/vectors");
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).expect("proto/vectors") {
            let path = e.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("read vector");
            let field = |p: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(p))
                    .unwrap_or_else(|| panic!("{path:?}: no {p:?} line"))
                    .to_string()
            };
            out.push(Vector {
                name: path.file_stem().unwrap().to_string_lossy().into_owned(),
                request: hex(&field("> ")),
                reply: hex(&field("<")),
                closed: field("= ") == "closed",
            });
        }
        assert!(out.len() >= 10, "vectors missing");
        out
    }

    /// Rebuild a NAMES or DUMP body line by line with this codec's encoders.
    fn reencode_listing(body: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        let text = std::str::from_utf8(body).expect("utf8 listing");
        for line in text.split_inclusive('\n') {
            let line = line.trim_start_matches('\0');
            if line.is_empty() {
                continue;
            }
            let num = |s: &str| {
                s.trim()
                    .trim_end_matches(',')
                    .parse::<i64>()
                    .expect("number")
            };
            if let Some(rest) = line.strip_prefix("name ") {
                let (name, port) = rest
                    .trim_end()
                    .rsplit_once(" at port ")
                    .expect("names line");
                Response::NameLine {
                    name,
                    port: num(port) as u16,
                }
                .encode(&mut out);
            } else if let Some(rest) = line.strip_prefix("active name     <") {
                let (name, rest) = rest.split_once("> at port ").expect("dump line");
                let (port, fd) = rest.split_once(", fd = ").expect("fd");
                Response::DumpActive {
                    name,
                    port: num(port) as u16,
                    fd: num(fd) as i32,
                }
                .encode(&mut out);
            } else if let Some(rest) = line.strip_prefix("old/unused name <") {
                let (name, rest) = rest.split_once(">, port = ").expect("old line");
                let (port, fd) = rest.split_once(", fd = ").expect("fd");
                Response::DumpOld {
                    name,
                    port: num(port) as u16,
                    fd: num(fd) as i32,
                }
                .encode(&mut out);
            } else {
                panic!("unexpected listing line {line:?}");
            }
        }
        out
    }

    #[test]
    fn captured_vectors_match_the_codec() {
        for v in load() {
            let decoded = decode_frame(&v.request);
            if v.name.starts_with("bad_") {
                assert!(decoded.is_err(), "{}: decoded {decoded:?}", v.name);
                assert!(v.reply.is_empty() && v.closed, "{}", v.name);
                continue;
            }
            let req = decoded.unwrap_or_else(|e| panic!("{}: {e}", v.name));
            let mut again = BytesMut::new();
            encode_request(&req, &mut again);
            assert_eq!(&again[..], &v.request[..], "{}: request round trip", v.name);
            let expect = match &req {
                Request::Alive2(a) => Response::Alive2 {
                    ok: v.reply[1] == 0,
                    creation: u32::from_be_bytes(v.reply[2..6].try_into().unwrap()),
                    highest_version: a.highest_version,
                }
                .to_bytes(),
                Request::PortPlease2 { .. } => {
                    let info = decode_port2_resp(&v.reply).expect("port2").expect("hit");
                    Response::Port2Hit(&info).to_bytes()
                }
                Request::Names | Request::Dump => {
                    let port = u32::from_be_bytes(v.reply[..4].try_into().unwrap());
                    let mut b = Response::PortHeader(port as u16).to_bytes();
                    b.extend_from_slice(&reencode_listing(&v.reply[4..]));
                    b
                }
                Request::Kill => Response::Kill { ok: true }.to_bytes(),
                Request::Stop { .. } => Response::StopNoExist.to_bytes(),
            };
            assert_eq!(&expect[..], &v.reply[..], "{}: reply bytes", v.name);
            assert_eq!(v.closed, !matches!(req, Request::Alive2(_)), "{}", v.name);
        }
    }
}
