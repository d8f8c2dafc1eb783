//! The open-loop driver shared by `rest-mix` and `fanout --target stack`.
//!
//! Request k is due at `start + k / rate`, whether or not earlier ones have finished. Each is
//! timed from its due time, so a stalled server (or a saturated generator) shows up as latency
//! instead of as fewer requests: the coordinated-omission correction. At most `max_in_flight`
//! requests are outstanding; one that cannot get a slot within `max_start_delay` of its due
//! time is dropped and reported, never silently skipped.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use indicatif::ProgressBar;
use tokio::sync::{Semaphore, mpsc};

use crate::{progress, stats::Samples};

#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Requests per second.
    pub rate: f64,
    /// Requests in all.
    pub total: u64,
    pub max_in_flight: usize,
    pub max_start_delay: Duration,
    /// How long to wait for the last requests after the last one was due.
    pub tail: Duration,
}

/// One request that ran; times are offsets from the run's start.
pub struct Done<T> {
    pub k: u64,
    pub due: Duration,
    pub started: Duration,
    pub finished: Duration,
    pub value: T,
}

impl<T> Done<T> {
    /// From the due time to the answer: what a user waiting on this request saw.
    pub fn latency(&self) -> Duration {
        corrected_latency(self.due, self.finished)
    }

    /// From the actual send to the answer: the uncorrected figure, for comparison.
    pub fn service_time(&self) -> Duration {
        self.finished.saturating_sub(self.started)
    }

    /// How late the request was sent.
    pub fn start_lag(&self) -> Duration {
        self.started.saturating_sub(self.due)
    }
}

pub struct Outcome<T> {
    /// The run's start (offset zero).
    pub start: Instant,
    pub done: Vec<Done<T>>,
    /// Requests that never started (no slot within `max_start_delay`).
    pub dropped: Vec<u64>,
    /// Requests still running when the tail ended.
    pub unfinished: u64,
    /// From the start to when the last request was dispatched, and to the end of the tail.
    pub dispatch_seconds: f64,
    pub seconds: f64,
}

impl<T> Outcome<T> {
    pub fn start_lag(&self) -> Samples {
        let mut lag = Samples::new();
        for done in &self.done {
            lag.record(done.start_lag());
        }
        lag
    }
}

/// When request `k` is due, as an offset from the run's start.
pub fn due(k: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(k as f64 / rate)
}

/// Whether a request due at `due` may still start at `now` (both offsets from the start).
pub fn may_start(due: Duration, now: Duration, max_start_delay: Duration) -> bool {
    now.saturating_sub(due) <= max_start_delay
}

/// The latency of a request that finished at `finished`, counted from when it was due rather
/// than from when it was sent.
pub fn corrected_latency(due: Duration, finished: Duration) -> Duration {
    finished.saturating_sub(due)
}

/// Runs the schedule, starting `make(k)` for each request that gets a slot in time. The bar
/// counts due requests.
pub async fn run<T, F, Fut>(schedule: Schedule, bar: &ProgressBar, mut make: F) -> Outcome<T>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let capacity = schedule.max_in_flight.max(1);
    let slots = Arc::new(Semaphore::new(capacity));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done<T>>();
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let start_std = start.into_std();
    let mut dropped = Vec::new();
    let mut started = 0_u64;
    for k in 0..schedule.total {
        let due = due(k, schedule.rate);
        tokio::time::sleep_until(start + due).await;
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => tokio::time::timeout_at(
                start + due + schedule.max_start_delay,
                slots.clone().acquire_owned(),
            )
            .await
            .ok()
            .and_then(Result::ok),
        };
        bar.inc(1);
        let Some(permit) =
            permit.filter(|_| may_start(due, start_std.elapsed(), schedule.max_start_delay))
        else {
            dropped.push(k);
            continue;
        };
        started += 1;
        let request = make(k);
        let tx = done_tx.clone();
        tokio::spawn(async move {
            let started = start_std.elapsed();
            let value = request.await;
            let finished = start_std.elapsed();
            let _ = tx.send(Done {
                k,
                due,
                started,
                finished,
                value,
            });
            // Released only after the result is sent: holding every slot means every result
            // is in the channel.
            drop(permit);
        });
        if k % 32 == 0 {
            bar.set_message(format!(
                "in flight {}, dropped {}",
                capacity - slots.available_permits(),
                dropped.len()
            ));
        }
    }
    let dispatch_seconds = start_std.elapsed().as_secs_f64();
    progress::finish(
        bar,
        format!(
            "{} due, {} dropped; waiting for {} in flight",
            schedule.total,
            dropped.len(),
            capacity - slots.available_permits()
        ),
    );
    let all = u32::try_from(capacity).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(schedule.tail, slots.acquire_many(all)).await;
    let seconds = start_std.elapsed().as_secs_f64();
    drop(done_tx);
    let mut done = Vec::new();
    while let Ok(one) = done_rx.try_recv() {
        done.push(one);
    }
    done.sort_by_key(|d| d.k);
    Outcome {
        start: start_std,
        unfinished: started.saturating_sub(done.len() as u64),
        done,
        dropped,
        dispatch_seconds,
        seconds,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn due_times_follow_the_rate() {
        assert_eq!(due(0, 50.0), Duration::ZERO);
        assert_eq!(due(50, 50.0), Duration::from_secs(1));
        assert_eq!(due(3, 200.0), Duration::from_millis(15));
    }

    #[test]
    fn latency_counts_from_the_due_time() {
        // Due at 1.000 s, sent late at 1.400 s (the generator was blocked), answered at 1.410 s:
        // the user waited 410 ms, not the 10 ms the server spent.
        let done = Done {
            k: 0,
            due: Duration::from_millis(1000),
            started: Duration::from_millis(1400),
            finished: Duration::from_millis(1410),
            value: (),
        };
        assert_eq!(done.latency(), Duration::from_millis(410));
        assert_eq!(done.service_time(), Duration::from_millis(10));
        assert_eq!(done.start_lag(), Duration::from_millis(400));
        assert_eq!(
            corrected_latency(Duration::from_secs(2), Duration::from_secs(1)),
            Duration::ZERO
        );
    }

    #[test]
    fn late_requests_are_dropped_past_the_bound() {
        let bound = Duration::from_millis(1000);
        let due = Duration::from_secs(5);
        assert!(may_start(due, Duration::from_secs(4), bound));
        assert!(may_start(due, Duration::from_millis(6000), bound));
        assert!(!may_start(due, Duration::from_millis(6001), bound));
    }

    /// A stalled "server" (every request takes 300 ms) with one slot: the driver keeps the
    /// schedule, drops what cannot start within the bound, and the latencies of what ran include
    /// the wait for a slot. (Each bound below follows from the one slot, whatever the machine's
    /// speed: the second request cannot start before the first has slept its 300 ms.)
    #[tokio::test]
    async fn a_stall_shows_as_latency_and_drops() {
        let schedule = Schedule {
            rate: 100.0,
            total: 20,
            max_in_flight: 1,
            max_start_delay: Duration::from_millis(1000),
            tail: Duration::from_secs(5),
        };
        let bar = ProgressBar::hidden();
        let outcome = run(schedule, &bar, |_| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
        })
        .await;
        assert_eq!(outcome.done.len() + outcome.dropped.len(), 20);
        assert_eq!(outcome.unfinished, 0);
        assert!(!outcome.dropped.is_empty());
        let first = &outcome.done[0];
        assert_eq!(first.k, 0);
        let second = &outcome.done[1];
        // The second request waited for the first one's slot: its latency covers that wait.
        assert_eq!(second.k, 1);
        assert!(second.start_lag() >= Duration::from_millis(290));
        assert!(second.latency() >= second.service_time() + Duration::from_millis(290));
    }
}
