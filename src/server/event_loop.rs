//! The loop itself: poll, dispatch what the poller reported, run the timers
//! that are due, and decide how long the next wait may be.

use super::connections::interrupted;
use super::{Exit, LISTENER, METRICS, RELOAD, SIGNALS, Server, WAKER};
use crate::app::App;
use crate::connection::TimerAction;
use mio::{Events, Token};
use std::io;
use std::time::{Duration, Instant};
use tracing::info;

impl<A: App> Server<A> {
    pub(super) fn serve(&mut self) -> io::Result<Exit> {
        let c = &self.config;
        info!(
            addr = %self.local_addr,
            max_connections = c.max_connections,
            max_pending_handshakes = c.max_pending_handshakes,
            max_message_size = c.connection.max_message_size,
            max_buffered_bytes = c.max_buffered_bytes,
            max_outgoing_bytes = c.connection.max_outgoing_bytes,
            handshake_timeout = ?c.connection.handshake_timeout,
            ping_interval = ?c.connection.ping_interval,
            idle_timeout = ?c.connection.idle_timeout,
            "rust-chat listening"
        );
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(err) = self.poll.poll(&mut events, timeout) {
                if interrupted(&err) {
                    continue;
                }
                return Err(err);
            }
            let now = Instant::now();
            self.dispatch(&events, now);
            if self.shutdown.forced {
                return Ok(Exit::Forced);
            }
            if self.shutdown.take_notified() {
                self.app.on_notify(&mut self.hub, now);
            }
            for index in std::mem::take(&mut self.ready) {
                if let Some(conn) = self.connections.get_mut(index) {
                    conn.in_ready = false;
                    self.service(index, true, now);
                }
            }
            if self.shutdown.stop_requested() {
                return Ok(Exit::Stopped);
            }
            if self.shutdown.shutdown_requested() {
                self.begin_shutdown(now);
            }
            self.expire(now);
            if self.app.next_deadline().is_some_and(|at| at <= now) {
                self.app.on_deadline(&mut self.hub, now);
            }
            self.app.on_turn_end();
            self.deliver(now);
            if std::mem::take(&mut self.delivery.looked) {
                // Delivery read (and so called the application) again: end that part of the turn too.
                self.app.on_turn_end();
            }
            if self.shutdown.forced {
                return Ok(Exit::Forced);
            }
            // The metrics first: whoever sees the new count may scrape at once.
            self.hub.publish_stats();
            self.hub.stats.connections.set(self.connections.len() as u64);
            self.hub.stats.handshaking.set(self.admission.handshakes_in_progress() as u64);
            self.shutdown.publish_count(self.connections.len());
            if let Some(left) = self.shutdown.drained(self.connections.len(), now)
                && !(left == 0 && self.peers_draining())
            {
                info!(left, "shutdown complete");
                return Ok(Exit::Drained { left });
            }
        }
    }

    /// Handles what the poller reported: new connections, signals, and
    /// connections to read or write.
    pub(super) fn dispatch(&mut self, events: &Events, now: Instant) {
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept(now),
                METRICS => self.accept_metrics(now),
                WAKER => {}
                SIGNALS => self.handle_signals(now),
                RELOAD => self.reload_tls(),
                Token(index) => {
                    // Errors and hang-ups show up as a read that fails or returns 0.
                    let hangup = event.is_read_closed() || event.is_error();
                    if hangup && let Some(conn) = self.connections.get_mut(index) {
                        conn.hangup = true;
                    }
                    self.service(index, event.is_readable() || hangup, now);
                }
            }
        }
    }

    /// How long `poll` may sleep: until the soonest deadline, or forever.
    pub(super) fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.ready.is_empty() {
            return Some(Duration::ZERO); // connections with input waiting: only look for new events
        }
        // A stop or shutdown request, or a notify, whose wake-up was taken by
        // a look for input during delivery: act on it now rather than at the
        // next event (which, for a notify, may be the idle timer's).
        if self.shutdown.stop_requested() || self.shutdown.shutdown_requested() || self.shutdown.notify_pending() {
            return Some(Duration::ZERO);
        }
        // Drained, but serving the metrics port until the other workers are too: look again soon.
        let peers = (self.shutdown.draining_until().is_some() && self.peers_draining())
            .then(|| now + Duration::from_millis(20));
        let soonest = [
            peers,
            self.timers.next(),
            self.admission.paused_until(),
            self.shutdown.draining_until(),
            self.app.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min();
        soonest.map(|at| at.saturating_duration_since(now))
    }

    /// Runs every timer that is due, and resumes accepting after a pause.
    fn expire(&mut self, now: Instant) {
        while let Some((at, index)) = self.timers.pop_due(now) {
            let Some(conn) = self.connections.get_mut(index) else { continue };
            if conn.timer != Some(at) {
                continue; // stale: superseded by a sooner entry, or the slot's last owner's
            }
            conn.timer = None;
            match conn.client.handle_timeout(now, &self.config.connection) {
                TimerAction::Drop => self.remove(index, now),
                // Writes what the timer queued (a Ping, a 408, a Close) and re-arms.
                TimerAction::Continue => self.service(index, false, now),
            }
        }
        if self.admission.resume_at(now) {
            self.accept(now);
            self.accept_metrics(now);
        }
    }
}
