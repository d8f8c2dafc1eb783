//! Exact latency percentiles and per-second counts.
//!
//! Runs here record at most a few hundred thousand samples, so every sample is kept and sorted
//! once: percentiles are exact (nearest rank), with no histogram resolution to explain.

use std::time::Duration;

use serde_json::{Value, json};

/// Latency samples, in microseconds.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    micros: Vec<u64>,
    sorted: bool,
}

/// The percentiles every report shows.
pub const REPORTED: [(&str, f64); 5] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p99_9", 0.999),
    ("max", 1.0),
];

impl Samples {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(&mut self, latency: Duration) {
        self.record_micros(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn record_micros(&mut self, micros: u64) {
        self.micros.push(micros);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.micros.len()
    }

    pub fn is_empty(&self) -> bool {
        self.micros.is_empty()
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.micros.sort_unstable();
            self.sorted = true;
        }
    }

    /// The nearest-rank percentile `p` (0.0 ..= 1.0) in microseconds: the smallest sample that at
    /// least `p` of all samples are less than or equal to. `None` without samples.
    pub fn percentile_micros(&mut self, p: f64) -> Option<u64> {
        self.sort();
        let n = self.micros.len();
        if n == 0 {
            return None;
        }
        let rank = (p.clamp(0.0, 1.0) * n as f64).ceil() as usize;
        self.micros.get(rank.clamp(1, n) - 1).copied()
    }

    pub fn percentile_millis(&mut self, p: f64) -> Option<f64> {
        self.percentile_micros(p).map(millis)
    }

    pub fn mean_millis(&self) -> Option<f64> {
        if self.micros.is_empty() {
            return None;
        }
        let sum: u128 = self.micros.iter().map(|&m| u128::from(m)).sum();
        Some(millis((sum / self.micros.len() as u128) as u64))
    }

    /// `{count, mean, p50, p90, p99, p99_9, max}`, latencies in milliseconds.
    pub fn summary(&mut self) -> Value {
        let mut summary = serde_json::Map::new();
        summary.insert("count".into(), json!(self.len()));
        summary.insert("mean".into(), json!(self.mean_millis()));
        for (name, p) in REPORTED {
            summary.insert(name.into(), json!(self.percentile_millis(p)));
        }
        Value::Object(summary)
    }

    /// Points `(x, milliseconds)` of the latency-by-percentile curve, where `x = log10(1 / (1 -
    /// p))` (0 is the median's left end, 1 is p90, 2 is p99, ...). The curve stops at the
    /// resolution the sample count supports, and its last point is the maximum.
    pub fn percentile_curve(&mut self) -> Vec<(f64, f64)> {
        if self.is_empty() {
            return Vec::new();
        }
        let x_max = percentile_axis_max(self.len());
        let steps = 200;
        let mut points: Vec<(f64, f64)> = (0..=steps)
            .filter_map(|i| {
                let x = x_max * f64::from(i) / f64::from(steps);
                let p = 1.0 - 10_f64.powf(-x);
                self.percentile_millis(p).map(|ms| (x, ms))
            })
            .collect();
        if let Some(max) = self.percentile_millis(1.0) {
            points.push((x_max, max));
        }
        points
    }
}

/// How far the percentile axis goes for `n` samples: log10(n), at least 1 (p90), at most 5.
pub fn percentile_axis_max(n: usize) -> f64 {
    (n.max(1) as f64).log10().clamp(1.0, 5.0)
}

pub fn millis(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// Counts of events per whole second since the start of a run: `offsets` are seconds since the
/// start; the result has `seconds` buckets. Events before 0 count in the first bucket; events
/// past the last bucket are not counted.
pub fn per_second(offsets: impl IntoIterator<Item = f64>, seconds: usize) -> Vec<u64> {
    let mut buckets = vec![0_u64; seconds];
    for offset in offsets {
        let index = offset.max(0.0).floor() as usize;
        if let Some(bucket) = buckets.get_mut(index) {
            *bucket += 1;
        }
    }
    buckets
}

/// The points of a per-second series drawn as steps: each second's count spans the second.
pub fn series_points(counts: &[u64]) -> Vec<(f64, f64)> {
    counts
        .iter()
        .enumerate()
        .flat_map(|(i, &count)| [(i as f64, count as f64), (i as f64 + 1.0, count as f64)])
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn samples(values: impl IntoIterator<Item = u64>) -> Samples {
        let mut samples = Samples::new();
        for v in values {
            samples.record_micros(v);
        }
        samples
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut s = samples((1..=100).rev());
        assert_eq!(s.percentile_micros(0.0), Some(1));
        assert_eq!(s.percentile_micros(0.5), Some(50));
        assert_eq!(s.percentile_micros(0.9), Some(90));
        assert_eq!(s.percentile_micros(0.99), Some(99));
        assert_eq!(s.percentile_micros(0.999), Some(100));
        assert_eq!(s.percentile_micros(1.0), Some(100));
        let mut one = samples([7]);
        assert_eq!(one.percentile_micros(0.5), Some(7));
        assert_eq!(one.percentile_micros(1.0), Some(7));
        assert_eq!(Samples::new().percentile_micros(0.5), None);
    }

    #[test]
    fn recording_after_a_query_resorts() {
        let mut s = samples([5, 1]);
        assert_eq!(s.percentile_micros(1.0), Some(5));
        s.record_micros(9);
        s.record(Duration::from_micros(3));
        assert_eq!(s.percentile_micros(1.0), Some(9));
        assert_eq!(s.percentile_micros(0.5), Some(3));
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn summary_in_milliseconds() {
        let mut s = samples([1_000, 2_000, 3_000, 4_000]);
        let summary = s.summary();
        assert_eq!(summary["count"], 4);
        assert_eq!(summary["p50"], 2.0);
        assert_eq!(summary["max"], 4.0);
        assert_eq!(summary["mean"], 2.5);
        assert!(Samples::new().summary()["p99"].is_null());
    }

    #[test]
    fn percentile_curve_is_monotonic_and_ends_at_max() {
        let mut s = samples((1..=10_000).map(|i| i * 10));
        let curve = s.percentile_curve();
        assert!(
            curve
                .windows(2)
                .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1)
        );
        let last = curve.last().unwrap();
        assert_eq!(last.0, 4.0);
        assert_eq!(last.1, 100.0);
        assert_eq!(curve[0], (0.0, 0.01));
        assert!(Samples::new().percentile_curve().is_empty());
    }

    #[test]
    fn per_second_buckets() {
        let counts = per_second([0.0, 0.99, 1.0, 2.5, 7.0, -0.1], 3);
        assert_eq!(counts, vec![3, 1, 1]);
        assert_eq!(
            series_points(&counts)[..4],
            [(0.0, 3.0), (1.0, 3.0), (1.0, 1.0), (2.0, 1.0)]
        );
    }
}
