//! Makes a self-signed certificate for `localhost` and `127.0.0.1`, to try
//! TLS locally (browsers will warn about it: it is signed by nobody they know):
//!
//! ```sh
//! cargo run --example self_signed -- target/tls
//! cargo run --release -- --tls-cert target/tls/cert.pem --tls-key target/tls/key.pem
//! ```
//!
//! Writes `cert.pem` and `key.pem` into the directory given (default: the current one).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let made = match rcgen::generate_simple_self_signed(names) {
        Ok(made) => made,
        Err(err) => {
            eprintln!("self_signed: {err}");
            return ExitCode::FAILURE;
        }
    };
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&cert, made.cert.pem()))
        .and_then(|()| std::fs::write(&key, made.signing_key.serialize_pem()));
    if let Err(err) = written {
        eprintln!("self_signed: {}: {err}", dir.display());
        return ExitCode::FAILURE;
    }
    println!("{} and {}", cert.display(), key.display());
    ExitCode::SUCCESS
}
