//! Client-side pacing: requests start at most `requests_per_second` apart on average, shared
//! by every task, so the tenant's per-key budget is respected however many are in flight.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Spaces request starts evenly, shared by every task of a client.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl Pacer {
    /// A pacer allowing `requests_per_second` requests a second on average (at least one).
    pub fn new(requests_per_second: u32) -> Pacer {
        Pacer {
            interval: Duration::from_secs_f64(1.0 / f64::from(requests_per_second.max(1))),
            next: Mutex::new(None),
        }
    }

    /// Waits for the next free slot.
    pub async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let slot = match *next {
                Some(t) if t > now => t,
                _ => now,
            };
            *next = Some(slot + self.interval);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    /// Pushes every later slot back, after the server asked us to slow down.
    pub async fn pause(&self, d: Duration) {
        let mut next = self.next.lock().await;
        let until = Instant::now() + d;
        if next.is_none_or(|t| t < until) {
            *next = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slots_are_spaced_by_the_rate() {
        let p = std::sync::Arc::new(Pacer::new(10));
        let start = Instant::now();
        let mut handles = Vec::new();
        for _ in 0..5 {
            let p = p.clone();
            handles.push(tokio::spawn(async move {
                p.wait().await;
                Instant::now()
            }));
        }
        let mut times = Vec::new();
        for h in handles {
            times.push(h.await.unwrap() - start);
        }
        times.sort();
        assert_eq!(times[0], Duration::ZERO);
        assert_eq!(times[4], Duration::from_millis(400));
        p.pause(Duration::from_secs(3)).await;
        let before = Instant::now();
        p.wait().await;
        assert_eq!(Instant::now() - before, Duration::from_secs(3));
    }
}
