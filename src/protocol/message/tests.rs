use super::*;
use proptest::prelude::*;

fn data_header(opcode: OpCode, fin: bool, len: u64) -> FrameHeader {
    FrameHeader { fin, ..FrameHeader::new(opcode, len) }
}

#[test]
fn a_message_over_the_applications_limit_is_read_past_without_being_kept() {
    let mut m = MessageAssembler::default();
    // Exactly at the limit: kept.
    m.begin_frame(&data_header(OpCode::Text, true, 10), 1000, 10).unwrap();
    m.feed(b"0123456789").unwrap();
    assert!(m.end_frame().unwrap() && !m.is_over());
    assert_eq!(m.message(), Message::Text("0123456789"));
    m.reset();
    // One byte over, declared by a single frame: over at once, nothing kept.
    m.begin_frame(&data_header(OpCode::Text, true, 11), 1000, 10).unwrap();
    assert!(m.is_over());
    m.feed(b"0123456789A").unwrap();
    assert_eq!(m.buffered(), 0);
    assert!(m.end_frame().unwrap() && m.is_over());
    m.reset();
    // Over in its third fragment: what the first two kept is let go.
    m.begin_frame(&data_header(OpCode::Binary, false, 4), 1000, 10).unwrap();
    m.feed(b"abcd").unwrap();
    m.begin_frame(&data_header(OpCode::Continuation, false, 4), 1000, 10).unwrap();
    m.feed(b"efgh").unwrap();
    assert_eq!(m.buffered(), 8);
    m.begin_frame(&data_header(OpCode::Continuation, true, 4), 1000, 10).unwrap();
    assert!(m.is_over() && m.buffered() == 0);
    m.feed(b"ijkl").unwrap();
    assert!(m.end_frame().unwrap() && m.buffered() == 0);
    m.reset();
    // A compressed message is counted by what it inflates to, as it is fed.
    let mut compressed = data_header(OpCode::Text, true, 3);
    compressed.rsv = crate::protocol::frame::RSV1;
    m.begin_frame(&compressed, 1000, 10).unwrap();
    assert!(!m.is_over(), "3 compressed bytes may inflate to anything");
    m.feed(b"01234").unwrap();
    m.feed(b"56789").unwrap();
    assert!(!m.is_over());
    m.feed(b"!").unwrap();
    assert!(m.is_over() && m.buffered() == 0);
    m.reset();
    // Still checked for UTF-8 while read past; and over the protocol's limit is still an error.
    m.begin_frame(&data_header(OpCode::Text, true, 20), 1000, 10).unwrap();
    assert_eq!(m.feed(&[0xC0, 0xAF]), Err(ProtocolError::InvalidUtf8));
    m.reset();
    assert_eq!(m.begin_frame(&data_header(OpCode::Text, true, 1001), 1000, 10), Err(ProtocolError::MessageTooLarge));
    // The next message starts with no limit of its own until its first frame sets one.
    m.reset();
    m.begin_frame(&data_header(OpCode::Binary, true, 500), 1000, u64::MAX).unwrap();
    assert!(!m.is_over());
}

#[test]
fn close_code_ranges() {
    for code in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999] {
        assert!(is_valid_close_code(code), "{code}");
    }
    for code in [0, 999, 1004, 1005, 1006, 1012, 1013, 1014, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
        assert!(!is_valid_close_code(code), "{code}");
    }
}

#[test]
fn close_payload_rules() {
    assert_eq!(parse_close_payload(&[]), Ok(ClosePayload::Empty));
    assert_eq!(parse_close_payload(&[0x03]), Err(ProtocolError::InvalidClosePayload));
    assert_eq!(parse_close_payload(&[0x03, 0xE8]), Ok(ClosePayload::Code(1000, "")));
    assert_eq!(parse_close_payload(b"\x03\xe8bye"), Ok(ClosePayload::Code(1000, "bye")));
    assert_eq!(parse_close_payload(&[0x03, 0xED]), Err(ProtocolError::InvalidCloseCode(1005)));
    assert_eq!(parse_close_payload(b"\x03\xe8\xff"), Err(ProtocolError::InvalidCloseReason));
    assert_eq!(ProtocolError::InvalidCloseReason.close_code(), 1002);
}

#[test]
fn close_payload_fits_a_control_frame_and_cuts_at_char_boundaries() {
    let long = "é".repeat(100);
    let payload = close_payload(1001, &long);
    assert!(payload.len() <= 125);
    assert_eq!(&payload[..2], &[0x03, 0xE9]);
    assert!(std::str::from_utf8(&payload[2..]).is_ok());
    assert_eq!(close_payload(1000, "bye"), b"\x03\xe8bye");
}

#[test]
fn utf8_fails_on_the_first_invalid_byte() {
    // "κόσμε" then a lone continuation byte, then more text.
    let mut v = Utf8Validator::default();
    assert!(v.feed("κόσμε".as_bytes()).is_ok());
    assert_eq!(v.feed(&[0x80]), Err(ProtocolError::InvalidUtf8));
    // A surrogate (ED A0) is invalid at its second byte.
    let mut v = Utf8Validator::default();
    assert!(v.feed(&[0xED]).is_ok());
    assert_eq!(v.feed(&[0xA0]), Err(ProtocolError::InvalidUtf8));
    // Above U+10FFFF (F4 90) likewise.
    let mut v = Utf8Validator::default();
    assert!(v.feed(&[0xF4]).is_ok());
    assert_eq!(v.feed(&[0x90]), Err(ProtocolError::InvalidUtf8));
    // A truncated character at the end fails at finish.
    let mut v = Utf8Validator::default();
    assert!(v.feed(&[0xE2, 0x82]).is_ok());
    assert_eq!(v.finish(), Err(ProtocolError::InvalidUtf8));
}

proptest! {
    #[test]
    fn utf8_in_pieces_agrees_with_std(bytes in prop::collection::vec(any::<u8>(), 0..64), cuts in prop::collection::vec(0usize..65, 0..6)) {
        let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
        points.push(bytes.len());
        points.sort_unstable();
        let mut v = Utf8Validator::default();
        let mut start = 0;
        let mut ok = true;
        for p in points {
            if v.feed(&bytes[start..p]).is_err() { ok = false; break; }
            start = p;
        }
        if ok { ok = v.finish().is_ok(); }
        prop_assert_eq!(ok, std::str::from_utf8(&bytes).is_ok());
    }

    #[test]
    fn valid_text_cut_anywhere_passes(text in "\\PC{0,40}", cut in 0usize..200) {
        let bytes = text.as_bytes();
        let cut = cut.min(bytes.len());
        let mut v = Utf8Validator::default();
        prop_assert!(v.feed(&bytes[..cut]).is_ok());
        prop_assert!(v.feed(&bytes[cut..]).is_ok());
        prop_assert!(v.finish().is_ok());
    }
}

#[test]
fn fragments_reassemble_into_one_message() {
    let mut m = MessageAssembler::default();
    m.begin_frame(&data_header(OpCode::Text, false, 3), 100, u64::MAX).unwrap();
    m.feed(b"Hel").unwrap();
    assert!(!m.end_frame().unwrap());
    assert!(m.in_progress());
    m.begin_frame(&data_header(OpCode::Continuation, true, 2), 100, u64::MAX).unwrap();
    m.feed(b"l").unwrap();
    m.feed(b"o").unwrap();
    assert!(m.end_frame().unwrap());
    assert_eq!(m.message(), Message::Text("Hello"));
    m.reset();
    assert!(!m.in_progress());
}

#[test]
fn continuation_rules() {
    let mut m = MessageAssembler::default();
    assert_eq!(
        m.begin_frame(&data_header(OpCode::Continuation, true, 0), 100, u64::MAX),
        Err(ProtocolError::UnexpectedContinuation)
    );
    m.begin_frame(&data_header(OpCode::Binary, false, 1), 100, u64::MAX).unwrap();
    m.feed(b"x").unwrap();
    m.end_frame().unwrap();
    assert_eq!(
        m.begin_frame(&data_header(OpCode::Text, true, 0), 100, u64::MAX),
        Err(ProtocolError::ExpectedContinuation)
    );
}

#[test]
fn message_size_is_checked_across_fragments_at_the_edge() {
    let mut m = MessageAssembler::default();
    m.begin_frame(&data_header(OpCode::Binary, false, 60), 100, u64::MAX).unwrap();
    m.feed(&[0; 60]).unwrap();
    m.end_frame().unwrap();
    assert_eq!(
        m.begin_frame(&data_header(OpCode::Continuation, true, 41), 100, u64::MAX),
        Err(ProtocolError::MessageTooLarge)
    );
    m.begin_frame(&data_header(OpCode::Continuation, true, 40), 100, u64::MAX).unwrap();
    // A declared length near u64::MAX cannot overflow the running total.
    let mut m = MessageAssembler::default();
    m.begin_frame(&data_header(OpCode::Binary, false, 50), 100, u64::MAX).unwrap();
    assert_eq!(
        m.begin_frame(&data_header(OpCode::Continuation, true, u64::MAX), 100, u64::MAX),
        Err(ProtocolError::MessageTooLarge)
    );
}

#[test]
fn invalid_utf8_fails_in_the_middle_of_a_fragment() {
    let mut m = MessageAssembler::default();
    m.begin_frame(&data_header(OpCode::Text, false, 1000), 10_000, u64::MAX).unwrap();
    assert!(m.feed(b"valid so far ").is_ok());
    assert_eq!(m.feed(&[0xC0, 0xAF]), Err(ProtocolError::InvalidUtf8));
}

#[test]
fn a_character_split_across_fragments_is_valid() {
    let euro = "€".as_bytes();
    let mut m = MessageAssembler::default();
    m.begin_frame(&data_header(OpCode::Text, false, 1), 100, u64::MAX).unwrap();
    m.feed(&euro[..1]).unwrap();
    assert!(!m.end_frame().unwrap());
    m.begin_frame(&data_header(OpCode::Continuation, true, 2), 100, u64::MAX).unwrap();
    m.feed(&euro[1..]).unwrap();
    assert!(m.end_frame().unwrap());
    assert_eq!(m.message(), Message::Text("€"));
}

#[test]
fn a_large_buffer_is_freed_after_its_message() {
    let mut m = MessageAssembler::default();
    m.begin_frame(&data_header(OpCode::Binary, true, 100_000), 1 << 20, u64::MAX).unwrap();
    m.feed(&vec![0; 100_000]).unwrap();
    assert!(m.end_frame().unwrap());
    m.reset();
    assert_eq!(m.buf.capacity(), 0);
}
