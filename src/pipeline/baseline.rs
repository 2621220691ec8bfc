//! `baseline`: the model's current rows adopted as the snapshot, for a destination that
//! already holds the data.

use crate::config::Target;
use crate::diff;
use crate::error::Result;
use crate::report::Report;

use super::prepare::{Prepared, prepare, store_report};
use super::with_lock;

/// Adopts the model's current valid rows as the snapshot (status delivered), for a
/// destination that already holds the data. Known contactIds are kept.
pub async fn baseline(target: impl Into<Target>) -> Result<Report> {
    let p = prepare(&target.into(), true).await?;
    with_lock(&p.state, &p, "baseline", baseline_locked(&p)).await
}

async fn baseline_locked(p: &Prepared) -> Result<Report> {
    let (set, manifest) = p.change_set(true).await?;
    let summary = diff::summarize(&set).await?;
    let committed = p
        .state
        .commit_baseline(
            &p.ctx,
            manifest.as_ref(),
            &set.buckets,
            &p.settings,
            &p.new_snapshot(&set),
        )
        .await?;
    tracing::info!(
        rows = committed.snapshot_rows,
        generation = committed.generation,
        "baseline committed"
    );
    let report = p.report("baseline", summary);
    store_report(p, &report).await;
    Ok(report)
}
