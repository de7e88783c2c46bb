//! The operator's endpoints: `GET /metrics` (the Prometheus text format,
//! written by the `prometheus-client` crate) and `GET /healthz`, answered by
//! the server in front of the application's routes, on the main port or on
//! a port of their own ([`MetricsEndpoint`]).
//!
//! Nothing is counted here: each loop counts into its own
//! [`Stats`](crate::app::stats::Stats) as it goes, and a scrape reads every
//! worker's, sums them, adds what the application
//! [reports](crate::App::report), and writes the text out. A scrape is
//! answered by whichever loop received it, from its own turn.

use super::accept::Admission;
use crate::app::stats::{Report, Reported, Stats};
use crate::app::{App, HttpResponse, Request, Session};
use crate::connection::{self, Handler, Reply};
use crate::protocol::message::Message;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::net::SocketAddr;
use std::sync::Arc;

/// Where `GET /metrics` and `GET /healthz` are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetricsEndpoint {
    /// Nowhere: every path is the application's (the library's default).
    #[default]
    Off,
    /// On the main port, before the application's routes (the binary's default).
    MainPort,
    /// On a port of their own (and not on the main one): a listener on this
    /// address, served by the first worker's loop. Anything else there is 404.
    Bind(SocketAddr),
}

/// What the server's endpoints need, kept by the server.
pub(super) struct Endpoints {
    /// `/metrics` and `/healthz` are on the main port.
    on_main: bool,
    /// The server is draining (a graceful shutdown has begun).
    pub draining: bool,
    /// Every worker's counts, this one's at `worker`.
    pub stats: Arc<[Arc<Stats>]>,
    pub worker: usize,
}

impl Endpoints {
    /// One worker's, counting into `mine`.
    pub fn new(endpoint: MetricsEndpoint, mine: &Arc<Stats>) -> Endpoints {
        Endpoints {
            on_main: endpoint == MetricsEndpoint::MainPort,
            draining: false,
            stats: Arc::from([Arc::clone(mine)]),
            worker: 0,
        }
    }
}

/// What the server's endpoints need to answer one connection's request.
pub(super) struct Ops<'s> {
    pub endpoints: &'s Endpoints,
    /// This loop's connections and handshakes in progress now (the other
    /// loops' as they last published them).
    pub admission: &'s Admission,
    /// It came in on the metrics port: nothing else is there.
    pub metrics_port: bool,
}

/// A connection's calls: the server's endpoints first, then the application's [`Session`].
pub(super) struct Served<'s, 'a, A: App> {
    pub session: Session<'a, A>,
    pub ops: Ops<'s>,
}

impl<A: App> Handler for Served<'_, '_, A> {
    fn route(&mut self, request: &Request<'_, '_>) -> connection::Route {
        let ops = &self.ops;
        if ops.endpoints.on_main || ops.metrics_port {
            match request.path() {
                "/metrics" => {
                    self.session.hub.publish_stats();
                    return connection::Route::Respond(ops.metrics(&*self.session.app));
                }
                "/healthz" => return connection::Route::Respond(health(ops.endpoints.draining)),
                _ if ops.metrics_port => return connection::Route::NotFound,
                _ => {}
            }
        }
        self.session.route(request)
    }

    #[inline(always)]
    fn on_open(&mut self, reply: &mut Reply<'_>) {
        self.session.on_open(reply);
    }

    #[inline(always)]
    fn on_message(&mut self, message: Message<'_>, reply: &mut Reply<'_>) {
        self.session.on_message(message, reply);
    }

    #[inline(always)]
    fn message_limit(&mut self) -> usize {
        self.session.message_limit()
    }

    #[inline(always)]
    fn on_message_too_long(&mut self, reply: &mut Reply<'_>) {
        self.session.on_message_too_long(reply);
    }
}

/// `/healthz`: 200 while the server takes new connections, 503 once it drains.
fn health(draining: bool) -> HttpResponse {
    if draining {
        HttpResponse::error(503, "draining")
    } else {
        HttpResponse::ok("text/plain; charset=utf-8", &b"ok\n"[..])
    }
}

impl Ops<'_> {
    /// `/metrics`: every worker's counts summed, then the application's.
    fn metrics<A: App>(&self, app: &A) -> HttpResponse {
        let mut report = Report::default();
        app.report(&mut report);
        let (endpoints, admission) = (self.endpoints, self.admission);
        let live = (admission.open(), admission.handshakes_in_progress());
        let Some(text) = render(&endpoints.stats, endpoints.worker, live, report) else {
            return HttpResponse::error(500, "the metrics could not be written");
        };
        HttpResponse::ok(prometheus_client::encoding::prometheus_text::CONTENT_TYPE, text.into_bytes())
    }
}

/// The scrape's text: `stats` summed (this loop, `me`, counted with its `live` numbers), then `report`.
fn render(stats: &[Arc<Stats>], me: usize, live: (usize, usize), report: Report) -> Option<String> {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(Snapshot::take(stats, me, live, report)));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).ok()?;
    Some(text)
}

/// One loop's numbers at the time of a scrape.
#[derive(Debug, Default, Clone)]
struct Worker {
    connections: u64,
    handshaking: u64,
    open: u64,
    received: u64,
    sent: u64,
}

/// Everything one scrape writes, read at once.
#[derive(Debug)]
struct Snapshot {
    workers: Vec<Worker>,
    opened: u64,
    received: u64,
    sent: u64,
    bytes_received: u64,
    bytes_sent: u64,
    slow: u64,
    closes: Vec<(String, u64)>,
    refusals: Vec<(u16, u64)>,
    report: Report,
}

impl Snapshot {
    fn take(all: &[Arc<Stats>], me: usize, live: (usize, usize), report: Report) -> Snapshot {
        let mut snapshot = Snapshot {
            workers: Vec::with_capacity(all.len()),
            opened: 0,
            received: 0,
            sent: 0,
            bytes_received: 0,
            bytes_sent: 0,
            slow: 0,
            closes: Vec::new(),
            refusals: Vec::new(),
            report,
        };
        for (i, stats) in all.iter().enumerate() {
            let (connections, handshaking) = if i == me {
                (live.0 as u64, live.1 as u64)
            } else {
                (stats.connections.get(), stats.handshaking.get())
            };
            let worker = Worker {
                connections,
                handshaking,
                open: stats.open(),
                received: stats.messages_received.get(),
                sent: stats.messages_sent.get(),
            };
            snapshot.opened += stats.opened.get();
            snapshot.received += worker.received;
            snapshot.sent += worker.sent;
            snapshot.bytes_received += stats.bytes_received.get();
            snapshot.bytes_sent += stats.bytes_sent.get();
            snapshot.slow += stats.slow_consumer_closes.get();
            add_up(&mut snapshot.closes, stats.closes());
            add_up(&mut snapshot.refusals, stats.refusals());
            snapshot.workers.push(worker);
        }
        // Only the codes and statuses that happened: a series per possible one would be noise.
        snapshot.closes.retain(|(_, n)| *n > 0);
        snapshot.refusals.retain(|(_, n)| *n > 0);
        snapshot
    }
}

/// Adds `counts` to `into`, label by label (both in the same order).
fn add_up<L: PartialEq>(into: &mut Vec<(L, u64)>, counts: impl Iterator<Item = (L, u64)>) {
    if into.is_empty() {
        into.extend(counts);
        return;
    }
    for ((_, total), (_, n)) in into.iter_mut().zip(counts) {
        *total += n;
    }
}

fn counter(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> std::fmt::Result {
    ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: i64) -> std::fmt::Result {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// A counter or gauge family: one series per `(label value, value)`.
fn family<V: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    (name, help, kind): (&str, &str, MetricType),
    label: &str,
    series: impl IntoIterator<Item = (String, V)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (value, sample) in series {
        let labels = [(label.to_string(), value)];
        sample.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Saturating, for a gauge computed from counts read one at a time.
fn gauge_value(n: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX))
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let e = &mut encoder;
        let sum = |f: fn(&Worker) -> u64| self.workers.iter().map(f).sum::<u64>();
        let (total, handshaking, open) = (sum(|w| w.connections), sum(|w| w.handshaking), sum(|w| w.open));
        let closing = total.saturating_sub(handshaking).saturating_sub(open);
        family(
            e,
            (
                "rust_chat_connections",
                "Connections by state: sending the upgrade request, open, or closing.",
                MetricType::Gauge,
            ),
            "state",
            [("handshake", handshaking), ("open", open), ("closing", closing)]
                .map(|(state, n)| (state.to_string(), gauge_value(n))),
        )?;
        counter(e, "rust_chat_connections_opened", "WebSocket connections opened.", self.opened)?;
        family(
            e,
            (
                "rust_chat_closes",
                "Opened connections closed, by close code (1006: without a close handshake).",
                MetricType::Counter,
            ),
            "code",
            self.closes.iter().map(|(code, n)| (code.clone(), ConstCounter::new(*n))),
        )?;
        family(
            e,
            ("rust_chat_handshake_failures", "Requests refused with an HTTP error, by status.", MetricType::Counter),
            "status",
            self.refusals.iter().map(|(status, n)| (status.to_string(), ConstCounter::new(*n))),
        )?;
        counter(e, "rust_chat_messages_received", "Whole messages received (text and binary).", self.received)?;
        counter(
            e,
            "rust_chat_messages_sent",
            "Messages sent: replies and each subscriber's copy of a publish.",
            self.sent,
        )?;
        counter(e, "rust_chat_bytes_received", "Bytes read from connections (after TLS).", self.bytes_received)?;
        counter(e, "rust_chat_bytes_sent", "Bytes written to connections (before TLS).", self.bytes_sent)?;
        counter(
            e,
            "rust_chat_slow_consumer_closes",
            "Connections closed (1008) for not reading what they were sent.",
            self.slow,
        )?;
        gauge(e, "rust_chat_workers", "Event loops serving the port.", self.workers.len() as i64)?;
        let per_worker = |f: fn(&Worker) -> u64| {
            self.workers.iter().enumerate().map(move |(i, w)| (i.to_string(), f(w))).collect::<Vec<_>>()
        };
        family(
            e,
            ("rust_chat_worker_connections", "Connections of each worker, any state.", MetricType::Gauge),
            "worker",
            per_worker(|w| w.connections).into_iter().map(|(i, n)| (i, gauge_value(n))),
        )?;
        family(
            e,
            ("rust_chat_worker_messages_received", "Messages received by each worker.", MetricType::Counter),
            "worker",
            per_worker(|w| w.received).into_iter().map(|(i, n)| (i, ConstCounter::new(n))),
        )?;
        family(
            e,
            ("rust_chat_worker_messages_sent", "Messages sent by each worker.", MetricType::Counter),
            "worker",
            per_worker(|w| w.sent).into_iter().map(|(i, n)| (i, ConstCounter::new(n))),
        )?;
        for item in &self.report.items {
            match item {
                Reported::Counter { name, help, value } => counter(e, name, help, *value)?,
                Reported::Gauge { name, help, value } => gauge(e, name, help, *value)?,
                Reported::Histogram { name, help, sum, count, buckets } => {
                    let mut metric = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
                    metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(*sum, *count, buckets, None)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_workers_are_summed_and_shown_apart() {
        let stats: Vec<Arc<Stats>> = (0..2).map(|_| Arc::default()).collect();
        let [a, b] = [&stats[0], &stats[1]];
        a.opened.add(3);
        a.closed(1000);
        a.closed(1006);
        b.opened.add(2);
        b.closed(4001);
        a.messages_received.add(5);
        b.messages_received.add(7);
        b.messages_sent.add(11);
        a.refused(403);
        b.refused(403);
        b.refused(503);
        // Worker 1 published 4 connections, 1 of them handshaking; worker 0 (answering) has 2 and 1 now.
        b.connections.set(4);
        b.handshaking.set(1);
        a.connections.set(99);
        let mut report = Report::default();
        report.gauge("rust_chat_rooms", "Rooms.", 3);
        let text = render(&stats, 0, (2, 1), report).unwrap();
        for line in [
            "rust_chat_connections_opened_total 5",
            "rust_chat_closes_total{code=\"1000\"} 1",
            "rust_chat_closes_total{code=\"1006\"} 1",
            "rust_chat_closes_total{code=\"4000-4999\"} 1",
            "rust_chat_handshake_failures_total{status=\"403\"} 2",
            "rust_chat_handshake_failures_total{status=\"503\"} 1",
            "rust_chat_messages_received_total 12",
            "rust_chat_messages_sent_total 11",
            // open: 3 - 2 + 2 - 1 = 2; handshake 1 + 1; closing (2 + 4) - 2 - 2.
            "rust_chat_connections{state=\"open\"} 2",
            "rust_chat_connections{state=\"handshake\"} 2",
            "rust_chat_connections{state=\"closing\"} 2",
            "rust_chat_worker_connections{worker=\"0\"} 2",
            "rust_chat_worker_connections{worker=\"1\"} 4",
            "rust_chat_worker_messages_received_total{worker=\"1\"} 7",
            "rust_chat_workers 2",
            "rust_chat_rooms 3",
            "# TYPE rust_chat_closes_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
        assert!(!text.contains("code=\"1001\""), "codes that never happened have no series");
    }

    #[test]
    fn health_says_whether_the_server_drains() {
        assert_eq!(health(false).status, 200);
        assert_eq!(health(true).status, 503);
    }
}
