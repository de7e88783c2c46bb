//! The blog's server as an application: every message comes back unchanged
//! (same type, same bytes, one frame). Served at `/echo`; the Autobahn
//! conformance suite and the benchmarks talk to it.

use crate::app::{App, Context, Message, Request, Route};

/// Sends every message back as it came, at `/echo`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

/// Where [`Echo`] is served.
pub const ECHO_PATH: &str = "/echo";

impl App for Echo {
    type Conn = ();

    fn route(&mut self, request: &Request<'_, '_>) -> Route<()> {
        if request.path() == ECHO_PATH { Route::Accept(()) } else { Route::NotFound }
    }

    fn on_message(&mut self, _: &mut (), message: Message<'_>, ctx: &mut Context<'_>) {
        ctx.send(message);
    }
}
