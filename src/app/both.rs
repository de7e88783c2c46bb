//! Two applications on one server: [`Both`].

use super::{App, Closed, Context, Hub, Message, Request, Route};
use std::time::Instant;

/// Serves the routes of two applications: a request goes to the first, and
/// to the second only when the first has nothing at its path. The binary
/// serves `Both(Echo, Chat)`: `/echo` and the chat.
#[derive(Debug, Default)]
pub struct Both<A, B>(pub A, pub B);

/// The per-connection state of [`Both`]: whichever application accepted it.
#[derive(Debug)]
pub enum Either<L, R> {
    /// A connection of the first application.
    First(L),
    /// A connection of the second application.
    Second(R),
}

impl<A: App, B: App> App for Both<A, B> {
    type Conn = Either<A::Conn, B::Conn>;

    fn route(&mut self, request: &Request<'_, '_>) -> Route<Self::Conn> {
        match self.0.route(request) {
            Route::NotFound => self.1.route(request).map(Either::Second),
            answer => answer.map(Either::First),
        }
    }

    fn on_open(&mut self, conn: &mut Self::Conn, ctx: &mut Context<'_>) {
        match conn {
            Either::First(conn) => self.0.on_open(conn, ctx),
            Either::Second(conn) => self.1.on_open(conn, ctx),
        }
    }

    fn on_message(&mut self, conn: &mut Self::Conn, message: Message<'_>, ctx: &mut Context<'_>) {
        match conn {
            Either::First(conn) => self.0.on_message(conn, message, ctx),
            Either::Second(conn) => self.1.on_message(conn, message, ctx),
        }
    }

    fn max_message_size(&self, conn: &Self::Conn) -> Option<usize> {
        match conn {
            Either::First(conn) => self.0.max_message_size(conn),
            Either::Second(conn) => self.1.max_message_size(conn),
        }
    }

    fn on_message_too_long(&mut self, conn: &mut Self::Conn, ctx: &mut Context<'_>) {
        match conn {
            Either::First(conn) => self.0.on_message_too_long(conn, ctx),
            Either::Second(conn) => self.1.on_message_too_long(conn, ctx),
        }
    }

    fn on_close(&mut self, conn: Self::Conn, closed: &Closed, ctx: &mut Context<'_>) {
        match conn {
            Either::First(conn) => self.0.on_close(conn, closed, ctx),
            Either::Second(conn) => self.1.on_close(conn, closed, ctx),
        }
    }

    fn on_notify(&mut self, hub: &mut Hub, now: Instant) {
        self.0.on_notify(hub, now);
        self.1.on_notify(hub, now);
    }

    fn on_turn_end(&mut self) {
        self.0.on_turn_end();
        self.1.on_turn_end();
    }

    fn next_deadline(&self) -> Option<Instant> {
        match (self.0.next_deadline(), self.1.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_deadline(&mut self, hub: &mut Hub, now: Instant) {
        if self.0.next_deadline().is_some_and(|at| at <= now) {
            self.0.on_deadline(hub, now);
        }
        if self.1.next_deadline().is_some_and(|at| at <= now) {
            self.1.on_deadline(hub, now);
        }
    }

    fn report(&self, report: &mut super::stats::Report) {
        self.0.report(report);
        self.1.report(report);
    }
}
