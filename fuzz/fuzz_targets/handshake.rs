//! Any bytes as a request head: no panic, a complete head never claims more
//! bytes than it was given, and every refusal is a complete HTTP response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rust_chat::protocol::handshake::{self, MAX_HEADERS};

fuzz_target!(|data: &[u8]| {
    for max in [256, 8192] {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match handshake::parse_request(data, &mut headers, max) {
            Ok(Some((request, used))) => {
                assert!(used <= data.len() && used <= max);
                let _ = request.path();
                let _ = request.is_upgrade();
                match request.validate_upgrade() {
                    Ok(accept) => assert_eq!(accept.len(), 28, "base64 of a SHA-1"),
                    Err(err) => assert!(err.response().starts_with(b"HTTP/1.1 4")),
                }
            }
            Ok(None) => assert!(data.len() < max),
            Err(err) => assert!(err.response().starts_with(b"HTTP/1.1 4")),
        }
    }
});
