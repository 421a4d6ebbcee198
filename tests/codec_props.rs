//! Property tests for the pure codec: encode → decode is the identity for
//! every well-formed request, and no byte string makes the decoder panic or
//! accept a frame whose header disagrees with its length.

use bytes::BytesMut;
use kube_epmd::codec::{
    Alive2, MAX_PAYLOAD, Request, decode_frame, decode_payload, encode_request, payload_len,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn name() -> impl Strategy<Value = Vec<u8>> {
    // Non-empty, no NUL: what a client may legitimately send.
    proptest::collection::vec(1u8..=255, 1..300)
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (
            any::<u16>(),
            any::<u8>(),
            any::<u8>(),
            any::<u16>(),
            any::<u16>(),
            name(),
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(port, node_type, protocol, hv, lv, name, extra)| {
                Request::Alive2(Alive2 {
                    port,
                    node_type,
                    protocol,
                    highest_version: hv,
                    lowest_version: lv,
                    name,
                    extra,
                })
            }),
        "[a-zA-Z0-9_.@-]{1,255}".prop_map(|n| Request::PortPlease2 {
            name: n.into_bytes()
        }),
        Just(Request::Names),
        Just(Request::Dump),
        Just(Request::Kill),
        "[a-z]{1,100}".prop_map(|n| Request::Stop {
            name: n.into_bytes()
        }),
    ]
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(req in request()) {
        let mut b = BytesMut::new();
        encode_request(&req, &mut b);
        prop_assert_eq!(decode_frame(&b), Ok(req));
    }

    #[test]
    fn extra_bytes_after_a_frame_are_rejected(req in request(), tail in proptest::collection::vec(any::<u8>(), 1..10)) {
        let mut b = BytesMut::new();
        encode_request(&req, &mut b);
        b.extend_from_slice(&tail);
        prop_assert!(decode_frame(&b).is_err());
    }

    #[test]
    fn truncated_frames_are_rejected(req in request(), cut in 1usize..50) {
        let mut b = BytesMut::new();
        encode_request(&req, &mut b);
        let keep = b.len().saturating_sub(cut);
        prop_assert!(decode_frame(&b[..keep]).is_err());
    }
}

/// Byte strings for the decoder: pure noise (almost never a frame), a
/// correct header around a known request tag and random bytes, and a
/// real request with one byte changed (often still a valid frame), so
/// both the reject and the accept path run many times.
fn decoder_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..4000),
        (
            prop::sample::select(b"xznds k".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(tag, body)| {
                let mut f = ((body.len() + 1) as u16).to_be_bytes().to_vec();
                f.push(tag);
                f.extend_from_slice(&body);
                f
            }),
        (request(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(req, at, byte)| {
            let mut b = BytesMut::new();
            encode_request(&req, &mut b);
            let i = at.index(b.len());
            b[i] = byte;
            b.to_vec()
        }),
    ]
}

#[test]
fn arbitrary_bytes_never_panic_and_accepted_frames_are_exact() {
    const CASES: u32 = 3000;
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        ..Config::default()
    });
    let accepted = std::cell::Cell::new(0u32);
    runner
        .run(&decoder_input(), |bytes| {
            let _ = decode_payload(&bytes);
            if let Ok(req) = decode_frame(&bytes) {
                accepted.set(accepted.get() + 1);
                // Accepted frames have a valid header matching their length.
                let len = payload_len([bytes[0], bytes[1]]);
                prop_assert_eq!(len, Ok(bytes.len() - 2));
                prop_assert!(bytes.len() - 2 <= MAX_PAYLOAD);
                // What was decoded survives encoding and decoding again,
                // and registrations and lookups are taken byte for byte
                // (NAMES, DUMP, KILL and STOP read only what epmd reads:
                // the tag, a NUL-terminated name).
                // (One exception: "s\0" is epmd's STOP of the empty name,
                // which the encoder writes without the NUL and so as a STOP
                // without a name.)
                let mut again = BytesMut::new();
                encode_request(&req, &mut again);
                if req != (Request::Stop { name: Vec::new() }) {
                    prop_assert_eq!(decode_frame(&again), Ok(req.clone()));
                }
                // (epmd, too, ignores bytes after an ALIVE2's extra field.)
                if matches!(req, Request::Alive2(_) | Request::PortPlease2 { .. }) {
                    prop_assert!(bytes[2..].starts_with(&again[2..]), "{:?}", req);
                }
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // The accept path must really run (it once ran for ~0 of 256 cases).
    assert!(
        accepted.get() >= CASES / 5,
        "only {} of {CASES} inputs decoded: the accept path is barely tested",
        accepted.get()
    );
}
