//! Assembling one request from whatever chunks the socket yields, with no
//! I/O: the connection reads, this decides "more", "done" or "close". Kept
//! pure so the per-connection state machine can be fuzzed byte for byte.
//!
//! epmd's rules: bytes are read until the 2-byte length is known, then only
//! up to the end of that packet; more bytes than the packet announced in the
//! same read, a zero or oversized length, or a malformed payload close the
//! connection without a reply.

use crate::codec::{self, DecodeError, MAX_PAYLOAD, Request};

/// epmd reads into a buffer of 3 * MAXSYMLEN bytes; a packet that fills it
/// is refused, so a frame is at most this long.
pub const MAX_FRAME: usize = MAX_PAYLOAD + 2;

/// Why a connection is closed before its request is answered (a metrics
/// label, hence `&'static str`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// More bytes arrived than the packet length announced.
    TrailingBytes { got: usize, len: usize },
    /// The length header is zero or too large.
    BadLength(DecodeError),
    /// The complete packet does not decode.
    Malformed(DecodeError),
}

impl Reject {
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::TrailingBytes { .. } => "trailing_bytes",
            Reject::BadLength(_) => "bad_length",
            Reject::Malformed(_) => "malformed",
        }
    }
}

/// The outcome of feeding one chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Keep reading (at most [`FrameReader::room`] bytes).
    More,
    Request(Request),
    Reject(Reject),
}

/// One request being received. Holds nothing on the heap until a request
/// arrives split over several reads, so idle connections stay small.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// Bytes of an incomplete frame received so far.
    partial: Vec<u8>,
    /// Full frame length, once the header is known.
    want: Option<usize>,
}

impl FrameReader {
    pub fn new() -> Self {
        FrameReader::default()
    }

    /// Bytes received so far.
    pub fn received(&self) -> usize {
        self.partial.len()
    }

    /// How many bytes the next read may take: up to the full buffer while
    /// the length is unknown (so surplus bytes are seen, as epmd sees them),
    /// then exactly the rest of the frame.
    pub fn room(&self) -> usize {
        self.want.unwrap_or(MAX_FRAME) - self.partial.len()
    }

    /// Take one chunk the socket produced; `chunk.len()` must not exceed
    /// [`room`](Self::room) (longer chunks are cut to it).
    pub fn feed(&mut self, chunk: &[u8]) -> Progress {
        let chunk = &chunk[..chunk.len().min(self.room())];
        if self.partial.is_empty() {
            // The usual case: a whole request in one read, decoded in place.
            match Self::check(chunk) {
                Check::Complete => return Self::finish(chunk),
                Check::Reject(r) => return Progress::Reject(r),
                Check::Need(want) => {
                    self.want = want;
                    self.partial.extend_from_slice(chunk);
                    return Progress::More;
                }
            }
        }
        self.partial.extend_from_slice(chunk);
        match Self::check(&self.partial) {
            Check::Complete => Self::finish(&std::mem::take(&mut self.partial)),
            Check::Reject(r) => Progress::Reject(r),
            Check::Need(want) => {
                self.want = want;
                Progress::More
            }
        }
    }

    fn check(got: &[u8]) -> Check {
        let [a, b, ..] = *got else {
            return Check::Need(None);
        };
        match codec::payload_len([a, b]) {
            Ok(len) if got.len() == len + 2 => Check::Complete,
            Ok(len) if got.len() < len + 2 => Check::Need(Some(len + 2)),
            Ok(len) => Check::Reject(Reject::TrailingBytes {
                got: got.len(),
                len,
            }),
            Err(e) => Check::Reject(Reject::BadLength(e)),
        }
    }

    fn finish(frame: &[u8]) -> Progress {
        match codec::decode_frame(frame) {
            Ok(r) => Progress::Request(r),
            Err(e) => Progress::Reject(Reject::Malformed(e)),
        }
    }
}

enum Check {
    Complete,
    Need(Option<usize>),
    Reject(Reject),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_request_in_one_chunk() {
        let mut r = FrameReader::new();
        assert_eq!(r.feed(&[0, 1, b'n']), Progress::Request(Request::Names));
    }

    #[test]
    fn byte_by_byte_then_exact_room() {
        let frame = [0, 4, b'z', b'a', b'b', 0];
        let mut r = FrameReader::new();
        assert_eq!(r.room(), MAX_FRAME);
        assert_eq!(r.feed(&frame[..1]), Progress::More);
        assert_eq!(r.feed(&frame[1..2]), Progress::More);
        assert_eq!(r.room(), 4);
        assert_eq!(r.feed(&frame[2..5]), Progress::More);
        assert_eq!(r.room(), 1);
        assert_eq!(
            r.feed(&frame[5..]),
            Progress::Request(Request::PortPlease2 {
                name: b"ab".to_vec()
            })
        );
    }

    #[test]
    fn surplus_bad_length_and_garbage_reject() {
        let reason = |bytes: &[u8]| match FrameReader::new().feed(bytes) {
            Progress::Reject(r) => r.reason(),
            other => panic!("{other:?}"),
        };
        assert_eq!(reason(&[0, 1, b'n', b'x']), "trailing_bytes");
        assert_eq!(reason(&[0, 0]), "bad_length");
        assert_eq!(reason(&[0xff, 0xff, 1]), "bad_length");
        assert_eq!(reason(&[0, 1, b'?']), "malformed");
    }

    #[test]
    fn header_split_from_a_too_long_body() {
        let mut r = FrameReader::new();
        assert_eq!(r.feed(&[0]), Progress::More);
        assert!(matches!(
            r.feed(&[1, b'n', b'n']),
            Progress::Reject(Reject::TrailingBytes { .. })
        ));
    }
}
