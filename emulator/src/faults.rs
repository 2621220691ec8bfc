//! Fault injection: a request-rate cap, server errors, lost answers, racing writers,
//! deleted contacts and bulk batches that stall or fail. Each random fault draws from its own seeded stream, so enabling one
//! fault does not change when another fires, and a seed replays a failing test.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::config::{Faults, RateLimit};

/// SplitMix64: tiny, fast and good enough for choosing faults; not for secrets.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `share`; draws even when `share` is 0 or 1 so the stream's
    /// position depends only on how many decisions were made.
    pub(crate) fn chance(&mut self, share: f64) -> bool {
        self.next_f64() < share
    }
}

/// Counts of faults injected so far, reported in the dump.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InjectedFaults {
    /// Requests answered 429 by the rate-limit fault.
    pub rate_limited: u64,
    /// Requests answered 500, 502 or 503 by the error-rate fault.
    pub server_errors: u64,
    /// Successful writes (applied or queued) whose answer was cut off.
    pub lost_answers: u64,
    /// Contacts created by "another writer" after a lookup answered 404.
    pub race_creates: u64,
    /// Contacts deleted at start or through `Emulator::delete_contacts`.
    pub deleted_contacts: u64,
    /// Defaulted so dumps written before bulk batches existed still read back as seeds.
    #[serde(default)]
    pub stalled_batches: u64,
    /// Accepted bulk batches that failed with nothing applied.
    #[serde(default)]
    pub failed_batches: u64,
}

/// The server error a request got instead of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerError {
    Internal,
    BadGateway,
    Unavailable,
}

impl ServerError {
    pub(crate) fn status(self) -> u16 {
        match self {
            ServerError::Internal => 500,
            ServerError::BadGateway => 502,
            ServerError::Unavailable => 503,
        }
    }
}

/// What becomes of an accepted bulk batch, decided when it is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchFate {
    Apply,
    /// Never finishes: status `Processing` forever.
    Stall,
    /// Ends `Failed` with nothing applied.
    Fail,
}

/// Live fault state: the configuration plus one random stream per fault.
#[derive(Debug)]
pub(crate) struct FaultState {
    pub config: Faults,
    errors: SplitMix64,
    lost: SplitMix64,
    race: SplitMix64,
    delete: SplitMix64,
    stall: SplitMix64,
    fail: SplitMix64,
    window: VecDeque<Instant>,
    pub injected: InjectedFaults,
}

impl FaultState {
    pub(crate) fn new(config: Faults) -> Self {
        // Distinct odd offsets give independent streams from one seed.
        let stream = |n: u64| SplitMix64::new(config.seed ^ n.wrapping_mul(0xA076_1D64_78BD_642F));
        FaultState {
            errors: stream(1),
            lost: stream(2),
            race: stream(3),
            delete: stream(4),
            stall: stream(5),
            fail: stream(6),
            window: VecDeque::new(),
            injected: InjectedFaults::default(),
            config,
        }
    }

    /// `Some(retry_after_secs)` when this request is over the cap. Only accepted requests
    /// count toward the window, as a client that backs off must eventually get through.
    pub(crate) fn rate_limited(&mut self, now: Instant) -> Option<Option<u64>> {
        let RateLimit {
            requests,
            window,
            retry_after_secs,
        } = self.config.rate_limit?;
        while let Some(first) = self.window.front() {
            if now.saturating_duration_since(*first) >= window {
                self.window.pop_front();
            } else {
                break;
            }
        }
        if self.window.len() >= requests as usize {
            self.injected.rate_limited += 1;
            return Some(retry_after_secs);
        }
        self.window.push_back(now);
        None
    }

    /// A server error to answer instead of handling the request, if one is due.
    pub(crate) fn server_error(&mut self) -> Option<ServerError> {
        if self.config.error_rate <= 0.0 || !self.errors.chance(self.config.error_rate) {
            return None;
        }
        self.injected.server_errors += 1;
        Some(match self.errors.next_u64() % 3 {
            0 => ServerError::Internal,
            1 => ServerError::BadGateway,
            _ => ServerError::Unavailable,
        })
    }

    /// Whether a successful write loses its answer.
    pub(crate) fn lose_answer(&mut self) -> bool {
        let lost =
            self.config.lost_answer_rate > 0.0 && self.lost.chance(self.config.lost_answer_rate);
        if lost {
            self.injected.lost_answers += 1;
        }
        lost
    }

    /// Whether another writer creates the contact a lookup just did not find.
    pub(crate) fn race_create(&mut self) -> bool {
        let race =
            self.config.race_create_rate > 0.0 && self.race.chance(self.config.race_create_rate);
        if race {
            self.injected.race_creates += 1;
        }
        race
    }

    /// Whether to delete one contact when deleting a share of them.
    pub(crate) fn delete_one(&mut self, share: f64) -> bool {
        self.delete.chance(share)
    }

    /// The fate of a batch being accepted. Both streams are consulted for every batch, so
    /// turning one of the two faults on does not shift when the other fires.
    pub(crate) fn batch_fate(&mut self) -> BatchFate {
        let stall =
            self.config.bulk_stall_rate > 0.0 && self.stall.chance(self.config.bulk_stall_rate);
        let fail = self.config.bulk_fail_rate > 0.0 && self.fail.chance(self.config.bulk_fail_rate);
        if stall {
            self.injected.stalled_batches += 1;
            BatchFate::Stall
        } else if fail {
            self.injected.failed_batches += 1;
            BatchFate::Fail
        } else {
            BatchFate::Apply
        }
    }

    pub(crate) fn latency(&self) -> Duration {
        self.config.latency
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(seed: u64) -> Faults {
        Faults {
            seed,
            error_rate: 0.3,
            lost_answer_rate: 0.3,
            ..Faults::default()
        }
    }

    #[test]
    fn same_seed_same_faults() {
        let run = |seed| {
            let mut f = FaultState::new(faults(seed));
            (0..200)
                .map(|_| (f.server_error(), f.lose_answer()))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn one_fault_does_not_shift_another() {
        let mut a = FaultState::new(faults(1));
        let mut b = FaultState::new(Faults {
            error_rate: 0.0,
            ..faults(1)
        });
        let lost_a: Vec<_> = (0..100)
            .map(|_| {
                a.server_error();
                a.lose_answer()
            })
            .collect();
        let lost_b: Vec<_> = (0..100)
            .map(|_| {
                b.server_error();
                b.lose_answer()
            })
            .collect();
        assert_eq!(lost_a, lost_b);
    }

    #[test]
    fn share_is_roughly_honoured() {
        let mut f = FaultState::new(faults(3));
        let hits = (0..10_000).filter(|_| f.server_error().is_some()).count();
        assert!((2500..3500).contains(&hits), "{hits}");
    }

    #[test]
    fn batch_fates_follow_their_shares_and_count() {
        let mut f = FaultState::new(Faults {
            bulk_stall_rate: 1.0,
            bulk_fail_rate: 1.0,
            ..Faults::default()
        });
        assert_eq!(f.batch_fate(), BatchFate::Stall);
        let mut g = FaultState::new(Faults {
            bulk_fail_rate: 1.0,
            ..Faults::default()
        });
        assert_eq!(g.batch_fate(), BatchFate::Fail);
        assert_eq!(
            FaultState::new(Faults::default()).batch_fate(),
            BatchFate::Apply
        );
        assert_eq!(
            (f.injected.stalled_batches, f.injected.failed_batches),
            (1, 0)
        );
        assert_eq!(
            (g.injected.stalled_batches, g.injected.failed_batches),
            (0, 1)
        );
    }

    #[test]
    fn rate_cap_counts_within_the_window() {
        let mut f = FaultState::new(Faults {
            rate_limit: Some(RateLimit {
                requests: 2,
                window: Duration::from_secs(1),
                retry_after_secs: Some(3),
            }),
            ..Faults::default()
        });
        let t0 = Instant::now();
        assert_eq!(f.rate_limited(t0), None);
        assert_eq!(f.rate_limited(t0), None);
        assert_eq!(f.rate_limited(t0), Some(Some(3)));
        assert_eq!(f.rate_limited(t0 + Duration::from_secs(1)), None);
        assert_eq!(f.injected.rate_limited, 1);
    }
}
