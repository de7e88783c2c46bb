//! What a connection asks of whoever drives it ([`Handler`], [`Route`]), the
//! channel a handler answers through ([`Reply`]), and what it asked of the
//! connection (a close, a pause), acted on once it returns.

use super::outgoing::Outgoing;
use super::{ConnectionConfig, WebSocketClient};
use crate::protocol::deflate::{DeflateState, SharedDeflaters};
use crate::protocol::frame::{OpCode, RSV1};
use crate::protocol::handshake::{HttpResponse, Request};
use crate::protocol::message::Message;
use std::time::Instant;

/// What a connection asks of whoever drives it: how to answer a request,
/// and what to do when it opens and with each message.
pub trait Handler {
    /// A complete `GET` request head arrived: route it.
    fn route(&mut self, request: &Request<'_, '_>) -> Route;

    /// The upgrade was accepted and its `101` is queued: frames may follow.
    fn on_open(&mut self, reply: &mut Reply<'_>);

    /// One complete text or binary message arrived.
    fn on_message(&mut self, message: Message<'_>, reply: &mut Reply<'_>);

    /// The most bytes (once inflated) the next message may have for whoever
    /// receives it; a longer one is read to its end without being kept, and
    /// [`on_message_too_long`](Self::on_message_too_long) is called instead
    /// of `on_message`. Asked at each message's first frame. Beyond
    /// [`ConnectionConfig::max_message_size`] a message fails the connection
    /// (1009) whatever this says.
    fn message_limit(&mut self) -> usize {
        usize::MAX
    }

    /// A message passed [`message_limit`](Self::message_limit) and was read past.
    fn on_message_too_long(&mut self, _reply: &mut Reply<'_>) {}
}

/// A [`Handler`]'s answer to a request.
#[derive(Debug)]
pub enum Route {
    /// Upgrade to WebSocket, if the request is a valid upgrade (the
    /// connection answers 400 or 426 if it is not, as RFC 6455 §4.2.1 says).
    Upgrade,
    /// Answer with this plain HTTP response and close.
    Respond(HttpResponse),
    /// Nothing lives at this path: 404.
    NotFound,
}

/// Where a handler's messages to one connection go: its outgoing queue,
/// compressed when the connection negotiated permessage-deflate.
pub struct Reply<'a> {
    outgoing: &'a mut Outgoing,
    deflate: Option<&'a mut DeflateState>,
    threshold: usize,
    /// What the handler asked of the connection; acted on once it returns.
    asks: &'a mut Asks,
}

/// What a handler asked of its connection during one call: usually nothing,
/// so one null pointer to make and test on every message.
#[derive(Debug, Default)]
pub(crate) struct Asks(Option<Box<Asked>>);

/// What a handler asked, when it asked anything.
#[derive(Debug, Default)]
struct Asked {
    /// Start the closing handshake with this code and reason.
    close: Option<(u16, String)>,
    /// Process no more input until then.
    pause_until: Option<Instant>,
}

impl Asks {
    fn asked(&mut self) -> &mut Asked {
        self.0.get_or_insert_with(Box::default)
    }

    /// Takes the close asked for, if any.
    pub(crate) fn take_close(&mut self) -> Option<(u16, String)> {
        self.0.as_mut().and_then(|asked| asked.close.take())
    }
}

impl<'a> Reply<'a> {
    /// A channel to `outgoing`, compressing with `deflate` where it pays, and
    /// recording into `asks` a close or pause the handler asks for.
    pub(super) fn new(
        outgoing: &'a mut Outgoing,
        deflate: Option<&'a mut DeflateState>,
        config: &ConnectionConfig,
        asks: &'a mut Asks,
    ) -> Reply<'a> {
        Reply { outgoing, deflate, threshold: config.deflate.threshold, asks }
    }

    /// Sends one message as one frame, compressed if the connection agreed
    /// to permessage-deflate and compression pays for this message.
    pub fn send(&mut self, opcode: OpCode, payload: &[u8], shared: &mut SharedDeflaters) {
        if let Some(state) = self.deflate.as_deref_mut() {
            let mut compressed = Vec::new();
            if state.compress(payload, self.threshold, shared, &mut compressed) {
                self.outgoing.push_frame_rsv(opcode, RSV1, &compressed);
                return;
            }
        }
        self.outgoing.push_frame(opcode, payload);
    }

    /// Asks the connection to start its closing handshake with `code` and
    /// `reason` once the handler returns. Messages sent before it still go out.
    pub fn close(&mut self, code: u16, reason: &str) {
        self.asks.asked().close.get_or_insert_with(|| (code, reason.to_string()));
    }

    /// Asks the connection to process no more of its input until `until`
    /// (flood control): what the peer already sent waits unread, in the
    /// connection's buffer and then in the socket's, so TCP slows the peer
    /// down and nothing it sent is lost or reordered. Control frames wait
    /// too; the idle timeout does not run meanwhile.
    pub fn pause_reading_until(&mut self, until: Instant) {
        let asked = self.asks.asked();
        asked.pause_until = Some(asked.pause_until.map_or(until, |before| before.max(until)));
    }

    /// The same channel, borrowed for a shorter time (to hand on).
    pub fn reborrow(&mut self) -> Reply<'_> {
        Reply {
            outgoing: &mut *self.outgoing,
            deflate: self.deflate.as_deref_mut(),
            threshold: self.threshold,
            asks: &mut *self.asks,
        }
    }
}

impl WebSocketClient {
    /// Acts on what a handler asked during a call: a pause, then a close.
    #[inline(always)]
    pub(super) fn act_on(&mut self, asks: Asks, now: Instant, config: &ConnectionConfig) {
        if let Some(asked) = asks.0 {
            self.act_on_asked(*asked, now, config);
        }
    }

    #[cold]
    fn act_on_asked(&mut self, asks: Asked, now: Instant, config: &ConnectionConfig) {
        if let Some(until) = asks.pause_until
            && until > now
        {
            self.set_pause(Some(until));
        }
        if let Some((code, reason)) = asks.close {
            self.close(code, &reason, now, config);
        }
    }
}
