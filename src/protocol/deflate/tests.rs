use super::*;

fn offer(header: &str) -> Result<Option<Agreement>, &'static str> {
    negotiate(std::iter::once(header.as_bytes()), false)
}

fn inflate_all(inflater: &mut Inflater, data: &[u8], limit: usize) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::new();
    inflater.inflate(data, limit, &mut |piece| {
        out.extend_from_slice(piece);
        Ok(())
    })?;
    inflater.finish_message(limit, false, &mut |piece| {
        out.extend_from_slice(piece);
        Ok(())
    })?;
    Ok(out)
}

#[test]
fn a_plain_offer_is_accepted_without_server_takeover_by_default() {
    let agreed = offer("permessage-deflate").unwrap().unwrap();
    assert_eq!(agreed.response_header(), "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover");
    let with_takeover = negotiate(std::iter::once(&b"permessage-deflate"[..]), true).unwrap().unwrap();
    assert_eq!(with_takeover.response_header(), "Sec-WebSocket-Extensions: permessage-deflate");
}

#[test]
fn every_parameter() {
    let agreed = offer(
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
         server_max_window_bits=10; client_max_window_bits",
    )
    .unwrap()
    .unwrap();
    assert!(agreed.server_no_context_takeover && agreed.client_no_context_takeover);
    assert_eq!(agreed.server_max_window_bits, 10);
    assert_eq!(
        agreed.response_header(),
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; \
         client_no_context_takeover; server_max_window_bits=10"
    );
    // A quoted value is the same value.
    assert_eq!(offer("permessage-deflate; server_max_window_bits=\"9\"").unwrap().unwrap().server_max_window_bits, 9);
    assert!(offer("permessage-deflate; client_max_window_bits=8").unwrap().is_some());
    assert!(offer("permessage-deflate; client_max_window_bits=15").unwrap().is_some());
    assert_eq!(offer("permessage-deflate; server_max_window_bits=8").unwrap().unwrap().server_max_window_bits, 8);
}

#[test]
fn offers_we_cannot_honour_are_declined_and_the_next_one_is_tried() {
    for bad in [
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; client_max_window_bits=0",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; unknown_param",
        "x-webkit-deflate-frame",
    ] {
        assert_eq!(offer(bad), Ok(None), "{bad}");
    }
    let agreed = offer("permessage-deflate; server_max_window_bits=20, permessage-deflate; client_no_context_takeover")
        .unwrap()
        .unwrap();
    assert!(agreed.client_no_context_takeover, "the second offer was taken");
    // Several header lines count as one list.
    let lines: [&[u8]; 2] = [b"foo", b"permessage-deflate; server_max_window_bits=12"];
    assert_eq!(negotiate(lines.into_iter(), false).unwrap().unwrap().server_max_window_bits, 12);
}

#[test]
fn malformed_headers_are_errors() {
    for bad in [
        "",
        "permessage-deflate;",
        "permessage deflate",
        "permessage-deflate; a=\"unterminated",
        "permessage-deflate; =1",
        ", ,",
    ] {
        assert!(offer(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn rfc_7692_example_hello() {
    // §7.2.3.1: "Hello" compressed without context takeover.
    let mut inflater = Inflater::new();
    assert_eq!(inflate_all(&mut inflater, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100).unwrap(), b"Hello");
    // §7.2.3.2: the second "Hello" with context takeover is shorter.
    assert_eq!(inflate_all(&mut inflater, &[0xf2, 0x00, 0x11, 0x00, 0x00], 100).unwrap(), b"Hello");
}

#[test]
fn compress_then_inflate_round_trips_with_and_without_takeover() {
    let messages: Vec<Vec<u8>> =
        vec![b"Hello".to_vec(), b"Hello".to_vec(), vec![0; 100_000], (0..=255u8).cycle().take(70_000).collect()];
    for reset in [false, true] {
        let mut deflater = Deflater::new(15);
        let mut inflater = Inflater::new();
        for message in &messages {
            let mut wire = Vec::new();
            deflater.compress(message, &mut wire, reset);
            assert!(!wire.ends_with(&SYNC_TAIL));
            assert_eq!(&inflate_all(&mut inflater, &wire, 1 << 20).unwrap(), message);
            if reset {
                inflater.raw.reset(false);
            }
        }
    }
}

#[test]
fn a_bomb_stops_at_the_limit() {
    // 10 MB of zeros compress to about 100 KB (at the fast level used for sending).
    let mut wire = Vec::new();
    Deflater::new(15).compress(&vec![0; 10_000_000], &mut wire, true);
    assert!(wire.len() < 200_000, "{}", wire.len());
    let mut inflater = Inflater::new();
    let mut held = 0usize;
    let result = inflater.inflate(&wire, 1_000_000, &mut |piece| {
        held += piece.len();
        Ok(())
    });
    assert_eq!(result, Err(ProtocolError::MessageTooLarge));
    assert!(held <= 1_000_000, "stopped at the limit: {held}");
}

#[test]
fn garbage_is_invalid_compressed_data() {
    let mut inflater = Inflater::new();
    assert_eq!(
        inflate_all(&mut inflater, &[0xff, 0xff, 0xff, 0xff, 0xff], 100),
        Err(ProtocolError::InvalidCompressedData)
    );
}

#[test]
fn window_8_compresses_only_short_messages() {
    let agreed = offer("permessage-deflate; server_max_window_bits=8").unwrap().unwrap();
    assert!(agreed.may_compress(256));
    assert!(!agreed.may_compress(257));
    assert_eq!(agreed.compress_window_bits(), 9);
    let mut shared = SharedDeflaters::default();
    let mut wire = Vec::new();
    shared.compress(&agreed, &[b'a'; 256], &mut wire);
    assert_eq!(inflate_all(&mut Inflater::new(), &wire, 1000).unwrap(), vec![b'a'; 256]);
}
