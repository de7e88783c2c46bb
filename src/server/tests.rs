//! The loop's own tests: waking for a request, and the size of a connection's slot.

use super::*;
use crate::echo::Echo;

fn config() -> ServerConfig {
    ServerConfig { bind: "127.0.0.1:0".parse().unwrap(), ..ServerConfig::default() }
}

#[test]
fn a_stop_or_shutdown_request_never_waits_for_another_event() {
    // The waker's event may be taken by a look for input during delivery;
    // the request itself must still end the next wait at once.
    for request in [ServerHandle::stop, ServerHandle::shutdown] {
        let server = Server::bind(config(), Echo).unwrap();
        let now = Instant::now();
        assert_eq!(server.poll_timeout(now), None, "nothing to wait for: sleep until an event");
        request(&server.handle());
        assert_eq!(server.poll_timeout(now), Some(Duration::ZERO));
    }
}

#[test]
fn a_connection_is_small() {
    // Idle memory per connection is mostly this slot (see BENCHMARKS.md):
    // 320 bytes in a release build since the redesign, 312 with the mask
    // position kept mod 4 in a byte, 256 with the reassembly state boxed
    // until a message spans reads or frames (and still 256 with a TLS
    // pointer, the slot's index no longer kept in it). A debug build's is
    // 16 more: mio keeps a selector id in every socket there, to check
    // registrations (`cargo test` runs this in debug, the benchmarks run release).
    type Conn = <crate::app::Both<Echo, crate::chat::Chat> as App>::Conn;
    let slot = std::mem::size_of::<Option<connections::Connection<Conn>>>();
    let client = std::mem::size_of::<WebSocketClient>();
    eprintln!("Option<Connection>: {slot} bytes; WebSocketClient: {client} bytes");
    let limit = if cfg!(debug_assertions) { 272 } else { 256 };
    assert!(slot <= limit, "{slot}");
}
