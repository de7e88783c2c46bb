//! Stopping: the handle other threads use, SIGINT/SIGTERM, and the graceful
//! drain (1001 to everyone, then wait for them up to the drain timeout).

use super::{RELOAD, SIGNALS, Server};
use crate::app::App;
use crate::protocol::close_code;
use mio::net::UnixStream;
use mio::{Interest, Registry, Token, Waker};
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;
use tracing::{error, info, warn};

/// What a [`ServerHandle`] asks of the loop.
#[derive(Default)]
struct Control {
    stop: AtomicBool,
    shutdown: AtomicBool,
    /// [`ServerHandle::notify`] was called since the loop last looked.
    notified: AtomicBool,
    open: AtomicUsize,
}

/// Controls a running [`Server`] from another thread.
#[derive(Clone)]
pub struct ServerHandle {
    waker: Arc<Waker>,
    control: Arc<Control>,
}

impl ServerHandle {
    /// Makes [`Server::run`] return at once. Open connections are dropped without a Close.
    pub fn stop(&self) {
        self.control.stop.store(true, Ordering::SeqCst);
        // If the wake fails the loop is gone already.
        let _ = self.waker.wake();
    }

    /// Starts a graceful shutdown, as SIGTERM does: stop accepting, send
    /// every client Close 1001, and return from [`Server::run`] once they are
    /// gone or the drain timeout has passed.
    pub fn shutdown(&self) {
        self.control.shutdown.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }

    /// Asks the loop to call its application's [`App::on_notify`] (soon, from
    /// the loop's own thread). Notifies that come before the loop looks are
    /// one call.
    pub fn notify(&self) {
        if !self.control.notified.swap(true, Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
    }

    /// The number of open connections, as of the end of the loop's last turn.
    pub fn connections(&self) -> usize {
        self.control.open.load(Ordering::Relaxed)
    }
}

/// How [`Server::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// [`ServerHandle::stop`] was called.
    Stopped,
    /// A graceful shutdown finished: every connection closed, or the drain
    /// timeout passed with this many still open.
    Drained {
        /// Connections still open when the drain timeout ended the wait.
        left: usize,
    },
    /// A second signal arrived during the drain: the server gave up waiting.
    Forced,
}

/// The stopping state of one server.
pub(super) struct Shutdown {
    waker: Arc<Waker>,
    control: Arc<Control>,
    signals: Option<UnixStream>,
    /// The SIGHUP pipe, when serving TLS.
    reload: Option<UnixStream>,
    signals_seen: usize,
    drain: Drain,
    /// A second signal arrived: [`Server::run`] returns at once.
    pub forced: bool,
}

impl Shutdown {
    pub fn new(registry: &Registry, waker: Token) -> io::Result<Shutdown> {
        let waker = Arc::new(Waker::new(registry, waker)?);
        Ok(Shutdown {
            waker,
            control: Arc::new(Control::default()),
            signals: None,
            reload: None,
            signals_seen: 0,
            drain: Drain::default(),
            forced: false,
        })
    }

    /// Whether [`ServerHandle::notify`] was called and not yet looked at.
    pub fn notify_pending(&self) -> bool {
        self.control.notified.load(Ordering::Acquire)
    }

    /// Whether [`ServerHandle::notify`] was called since the last look (and now it has been looked at).
    pub fn take_notified(&self) -> bool {
        self.control.notified.load(Ordering::Acquire) && self.control.notified.swap(false, Ordering::AcqRel)
    }

    pub fn stop_requested(&self) -> bool {
        self.control.stop.load(Ordering::SeqCst)
    }

    /// A graceful shutdown was asked for and has not begun.
    pub fn shutdown_requested(&self) -> bool {
        self.control.shutdown.load(Ordering::SeqCst) && !self.drain.has_begun()
    }

    pub fn draining_until(&self) -> Option<Instant> {
        self.drain.until
    }

    pub fn publish_count(&self, open: usize) {
        self.control.open.store(open, Ordering::Relaxed);
    }

    /// `Some(left)` once a drain is over: nobody is left, or its time is up.
    pub fn drained(&self, open: usize, now: Instant) -> Option<usize> {
        self.drain.is_over(open, now)
    }
}

/// The graceful drain: when it must end, whoever is still connected.
#[derive(Debug, Default, Clone, Copy)]
struct Drain {
    /// A drain is under way and ends at the latest then.
    until: Option<Instant>,
}

impl Drain {
    fn has_begun(&self) -> bool {
        self.until.is_some()
    }

    /// Starts the drain at `now` (once: a second start changes nothing).
    fn begin(&mut self, now: Instant, timeout: std::time::Duration) -> bool {
        if self.until.is_some() {
            return false;
        }
        self.until = Some(now + timeout);
        true
    }

    /// `Some(left)` once the drain is over: nobody is left, or its time is up.
    fn is_over(&self, open: usize, now: Instant) -> Option<usize> {
        let until = self.until?;
        (open == 0 || now >= until).then_some(open)
    }
}

impl<A: App> Server<A> {
    /// A handle that can stop the server from another thread.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle { waker: Arc::clone(&self.shutdown.waker), control: Arc::clone(&self.shutdown.control) }
    }

    /// Makes SIGINT and SIGTERM start a graceful shutdown (and a second one
    /// end it at once). The signal handler only writes a byte to a pipe that
    /// the loop watches, so no work happens in signal context.
    pub fn shutdown_on_signals(&mut self) -> io::Result<()> {
        let (read, write) = std::os::unix::net::UnixStream::pair()?;
        read.set_nonblocking(true)?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGINT, write.try_clone()?)?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGTERM, write)?;
        let mut read = UnixStream::from_std(read);
        self.poll.registry().register(&mut read, SIGNALS, Interest::READABLE)?;
        self.shutdown.signals = Some(read);
        if self.config.tls.is_some() {
            // SIGHUP: read the certificate and key again.
            let (read, write) = std::os::unix::net::UnixStream::pair()?;
            read.set_nonblocking(true)?;
            signal_hook::low_level::pipe::register(signal_hook::consts::SIGHUP, write)?;
            let mut read = UnixStream::from_std(read);
            self.poll.registry().register(&mut read, RELOAD, Interest::READABLE)?;
            self.shutdown.reload = Some(read);
        }
        Ok(())
    }

    /// SIGHUP: reads the certificate and key files again. New connections
    /// get them; open ones keep theirs. Files that do not load leave the
    /// old ones in place, with an error line.
    pub(super) fn reload_tls(&mut self) {
        let mut buf = [0u8; 16];
        let mut seen = false;
        if let Some(pipe) = self.shutdown.reload.as_mut() {
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen = true;
            }
        }
        let Some(files) = self.config.tls.as_ref().filter(|_| seen) else { return };
        match files.load() {
            Ok(config) => {
                self.tls = Some(config);
                info!(cert = %files.cert.display(), "tls: certificate and key reloaded");
            }
            Err(err) => error!(error = %err, "tls: reload failed, keeping the certificate in use"),
        }
    }

    /// Reads the signal pipe: the first signal starts a graceful shutdown,
    /// the second forces the exit.
    pub(super) fn handle_signals(&mut self, now: Instant) {
        let mut buf = [0u8; 16];
        let mut count = 0;
        if let Some(pipe) = self.shutdown.signals.as_mut() {
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => count += n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        }
        if count == 0 {
            return;
        }
        self.shutdown.signals_seen += count;
        if self.shutdown.signals_seen >= 2 {
            let open = self.connections.len();
            warn!(open, "second signal: exiting without waiting for the drain");
            self.shutdown.forced = true;
            return;
        }
        self.begin_shutdown(now);
    }

    /// Graceful shutdown: stop accepting (but on the metrics port, where
    /// `/healthz` now says 503), close every connection with 1001,
    /// and give them [`drain_timeout`](super::ServerConfig::drain_timeout) to finish.
    pub(super) fn begin_shutdown(&mut self, now: Instant) {
        let drain_timeout = self.config.drain_timeout;
        if !self.shutdown.drain.begin(now, drain_timeout) {
            return;
        }
        info!(open = self.connections.len(), ?drain_timeout, "shutting down");
        self.endpoints.draining = true;
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        for index in self.connections.indices() {
            let Some(conn) = self.connections.get_mut(index) else { continue };
            if conn.metrics_port {
                continue; // a scrape or a health check: it answers and closes by itself
            }
            if conn.client.is_awaiting_handshake() {
                // It has been told nothing yet, and there is nothing to finish.
                self.remove(index, now);
                continue;
            }
            conn.client.close(close_code::GOING_AWAY, "server shutting down", now, &self.config.connection);
            self.service(index, false, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_drain_ends_when_everyone_has_gone_or_its_time_is_up() {
        let t0 = Instant::now();
        let mut drain = Drain::default();
        assert_eq!(drain.is_over(0, t0), None, "no drain, nothing to end");
        assert!(drain.begin(t0, Duration::from_secs(5)));
        assert!(
            !drain.begin(t0 + Duration::from_secs(1), Duration::from_secs(5)),
            "a second signal does not extend it"
        );
        assert_eq!(drain.is_over(3, t0 + Duration::from_millis(4999)), None, "clients still finishing");
        assert_eq!(drain.is_over(0, t0 + Duration::from_secs(1)), Some(0), "the last one has gone");
        assert_eq!(drain.is_over(2, t0 + Duration::from_secs(5)), Some(2), "time is up: two left behind");
    }
}
