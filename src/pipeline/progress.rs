//! The progress of sending: a line redrawn on a terminal, a log line every ten seconds
//! elsewhere.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Rows done / total, rate and ETA: a line redrawn on a terminal, a log line every ten
/// seconds elsewhere.
pub(super) struct Progress {
    total: u64,
    done: u64,
    started: Instant,
    last: Instant,
    tty: bool,
}

impl Progress {
    pub(super) fn new(total: u64, enabled: bool) -> Progress {
        Progress {
            total,
            done: 0,
            started: Instant::now(),
            last: Instant::now(),
            tty: enabled && std::io::stderr().is_terminal(),
        }
    }

    pub(super) fn advance(&mut self, n: u64) {
        self.done += n;
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.done as f64 / secs;
        let eta = if rate > 0.0 {
            (self.total.saturating_sub(self.done)) as f64 / rate
        } else {
            0.0
        };
        if self.tty {
            eprint!(
                "\r  sending {}/{} rows, {rate:.0}/s, ETA {eta:.0}s   ",
                self.done, self.total
            );
        } else if self.last.elapsed() >= Duration::from_secs(10) {
            self.last = Instant::now();
            tracing::info!(
                done = self.done,
                total = self.total,
                rate = rate as u64,
                eta_secs = eta as u64,
                "sending"
            );
        }
    }

    pub(super) fn finish(&self) {
        if self.tty && self.total > 0 {
            eprintln!();
        }
    }
}
