//! The `rust-chat` binary: command-line flags onto a [`Config`], bind the
//! echo and chat applications, print the URL, serve.

mod cli;

use cli::Command;
use rust_chat::server::{Exit, StartError, WorkerError};
use rust_chat::{Config, bind_echo_and_chat, echo_and_chat_workers};
use std::process::ExitCode;

/// Logs go to standard error, at the level RUST_LOG asks for (info by default).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn main() -> ExitCode {
    let (config, workers): (Config, usize) = match cli::parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(config, workers)) => (*config, workers),
        Ok(Command::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("rust-chat: {message}");
            return ExitCode::from(2);
        }
    };
    init_logging();
    if config.server.connection.origin.any_origin {
        tracing::warn!(
            "--allowed-origin '*': a page on any site can open a WebSocket to this server in its visitors' browsers"
        );
    }
    let (ws, http) = if config.server.tls.is_some() { ("wss", "https") } else { ("ws", "http") };
    // The chat across nodes is the shared chat's (on one worker or more).
    if workers > 1 || config.redis.is_some() {
        return serve_workers(config, workers, (ws, http));
    }
    let mut server = match bind_echo_and_chat(config) {
        Ok(server) => server,
        Err(err) => return cannot_start(&err),
    };
    if let Err(err) = server.shutdown_on_signals() {
        eprintln!("rust-chat: cannot install signal handlers: {err}");
        return ExitCode::FAILURE;
    }
    let addr = server.local_addr();
    announce(&format!(
        "rust-chat listening on {ws}://{addr}/ (chat page at {http}://{addr}/, echo at {ws}://{addr}/echo){}",
        metrics_line(server.metrics_addr())
    ));
    match server.run() {
        Ok(Exit::Forced) => ExitCode::FAILURE,
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rust-chat: event loop failed: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Says why the server could not start. A data directory that cannot be
/// used is the operator's to mend, like a bad flag: exit 2; anything else 1.
fn cannot_start(err: &StartError) -> ExitCode {
    eprintln!("rust-chat: cannot start: {err}");
    match err {
        StartError::Store(_) => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

/// Prints the URLs on standard output, in one write, and never fails: whoever
/// started the server may read the first line and close the pipe (`println!`
/// would panic on the broken pipe, and a second write could meet it).
fn announce(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("{text}\n").as_bytes()).and_then(|()| out.flush());
}

/// The metrics port's line, when there is one.
fn metrics_line(addr: Option<std::net::SocketAddr>) -> String {
    addr.map_or_else(String::new, |addr| format!("\nmetrics at http://{addr}/metrics, health at http://{addr}/healthz"))
}

/// The Redis line, with `--redis`.
fn redis_line(redis: &Option<(std::net::SocketAddr, u32)>) -> String {
    redis.map_or_else(String::new, |(addr, db)| format!("\nrooms across nodes through redis://{addr}/{db}"))
}

/// `--workers N` with N > 1: N event loops on the port, one chat for all.
fn serve_workers(config: Config, workers: usize, (ws, http): (&str, &str)) -> ExitCode {
    let config_redis = config.redis.as_ref().map(|redis| (redis.addr, redis.db));
    let (running, _chat) = match echo_and_chat_workers(config, workers, true) {
        Ok(started) => started,
        Err(err) => return cannot_start(&err),
    };
    let addr = running.local_addr();
    announce(&format!(
        "rust-chat listening on {ws}://{addr}/ with {workers} worker{} (chat page at {http}://{addr}/, echo at {ws}://{addr}/echo){}{}",
        if workers == 1 { "" } else { "s" },
        metrics_line(running.metrics_addr()),
        redis_line(&config_redis)
    ));
    match running.wait() {
        Ok(Exit::Forced) => ExitCode::FAILURE,
        Ok(_) => ExitCode::SUCCESS,
        Err(err @ WorkerError::Panicked(_)) => {
            // The other workers are still running: ending the process ends them (no half-server).
            tracing::error!("{err}: exiting");
            eprintln!("rust-chat: {err}: exiting");
            ExitCode::from(101)
        }
        Err(err) => {
            eprintln!("rust-chat: {err}");
            ExitCode::FAILURE
        }
    }
}
