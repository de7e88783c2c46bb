//! A complete application on rust-chat in a few dozen lines: every text
//! message comes back upper-cased; a binary one is refused with 1003.
//!
//!     cargo run --example uppercase -- --bind 127.0.0.1:10001
//!
//! Then, in a browser's console: `ws = new WebSocket('ws://127.0.0.1:10001');
//! ws.onmessage = e => console.log(e.data); ws.send('hi')`.

use rust_chat::app::{App, Context, Message, Request, Route};
use rust_chat::server::{Server, ServerConfig};

struct Uppercase;

impl App for Uppercase {
    /// Nothing to remember per connection.
    type Conn = ();

    /// One service, at every path.
    fn route(&mut self, _: &Request<'_, '_>) -> Route<()> {
        Route::Accept(())
    }

    fn on_message(&mut self, _: &mut (), message: Message<'_>, ctx: &mut Context<'_>) {
        match message {
            Message::Text(text) => ctx.send_text(&text.to_uppercase()),
            // 1003: "a type of data it cannot accept" (RFC 6455 §7.4.1).
            Message::Binary(_) => ctx.close(1003, "text only"),
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = ServerConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bind" => config.bind = args.next().ok_or("--bind needs an address")?.parse()?,
            other => return Err(format!("unknown option {other}; try --bind 127.0.0.1:10001").into()),
        }
    }
    let mut server = Server::bind(config, Uppercase)?;
    server.shutdown_on_signals()?;
    println!("uppercase listening on ws://{}/", server.local_addr());
    server.run()?;
    Ok(())
}
