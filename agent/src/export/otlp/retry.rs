//! When to try an export again, and when to stop trying.

use std::time::Duration;

use tokio::{
    sync::watch,
    time::{Instant, sleep_until},
};

/// Exponential backoff with jitter: each delay is drawn from the upper half of the current
/// step, so that agents that lost the same collector do not all come back at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (0 for the first retry), jitter applied.
    pub fn backoff(&self, retry: u32) -> Duration {
        let step = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(retry.min(16)))
            .min(self.max_backoff);
        step.mul_f64(rand::random_range(0.5..=1.0))
    }

    /// What to wait before the next attempt: the server's `Retry-After` when it gave one,
    /// our own backoff otherwise.
    pub fn delay(&self, retry: u32, server_hint: Option<Duration>) -> Duration {
        server_hint.unwrap_or_else(|| self.backoff(retry))
    }
}

/// The time limit of one batch: its own export timeout, shortened by a shutdown deadline
/// when the agent is stopping.
pub struct Deadline {
    batch: Instant,
    shutdown: watch::Receiver<Option<Instant>>,
}

impl Deadline {
    pub fn new(batch: Instant, shutdown: watch::Receiver<Option<Instant>>) -> Self {
        Self { batch, shutdown }
    }

    pub fn current(&self) -> Instant {
        match *self.shutdown.borrow() {
            Some(stop) => stop.min(self.batch),
            None => self.batch,
        }
    }

    pub fn remaining(&self) -> Duration {
        self.current().saturating_duration_since(Instant::now())
    }

    /// Completes when the deadline passes, including one moved earlier while waiting.
    pub async fn reached(&mut self) {
        loop {
            let at = self.current();
            tokio::select! {
                () = sleep_until(at) => return,
                changed = self.shutdown.changed() => {
                    if changed.is_err() {
                        // Nobody can move the deadline any more.
                        sleep_until(at).await;
                        return;
                    }
                }
            }
        }
    }
}

/// Parses `Retry-After` given in seconds. The HTTP-date form is not used by collectors and
/// falls back to our own backoff.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
        };
        for _ in 0..50 {
            let first = policy.backoff(0);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = policy.backoff(2);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = policy.backoff(u32::MAX);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn server_hint_wins() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.delay(0, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn retry_after_seconds_only() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after(""), None);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_follows_shutdown() {
        let (tx, rx) = watch::channel(None);
        let start = Instant::now();
        let mut deadline = Deadline::new(start + Duration::from_secs(30), rx);
        assert_eq!(deadline.current(), start + Duration::from_secs(30));
        let waiter = tokio::spawn(async move {
            deadline.reached().await;
            Instant::now()
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send_replace(Some(start + Duration::from_secs(3)));
        let reached_at = waiter.await.unwrap();
        assert_eq!(reached_at, start + Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_shutdown_does_not_extend_the_batch() {
        let (tx, rx) = watch::channel(None);
        let start = Instant::now();
        let mut deadline = Deadline::new(start + Duration::from_secs(2), rx);
        tx.send_replace(Some(start + Duration::from_secs(10)));
        deadline.reached().await;
        assert_eq!(Instant::now(), start + Duration::from_secs(2));
    }
}
