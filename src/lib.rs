//! # rust-chat
//!
//! A WebSocket (RFC 6455) echo and chat server on a single-threaded
//! [mio](https://docs.rs/mio) event loop: the server that Nikita Baksalyar's
//! blog series *Rust in Detail* sets out to build, rebuilt to run in
//! production and to be read alongside the articles.
//!
//! ## Layout
//!
//! The protocol core is *sans-IO*: it works on byte buffers and never
//! touches a socket, which is what makes it testable, fuzzable and fast.
//! Only [`server`] does I/O.
//!
//! | module | role |
//! |---|---|
//! | [`config`] | every limit and timeout, with its default and why |
//! | [`frame`] | the frame codec: `OpCode`, `FrameHeader`, `apply_mask`, `decode`, `encode` |
//! | [`handshake`] | the HTTP upgrade: request parsing, validation, `gen_key`, responses |
//! | [`message`] | fragment reassembly, incremental UTF-8, close codes |
//! | [`deflate`] | permessage-deflate (RFC 7692): negotiation, bounded inflate, compression |
//! | [`outgoing`] | the outgoing queue of encoded bytes, with partial and vectored writes |
//! | [`pool`] | a bounded pool of large buffers, reused between messages |
//! | [`client`] | `WebSocketClient` and `ClientState`: one connection's state machine |
//! | [`chat`] | rooms, nicknames, history, rate limits; the chat's JSON events |
//! | [`server`] | the mio loop: accept, read, write, interest, timers, chat delivery |
//!
//! ## Reading alongside *Rust in Detail*
//!
//! | blog section | here |
//! |---|---|
//! | Part 1: the event loop, `WebSocketServer`, tokens | [`server`] |
//! | Part 1: the HTTP upgrade, `gen_key` | [`handshake`] ([`handshake::gen_key`]) |
//! | Part 1: `WebSocketClient`, `ClientState` | [`client`] |
//! | Part 2 §14–16: data frames, unpacking the header, byte order | [`frame::FrameHeader::decode`] |
//! | Part 2 §17: refactoring the handshake into `ClientState::AwaitingHandshake` | [`client::ClientState`] |
//! | Part 2 §18: `WebSocketFrame`, `OpCode`, payload length, `apply_mask` | [`frame`] |
//! | Part 2 §19: sending frames, the outgoing queue | [`frame::encode`], [`outgoing::Outgoing`] |
//! | Part 2 §20: control frames: ping, pong, close | [`client`] (`handle_control`), [`message`] |
//!
//! Where we go further than the blog, and why:
//!
//! * **Partial reads.** The blog read a frame straight off the socket and
//!   assumed it was all there. Frames here are decoded from whatever bytes
//!   have arrived; an incomplete one waits for more without being consumed.
//! * **Partial writes.** The blog ignored how many bytes a write took. The
//!   outgoing queue here advances by exactly that and resumes on WRITABLE.
//! * **Fragmentation.** Messages split over many frames, with control
//!   frames in between, are reassembled ([`message::MessageAssembler`]).
//! * **Validation.** UTF-8 is checked as bytes arrive; close codes, reserved
//!   bits, opcodes and masking are enforced, each error with its close code.
//! * **Limits.** Every length from the network is checked against
//!   [`Config`] before anything is allocated for it.
//! * **Time.** Handshake deadlines, keepalive pings, idle and close timeouts
//!   run off one heap of deadlines in the event loop.
//! * **The chat.** Rooms, nicknames and history ([`chat`]), with a broadcast
//!   encoded once and its bytes shared by every recipient's queue, and slow
//!   consumers closed before they can make the server hold what they do not read.
//! * **Compression.** permessage-deflate ([`deflate`]), inflated within the
//!   message limit so that a small bomb cannot cost more than the limit.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod chat;
pub mod client;
pub mod config;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod message;
pub mod outgoing;
pub mod pool;
pub mod server;

pub use client::{ClientState, WebSocketClient};
pub use config::Config;
pub use frame::{OpCode, ProtocolError, WebSocketFrame};
pub use handshake::HandshakeError;
pub use server::{Server, ServerHandle};
