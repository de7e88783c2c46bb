//! Several event loops on one port, one thread each, sharing nothing:
//! `--workers N`.
//!
//! Every worker is the whole single-threaded server of this module — its own
//! `Poll`, listener, connections, buffers, timers and application value — so
//! nothing is locked or shared on the path of a message. The listeners are
//! bound to the same address with `SO_REUSEPORT`, and the kernel spreads new
//! connections among them by a hash of each connection's addresses and ports
//! (Linux ≥ 3.9); BENCHMARKS.md measures how evenly.
//!
//! This suits applications whose connections need nothing from each other
//! (the echo endpoint, `examples/uppercase.rs`) as it is. Topics are per
//! worker; an application whose connections must meet across workers (the
//! chat: `chat::shared`) keeps its shared state behind a lock and hands each
//! worker, in one order, what it must do there ([`crate::app::Effect`]),
//! waking it with [`ServerHandle::notify`].

use super::{Exit, Server, ServerConfig, ServerHandle, StartError};
use crate::app::App;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use tracing::{error, info, info_span};

/// The listen backlog of each worker's socket (what std uses for its own).
const BACKLOG: i32 = 1024;

/// The number of workers `--workers auto` means: the cores this process may use.
pub fn available_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Why the workers stopped otherwise than by their own exit.
#[derive(Debug)]
pub enum WorkerError {
    /// A worker's event loop failed.
    Io(usize, std::io::Error),
    /// A worker panicked: the others are still running, and whoever owns the
    /// process should end it (the binary does, with a log line).
    Panicked(usize),
}

impl std::fmt::Display for WorkerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerError::Io(n, err) => write!(f, "worker {n}: event loop failed: {err}"),
            WorkerError::Panicked(n) => write!(f, "worker {n} panicked"),
        }
    }
}

impl std::error::Error for WorkerError {}

/// Workers: [`start`](Workers::start) them (or [`bind`](Workers::bind), then
/// [`go`](Workers::go)), then [`wait`](Workers::wait).
pub struct Workers {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    handles: Vec<ServerHandle>,
    threads: Vec<JoinHandle<()>>,
    /// One per worker still waiting to begin: a message (or its end) starts it.
    go: Vec<mpsc::Sender<()>>,
    /// Each worker's end: its number and how its loop returned (`None`: it panicked).
    ends: mpsc::Receiver<(usize, Option<std::io::Result<Exit>>)>,
}

/// A listener on `addr` that other sockets may share (`SO_REUSEPORT`).
fn shared_listener(addr: SocketAddr) -> std::io::Result<mio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

impl Workers {
    /// Binds `n` listeners to `config.bind` (port 0: a free port, the same
    /// for all) and starts a worker thread on each, serving `make_app(i)`
    /// for worker `i` (0-based). With `signals`, SIGINT and SIGTERM drain
    /// every worker (and a second one ends them at once).
    pub fn start<A, F>(config: ServerConfig, n: usize, signals: bool, make_app: F) -> Result<Workers, StartError>
    where
        A: App,
        F: Fn(usize) -> A + Send + Sync + 'static,
    {
        let mut workers = Workers::bind(config, n, signals, make_app)?;
        workers.go();
        Ok(workers)
    }

    /// As [`start`](Workers::start), but the workers wait to serve until
    /// [`go`](Workers::go) (or [`wait`](Workers::wait)): time to hand their
    /// [handles](Workers::handles) to whatever must reach them, before any
    /// connection is accepted. Each worker numbers its connections apart from
    /// the others': worker `w` of `n` gives `ConnId`s whose
    /// `(generation - 1) % n` is `w`.
    pub fn bind<A, F>(config: ServerConfig, n: usize, signals: bool, make_app: F) -> Result<Workers, StartError>
    where
        A: App,
        F: Fn(usize) -> A + Send + Sync + 'static,
    {
        config.validate().map_err(StartError::Config)?;
        if n == 0 {
            return Err(StartError::Config("workers must be at least 1".into()));
        }
        let first = shared_listener(config.bind)?;
        let local_addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..n {
            listeners.push(shared_listener(local_addr)?);
        }
        let mut metrics = match config.metrics {
            super::MetricsEndpoint::Bind(addr) => Some(mio::net::TcpListener::bind(addr)?),
            _ => None,
        };
        let metrics_addr = metrics.as_ref().map(mio::net::TcpListener::local_addr).transpose()?;
        let stats: Arc<[Arc<crate::app::stats::Stats>]> = (0..n).map(|_| Arc::default()).collect();
        // The workers but the first still serving: the first, with the metrics port, outlives them.
        let others = Arc::new(std::sync::atomic::AtomicUsize::new(n - 1));
        let make_app = Arc::new(make_app);
        let (ready_tx, ready_rx) = mpsc::channel();
        let (end_tx, ends) = mpsc::channel();
        let mut threads = Vec::with_capacity(n);
        let mut go = Vec::with_capacity(n);
        for (i, listener) in listeners.into_iter().enumerate() {
            let (go_tx, go_rx) = mpsc::channel::<()>();
            go.push(go_tx);
            let (config, make_app, ready, end) =
                (config.clone(), Arc::clone(&make_app), ready_tx.clone(), end_tx.clone());
            // The first worker serves the metrics port, for all of them.
            let (metrics, stats, others) = (metrics.take(), Arc::clone(&stats), Arc::clone(&others));
            let thread = std::thread::Builder::new().name(format!("worker-{i}")).spawn(move || {
                let _span = info_span!("worker", n = i).entered();
                let started = Server::on_listener(config, make_app(i), listener, metrics).and_then(|mut server| {
                    server.number_as_worker(i, n);
                    server.share_stats(stats, i);
                    if i == 0 && metrics_addr.is_some() {
                        server.outlive(Arc::clone(&others));
                    }
                    if signals {
                        server.shutdown_on_signals()?;
                    }
                    Ok(server)
                });
                let mut server = match started {
                    Ok(server) => {
                        let _ = ready.send((i, Ok(server.handle())));
                        server
                    }
                    Err(err) => {
                        let _ = ready.send((i, Err(err)));
                        return;
                    }
                };
                drop(ready);
                // Wait for the word (or for `Workers` to go away: then a stop was asked, or it is time anyway).
                let _ = go_rx.recv();
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.run()));
                if i > 0 {
                    others.fetch_sub(1, std::sync::atomic::Ordering::Release);
                }
                if result.is_err() {
                    error!("worker {i} panicked: the process should end");
                }
                let _ = end.send((i, result.ok()));
            })?;
            threads.push(thread);
        }
        drop(ready_tx);
        let mut handles: Vec<Option<ServerHandle>> = (0..n).map(|_| None).collect();
        for (i, started) in ready_rx.iter().take(n) {
            match started {
                Ok(handle) => handles[i] = Some(handle),
                Err(err) => {
                    // The others stop as soon as they are let go (when `go` drops).
                    handles.iter().flatten().for_each(ServerHandle::stop);
                    return Err(err);
                }
            }
        }
        let handles: Vec<ServerHandle> = handles.into_iter().flatten().collect();
        if handles.len() < n {
            return Err(StartError::Config("a worker died while starting".into()));
        }
        info!(addr = %local_addr, workers = n, "rust-chat workers listening (SO_REUSEPORT)");
        Ok(Workers { local_addr, metrics_addr, handles, threads, go, ends })
    }

    /// Lets the workers serve (if they are still waiting).
    pub fn go(&mut self) {
        for go in self.go.drain(..) {
            let _ = go.send(());
        }
    }

    /// The address all the workers listen on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The metrics port's address, when there is one ([`MetricsEndpoint::Bind`](super::MetricsEndpoint)).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// One handle per worker, in worker order: to stop them, or to read their
    /// connection counts.
    pub fn handles(&self) -> &[ServerHandle] {
        &self.handles
    }

    /// Waits for every worker to return. All stopped: [`Exit::Stopped`]; all
    /// drained: [`Exit::Drained`] with the connections left over all of them;
    /// any forced: [`Exit::Forced`]. A worker that fails or panics is
    /// reported at once, without waiting for the others.
    pub fn wait(mut self) -> Result<Exit, WorkerError> {
        self.go();
        let mut exit = Exit::Stopped;
        let mut left = 0;
        for _ in 0..self.threads.len() {
            let Ok((i, end)) = self.ends.recv() else { break };
            match end {
                None => return Err(WorkerError::Panicked(i)),
                Some(Err(err)) => return Err(WorkerError::Io(i, err)),
                Some(Ok(Exit::Forced)) => exit = Exit::Forced,
                Some(Ok(Exit::Drained { left: l })) => {
                    left += l;
                    if exit != Exit::Forced {
                        exit = Exit::Drained { left };
                    }
                }
                Some(Ok(Exit::Stopped)) => {}
            }
        }
        for thread in self.threads {
            let _ = thread.join();
        }
        Ok(exit)
    }
}
