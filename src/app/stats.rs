//! What one event loop counts for the metrics (`GET /metrics`), and what an
//! application reports beside it ([`Report`]).
//!
//! Every worker has its own [`Stats`], written only by its own loop's thread
//! and read by whoever renders a scrape, which sums the workers' numbers. So
//! counting costs a load, an add and a store on memory no other thread
//! writes: no lock, no read-modify-write instruction, no shared cache line.
//! What is counted per message or per read ([`Tally`]) is cheaper still: a
//! plain add in the loop's own `Hub`, published into its `Stats` at the end
//! of each turn (and just before a scrape that loop answers).

use std::sync::atomic::{AtomicU64, Ordering};

/// A count that one thread writes and any thread may read.
#[derive(Debug, Default)]
pub struct Count(AtomicU64);

impl Count {
    /// Adds `n`. Only the owning loop's thread may call it: two writers could
    /// lose counts (a reader never sees a torn value).
    #[inline(always)]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    /// Sets the value (for a gauge the owning thread publishes).
    #[inline(always)]
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }

    /// The value as last written.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The close codes counted apart: 1000 to 1015; the others (3000–4999, the
/// applications' and registered ones) are counted by thousand.
const NAMED_CLOSE_CODES: std::ops::RangeInclusive<u16> = 1000..=1015;
/// One count per code in [`NAMED_CLOSE_CODES`], then 3000–3999, 4000–4999, and any other.
const CLOSE_SLOTS: usize = 16 + 3;
/// HTTP statuses counted for refused handshakes: 400 to 599.
const STATUS_SLOTS: usize = 200;

/// What the loop counts on the hot path, in plain numbers of its own; its
/// [`Stats`] gets them at each [`Stats::publish`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Whole messages received.
    pub messages_received: u64,
    /// Messages queued to connections.
    pub messages_sent: u64,
    /// Bytes read from connections (after TLS decryption).
    pub bytes_received: u64,
    /// Bytes written to connections (before TLS encryption).
    pub bytes_sent: u64,
}

/// What one event loop counts. All counts only grow, but for the two
/// connection gauges, which the loop publishes.
#[derive(Debug)]
pub struct Stats {
    /// WebSocket connections opened (the upgrade done, the application told).
    pub opened: Count,
    /// Whole messages received (text and binary; control frames are not
    /// counted), as of the last [`publish`](Stats::publish).
    pub messages_received: Count,
    /// Messages queued to connections: replies and deliveries of what was
    /// published (each subscriber's copy counts), as of the last publish.
    pub messages_sent: Count,
    /// Bytes read from connections (after TLS decryption), as of the last publish.
    pub bytes_received: Count,
    /// Bytes written to connections (before TLS encryption), as of the last publish.
    pub bytes_sent: Count,
    /// Connections closed for not reading what was sent to them (1008).
    pub slow_consumer_closes: Count,
    /// Connections in the loop's table (any state), as of its last publish.
    pub connections: Count,
    /// Of those, the ones still sending their upgrade request.
    pub handshaking: Count,
    closes: [Count; CLOSE_SLOTS],
    refusals: [Count; STATUS_SLOTS],
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            opened: Count::default(),
            messages_received: Count::default(),
            messages_sent: Count::default(),
            bytes_received: Count::default(),
            bytes_sent: Count::default(),
            slow_consumer_closes: Count::default(),
            connections: Count::default(),
            handshaking: Count::default(),
            closes: std::array::from_fn(|_| Count::default()),
            refusals: std::array::from_fn(|_| Count::default()),
        }
    }
}

impl Stats {
    /// Publishes what the loop has tallied so far (its running totals).
    #[inline]
    pub fn publish(&self, tally: &Tally) {
        self.messages_received.set(tally.messages_received);
        self.messages_sent.set(tally.messages_sent);
        self.bytes_received.set(tally.bytes_received);
        self.bytes_sent.set(tally.bytes_sent);
    }

    /// Counts an opened connection's end with close code `code` (1006: no close handshake).
    pub fn closed(&self, code: u16) {
        let slot = match code {
            1000..=1015 => usize::from(code - 1000),
            3000..=3999 => 16,
            4000..=4999 => 17,
            _ => 18,
        };
        if let Some(count) = self.closes.get(slot) {
            count.add(1);
        }
    }

    /// Counts a handshake refused with HTTP `status` (400–599; others are not refusals).
    pub fn refused(&self, status: u16) {
        if let Some(count) = status.checked_sub(400).and_then(|i| self.refusals.get(usize::from(i))) {
            count.add(1);
        }
    }

    /// Every close code label with its count (counts of zero included).
    pub fn closes(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        let names = NAMED_CLOSE_CODES.map(|code| code.to_string()).chain([
            "3000-3999".to_string(),
            "4000-4999".to_string(),
            "other".to_string(),
        ]);
        names.zip(self.closes.iter().map(Count::get))
    }

    /// Every refusal status with its count (counts of zero included).
    pub fn refusals(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        (400u16..).zip(self.refusals.iter().map(Count::get))
    }

    /// Connections opened and not yet closed.
    pub fn open(&self) -> u64 {
        let closed: u64 = self.closes.iter().map(Count::get).sum();
        self.opened.get().saturating_sub(closed)
    }
}

/// One number an application reports at a scrape.
#[derive(Debug, Clone, PartialEq)]
pub enum Reported {
    /// A count that only grows (its name ends in `_total` in the output).
    Counter {
        /// The metric's name, without `_total`.
        name: &'static str,
        /// One line on what it counts.
        help: &'static str,
        /// Its value.
        value: u64,
    },
    /// A number that goes up and down.
    Gauge {
        /// The metric's name.
        name: &'static str,
        /// One line on what it measures.
        help: &'static str,
        /// Its value.
        value: i64,
    },
    /// How many samples fell at or below each bound.
    Histogram {
        /// The metric's name.
        name: &'static str,
        /// One line on what it measures.
        help: &'static str,
        /// The sum of the samples.
        sum: f64,
        /// The number of samples.
        count: u64,
        /// Each upper bound, ascending, with the samples above the bound
        /// before it and at or below this one (not cumulative: the output
        /// adds them up).
        buckets: Vec<(f64, u64)>,
    },
}

/// What an application adds to a metrics scrape ([`App::report`](super::App::report)).
#[derive(Debug, Default)]
pub struct Report {
    /// What was reported, in order.
    pub items: Vec<Reported>,
}

impl Report {
    /// A count that only grows.
    pub fn counter(&mut self, name: &'static str, help: &'static str, value: u64) {
        self.items.push(Reported::Counter { name, help, value });
    }

    /// A number that goes up and down.
    pub fn gauge(&mut self, name: &'static str, help: &'static str, value: i64) {
        self.items.push(Reported::Gauge { name, help, value });
    }

    /// The distribution of `samples` over the upper `bounds` (ascending; a
    /// last bucket, `+Inf`, is added).
    pub fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        bounds: &[f64],
        samples: impl IntoIterator<Item = f64>,
    ) {
        let mut counts = vec![0u64; bounds.len() + 1];
        let (mut sum, mut count) = (0.0, 0u64);
        for sample in samples {
            sum += sample;
            count += 1;
            let bucket = bounds.iter().position(|&bound| sample <= bound).unwrap_or(bounds.len());
            if let Some(c) = counts.get_mut(bucket) {
                *c += 1;
            }
        }
        let buckets = bounds.iter().copied().chain([f64::INFINITY]).zip(counts).collect();
        self.items.push(Reported::Histogram { name, help, sum, count, buckets });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_and_refusals_land_in_their_slots() {
        let stats = Stats::default();
        for code in [1000, 1000, 1006, 1015, 3001, 4999, 2999, 5000] {
            stats.closed(code);
        }
        let closes: std::collections::HashMap<String, u64> = stats.closes().collect();
        assert_eq!(closes["1000"], 2);
        assert_eq!(closes["1006"], 1);
        assert_eq!(closes["1015"], 1);
        assert_eq!(closes["3000-3999"], 1);
        assert_eq!(closes["4000-4999"], 1);
        assert_eq!(closes["other"], 2);
        stats.opened.add(10);
        assert_eq!(stats.open(), 2, "ten opened, eight closed");
        for status in [400, 403, 403, 599, 200, 101, 600] {
            stats.refused(status);
        }
        let refusals: Vec<(u16, u64)> = stats.refusals().filter(|&(_, n)| n > 0).collect();
        assert_eq!(refusals, [(400, 1), (403, 2), (599, 1)]);
    }

    #[test]
    fn a_histogram_counts_each_bucket_with_an_infinite_last_one() {
        let mut report = Report::default();
        report.histogram("sizes", "room sizes", &[1.0, 10.0], [0.0, 1.0, 2.0, 10.0, 11.0]);
        let Reported::Histogram { sum, count, buckets, .. } = &report.items[0] else { panic!() };
        assert_eq!((*sum, *count), (24.0, 5));
        assert_eq!(buckets, &[(1.0, 2), (10.0, 2), (f64::INFINITY, 1)]);
    }
}
