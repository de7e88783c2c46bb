//! `examples/uppercase.rs`, run as a user would run it: its own process,
//! `--bind 127.0.0.1:0`, spoken to over TCP.

mod common;

use common::*;

#[test]
fn the_uppercase_example_answers_text_upper_cased_and_refuses_binary() {
    let server = Spawned::example("uppercase", &[]);
    let mut client = RawClient::open(server.addr, "/anything");
    client.send_text("hello, wörld");
    assert_eq!(client.read_frame(), Frame::text("HELLO, WÖRLD"));
    // Fragmented, the message is still one message.
    client.send_frame(false, TEXT, b"a");
    client.send_frame(true, CONTINUATION, b"b");
    assert_eq!(client.read_frame(), Frame::text("AB"));
    client.send_frame(true, BINARY, &[1, 2, 3]);
    let close = client.read_close();
    assert_eq!(close.close_code(), Some(1003));
    assert_eq!(&close.payload[2..], b"text only");
}

#[test]
fn the_uppercase_example_refuses_an_unknown_flag() {
    let output = std::process::Command::new(example_binary("uppercase")).arg("--frobnicate").output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown option --frobnicate"));
}
