//! `plan`: the change set counted, nothing written, nothing called; and `--model-only`,
//! the model run alone.

use crate::config::Target;
use crate::diff;
use crate::error::{Error, Result};
use crate::report::Report;

use super::prepare::prepare;

/// A dry run: counts of new / changed / unchanged / deleted / invalid rows. Writes nothing,
/// calls nothing.
pub async fn plan(target: impl Into<Target>) -> Result<Report> {
    let p = prepare(&target.into(), false).await?;
    let (set, _) = p.change_set(false).await?;
    let summary = diff::summarize(&set).await?;
    tracing::info!(
        new = summary.counts.new,
        changed = summary.counts.changed,
        unchanged = summary.counts.unchanged,
        deleted = summary.counts.deleted,
        invalid = summary.counts.invalid,
        "change set computed"
    );
    Ok(p.report("plan", summary))
}

/// Runs the model alone and discards its output: the floor any change detection is
/// measured against. Returns (rows, milliseconds).
pub async fn model_only(target: impl Into<Target>) -> Result<(u64, u64)> {
    let p = prepare(&target.into(), false).await?;
    // The partitions `plan` would run this model with.
    let state_rows = p.state.manifest().await?.map(|m| m.snapshot_rows);
    diff::size_session(&p.ctx, &p.settings, state_rows, false).await;
    let mut rows = 0u64;
    let (slices, _files) = crate::model::slices(&p.ctx, &p.settings).await?;
    for df in slices {
        let mut stream = df
            .execute_stream()
            .await
            .map_err(|e| Error::engine("running the model", e))?;
        while let Some(b) = futures::StreamExt::next(&mut stream).await {
            rows += b
                .map_err(|e| Error::engine("running the model", e))?
                .num_rows() as u64;
        }
    }
    Ok((rows, p.clock.elapsed().as_millis() as u64))
}
