//! Accepting connections, and the limits on how many the server takes on:
//! the connection limit (503), the handshake limit (the oldest unfinished
//! handshake makes room), and a pause when the process is out of descriptors.

use super::connections::{Connection, interrupted, would_block};
use super::{Server, Throttle};
use crate::app::{App, ConnId, HttpResponse};
use mio::net::TcpStream;
use mio::{Interest, Token};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// How long to stop accepting after the process runs out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The process (EMFILE) or the system (ENFILE) has no file descriptor left,
/// or the kernel no buffer memory (ENOBUFS, ENOMEM): accepting must pause.
fn out_of_resources(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(23 | 24 | 105 | 12))
}

/// What accepting keeps between turns.
#[derive(Default)]
pub(super) struct Admission {
    /// Numbers connections, so a reused slot is never mistaken for its last
    /// owner: the last number given (0 before the first).
    pub(super) generation: u64,
    /// What the numbers go up by less one: with several workers, worker `w`
    /// of `n` numbers its connections `w + 1`, `w + 1 + n`, … so that no two
    /// workers give the same (see [`Server::number_as_worker`](super::Server)).
    pub(super) id_stride_less_one: u64,
    /// Handshakes in progress, oldest first (entries that finished are skipped).
    handshakes: VecDeque<ConnId>,
    handshake_count: usize,
    /// Connections admitted and not yet closed (the table's length, kept here for the metrics).
    open: usize,
    /// Accepting is paused until then (out of file descriptors).
    paused_until: Option<Instant>,
    limit_warning: Throttle,
    fd_warning: Throttle,
    per_address: PerAddress,
}

/// Open connections by client address, kept only while
/// [`max_connections_per_ip`](super::ServerConfig::max_connections_per_ip) is set.
#[derive(Default)]
struct PerAddress {
    open: HashMap<IpAddr, usize>,
    /// Each slot's address, so that closing a connection needs no system call
    /// (and works when the socket no longer knows its peer).
    of_slot: Vec<Option<IpAddr>>,
    warning: Throttle,
}

impl PerAddress {
    fn count(&self, ip: IpAddr) -> usize {
        self.open.get(&ip).copied().unwrap_or(0)
    }

    fn opened(&mut self, slot: usize, ip: IpAddr) {
        if self.of_slot.len() <= slot {
            self.of_slot.resize(slot + 1, None);
        }
        if let Some(entry) = self.of_slot.get_mut(slot) {
            *entry = Some(ip);
            *self.open.entry(ip).or_default() += 1;
        }
    }

    fn closed(&mut self, slot: usize) {
        let Some(ip) = self.of_slot.get_mut(slot).and_then(Option::take) else { return };
        if let Some(count) = self.open.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.open.remove(&ip);
            }
        }
    }
}

impl Admission {
    /// When accepting resumes, if it is paused.
    pub fn paused_until(&self) -> Option<Instant> {
        self.paused_until
    }

    /// Ends a pause that is over; `true` if accepting should resume now.
    pub fn resume_at(&mut self, now: Instant) -> bool {
        if self.paused_until.is_some_and(|until| now >= until) {
            self.paused_until = None;
            return true;
        }
        false
    }

    /// Counts `id` among the handshakes in progress, oldest last. Entries of
    /// connections that have finished (or gone) are dropped from the front,
    /// and the whole list is compacted when they are more than the live ones,
    /// so that it never holds more than about twice the handshakes in
    /// progress, however many connections come and go.
    pub fn start_handshake(&mut self, id: ConnId, mut still_handshaking: impl FnMut(ConnId) -> bool) {
        while self.handshakes.front().is_some_and(|&oldest| !still_handshaking(oldest)) {
            self.handshakes.pop_front();
        }
        if self.handshakes.len() > 2 * self.handshake_count + 16 {
            self.handshakes.retain(|&queued| still_handshaking(queued));
        }
        self.handshakes.push_back(id);
        self.handshake_count += 1;
        self.open += 1;
    }

    /// The connection in `slot` is gone.
    pub fn closed(&mut self, slot: usize) {
        self.per_address.closed(slot);
        self.open = self.open.saturating_sub(1);
    }

    /// Connections admitted and not yet closed.
    pub fn open(&self) -> usize {
        self.open
    }

    /// The handshakes in progress.
    pub fn handshakes_in_progress(&self) -> usize {
        self.handshake_count
    }

    /// A connection that was handshaking no longer is (done, or gone).
    pub fn handshake_done(&mut self) {
        self.handshake_count -= 1;
    }
}

/// The 503 response for a connection the server cannot take now.
fn service_unavailable(why: &str) -> HttpResponse {
    HttpResponse { content_type: "text/plain", headers: vec!["Retry-After: 5".into()], ..HttpResponse::error(503, why) }
}

/// Answers a connection over the limit with 503 and closes it, without ever
/// registering it. Best effort: a fresh socket's send buffer is empty, so
/// the short response goes out in one non-blocking write.
/// On a TLS port a plain 503 would be a protocol error: the connection is just closed.
fn refuse(stream: &mut TcpStream, scratch: &mut [u8], why: &str, tls: bool) {
    // Read what the client already sent, so closing does not reset the connection.
    let _ = stream.read(scratch);
    if !tls {
        let _ = stream.write(&service_unavailable(why).encode());
    }
    let _ = stream.shutdown(Shutdown::Write);
}

impl<A: App> Server<A> {
    /// Accepts every pending connection, unless accepting is paused.
    pub(super) fn accept(&mut self, now: Instant) {
        self.accept_from(false, now);
    }

    /// Accepts every pending connection on the metrics port.
    pub(super) fn accept_metrics(&mut self, now: Instant) {
        self.accept_from(true, now);
    }

    fn accept_from(&mut self, metrics_port: bool, now: Instant) {
        if self.admission.paused_until.is_some() {
            return;
        }
        loop {
            let listener = if metrics_port { &self.metrics_listener } else { &self.listener };
            let Some(listener) = listener.as_ref() else { return };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, metrics_port, now),
                Err(err) if would_block(&err) => return,
                Err(err) if interrupted(&err) => continue,
                // The peer gave up while queued: nothing to do.
                Err(err) if err.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(err) => {
                    // Out of descriptors (or another failure): pause instead of
                    // spinning on a listener that stays readable; the clients
                    // already connected are served meanwhile.
                    self.admission.paused_until = Some(now + ACCEPT_BACKOFF);
                    if let Some(skipped) = self.admission.fd_warning.ready(now) {
                        let kind = if out_of_resources(&err) { "out of resources" } else { "failed" };
                        let open = self.connections.len();
                        warn!(error = %err, open, skipped, "accept {kind}: pausing accepts for 100 ms");
                    }
                    return;
                }
            }
        }
    }

    /// Takes in one accepted connection, or turns it away with 503.
    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, metrics_port: bool, now: Instant) {
        if self.connections.len() >= self.config.max_connections {
            if let Some(skipped) = self.admission.limit_warning.ready(now) {
                let max_connections = self.config.max_connections;
                warn!(max_connections, skipped, "connection limit reached: answering 503");
            }
            let why = "the server is at its connection limit; try again shortly";
            refuse(&mut stream, &mut self.read_buf, why, self.tls.is_some() && !metrics_port);
            self.hub.stats.refused(503);
            return;
        }
        let per_ip = self.config.max_connections_per_ip;
        if per_ip > 0 && self.admission.per_address.count(peer.ip()) >= per_ip {
            if let Some(skipped) = self.admission.per_address.warning.ready(now) {
                warn!(ip = %peer.ip(), max_connections_per_ip = per_ip, skipped, "per-address limit reached: answering 503");
            }
            let why = "too many connections from your address; try again shortly";
            refuse(&mut stream, &mut self.read_buf, why, self.tls.is_some() && !metrics_port);
            self.hub.stats.refused(503);
            return;
        }
        if self.admission.handshake_count >= self.config.max_pending_handshakes {
            self.evict_oldest_handshake(now);
        }
        // Replies are small and already batched per turn: send them now.
        let _ = stream.set_nodelay(true);
        let index = self.connections.next_index();
        if self.poll.registry().register(&mut stream, Token(index), Interest::READABLE).is_err() {
            return;
        }
        // Wrapping: a worker's numbers start below zero (see `number_as_worker`).
        self.admission.generation = self.admission.generation.wrapping_add(1 + self.admission.id_stride_less_one);
        let id = ConnId { index, generation: self.admission.generation };
        // The metrics port speaks plain HTTP, whatever the main port does.
        let tls = match self.tls.as_ref().filter(|_| !metrics_port) {
            None => None,
            Some(config) => match super::tls::Tls::new(config) {
                Ok(tls) => Some(tls),
                Err(err) => {
                    warn!(error = %err, "tls: cannot start a session");
                    let _ = self.poll.registry().deregister(&mut stream);
                    return;
                }
            },
        };
        let client = self.new_client(now);
        let mut conn = Connection::new(id, stream, client, tls);
        conn.metrics_port = metrics_port;
        let inserted = self.connections.insert(conn);
        debug_assert_eq!(inserted, index);
        if per_ip > 0 {
            self.admission.per_address.opened(index, peer.ip());
        }
        let connections = &mut self.connections;
        self.admission.start_handshake(id, |id| connections.get_id(id).is_some_and(|conn| conn.handshaking));
        debug!(conn = id.generation, slot = index, %peer, "accepted");
        // Arms the handshake timer.
        self.service(index, false, now);
    }

    /// Makes room among the handshakes in progress by answering the oldest with 503.
    fn evict_oldest_handshake(&mut self, now: Instant) {
        while let Some(id) = self.admission.handshakes.pop_front() {
            let Some(conn) = self.connections.get_id(id) else { continue };
            if !conn.handshaking {
                continue;
            }
            debug!(conn = id.generation, peer = %conn.peer(), "too many handshakes in progress: dropping the oldest");
            let response = service_unavailable("too many connections are still handshaking");
            conn.client.reject(&response, now, &self.config.connection);
            self.service(id.index, false, now);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_handshake_list_stays_near_the_handshakes_in_progress() {
        let mut admission = Admission::default();
        let mut live: HashSet<ConnId> = HashSet::new();
        // A slow handshake that stays at the front, then 10,000 that finish at once.
        let slow = ConnId { index: 0, generation: 0 };
        live.insert(slow);
        admission.start_handshake(slow, |id| live.contains(&id));
        for generation in 1..=10_000 {
            let id = ConnId { index: 1, generation };
            admission.start_handshake(id, |id| live.contains(&id));
            live.insert(id);
            // ...and it finishes.
            live.remove(&id);
            admission.handshake_done();
        }
        assert_eq!(admission.handshake_count, 1);
        assert!(admission.handshakes.len() <= 2 + 16 + 1, "{}", admission.handshakes.len());
        assert_eq!(admission.handshakes.front(), Some(&slow), "the oldest live one is still first in line");
    }
}
