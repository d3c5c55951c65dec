//! Riding through a lost server or a leader election: what failed is logged, counted in
//! [`crate::metrics::RETRIES`] and tried again after a growing pause.
//!
//! On a NATS cluster a request can fail for a few seconds without anything being wrong with
//! mapek: no responders while a stream or the meta layer elects a leader, a timeout while the
//! client reconnects to another server. A worker must not exit on these; it waits and tries
//! again, and an operator sees them on `/metrics` and in the log.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::metrics::RETRIES;

/// The first pause after a failure.
const FIRST: Duration = Duration::from_millis(100);
/// The longest pause: long enough not to flood a recovering server, short enough that the
/// loop resumes within seconds of a new leader.
const LONGEST: Duration = Duration::from_secs(5);

/// Pauses that double from 100 ms to 5 s.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: FIRST }
    }
}

impl Backoff {
    /// The pause to take now; the next is twice as long, up to 5 s.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(LONGEST);
        pause
    }
}

/// Logs a failure of `what` in `phase` that will be retried, and counts it.
pub fn failed_for_now(phase: &str, what: &str, error: &dyn Display) {
    RETRIES.with_label_values(&[phase, what]).inc();
    tracing::warn!(phase, what, error = %error, "failed for now; retrying");
}

/// Runs `attempt` until it succeeds, pausing with a [`Backoff`] after each failure (logged
/// and counted as `what` in `phase`); `None` if `shutdown` completes first.
pub async fn until_ok<T, E: Display, Fut>(
    phase: &str,
    what: &str,
    mut attempt: impl FnMut() -> Fut,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Option<T>
where
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::default();
    loop {
        tokio::select! {
            result = attempt() => match result {
                Ok(value) => return Some(value),
                Err(e) => failed_for_now(phase, what, &e),
            },
            () = &mut shutdown => return None,
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_pause()) => {}
            () = &mut shutdown => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn pauses_double_up_to_five_seconds() {
        let mut b = super::Backoff::default();
        let pauses: Vec<u64> = (0..8).map(|_| b.next_pause().as_millis() as u64).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(b.next_pause(), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_failing_request_is_retried_until_it_succeeds() {
        let mut tries = 0;
        let never = std::pin::pin!(std::future::pending::<()>());
        let got = super::until_ok(
            "test",
            "request",
            || {
                tries += 1;
                let t = tries;
                async move { if t < 3 { Err("no responders") } else { Ok(t) } }
            },
            never,
        )
        .await;
        assert_eq!(got, Some(3));
    }
}
