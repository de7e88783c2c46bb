//! Servicing one connection: read, hand to the application, write, shut
//! down our side when done; then settle its interest, timer and place on
//! the ready list, or remove it for good.

use super::Server;
use super::accept::Admission;
use super::connections::{self, read_into, read_tls_into};
use super::metrics;
use super::timers::Timers;
use crate::app::{App, ConnId, Session};
use crate::connection::CloseInfo;
use mio::{Interest, Registry, Token};
use std::time::Instant;
use tracing::{debug, warn};

/// Reads one connection may do per turn of the loop (16 × 64 KiB = 1 MiB by
/// default). A client that sends faster than we can process would otherwise
/// never let its socket reach `WouldBlock`, and everyone else would wait.
/// A connection that uses up its budget goes on the ready list and is served
/// again after the others, without waiting for a new event.
const READ_BUDGET: usize = 16;

impl<A: App> Server<A> {
    /// Reads, processes and writes for one connection, then updates its
    /// interest and timer, or removes it when it is finished.
    pub(super) fn service(&mut self, index: usize, readable: bool, now: Instant) {
        let Server { connections, read_buf, config, app, hub, buffered, endpoints, admission, .. } = self;
        let max_buffered = config.max_buffered_bytes;
        let config = &config.connection;
        let Some(conn) = connections.get_mut(index) else {
            return; // a spurious event for a connection already removed
        };
        // What this connection may hold: what the others leave of the bound.
        let allowance = max_buffered.saturating_sub(*buffered - conn.buffered as usize);
        let mut budget = READ_BUDGET;
        let mut want_read = readable;
        let finished = loop {
            if want_read && !conn.peer_eof {
                let session = Session {
                    app: &mut *app,
                    conn: &mut conn.app,
                    hub: &mut *hub,
                    id: ConnId { index, generation: conn.generation },
                    now,
                };
                let ops = metrics::Ops { endpoints, admission, metrics_port: conn.metrics_port };
                let mut session = metrics::Served { session, ops };
                if conn.read_paused {
                    // Input read before a pause comes first, before anything new.
                    conn.client.resume(now, config, &mut session);
                }
                let read = match conn.tls.as_deref_mut() {
                    None => read_into(
                        &conn.stream,
                        &mut conn.client,
                        conn.hangup,
                        read_buf,
                        config,
                        &mut session,
                        now,
                        &mut budget,
                        allowance,
                    ),
                    Some(tls) => read_tls_into(
                        tls,
                        &conn.stream,
                        &mut conn.client,
                        read_buf,
                        config,
                        &mut session,
                        now,
                        &mut budget,
                        allowance,
                    ),
                };
                match read {
                    Ok(read) => {
                        session.session.hub.tally.bytes_received += read.bytes as u64;
                        conn.peer_eof |= read.eof;
                        conn.read_paused = read.paused;
                    }
                    Err(err) => {
                        // Reset by peer, another hard error, or (TLS) a bad handshake or record.
                        if err.kind() == std::io::ErrorKind::InvalidData {
                            debug!(conn = conn.generation, error = %err, "tls: closing the connection");
                        }
                        break true;
                    }
                }
            }
            match conn.write() {
                Ok(written) => hub.tally.bytes_sent += written as u64,
                Err(_) => break true,
            }
            if conn.client.is_done_writing() && !conn.tls_wants_write() {
                if conn.peer_eof {
                    break true;
                }
                if !conn.write_shut {
                    // Our Close (or HTTP response) is out: send FIN (after
                    // TLS's close_notify), and keep reading until the peer's
                    // FIN so our last bytes are not lost to a reset caused by
                    // unread input.
                    let mut shut_now = true;
                    if let Some(tls) = conn.tls.as_deref_mut() {
                        tls.notify_close();
                        if tls.flush(&conn.stream).is_err() {
                            break true;
                        }
                        shut_now = !tls.wants_write();
                    }
                    if shut_now {
                        conn.write_shut = true;
                        if conn.stream.shutdown(std::net::Shutdown::Write).is_err() {
                            break true;
                        }
                    }
                }
            }
            // Reading stopped for backpressure and the queue has drained since:
            // read again now, since no new READABLE edge will come for data
            // that is already waiting.
            if conn.read_paused && conn.client.wants_read(config) && budget > 0 {
                want_read = true;
                continue;
            }
            break false;
        };
        let held = u32::try_from(conn.client.buffered_bytes()).unwrap_or(u32::MAX);
        *buffered = *buffered - conn.buffered as usize + held as usize;
        conn.buffered = held;
        if let Some(CloseInfo::Failed(crate::protocol::close_code::TRY_AGAIN_LATER, _)) = conn.client.close_info()
            && conn.app.is_open()
            && let Some(skipped) = self.busy_warning.ready(now)
        {
            let (total, max) = (*buffered, max_buffered);
            warn!(conn = conn.generation, total, max, skipped, "input in progress at its bound: closing with 1013");
        }
        // The application hears of the end as soon as it is known.
        if conn.app.is_open() && conn.client.close_info().is_some() {
            Session {
                app: &mut *app,
                conn: &mut conn.app,
                hub: &mut *hub,
                id: ConnId { index, generation: conn.generation },
                now,
            }
            .close(conn.client.close_info());
        }
        if finished {
            self.remove(index, now);
            return;
        }
        let registry = self.poll.registry();
        let settled =
            settle(conn, index, budget == 0, registry, &mut self.admission, &mut self.ready, &mut self.timers, config);
        if !settled {
            self.remove(index, now);
        }
    }

    /// Closes a connection for good: the application is told (if it has not
    /// been), it leaves every topic, and its socket is closed.
    pub(super) fn remove(&mut self, index: usize, now: Instant) {
        let Some(mut conn) = self.connections.remove(index) else { return };
        self.buffered -= conn.buffered as usize;
        if conn.handshaking {
            self.admission.handshake_done();
        }
        self.admission.closed(index);
        let info = conn.client.close_info();
        if let Some(CloseInfo::Http(status)) = info {
            self.hub.stats.refused(*status);
        }
        // Tells the application (if it has not been told) and leaves every topic.
        Session {
            app: &mut self.app,
            conn: &mut conn.app,
            hub: &mut self.hub,
            id: ConnId { index, generation: conn.generation },
            now,
        }
        .close(info);
        let clean = matches!(info, Some(CloseInfo::Handshake(_)));
        match info {
            Some(info) => debug!(conn = conn.generation, peer = %conn.peer(), clean, close = %info, "closed"),
            None => debug!(conn = conn.generation, peer = %conn.peer(), clean, "closed (reset or error)"),
        }
        deregister(self.poll.registry(), &mut conn.stream);
    }
}

/// After a service: counts a finished handshake, queues a connection that
/// used up its read budget, and brings its interest and timer up to date.
/// `false` if the poller would not take the new interest (then it must go).
#[allow(clippy::too_many_arguments)]
fn settle<C>(
    conn: &mut connections::Connection<C>,
    index: usize,
    budget_spent: bool,
    registry: &Registry,
    admission: &mut Admission,
    ready: &mut Vec<usize>,
    timers: &mut Timers,
    config: &crate::connection::ConnectionConfig,
) -> bool {
    if conn.handshaking && !conn.client.is_awaiting_handshake() {
        conn.handshaking = false;
        admission.handshake_done();
    }
    if budget_spent && !conn.in_ready {
        conn.in_ready = true;
        ready.push(index);
    }
    let writing = conn.client.wants_write() || conn.tls_wants_write();
    let wanted = if writing { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
    if wanted != conn.interest {
        if registry.reregister(&mut conn.stream, Token(index), wanted).is_err() {
            return false;
        }
        conn.interest = wanted;
    }
    // Arm the timer if the connection now needs one sooner than its live entry.
    if let Some(at) = conn.client.poll_timeout(config) {
        timers.arm(&mut conn.timer, at, index);
    }
    true
}

/// Dropping the stream closes the socket; deregistering first keeps the
/// registry tidy even if the descriptor number is soon reused.
fn deregister(registry: &Registry, stream: &mut mio::net::TcpStream) {
    let _ = registry.deregister(stream);
}
