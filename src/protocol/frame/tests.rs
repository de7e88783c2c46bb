use super::*;
use proptest::prelude::*;

const SERVER: DecodeRules = DecodeRules { expect_masked: true, allowed_rsv: 0, max_payload: 1 << 24 };
const CLIENT: DecodeRules = DecodeRules { expect_masked: false, allowed_rsv: 0, max_payload: u64::MAX };

fn header_of(bytes: &[u8], rules: &DecodeRules) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
    FrameHeader::decode(bytes, rules)
}

#[test]
fn rfc_single_frame_unmasked_text() {
    // RFC 6455 §5.7: a single-frame unmasked text message "Hello".
    let mut buf = vec![0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    let frame = decode(&mut buf, &CLIENT).unwrap().unwrap();
    assert_eq!(frame.header.opcode, OpCode::Text);
    assert!(frame.header.fin);
    assert_eq!(frame.payload, b"Hello");
    assert!(buf.is_empty());
    let mut out = Vec::new();
    encode(&mut out, OpCode::Text, b"Hello");
    assert_eq!(out, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
}

#[test]
fn rfc_single_frame_masked_text() {
    // RFC 6455 §5.7: a single-frame masked text message "Hello".
    let wire = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
    let mut buf = wire.to_vec();
    let frame = decode(&mut buf, &SERVER).unwrap().unwrap();
    assert_eq!(frame.header.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
    assert_eq!(frame.payload, b"Hello");
    let mut out = Vec::new();
    frame.encode(&mut out);
    assert_eq!(out, wire);
}

#[test]
fn rfc_fragmented_unmasked_text() {
    // RFC 6455 §5.7: "Hel" then "lo" as two fragments.
    let mut buf = vec![0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
    let first = decode(&mut buf, &CLIENT).unwrap().unwrap();
    assert!(!first.header.fin);
    assert_eq!(first.header.opcode, OpCode::Text);
    assert_eq!(first.payload, b"Hel");
    let second = decode(&mut buf, &CLIENT).unwrap().unwrap();
    assert!(second.header.fin);
    assert_eq!(second.header.opcode, OpCode::Continuation);
    assert_eq!(second.payload, b"lo");
}

#[test]
fn rfc_ping_and_pong() {
    // RFC 6455 §5.7: unmasked Ping "Hello", masked Pong "Hello".
    let mut ping = vec![0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    let frame = decode(&mut ping, &CLIENT).unwrap().unwrap();
    assert_eq!(frame.header.opcode, OpCode::Ping);
    assert_eq!(frame.payload, b"Hello");
    let mut pong = vec![0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
    let frame = decode(&mut pong, &SERVER).unwrap().unwrap();
    assert_eq!(frame.header.opcode, OpCode::Pong);
    assert_eq!(frame.payload, b"Hello");
}

#[test]
fn rfc_256_byte_and_64_kib_binary_headers() {
    // RFC 6455 §5.7: 256 bytes use the 16-bit form, 64 KiB the 64-bit form.
    let mut out = Vec::new();
    FrameHeader::new(OpCode::Binary, 256).encode(&mut out);
    assert_eq!(out, [0x82, 0x7E, 0x01, 0x00]);
    out.clear();
    FrameHeader::new(OpCode::Binary, 65536).encode(&mut out);
    assert_eq!(out, [0x82, 0x7F, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00]);
}

#[test]
fn every_length_boundary_round_trips_with_minimal_encoding() {
    for (len, header_len) in
        [(0u64, 2usize), (1, 2), (125, 2), (126, 4), (127, 4), (65535, 4), (65536, 10), (1 << 32, 10)]
    {
        let header = FrameHeader::new(OpCode::Binary, len);
        let mut out = Vec::new();
        header.encode(&mut out);
        assert_eq!(out.len(), header_len, "length {len}");
        assert_eq!(header.encoded_len(), header_len);
        assert_eq!(header_of(&out, &CLIENT), Ok(Some((header, header_len))), "length {len}");
        // Masked, the same plus four bytes.
        let masked = FrameHeader { mask: Some([1, 2, 3, 4]), ..header };
        out.clear();
        masked.encode(&mut out);
        assert_eq!(out.len(), header_len + 4);
        assert_eq!(masked.encoded_len(), header_len + 4);
    }
}

#[test]
fn non_minimal_length_encodings_are_accepted() {
    // 5 written in the 16-bit form, and in the 64-bit form.
    let short16 = [0x82, 0xFE, 0x00, 0x05, 1, 2, 3, 4];
    assert_eq!(header_of(&short16, &SERVER).unwrap().unwrap().0.payload_len, 5);
    let short64 = [0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4];
    assert_eq!(header_of(&short64, &SERVER).unwrap().unwrap().0.payload_len, 5);
}

#[test]
fn a_64_bit_length_with_the_top_bit_set_is_rejected() {
    let bytes = [0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(header_of(&bytes, &CLIENT), Err(ProtocolError::LengthTopBit));
    let largest = [0x82, 0x7F, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
    assert_eq!(header_of(&largest, &CLIENT).unwrap().unwrap().0.payload_len, i64::MAX as u64);
}

#[test]
fn a_length_over_the_limit_fails_before_any_payload_arrives() {
    let rules = DecodeRules::server(1000);
    let mut at_limit = vec![0x82, 0xFE, 0x03, 0xE8, 1, 2, 3, 4];
    assert_eq!(header_of(&at_limit, &rules).unwrap().unwrap().0.payload_len, 1000);
    assert_eq!(decode(&mut at_limit, &rules), Ok(None), "payload not here yet");
    let over = [0x82, 0xFE, 0x03, 0xE9];
    assert_eq!(header_of(&over, &rules), Err(ProtocolError::FrameTooLarge));
    // A declared exabyte is refused without allocating for it.
    let mut huge = vec![0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4];
    assert_eq!(decode(&mut huge, &rules), Err(ProtocolError::FrameTooLarge));
}

#[test]
fn invalid_headers_are_rejected_on_their_first_bytes() {
    assert_eq!(header_of(&[0xC1], &SERVER), Err(ProtocolError::ReservedBits));
    assert_eq!(header_of(&[0xA1], &SERVER), Err(ProtocolError::ReservedBits));
    assert_eq!(header_of(&[0x91], &SERVER), Err(ProtocolError::ReservedBits));
    for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        assert_eq!(header_of(&[0x80 | op], &SERVER), Err(ProtocolError::UnknownOpCode(op)));
    }
    for op in [0x8u8, 0x9, 0xA] {
        assert_eq!(header_of(&[op], &SERVER), Err(ProtocolError::FragmentedControl));
        assert_eq!(header_of(&[0x80 | op, 0x80 | 126], &SERVER), Err(ProtocolError::ControlTooLong));
        assert!(header_of(&[0x80 | op, 0x80 | 125], &SERVER).unwrap().is_none());
    }
    assert_eq!(header_of(&[0x81, 0x05], &SERVER), Err(ProtocolError::UnmaskedFrame));
    assert_eq!(header_of(&[0x81, 0x85], &CLIENT), Err(ProtocolError::MaskedFrame));
}

#[test]
fn rsv1_is_accepted_only_when_allowed() {
    let rules = DecodeRules { allowed_rsv: RSV1, ..SERVER };
    let bytes = [0xC1, 0x80, 1, 2, 3, 4];
    assert_eq!(header_of(&bytes, &rules).unwrap().unwrap().0.rsv, RSV1);
    assert_eq!(header_of(&[0xE1], &rules), Err(ProtocolError::ReservedBits));
}

#[test]
fn every_strict_prefix_of_a_header_is_incomplete() {
    let mut full = Vec::new();
    FrameHeader { mask: Some([9, 8, 7, 6]), ..FrameHeader::new(OpCode::Binary, 70000) }.encode(&mut full);
    for cut in 0..full.len() {
        assert_eq!(header_of(&full[..cut], &SERVER), Ok(None), "cut at {cut}");
    }
    assert_eq!(header_of(&full, &SERVER).unwrap().unwrap().1, full.len());
}

#[test]
fn decode_consumes_nothing_until_the_frame_is_complete() {
    let mut wire = Vec::new();
    WebSocketFrame {
        header: FrameHeader { mask: Some([1, 2, 3, 4]), ..FrameHeader::new(OpCode::Text, 3) },
        payload: b"abc".to_vec(),
    }
    .encode(&mut wire);
    wire.extend_from_slice(&[0x89]); // the start of the next frame
    for cut in 0..wire.len() - 1 {
        let mut buf = wire[..cut].to_vec();
        assert_eq!(decode(&mut buf, &SERVER), Ok(None));
        assert_eq!(buf, &wire[..cut], "nothing consumed at cut {cut}");
    }
    let mut buf = wire.clone();
    assert_eq!(decode(&mut buf, &SERVER).unwrap().unwrap().payload, b"abc");
    assert_eq!(buf, [0x89]);
}

#[test]
fn opcodes_round_trip_and_classify() {
    for op in [OpCode::Continuation, OpCode::Text, OpCode::Binary, OpCode::Close, OpCode::Ping, OpCode::Pong] {
        assert_eq!(OpCode::from_u8(op.as_u8()), Some(op));
        assert_eq!(op.is_control(), matches!(op, OpCode::Close | OpCode::Ping | OpCode::Pong));
    }
}

fn arb_frame() -> impl Strategy<Value = WebSocketFrame> {
    let opcode = prop::sample::select(vec![
        OpCode::Continuation,
        OpCode::Text,
        OpCode::Binary,
        OpCode::Close,
        OpCode::Ping,
        OpCode::Pong,
    ]);
    (
        opcode,
        any::<bool>(),
        any::<[u8; 4]>(),
        prop::collection::vec(any::<u8>(), 0..300),
        prop::sample::select(vec![0usize, 125, 126, 65535, 65536]),
    )
        .prop_map(|(opcode, fin, key, mut payload, pad)| {
            if opcode.is_control() {
                payload.truncate(MAX_CONTROL_PAYLOAD);
            } else {
                payload.resize(payload.len() + pad, 0x5A);
            }
            let fin = fin || opcode.is_control();
            let header = FrameHeader { fin, rsv: 0, opcode, mask: Some(key), payload_len: payload.len() as u64 };
            WebSocketFrame { header, payload }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn encode_then_decode_round_trips(frame in arb_frame()) {
        let mut wire = Vec::new();
        frame.encode(&mut wire);
        prop_assert_eq!(wire.len(), frame.header.encoded_len() + frame.payload.len());
        let decoded = decode(&mut wire, &SERVER).unwrap().unwrap();
        prop_assert_eq!(decoded, frame);
        prop_assert!(wire.is_empty());
    }

    #[test]
    fn a_stream_cut_anywhere_decodes_to_the_same_frames(
        frames in prop::collection::vec(arb_frame(), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut wire = Vec::new();
        for frame in &frames {
            frame.encode(&mut wire);
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        let mut buf = Vec::new();
        let mut got = Vec::new();
        let mut start = 0;
        for point in points {
            buf.extend_from_slice(&wire[start..point]);
            start = point;
            while let Some(frame) = decode(&mut buf, &SERVER).unwrap() {
                got.push(frame);
            }
        }
        prop_assert_eq!(got, frames);
        prop_assert!(buf.is_empty());
    }
}
