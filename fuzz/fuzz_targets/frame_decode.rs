//! Frame decoding under arbitrary chunking: the same byte stream, whole or
//! cut into pieces, gives the same frames and the same error; an incomplete
//! frame consumes nothing; every decoded frame re-encodes and decodes again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rust_chat::protocol::ProtocolError;
use rust_chat::protocol::frame::{DecodeRules, WebSocketFrame, decode};

fn decode_all(buf: &mut Vec<u8>, rules: &DecodeRules, into: &mut Vec<WebSocketFrame>) -> Result<(), ProtocolError> {
    loop {
        let before = buf.len();
        match decode(buf, rules)? {
            Some(frame) => {
                assert!(buf.len() < before || frame.payload.is_empty() && before >= 2);
                into.push(frame);
            }
            None => return Ok(()),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else { return };
    let rules = if seed & 0x80 == 0 { DecodeRules::server(1 << 16) } else { DecodeRules::client(1 << 16) };

    let mut whole = stream.to_vec();
    let mut frames = Vec::new();
    let whole_end = decode_all(&mut whole, &rules, &mut frames);

    let mut rng = u32::from(seed) | 0x100;
    let (mut buf, mut got, mut pos) = (Vec::new(), Vec::new(), 0);
    let pieces_end = loop {
        if pos >= stream.len() {
            break Ok(());
        }
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        let next = (pos + 1 + (rng % 97) as usize).min(stream.len());
        buf.extend_from_slice(&stream[pos..next]);
        pos = next;
        let kept = buf.clone();
        match decode_all(&mut buf, &rules, &mut got) {
            Ok(()) => {
                // What is left is a strict suffix of what we had: nothing half-consumed.
                assert!(kept.ends_with(&buf));
            }
            Err(err) => break Err(err),
        }
    };
    assert_eq!(got, frames);
    assert_eq!(pieces_end, whole_end);

    for frame in &frames {
        let mut wire = Vec::new();
        frame.encode(&mut wire);
        assert_eq!(decode(&mut wire, &rules), Ok(Some(frame.clone())));
        assert!(wire.is_empty());
    }
});
