//! Capped exponential backoff with jitter, and [`retry`]: the one way every part waits between
//! attempts at something that failed transiently (a consumer retrying an event in place, a
//! reconnect loop, a startup wait, a Redis read retried briefly).
//!
//! Jitter keeps replicas that lost a dependency at the same moment from retrying in lockstep
//! when it comes back.

use std::{future::Future, time::Duration};

use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Delays that double from `first` up to `max`, each drawn from the upper half of its step.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max: max.max(first),
            next: first,
        }
    }

    /// The pause before the next attempt (between half the step and the step).
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = step / 2;
        let jitter = u64::try_from(half.as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(rand::thread_rng().gen_range(0..=jitter))
    }

    /// Starts again from the first step (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps for the next delay; `false` when `shutdown` came first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        sleep_unless_shutdown(self.next_delay(), shutdown).await
    }
}

/// Sleeps for `delay`; `false` when `shutdown` came first.
async fn sleep_unless_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = shutdown.cancelled() => false,
    }
}

/// When a [`retry`] gives up.
#[derive(Debug, Clone, Copy)]
enum Limit<'a> {
    /// After this many attempts in all.
    Attempts(u64),
    /// Once a failure comes when this long has passed since `started`.
    Within { started: Instant, max: Duration },
    /// Once `shutdown` is cancelled during a pause.
    Shutdown(&'a CancellationToken),
}

/// How a [`retry`] paces its attempts (a [`Backoff`]) and when it gives up.
#[derive(Debug, Clone)]
pub struct RetryPolicy<'a> {
    backoff: Backoff,
    limit: Limit<'a>,
}

impl<'a> RetryPolicy<'a> {
    /// At most `attempts` attempts in all (the first one always runs), with plain pauses.
    pub fn attempts(backoff: Backoff, attempts: u32) -> Self {
        Self {
            backoff,
            limit: Limit::Attempts(u64::from(attempts)),
        }
    }

    /// Attempts until one fails once `max` has passed since `started`; a pause is cut short to
    /// end then.
    pub fn within(backoff: Backoff, started: Instant, max: Duration) -> Self {
        Self {
            backoff,
            limit: Limit::Within { started, max },
        }
    }

    /// Attempts for as long as it takes; a pause that `shutdown` interrupts ends the retries.
    pub fn until_shutdown(backoff: Backoff, shutdown: &'a CancellationToken) -> Self {
        Self {
            backoff,
            limit: Limit::Shutdown(shutdown),
        }
    }
}

/// A failed attempt that is about to be retried, as [`retry_notify`] reports it.
#[derive(Debug)]
pub struct Retrying<'e, E> {
    /// Which attempt failed, counting from 1 (so also how many have failed so far).
    pub attempt: u64,
    pub error: &'e E,
    /// The pause before the next attempt.
    pub delay: Duration,
}

/// For [`retry`]'s `is_transient` where every error is worth another attempt.
pub fn any_error<E>(_: &E) -> bool {
    true
}

/// Runs `operation` until it succeeds, fails with an error `is_transient` refuses, or `policy`
/// gives up; returns that outcome (on giving up, the last error).
pub async fn retry<T, E, Fut>(
    policy: RetryPolicy<'_>,
    is_transient: impl Fn(&E) -> bool,
    operation: impl FnMut() -> Fut,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    retry_notify(policy, is_transient, |_| {}, operation).await
}

/// [`retry`], telling `notify` about every failure that is retried, before its pause.
pub async fn retry_notify<T, E, Fut>(
    policy: RetryPolicy<'_>,
    is_transient: impl Fn(&E) -> bool,
    mut notify: impl FnMut(&Retrying<'_, E>),
    mut operation: impl FnMut() -> Fut,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    let RetryPolicy { mut backoff, limit } = policy;
    let mut attempt = 0_u64;
    loop {
        attempt = attempt.saturating_add(1);
        let error = match operation().await {
            Err(error) if is_transient(&error) => error,
            outcome => return outcome,
        };
        let delay = match limit {
            Limit::Attempts(most) if attempt >= most => return Err(error),
            Limit::Within { started, max } => {
                let left = max.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(error);
                }
                backoff.next_delay().min(left)
            }
            Limit::Attempts(_) | Limit::Shutdown(_) => backoff.next_delay(),
        };
        notify(&Retrying {
            attempt,
            error: &error,
            delay,
        });
        match limit {
            Limit::Shutdown(shutdown) => {
                if !sleep_unless_shutdown(delay, shutdown).await {
                    return Err(error);
                }
            }
            Limit::Attempts(_) | Limit::Within { .. } => tokio::time::sleep(delay).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_below_each_step() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let steps = [100, 200, 400, 800, 800, 800];
        for step in steps {
            let delay = backoff.next_delay();
            let step = Duration::from_millis(step);
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} outside {step:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn waiting_ends_early_on_shutdown() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let mut backoff = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        assert!(!backoff.wait(&shutdown).await);
    }

    fn quick() -> Backoff {
        Backoff::new(Duration::from_millis(1), Duration::from_millis(2))
    }

    /// An operation that fails with its attempt number until attempt `succeeds_at`.
    fn failing_until(
        calls: &Cell<u64>,
        succeeds_at: u64,
    ) -> impl FnMut() -> std::future::Ready<Result<&'static str, u64>> + '_ {
        move || {
            calls.set(calls.get() + 1);
            std::future::ready(if calls.get() >= succeeds_at {
                Ok("done")
            } else {
                Err(calls.get())
            })
        }
    }

    #[tokio::test]
    async fn bounded_attempts_give_up_with_the_last_error() {
        let calls = Cell::new(0);
        let mut notified = Vec::new();
        let outcome = retry_notify(
            RetryPolicy::attempts(quick(), 3),
            any_error,
            |retrying| notified.push((retrying.attempt, *retrying.error)),
            failing_until(&calls, 10),
        )
        .await;
        assert_eq!(outcome, Err(3));
        assert_eq!(calls.get(), 3);
        assert_eq!(notified, [(1, 1), (2, 2)]);

        let calls = Cell::new(0);
        let outcome = retry(
            RetryPolicy::attempts(quick(), 0),
            any_error,
            failing_until(&calls, 10),
        );
        assert_eq!(outcome.await, Err(1), "the first attempt always runs");
    }

    #[tokio::test]
    async fn a_success_or_a_permanent_error_ends_the_retries() {
        let calls = Cell::new(0);
        let outcome = retry(
            RetryPolicy::attempts(quick(), 5),
            any_error,
            failing_until(&calls, 3),
        );
        assert_eq!(outcome.await, Ok("done"));
        assert_eq!(calls.get(), 3);

        let calls = Cell::new(0);
        let only_odd = |error: &u64| error % 2 == 1;
        let outcome = retry(
            RetryPolicy::attempts(quick(), 5),
            only_odd,
            failing_until(&calls, 9),
        );
        assert_eq!(outcome.await, Err(2));
        assert_eq!(calls.get(), 2);
    }

    #[tokio::test]
    async fn a_time_limit_cuts_the_pauses_and_ends_the_retries() {
        let started = Instant::now();
        let max = Duration::from_millis(30);
        let slow = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        let calls = Cell::new(0);
        let mut delays = Vec::new();
        let outcome = retry_notify(
            RetryPolicy::within(slow, started, max),
            any_error,
            |retrying| delays.push(retrying.delay),
            failing_until(&calls, u64::MAX),
        )
        .await;
        assert!(outcome.is_err());
        assert!(started.elapsed() >= max);
        assert!(!delays.is_empty());
        assert!(delays.iter().all(|delay| *delay <= max));
    }

    #[tokio::test]
    async fn shutdown_during_a_pause_ends_the_retries() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let slow = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        let calls = Cell::new(0);
        let mut notified = 0;
        let outcome = retry_notify(
            RetryPolicy::until_shutdown(slow, &shutdown),
            any_error,
            |_| notified += 1,
            failing_until(&calls, u64::MAX),
        )
        .await;
        assert_eq!(outcome, Err(1));
        assert_eq!((calls.get(), notified), (1, 1));
    }
}
