//! The glue that drives an [`App`] from a connection: [`Session`] is the
//! connection layer's [`Handler`](connection::Handler), and [`AppConn`] is
//! where the application stands with each connection.

use super::context::Out;
use super::{App, CloseInfo, Closed, ConnId, Context, Hub, Message, Request, Route};
use crate::connection::{self, Reply};
use std::time::Instant;

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
