//! What a node tells its operator about each peer: frame counters,
//! drops that can be pinned on the peer, and latency histograms (the
//! heartbeat round trip, and RPC calls from issue to reply). Recording
//! never allocates: the histograms are sized when the peer is added.

use core::time::Duration;

use hdrhistogram::Histogram;

use crate::engine::peer::PeerState;

/// Per-peer counters (the node-wide ones are [`super::NodeStats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerCounters {
    /// Frames from the peer's address handed to the node.
    pub frames_received: u64,
    /// Frames sent to the peer.
    pub frames_sent: u64,
    /// Authentication missing or unexpected.
    pub unauthenticated: u64,
    /// Tags that did not verify.
    pub auth_failed: u64,
    /// Sequences seen before or older than the window.
    pub replayed: u64,
    /// Session opens the policy refused.
    pub policy_denied: u64,
    /// Sessions closed because the policy withdrew them.
    pub revoked: u64,
}

/// Latency recorded in nanoseconds, 1 ns to 60 s, two significant digits
/// (1 % resolution is plenty for an operator and keeps a histogram at
/// about 30 KiB).
#[derive(Debug, Clone)]
pub struct LatencyHistogram(Histogram<u64>);

const HIGHEST_NS: u64 = 60_000_000_000;

impl Default for LatencyHistogram {
    fn default() -> Self {
        // Bounds and precision are constants that hdrhistogram accepts.
        let histogram = Histogram::new_with_bounds(1, HIGHEST_NS, 2)
            .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"));
        LatencyHistogram(histogram)
    }
}

impl LatencyHistogram {
    /// Adds one sample; values beyond 60 s count as 60 s.
    pub fn record(&mut self, sample: Duration) {
        let ns = u64::try_from(sample.as_nanos()).unwrap_or(u64::MAX);
        self.0.saturating_record(ns.clamp(1, HIGHEST_NS));
    }

    /// Percentiles of what was recorded.
    pub fn summary(&self) -> LatencySummary {
        let h = &self.0;
        let empty = h.is_empty();
        let at = |q: f64| if empty { 0 } else { h.value_at_quantile(q) };
        LatencySummary {
            count: h.len(),
            p50_ns: at(0.5),
            p90_ns: at(0.9),
            p99_ns: at(0.99),
            p999_ns: at(0.999),
            max_ns: if empty { 0 } else { h.max() },
        }
    }
}

/// Percentiles of a latency histogram, in nanoseconds (all 0 when
/// `count` is 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50_ns: u64,
    /// 90th percentile.
    pub p90_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// Largest sample.
    pub max_ns: u64,
}

/// Latency histograms of one peer.
#[derive(Debug, Clone, Default)]
pub struct PeerLatency {
    /// Heartbeat round trips, less the time the peer held the echo.
    pub heartbeat_rtt: LatencyHistogram,
    /// RPC calls this node made on the peer, from the first send to the
    /// complete reply.
    pub rpc_call: LatencyHistogram,
}

/// Everything the node knows about one peer, for `xrelay stats`.
#[derive(Debug, Clone)]
pub struct PeerReport {
    /// The peer's name.
    pub name: String,
    /// Up, down or never heard from.
    pub state: PeerState,
    /// Its counters.
    pub counters: PeerCounters,
    /// Sessions it holds here.
    pub sessions_served: usize,
    /// Sessions this node holds on it.
    pub sessions_client: usize,
    /// Whether its frames are authenticated.
    pub authenticated: bool,
    /// Heartbeat round trips.
    pub heartbeat_rtt: LatencySummary,
    /// RPC calls on it.
    pub rpc_call: LatencySummary,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_nothing_is_zero_and_percentiles_follow_the_samples() {
        let mut histogram = LatencyHistogram::default();
        assert_eq!(histogram.summary(), LatencySummary::default());
        for us in 1..=1000 {
            histogram.record(Duration::from_micros(us));
        }
        histogram.record(Duration::from_secs(3600));
        let summary = histogram.summary();
        assert_eq!(summary.count, 1001);
        // Two significant digits: within 1 %.
        assert!(summary.p50_ns.abs_diff(500_000) <= 5_000, "{summary:?}");
        assert!(summary.p99_ns.abs_diff(990_000) <= 10_000, "{summary:?}");
        assert!(summary.max_ns >= 59_000_000_000, "{summary:?}");
    }
}
