//! The commands, and the only place that strings the stages together.
//!
//! Every command starts from `prepare`: settings validated, a DataFusion session with
//! the sources registered, the state opened and checked to be laid out (sharded or not) as
//! the command runs. A command that writes the state then holds the sync's lock for its
//! work (`with_lock`). `plan` stops at the change set and counts it. `baseline` commits
//! the model's current rows as the snapshot. `run` goes the whole way: the change set is
//! staged (and the guards checked on its counts), the sink sends the staged rows and
//! yields their outcomes a chunk at a time, each chunk is recorded as deltas at the next
//! checkpoint, and the commit compacts snapshot and deltas into the next snapshot. Every
//! command that changes the state stores its report with it; `history` reads them back.

mod baseline;
mod check;
mod history;
mod plan;
mod prepare;
mod progress;
mod reset;
mod run;

use std::future::Future;

use crate::error::Result;
use crate::state::State;

pub use baseline::baseline;
pub use check::{CheckOutcome, check};
pub use history::{history, history_line};
pub use plan::{model_only, plan};
use prepare::Prepared;
pub use reset::reset;
pub use run::{RunOptions, RunResult, run, stage};

/// Runs `work` holding `state`'s lock for `command`. The lock is released whatever the
/// work's outcome; the work's error comes first, then the release's.
async fn with_lock<T>(
    state: &State,
    p: &Prepared,
    command: &str,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    let lock = state
        .lock(&p.run_id, command, p.settings.lock_stale_secs)
        .await?;
    let result = work.await;
    let released = lock.release().await;
    let value = result?;
    released?;
    Ok(value)
}
