//! A complete application on rust-chat in a few dozen lines: every text
//! message comes back upper-cased; a binary one is refused with 1003.
//!
//!     cargo run --example uppercase -- --bind 127.0.0.1:10001 [--workers 4]
//!
//! Its connections need nothing from each other, so it can use several
//! cores: `--workers N` runs N event loops on the port (`SO_REUSEPORT`).
//!
//! Then, in a browser's console: `ws = new WebSocket('ws://127.0.0.1:10001');
//! ws.onmessage = e => console.log(e.data); ws.send('hi')`.

use rust_chat::app::{App, Context, Message, Request, Route};
use rust_chat::server::{ServerConfig, Workers};

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
    let (mut config, mut workers) = (ServerConfig::default(), 1);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bind" => config.bind = args.next().ok_or("--bind needs an address")?.parse()?,
            "--workers" => workers = args.next().ok_or("--workers needs a number")?.parse()?,
            other => return Err(format!("unknown option {other}; try --bind 127.0.0.1:10001").into()),
        }
    }
    let workers = Workers::start(config, workers, true, |_| Uppercase)?;
    println!("uppercase listening on ws://{}/", workers.local_addr());
    workers.wait()?;
    Ok(())
}
