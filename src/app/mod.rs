//! The application interface: what a service built on rust-chat implements
//! ([`App`]), and what it can do from each call ([`Context`]).
//!
//! An application routes requests (accept a WebSocket upgrade with a
//! per-connection state, answer a plain GET with a page, or say there is
//! nothing at that path) and reacts to connections opening, sending whole
//! messages, and closing. Everything below it — the handshake, framing,
//! masking, fragments, UTF-8, compression, limits, timeouts, keepalive,
//! backpressure — is done for it, and so is fan-out: a connection can
//! subscribe to named [topics](Context::subscribe), and a message
//! [published](Context::publish_text) to one is framed once, compressed once
//! per window size, and shared by every subscriber's queue; a subscriber
//! that cannot keep up is closed by the server's policy.
//!
//! ```no_run
//! use rust_chat::app::{App, Context, Message, Request, Route};
//!
//! /// Answers every text message upper-cased.
//! struct Shout;
//!
//! impl App for Shout {
//!     type Conn = ();
//!
//!     fn route(&mut self, request: &Request<'_, '_>) -> Route<()> {
//!         if request.path() == "/" { Route::Accept(()) } else { Route::NotFound }
//!     }
//!
//!     fn on_message(&mut self, _: &mut (), message: Message<'_>, ctx: &mut Context<'_>) {
//!         if let Message::Text(text) = message {
//!             ctx.send_text(&text.to_uppercase());
//!         }
//!     }
//! }
//!
//! let config = rust_chat::server::ServerConfig::default();
//! let mut server = rust_chat::Server::bind(config, Shout).unwrap();
//! server.run().unwrap();
//! ```

mod both;
mod context;
mod hub;
mod session;
pub mod stats;
pub mod topics;

pub use crate::connection::CloseInfo;
pub use crate::protocol::handshake::{HttpResponse, Request};
pub use crate::protocol::message::Message;
pub use both::{Both, Either};
pub use context::Context;
pub use hub::{Effect, Hub};
pub use session::{AppConn, Session};

use crate::protocol::close_code;
use std::time::Instant;

/// A service built on rust-chat. One value serves every connection; the
/// server calls it from its event loop, one call at a time.
pub trait App {
    /// What the application keeps for each connection it accepts.
    type Conn;

    /// A `GET` request arrived: accept it as a WebSocket (with the state for
    /// this connection), answer it with plain HTTP, or say nothing is here.
    /// An accepted request that is not a valid upgrade is answered 400 or
    /// 426 by the server; the state is then dropped with the connection,
    /// without any other call.
    fn route(&mut self, request: &Request<'_, '_>) -> Route<Self::Conn>;

    /// The upgrade is done (the `101` is queued): the connection may be
    /// sent to, subscribed, or closed.
    fn on_open(&mut self, _conn: &mut Self::Conn, _ctx: &mut Context<'_>) {}

    /// One whole message (text or binary, its fragments joined, its UTF-8 checked).
    fn on_message(&mut self, conn: &mut Self::Conn, message: Message<'_>, ctx: &mut Context<'_>);

    /// The most bytes one message to this connection may have, once
    /// inflated. `None` (the default) leaves it at the server's
    /// [`max_message_size`](crate::ConnectionConfig::max_message_size). A
    /// longer message is read to its end as it arrives without being kept
    /// (so an application of small messages, like the chat's 4 KiB, never
    /// makes the server hold more for it), and
    /// [`on_message_too_long`](App::on_message_too_long) is called instead of
    /// [`on_message`](App::on_message). Asked at each message's first frame.
    fn max_message_size(&self, _conn: &Self::Conn) -> Option<usize> {
        None
    }

    /// A message longer than [`max_message_size`](App::max_message_size)
    /// arrived and was dropped. By default the connection is closed with 1009
    /// ("too big to process"); an application may answer and go on instead.
    fn on_message_too_long(&mut self, _conn: &mut Self::Conn, ctx: &mut Context<'_>) {
        ctx.close(close_code::TOO_BIG, "message too big");
    }

    /// The connection is closed for the application: nothing more can be sent
    /// to it. Called once for every connection that was opened: as soon as
    /// its end is known (the peer's Close, a protocol error, a timeout, the
    /// peer hanging up, the server closing a slow consumer), or, for a close
    /// the server started (shutdown, [`Context::close`]), when the peer
    /// answers or the close times out; and for every connection still open
    /// when [`Server::run`](crate::Server::run) returns. The server
    /// unsubscribes it from every topic after this.
    fn on_close(&mut self, _conn: Self::Conn, _closed: &Closed, _ctx: &mut Context<'_>) {}

    /// Someone called [`ServerHandle::notify`](crate::server::ServerHandle::notify)
    /// for this server (another worker, another thread): the application
    /// picks up what was left for it and [applies](Hub::apply) it, from
    /// the loop's thread. Calls are coalesced: one may stand for many notifies.
    fn on_notify(&mut self, _hub: &mut Hub, _now: Instant) {}

    /// The loop's turn is ending: everything read in it has been handled,
    /// and what it queued is about to be written. A time to do once what
    /// the turn's calls would each have done (the shared chat wakes the
    /// other workers here, once a turn rather than once a message).
    fn on_turn_end(&mut self) {}

    /// The soonest time the application wants [`App::on_deadline`] called
    /// (the chat: when a token expires). `None`: no such time. Asked once
    /// per turn of the loop, so it should be cheap.
    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    /// The time [`App::next_deadline`] gave has come (or passed): what the
    /// application does with connections goes through `hub`.
    fn on_deadline(&mut self, _hub: &mut Hub, _now: Instant) {}

    /// A metrics scrape (`GET /metrics`) is being answered: add the
    /// application's own numbers to what the server counts (the chat: its
    /// rooms, their sizes, the messages its rate limit held back). Called
    /// from the loop of the worker that answers the scrape, so it should be
    /// quick; names should start with the application's prefix.
    fn report(&self, _report: &mut stats::Report) {}
}

/// An application's answer to a request.
#[derive(Debug)]
pub enum Route<C> {
    /// Upgrade to WebSocket, with this state for the connection.
    Accept(C),
    /// Answer with plain HTTP (a page, or a refusal such as 403) and close.
    Respond(HttpResponse),
    /// Nothing lives at this path (404, unless another app has it: see [`Both`]).
    NotFound,
}

impl<C> Route<C> {
    /// The same answer with the connection state changed by `f`.
    pub fn map<D>(self, f: impl FnOnce(C) -> D) -> Route<D> {
        match self {
            Route::Accept(conn) => Route::Accept(f(conn)),
            Route::Respond(response) => Route::Respond(response),
            Route::NotFound => Route::NotFound,
        }
    }
}

/// How a connection ended, as [`App::on_close`] is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    /// The close code: the peer's in a close handshake, whoever started it
    /// (1005 if it gave none); the server's if it failed the connection (a
    /// protocol error, a timeout, a slow consumer); 1006 if TCP just ended.
    pub code: u16,
    /// The server's reason when it failed the connection; empty otherwise.
    pub reason: &'static str,
    /// Whether the close handshake completed.
    pub clean: bool,
}

impl Closed {
    /// What `info` says (`None`: the connection was dropped without one, e.g. a reset).
    pub fn from_info(info: Option<&CloseInfo>) -> Closed {
        match info {
            Some(CloseInfo::Handshake(code)) => {
                Closed { code: code.unwrap_or(close_code::NO_STATUS), reason: "", clean: true }
            }
            Some(CloseInfo::Failed(code, reason)) => Closed { code: *code, reason, clean: false },
            Some(CloseInfo::Http(_) | CloseInfo::Abrupt) | None => {
                Closed { code: close_code::ABNORMAL, reason: "", clean: false }
            }
        }
    }
}

/// A connection as the application knows it: the server's slot for it, and
/// a generation number so that a slot reused by a new connection is never
/// mistaken for the one that had it before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    /// The connection's slot in the server.
    pub index: usize,
    /// Distinguishes the connections that have used this slot.
    pub generation: u64,
}

/// A map keyed by [`ConnId`], hashed by [`IdHasher`].
pub type IdMap<V> = std::collections::HashMap<ConnId, V, std::hash::BuildHasherDefault<IdHasher>>;

/// A hasher for [`ConnId`]s: a folded multiply of each word (the high half
/// of the 128-bit product folded onto the low, so that the table's low bits
/// see every bit of the generation, which steps by the number of workers).
/// Cheaper than std's SipHash, which guards against keys chosen to collide:
/// no peer chooses a `ConnId`, the server numbers them.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl IdHasher {
    fn mix(&mut self, word: u64) {
        let product = u128::from(self.0 ^ word) * 0x9e37_79b9_7f4a_7c15;
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.mix(word);
    }

    fn write_usize(&mut self, word: usize) {
        self.mix(word as u64);
    }
}

#[cfg(test)]
mod id_hasher_tests {
    use super::{ConnId, IdHasher};
    use std::hash::BuildHasher;

    /// With 4 workers generations step by 4: a table of 64 buckets must
    /// still see them spread over (nearly) all its buckets, not a quarter.
    #[test]
    fn generations_that_step_by_the_worker_count_spread_over_the_low_bits() {
        let build = std::hash::BuildHasherDefault::<IdHasher>::default();
        let mut used = [false; 64];
        for n in 0..256u64 {
            let id = ConnId { index: (n % 50) as usize, generation: 4 * n + 1 };
            used[(build.hash_one(id) % 64) as usize] = true;
        }
        assert!(used.iter().filter(|&&u| u).count() > 56, "{used:?}");
    }

    #[test]
    fn different_ids_hash_apart_and_one_id_alike() {
        let build = std::hash::BuildHasherDefault::<IdHasher>::default();
        let (a, b) = (ConnId { index: 1, generation: 2 }, ConnId { index: 2, generation: 1 });
        assert_ne!(build.hash_one(a), build.hash_one(b));
        assert_eq!(build.hash_one(a), build.hash_one(ConnId { index: 1, generation: 2 }));
    }
}
