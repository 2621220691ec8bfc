//! When and how long to wait before trying a request again.
//!
//! Voyado documents no idempotency key and asks integrations to retry late, with growing
//! waits, and never to resend a create blindly. So the decision depends on what the request
//! was: reads and PATCHes are retried on 429, 408, 5xx (except 501) and transport errors;
//! a create is retried only where Voyado cannot have applied it (429, or a connection that
//! never opened), and otherwise reported as "outcome unknown" for the caller to look up.

use std::time::Duration;

/// What to do with an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAction {
    /// The request succeeded.
    Success,
    /// Retry: the request certainly was not applied, or applying it twice is harmless.
    Retry,
    /// The request may have been applied; a non-idempotent caller must check first.
    Unknown,
    /// A final answer: trying again would get the same one.
    DontRetry,
}

/// Classifies an HTTP status for a request that is (or is not) safe to repeat.
pub fn classify_status(status: u16, idempotent: bool) -> RetryAction {
    match status {
        200..=299 => RetryAction::Success,
        429 => RetryAction::Retry,
        408 | 500 | 502..=599 => {
            if idempotent {
                RetryAction::Retry
            } else {
                RetryAction::Unknown
            }
        }
        _ => RetryAction::DontRetry,
    }
}

/// Classifies a transport failure: a connection that never opened sent nothing.
pub fn classify_transport(connect_failed: bool, idempotent: bool) -> RetryAction {
    if connect_failed || idempotent {
        RetryAction::Retry
    } else {
        RetryAction::Unknown
    }
}

/// Exponential backoff with full jitter, from an injectable seed so tests can replay it.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// A backoff starting from `base`, with waits capped at `max` and jitter drawn from
    /// `seed`.
    pub fn new(base: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            base,
            max,
            attempt: 0,
            rng: seed,
        }
    }

    fn next_random(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The wait before the next attempt: half the exponential step plus a random share of
    /// the other half, capped; a server's `Retry-After` is honoured when longer.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.max);
        self.attempt += 1;
        let half = exp / 2;
        let jitter_ms = half.as_millis() as u64;
        let extra = if jitter_ms == 0 {
            0
        } else {
            self.next_random() % (jitter_ms + 1)
        };
        let delay = half + Duration::from_millis(extra);
        match retry_after {
            Some(ra) if ra > delay => ra,
            _ => delay,
        }
    }
}

/// Parses a `Retry-After` header given in seconds (the HTTP-date form is not used by APIs
/// of this kind; it is ignored, falling back to backoff).
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    let secs: f64 = value?.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_that_may_have_applied_are_unknown_not_retried() {
        assert_eq!(classify_status(201, false), RetryAction::Success);
        assert_eq!(classify_status(429, false), RetryAction::Retry);
        assert_eq!(classify_status(503, false), RetryAction::Unknown);
        assert_eq!(classify_status(503, true), RetryAction::Retry);
        assert_eq!(classify_status(501, true), RetryAction::DontRetry);
        assert_eq!(classify_status(408, true), RetryAction::Retry);
        assert_eq!(classify_status(404, true), RetryAction::DontRetry);
        assert_eq!(classify_status(409, false), RetryAction::DontRetry);
        assert_eq!(classify_transport(true, false), RetryAction::Retry);
        assert_eq!(classify_transport(false, false), RetryAction::Unknown);
        assert_eq!(classify_transport(false, true), RetryAction::Retry);
    }

    #[test]
    fn backoff_grows_is_capped_jittered_and_replayable() {
        let mut a = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), 7);
        let delays: Vec<Duration> = (0..8).map(|_| a.next_delay(None)).collect();
        for (k, d) in delays.iter().enumerate() {
            let step = (Duration::from_millis(100) * (1 << k)).min(Duration::from_secs(2));
            assert!(
                *d >= step / 2 && *d <= step,
                "attempt {k}: {d:?} outside {step:?}"
            );
        }
        assert!(delays[7] <= Duration::from_secs(2));
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), 7);
        let again: Vec<Duration> = (0..8).map(|_| b.next_delay(None)).collect();
        assert_eq!(delays, again);
        let mut c = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), 8);
        let other: Vec<Duration> = (0..8).map(|_| c.next_delay(None)).collect();
        assert_ne!(delays, other, "the seed drives the jitter");
    }

    #[test]
    fn retry_after_is_honoured_when_longer() {
        let mut a = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), 1);
        assert_eq!(
            a.next_delay(Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
        assert!(a.next_delay(Some(Duration::from_millis(1))) >= Duration::from_millis(100));
        assert_eq!(parse_retry_after(Some(" 3 ")), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(parse_retry_after(None), None);
    }
}
