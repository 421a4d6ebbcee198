//! Property tests for the pure codec: encode → decode is the identity for
//! every well-formed request, and no byte string makes the decoder panic or
//! accept a frame whose header disagrees with its length.

use bytes::BytesMut;
use kube_epmd::codec::{
    Alive2, MAX_PAYLOAD, Request, decode_frame, decode_payload, encode_request, payload_len,
};
use proptest::prelude::*;

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
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4000)) {
        let _ = decode_payload(&bytes);
        if let Ok(req) = decode_frame(&bytes) {
            // Accepted frames have a valid header matching their length.
            let len = payload_len([bytes[0], bytes[1]]);
            prop_assert_eq!(len, Ok(bytes.len() - 2));
            prop_assert!(bytes.len() - 2 <= MAX_PAYLOAD);
            let _ = req;
        }
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
