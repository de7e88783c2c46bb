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
pub mod stats;
pub mod topics;

pub use crate::connection::CloseInfo;
pub use crate::protocol::handshake::{HttpResponse, Request};
pub use crate::protocol::message::Message;
pub use both::{Both, Either};

use crate::connection::{self, Reply};
use crate::protocol::OpCode;
use crate::protocol::close_code;
use crate::protocol::deflate::SharedDeflaters;
use crate::protocol::message::is_valid_close_code;
use std::sync::Arc;
use std::time::Instant;
use topics::Topics;

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

/// What every connection's [`Context`] shares: the topics (and the outbox of
/// what was published to them), and the compressors for connections without
/// server context takeover.
#[derive(Debug)]
pub struct Hub {
    /// Subscriptions and the outbox.
    pub topics: Topics,
    /// One compressor per window size, reset after every message.
    pub deflaters: SharedDeflaters,
    /// The wall clock (milliseconds since the Unix epoch); the server's, or a test's.
    pub clock: fn() -> u64,
    /// Closes asked for while something for the connection still waited in
    /// the outbox: the driver starts them once that has been delivered.
    pub closes: Vec<(ConnId, u16, String)>,
    /// What this loop counts for the metrics (its own; a scrape sums every worker's).
    pub stats: Arc<stats::Stats>,
    /// What it counts per message and per read, published into `stats` by [`Hub::publish_stats`].
    pub tally: stats::Tally,
}

impl Hub {
    /// Topics whose runs of deliveries stay within `run_limit` bytes, and the wall clock `clock`.
    pub fn new(run_limit: usize, clock: fn() -> u64) -> Hub {
        Hub {
            topics: Topics::new(run_limit),
            deflaters: SharedDeflaters::default(),
            clock,
            closes: Vec::new(),
            stats: Arc::default(),
            tally: stats::Tally::default(),
        }
    }

    /// Publishes the tally into this loop's [`Stats`](stats::Stats), for whoever scrapes them.
    pub fn publish_stats(&self) {
        self.stats.publish(&self.tally);
    }
}

/// What a call asked for, written down instead of done: by a
/// [recording](Context::recording) context, for an application whose state
/// is shared by several workers and whose effects must reach each worker in
/// one order. [`Hub::apply`] (or [`Context::apply`]) does it later.
#[derive(Debug, Clone)]
pub enum Effect {
    /// A message to one connection.
    Send {
        /// Its connection.
        to: ConnId,
        /// Text or binary.
        opcode: OpCode,
        /// The message.
        bytes: std::sync::Arc<[u8]>,
    },
    /// A message to every subscriber of a topic.
    Publish {
        /// The topic.
        topic: std::sync::Arc<str>,
        /// Text or binary.
        opcode: OpCode,
        /// The message.
        bytes: std::sync::Arc<[u8]>,
    },
    /// A connection subscribes to a topic.
    Subscribe {
        /// Its connection.
        id: ConnId,
        /// The topic.
        topic: std::sync::Arc<str>,
    },
    /// A connection unsubscribes from a topic.
    Unsubscribe {
        /// Its connection.
        id: ConnId,
        /// The topic.
        topic: std::sync::Arc<str>,
    },
    /// A connection is to be closed with this code and reason.
    Close {
        /// Its connection.
        id: ConnId,
        /// The close code (already checked to be one that may be sent).
        code: u16,
        /// The reason.
        reason: String,
    },
    /// A connection's input is to pause until then ([`Context::pause_reading_until`]).
    Pause {
        /// Its connection.
        id: ConnId,
        /// Until when.
        until: Instant,
    },
}

impl Effect {
    /// The connection this effect is about, if it is about one (not a publish).
    pub fn connection(&self) -> Option<ConnId> {
        match self {
            Effect::Send { to: id, .. }
            | Effect::Subscribe { id, .. }
            | Effect::Unsubscribe { id, .. }
            | Effect::Close { id, .. }
            | Effect::Pause { id, .. } => Some(*id),
            Effect::Publish { .. } => None,
        }
    }
}

impl Hub {
    /// Does what `effect` says on this server: sends and closes go behind
    /// whatever the connection has waiting (through the outbox), publishes to
    /// this server's subscribers. A pause can only be asked for in a call
    /// about its own connection: here it does nothing.
    pub fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::Send { to, opcode, bytes } => self.topics.send_to(to, opcode, &bytes),
            Effect::Publish { topic, opcode, bytes } => self.topics.publish(&topic, opcode, &bytes),
            Effect::Subscribe { id, topic } => self.topics.subscribe(id, &topic),
            Effect::Unsubscribe { id, topic } => self.topics.unsubscribe(id, &topic),
            Effect::Close { id, code, reason } => self.closes.push((id, code, reason)),
            Effect::Pause { .. } => {}
        }
    }
}

/// What an application can do from a call: about this connection (send,
/// close) and about topics (publish, subscribe, unsubscribe).
pub struct Context<'a> {
    id: ConnId,
    now: Instant,
    /// This connection's queue; `None` in a detached context (and so in `on_close`).
    reply: Option<Reply<'a>>,
    out: Out<'a>,
}

/// Writes a send down (out of line: the hot path is the queue's).
#[cold]
#[inline(never)]
fn record_send(effects: &mut Vec<Effect>, to: ConnId, opcode: OpCode, payload: &[u8]) {
    effects.push(Effect::Send { to, opcode, bytes: payload.into() });
}

/// Where a context's effects go.
enum Out<'a> {
    /// Done at once, on this server's topics and outbox.
    Hub(&'a mut Hub),
    /// Written down (see [`Context::recording`]).
    Record { effects: &'a mut Vec<Effect>, clock: fn() -> u64 },
}

impl<'a> Context<'a> {
    /// A context without a connection queue: what it sends to its
    /// connection goes through the outbox like a publish. For tests, tools
    /// and [`App::on_close`].
    pub fn detached(id: ConnId, now: Instant, hub: &'a mut Hub) -> Context<'a> {
        Context { id, now, reply: None, out: Out::Hub(hub) }
    }

    /// A context that does nothing but write down, in order, what the call
    /// asks for, into `effects` (to be [applied](Hub::apply) later, perhaps
    /// on other servers). `clock` is the wall clock it reports.
    pub fn recording(id: ConnId, now: Instant, clock: fn() -> u64, effects: &'a mut Vec<Effect>) -> Context<'a> {
        Context { id, now, reply: None, out: Out::Record { effects, clock } }
    }

    /// The connection this call is about.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The time of the loop's turn (monotonic).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The wall-clock time, in milliseconds since the Unix epoch.
    pub fn unix_time_ms(&self) -> u64 {
        (self.clock())()
    }

    /// The wall clock this context reports (for a [recording](Context::recording) one made from it).
    pub fn clock(&self) -> fn() -> u64 {
        match &self.out {
            Out::Hub(hub) => hub.clock,
            Out::Record { clock, .. } => *clock,
        }
    }

    /// Does what `effect` says (see [`Hub::apply`]); an effect on this
    /// connection goes through this call's own means (its queue, its close,
    /// its pause). In a recording context, writes it down.
    pub fn apply(&mut self, effect: Effect) {
        if effect.connection() == Some(self.id) {
            match effect {
                Effect::Send { opcode, bytes, .. } => return self.send_frame(opcode, &bytes),
                Effect::Close { code, reason, .. } => return self.close(code, &reason),
                Effect::Pause { until, .. } => return self.pause_reading_until(until),
                _ => {}
            }
        }
        match &mut self.out {
            Out::Hub(hub) => hub.apply(effect),
            Out::Record { effects, .. } => effects.push(effect),
        }
    }

    /// Sends a text message to this connection.
    #[inline]
    pub fn send_text(&mut self, text: &str) {
        self.send_frame(OpCode::Text, text.as_bytes());
    }

    /// Sends a binary message to this connection.
    #[inline]
    pub fn send_binary(&mut self, bytes: &[u8]) {
        self.send_frame(OpCode::Binary, bytes);
    }

    /// Sends `message` (text or binary, as it is) to this connection.
    #[inline]
    pub fn send(&mut self, message: Message<'_>) {
        self.send_frame(message.opcode(), message.as_bytes());
    }

    #[inline(always)]
    fn send_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        match (&mut self.reply, &mut self.out) {
            // Straight onto the queue, unless something for this connection
            // waits in the outbox (a publish earlier in the turn): then behind
            // it, so that it receives everything in the order it was said.
            (Some(reply), Out::Hub(hub)) if !hub.topics.has_waiting(self.id) => {
                reply.send(opcode, payload, &mut hub.deflaters);
                hub.tally.messages_sent += 1;
            }
            (_, Out::Hub(hub)) => hub.topics.send_to(self.id, opcode, payload),
            (_, Out::Record { effects, .. }) => record_send(effects, self.id, opcode, payload),
        }
    }

    /// Starts closing this connection (the close handshake, RFC 6455 §7.1.2)
    /// with `code` and `reason` once the call returns; everything sent to it
    /// before goes out first. A code that may not be sent on the wire (1005,
    /// 1006, 1015, or one outside the ranges of §7.4) is sent as 1011. In
    /// [`App::on_open`] it refuses the connection: the Close goes out at once
    /// and nothing more is read. In [`App::on_close`] there is nothing left to close.
    pub fn close(&mut self, code: u16, reason: &str) {
        let code = if is_valid_close_code(code) { code } else { close_code::INTERNAL_ERROR };
        match &mut self.out {
            Out::Record { effects, .. } => effects.push(Effect::Close { id: self.id, code, reason: reason.into() }),
            Out::Hub(hub) if hub.topics.has_waiting(self.id) => hub.closes.push((self.id, code, reason.to_string())),
            Out::Hub(_) => {
                if let Some(reply) = &mut self.reply {
                    reply.close(code, reason);
                }
            }
        }
    }

    /// Stops reading this connection until `until` (flood control: the IRC
    /// servers' way). What it has sent already waits unread, first in the
    /// server's buffer and then in the kernel's, so TCP slows the sender
    /// down and nothing it sent is lost or reordered; the idle timeout does
    /// not run meanwhile. A later call may only lengthen the pause. Nothing
    /// in a detached context.
    pub fn pause_reading_until(&mut self, until: Instant) {
        if let Out::Record { effects, .. } = &mut self.out {
            effects.push(Effect::Pause { id: self.id, until });
        } else if let Some(reply) = &mut self.reply {
            reply.pause_reading_until(until);
        }
    }

    /// Publishes a text message to every subscriber of `topic` (this
    /// connection too, if it subscribes).
    pub fn publish_text(&mut self, topic: &str, text: &str) {
        self.publish_frame(topic, OpCode::Text, text.as_bytes());
    }

    /// Publishes a binary message to every subscriber of `topic`.
    pub fn publish_binary(&mut self, topic: &str, bytes: &[u8]) {
        self.publish_frame(topic, OpCode::Binary, bytes);
    }

    /// Publishes `message` (text or binary) to every subscriber of `topic`.
    pub fn publish(&mut self, topic: &str, message: Message<'_>) {
        self.publish_frame(topic, message.opcode(), message.as_bytes());
    }

    fn publish_frame(&mut self, topic: &str, opcode: OpCode, payload: &[u8]) {
        match &mut self.out {
            Out::Hub(hub) => hub.topics.publish(topic, opcode, payload),
            Out::Record { effects, .. } => {
                effects.push(Effect::Publish { topic: topic.into(), opcode, bytes: payload.into() })
            }
        }
    }

    /// Subscribes this connection to `topic`.
    pub fn subscribe(&mut self, topic: &str) {
        match &mut self.out {
            Out::Hub(hub) => hub.topics.subscribe(self.id, topic),
            Out::Record { effects, .. } => effects.push(Effect::Subscribe { id: self.id, topic: topic.into() }),
        }
    }

    /// Unsubscribes this connection from `topic`.
    pub fn unsubscribe(&mut self, topic: &str) {
        match &mut self.out {
            Out::Hub(hub) => hub.topics.unsubscribe(self.id, topic),
            Out::Record { effects, .. } => effects.push(Effect::Unsubscribe { id: self.id, topic: topic.into() }),
        }
    }

    /// The number of subscribers `topic` has on this server (0 in a recording context).
    pub fn subscriber_count(&self, topic: &str) -> usize {
        match &self.out {
            Out::Hub(hub) => hub.topics.subscribers(topic).len(),
            Out::Record { .. } => 0,
        }
    }
}

/// What the server keeps of an application for one connection.
#[derive(Debug)]
pub struct AppConn<C>(Stage<C>);

/// Where a connection is in the application's life.
#[derive(Debug)]
enum Stage<C> {
    /// Not routed yet (or routed elsewhere), or already closed for the application.
    None,
    /// Accepted by [`App::route`]; [`App::on_open`] not yet called.
    Routed(C),
    /// Opened: messages go to the application, and [`App::on_close`] is owed.
    Open(C),
}

impl<C> Default for AppConn<C> {
    fn default() -> AppConn<C> {
        AppConn(Stage::None)
    }
}

impl<C> AppConn<C> {
    /// Whether the application still takes calls for this connection.
    pub fn is_open(&self) -> bool {
        matches!(self.0, Stage::Open(_))
    }
}

/// One connection's calls into the application: the glue between the
/// connection layer's [`connection::Handler`] and an [`App`].
pub struct Session<'a, A: App> {
    /// The application.
    pub app: &'a mut A,
    /// Its state for this connection.
    pub conn: &'a mut AppConn<A::Conn>,
    /// What all connections share.
    pub hub: &'a mut Hub,
    /// Which connection this is.
    pub id: ConnId,
    /// The time of the loop's turn.
    pub now: Instant,
}

impl<A: App> Session<'_, A> {
    /// Tells the application the connection is closed (once, and only if it was opened).
    pub fn close(&mut self, info: Option<&CloseInfo>) {
        if let Stage::Open(state) = std::mem::replace(&mut self.conn.0, Stage::None) {
            let closed = Closed::from_info(info);
            self.hub.stats.closed(closed.code);
            if closed.reason == connection::SLOW_CONSUMER {
                self.hub.stats.slow_consumer_closes.add(1);
            }
            let mut ctx = Context::detached(self.id, self.now, self.hub);
            self.app.on_close(state, &closed, &mut ctx);
        }
        self.hub.topics.unsubscribe_all(self.id);
    }

    /// Calls `f` with the application, its state for this connection (if it
    /// is open for it) and a context that replies through `reply`.
    #[inline(always)]
    fn call(&mut self, reply: &mut Reply<'_>, f: impl FnOnce(&mut A, &mut A::Conn, &mut Context<'_>)) {
        if let Stage::Open(state) = &mut self.conn.0 {
            let mut ctx =
                Context { id: self.id, now: self.now, reply: Some(reply.reborrow()), out: Out::Hub(self.hub) };
            f(self.app, state, &mut ctx);
        }
    }
}

impl<A: App> connection::Handler for Session<'_, A> {
    fn route(&mut self, request: &Request<'_, '_>) -> connection::Route {
        match self.app.route(request) {
            Route::Accept(state) => {
                // The peer's own words: logged escaped ({:?}) and cut short.
                let origin = request.header("Origin").map(|o| String::from_utf8_lossy(&o[..o.len().min(200)]));
                tracing::debug!(conn = self.id.generation, path = ?request.path(), origin = ?origin, "upgrade accepted");
                self.conn.0 = Stage::Routed(state);
                connection::Route::Upgrade
            }
            Route::Respond(response) => connection::Route::Respond(response),
            Route::NotFound => connection::Route::NotFound,
        }
    }

    fn on_open(&mut self, reply: &mut Reply<'_>) {
        if let Stage::Routed(state) = std::mem::replace(&mut self.conn.0, Stage::None) {
            self.conn.0 = Stage::Open(state);
            self.hub.stats.opened.add(1);
        }
        self.call(reply, |app, state, ctx| app.on_open(state, ctx));
    }

    #[inline]
    fn on_message(&mut self, message: Message<'_>, reply: &mut Reply<'_>) {
        self.hub.tally.messages_received += 1;
        self.call(reply, |app, state, ctx| app.on_message(state, message, ctx));
    }

    #[inline]
    fn message_limit(&mut self) -> usize {
        match &self.conn.0 {
            Stage::Open(state) => self.app.max_message_size(state).unwrap_or(usize::MAX),
            _ => usize::MAX,
        }
    }

    fn on_message_too_long(&mut self, reply: &mut Reply<'_>) {
        self.hub.tally.messages_received += 1;
        self.call(reply, |app, state, ctx| app.on_message_too_long(state, ctx));
    }
}
