//! # rust-chat
//!
//! A WebSocket (RFC 6455) server library on a single-threaded
//! [mio](https://docs.rs/mio) event loop, and the echo and chat server built
//! on it: the server that Nikita Baksalyar's blog series *Rust in Detail*
//! sets out to build, rebuilt to run in production and to be read alongside
//! the articles.
//!
//! ## A service in a few lines
//!
//! Implement [`App`]: route requests, react to messages, and use the
//! [`Context`](app::Context) to reply, publish to topics and subscribe.
//! Everything else — the handshake, framing, masking, fragments, UTF-8,
//! compression, limits, timeouts, keepalive, backpressure and fan-out — is
//! the server's.
//!
//! ```no_run
//! use rust_chat::app::{App, Context, Message, Request, Route};
//! use rust_chat::server::{Server, ServerConfig};
//!
//! /// Everyone connected to `/room` hears what anyone says there.
//! struct Room;
//!
//! impl App for Room {
//!     type Conn = ();
//!
//!     fn route(&mut self, request: &Request<'_, '_>) -> Route<()> {
//!         if request.path() == "/room" { Route::Accept(()) } else { Route::NotFound }
//!     }
//!
//!     fn on_open(&mut self, _: &mut (), ctx: &mut Context<'_>) {
//!         ctx.subscribe("room");
//!     }
//!
//!     fn on_message(&mut self, _: &mut (), message: Message<'_>, ctx: &mut Context<'_>) {
//!         ctx.publish("room", message);
//!     }
//! }
//!
//! let mut server = Server::bind(ServerConfig::default(), Room).unwrap();
//! server.run().unwrap();
//! ```
//!
//! `examples/uppercase.rs` is a complete program of the same size.
//!
//! ## Layout
//!
//! The layers, from the bytes up; an arrow never points up (a test,
//! `tests/layers.rs`, holds this), and `docs/architecture.md` draws the
//! data flow of one message through them.
//!
//! | module | role |
//! |---|---|
//! | [`protocol`] | sans-IO RFC 6455/7692: frames, masking, the handshake, messages, compression, `ProtocolError` |
//! | [`connection`] | `WebSocketClient` and `ClientState`: one connection's state machine and outgoing queue; bytes and `now` in, bytes out |
//! | [`app`] | the application interface: [`App`], its context, topics |
//! | [`server`] | the only code that touches sockets and the clock: the mio loop, accept and limits, timers, delivery, shutdown, workers |
//! | [`broker`] | topics across event loops in one order: the [`Broker`](broker::Broker) trait and the in-process [`LocalBroker`](broker::LocalBroker) |
//! | [`echo`], [`chat`] | two applications: `/echo`, and the chat's rooms, nicknames, history and page |
//! | [`config`] | the binary's settings, each layer's part with its defaults and why |
//!
//! ## Reading alongside *Rust in Detail*
//!
//! | blog section | here |
//! |---|---|
//! | Part 1: the event loop, `WebSocketServer`, tokens | [`server`] ([`Server`]) |
//! | Part 1: the HTTP upgrade, `gen_key` | [`protocol::handshake`] ([`protocol::handshake::gen_key`]) |
//! | Part 1: `WebSocketClient`, `ClientState` | [`connection`] ([`WebSocketClient`], [`ClientState`]) |
//! | Part 2 §14–16: data frames, unpacking the header, byte order | [`protocol::frame::FrameHeader::decode`] |
//! | Part 2 §17: refactoring the handshake into `ClientState::AwaitingHandshake` | [`ClientState`] |
//! | Part 2 §18: `WebSocketFrame`, `OpCode`, payload length, `apply_mask` | [`protocol::frame`], [`protocol::mask`] |
//! | Part 2 §19: sending frames, the outgoing queue | [`protocol::frame::encode`], [`connection::outgoing::Outgoing`] |
//! | Part 2 §20: control frames: ping, pong, close | [`connection`] (`handle_control`), [`protocol::message`] |
//! | Part 3 (announced): "simplify the usage of the library" | [`app`] ([`App`]) |
//!
//! Where we go further than the blog, and why:
//!
//! * **Partial reads.** The blog read a frame straight off the socket and
//!   assumed it was all there. Frames here are decoded from whatever bytes
//!   have arrived; an incomplete one waits for more without being consumed.
//! * **Partial writes.** The blog ignored how many bytes a write took. The
//!   outgoing queue here advances by exactly that and resumes on WRITABLE.
//! * **Fragmentation.** Messages split over many frames, with control
//!   frames in between, are reassembled ([`protocol::message::MessageAssembler`]).
//! * **Validation.** UTF-8 is checked as bytes arrive; close codes, reserved
//!   bits, opcodes and masking are enforced, each error with its close code.
//! * **Limits.** Every length from the network is checked against
//!   [`ConnectionConfig`] before anything is allocated for it.
//! * **Time.** Handshake deadlines, keepalive pings, idle and close timeouts
//!   run off one heap of deadlines in the event loop; the connection only
//!   ever sees `now` as an argument, so tests run it on a virtual clock.
//! * **An application interface.** The blog's server answered every
//!   message itself; here [`App`] is the seam, and echo and chat are two
//!   applications on it.
//! * **Fan-out.** A message published to a topic is framed once and its
//!   bytes shared by every subscriber's queue; consecutive messages to the
//!   same subscribers are joined into one write; slow consumers are closed
//!   before they can make the server hold what they do not read.
//! * **Compression.** permessage-deflate ([`protocol::deflate`]), inflated
//!   within the message limit so that a small bomb cannot cost more than the
//!   limit, and compressed once per window size for a topic's subscribers.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod app;
pub mod broker;
pub mod chat;
pub mod config;
pub mod connection;
pub mod echo;
pub mod protocol;
pub mod server;

pub use app::App;
pub use config::{Config, ConnectionConfig};
pub use connection::{ClientState, WebSocketClient};
pub use protocol::handshake::HandshakeError;
pub use protocol::{OpCode, ProtocolError, WebSocketFrame};
pub use server::{Server, ServerHandle};

/// The binary's application: [`echo::Echo`] at `/echo`, and the chat at `/`
/// and `/chat` (with its page at `GET /`).
pub type EchoAndChat = app::Both<echo::Echo, chat::Chat>;

/// The binary's application with the chat's settings `chat`.
pub fn echo_and_chat(chat: chat::ChatConfig) -> EchoAndChat {
    app::Both(echo::Echo, chat::Chat::new(chat))
}

/// The node's store as `config` asks for it, opened: none with `--redis`
/// (Redis is the store then) or without [`Config::store`]. The store wakes
/// the loop whose handle is put into the cell it comes with.
type Opened = (Box<dyn broker::store::Store>, broker::store::Loaded, std::sync::Arc<std::sync::OnceLock<ServerHandle>>);

fn open_store(config: &Config) -> Result<Option<Opened>, server::StartError> {
    let Some(store) = config.store.as_ref().filter(|_| config.redis.is_none()) else { return Ok(None) };
    let cell = std::sync::Arc::new(std::sync::OnceLock::<ServerHandle>::new());
    let to_wake = std::sync::Arc::clone(&cell);
    let wake: broker::Wake = Box::new(move || {
        if let Some(handle) = to_wake.get() {
            handle.notify();
        }
    });
    let options = broker::store::StoreOptions { fsync: store.fsync, keep_per_room: config.chat.history_len };
    let (disk, loaded) =
        server::store::DiskStore::open(&store.dir, options, wake).map_err(server::StartError::Store)?;
    Ok(Some((Box::new(disk), loaded, cell)))
}

/// The binary's application on one event loop, bound to `config.server.bind`:
/// with [`Config::store`] its rooms come back from the store and every
/// message is committed to it before it is shown.
pub fn bind_echo_and_chat(config: Config) -> Result<Server<EchoAndChat>, server::StartError> {
    let opened = open_store(&config)?;
    let mut app = echo_and_chat(config.chat);
    let cell = opened.map(|(store, loaded, cell)| {
        app.1.persist(store, loaded);
        cell
    });
    let server = Server::bind(config.server, app)?;
    if let Some(cell) = cell {
        // Before the loop runs, so before any batch can be done.
        let _ = cell.set(server.handle());
    }
    Ok(server)
}

/// The binary's application as `workers` event loops serve it: one chat for
/// all of them ([`chat::shared`]), the echo endpoint in each.
pub type SharedEchoAndChat = app::Both<echo::Echo, chat::shared::SharedChat>;

/// The binary's application on `workers` event loops sharing `config.server.bind`
/// (see [`server::Workers`]), bound and ready: [`go`](server::Workers::go)
/// or [`wait`](server::Workers::wait) lets them serve. The server's limits
/// are the whole server's: each worker gets its share of the connection
/// limits and of `max_buffered_bytes` (but never less than one message);
/// the chat's limits hold over all workers as they are.
pub fn echo_and_chat_workers(
    config: Config,
    workers: usize,
    signals: bool,
) -> Result<(server::Workers, std::sync::Arc<chat::shared::Shared>), server::StartError> {
    let workers = workers.max(1);
    let opened = open_store(&config)?;
    let broker = std::sync::Arc::new(broker::LocalBroker::new(workers, 0));
    let shared = chat::shared::Shared::with_broker(config.chat, workers, broker.clone());
    let mut each = config.server;
    let share = |total: usize| total.div_ceil(workers).max(1);
    each.max_connections = share(each.max_connections);
    each.max_pending_handshakes = share(each.max_pending_handshakes);
    if each.max_connections_per_ip > 0 {
        each.max_connections_per_ip = share(each.max_connections_per_ip);
    }
    each.max_buffered_bytes = share(each.max_buffered_bytes).max(each.connection.max_message_size);
    let apps = std::sync::Arc::clone(&shared);
    let running =
        server::Workers::bind(each, workers, signals, move |worker| app::Both(echo::Echo, apps.worker(worker)))?;
    let wakers: Vec<broker::Wake> = running
        .handles()
        .iter()
        .map(|handle| {
            let handle = handle.clone();
            Box::new(move || handle.notify()) as broker::Wake
        })
        .collect();
    broker.set_wakers(wakers);
    // With a store: its batches wake the first worker, which shows them for all.
    if let (Some((store, loaded, cell)), Some(first)) = (opened, running.handles().first()) {
        let _ = cell.set(first.clone());
        shared.persist(store, loaded);
    }
    // With --redis: the link's news wakes the first worker, which takes it in for all.
    if let (Some(redis), Some(first)) = (config.redis, running.handles().first()) {
        let first = first.clone();
        let mut redis = redis;
        // Named, so that an operator's CLIENT LIST shows which process a connection is.
        let name = format!("rust-chat:{}", std::process::id());
        redis.preload = vec![vec![b"CLIENT".to_vec(), b"SETNAME".to_vec(), name.into_bytes()]];
        redis.preload.extend(broker::redis::script_loads());
        redis.preload.extend(chat::cluster::script_loads());
        let link = server::redis::Link::<chat::cluster::Tag>::start(redis, Box::new(move || first.notify()))
            .map_err(server::StartError::Io)?;
        shared.span_nodes(Box::new(link));
    }
    Ok((running, shared))
}
