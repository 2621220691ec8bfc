//! Staging: the change set written once to the state folder before anything is sent, so
//! guards see exact counts and the sink streams from a file instead of re-running the model.
//! The guards are checked here, on those counts.
//!
//! Pass 1 streams the classified rows, counting every kind, and keeps new, changed and
//! deleted rows (invalid ones go to their own file for inspection). Pass 2 joins the staged
//! changed rows, a small set, with the state's stored values to record which attributes
//! changed, in the `_changed` column: a list of attribute names, in mapping order, built by
//! the query itself so that the sink reads names and splits no string.

use std::sync::Arc;

use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::compute::filter_record_batch;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::StreamExt;

use crate::catalog::temp_view;
use crate::columns::{CHANGED_ATTRIBUTES, ChangeKind, KIND};
use crate::config::Settings;
use crate::diff::{ChangeSet, Summary, Tally};
use crate::error::{Error, Result};
use crate::state::{self, State, StateError, quote};

/// A staged change set, ready for the sink.
#[derive(Debug, Clone)]
pub struct Staged {
    /// The change set (new, changed, deleted rows), relative to the state folder.
    pub rel: String,
    /// Invalid rows with their reasons, relative to the state folder.
    pub invalid_rel: String,
    pub summary: Summary,
}

impl Staged {
    /// Refuses to send a change set that would delete or change more of the snapshot
    /// than the thresholds allow, unless `force`d.
    pub fn check_guards(&self, s: &Settings, force: bool) -> Result<()> {
        let c = self.summary.counts;
        let snapshot = c.changed + c.unchanged + c.deleted;
        if force || snapshot == 0 {
            return Ok(());
        }
        let t = &s.thresholds;
        let deleted = c.deleted as f64 * 100.0 / snapshot as f64;
        if deleted > t.max_deleted_percent {
            return Err(Error::Guard(format!(
                "guard max_deleted_percent: {} of {snapshot} snapshot rows would be deleted ({deleted:.1}% > {}%); nothing was sent; rerun with --force if this is intended",
                c.deleted, t.max_deleted_percent
            )));
        }
        if let Some(max) = t.max_changed_percent {
            let changed = c.changed as f64 * 100.0 / snapshot as f64;
            if changed > max {
                return Err(Error::Guard(format!(
                    "guard max_changed_percent: {} of {snapshot} snapshot rows changed ({changed:.1}% > {max}%); nothing was sent; rerun with --force if this is intended",
                    c.changed
                )));
            }
        }
        Ok(())
    }

    /// The staged rows, streamed from their file.
    pub async fn stream(
        &self,
        ctx: &SessionContext,
        state: &State,
    ) -> Result<SendableRecordBatchStream> {
        let fail = |e: datafusion::error::DataFusionError| {
            Error::from(StateError::files("reading the staged change set", e))
        };
        ctx.read_parquet(state.url(&self.rel), ParquetReadOptions::default())
            .await
            .map_err(fail)?
            .execute_stream()
            .await
            .map_err(fail)
    }
}

/// Writes the change set of `set` to `staged/<run_id>.parquet`.
pub(crate) async fn stage(
    ctx: &SessionContext,
    settings: &Settings,
    state: &State,
    set: &ChangeSet,
    run_id: &str,
) -> Result<Staged> {
    let pass1 = format!("staged/{run_id}.pass1.parquet");
    let invalid_rel = format!("reports/{run_id}.invalid.parquet");
    let tally = split_by_kind(state, set, &pass1, &invalid_rel).await?;
    let rel = format!("staged/{run_id}.parquet");
    record_changed_attributes(ctx, settings, state, set, &pass1, &rel).await?;
    state.remove(&pass1).await;
    Ok(Staged {
        rel,
        invalid_rel,
        summary: tally.summary,
    })
}

/// Pass 1: streams the classified rows, counting every kind, into the change set (new,
/// changed and deleted rows) and the invalid rows' file.
async fn split_by_kind(
    state: &State,
    set: &ChangeSet,
    pass1: &str,
    invalid_rel: &str,
) -> Result<Tally> {
    let mut tally = Tally::default();
    let schema = set
        .buckets
        .first()
        .map(|df| Arc::new(df.schema().as_arrow().clone()))
        .ok_or_else(|| Error::Internal("change set has no buckets".into()))?;
    let mut changes = state.parquet_writer(pass1, Arc::clone(&schema))?;
    let mut invalid = state.parquet_writer(invalid_rel, Arc::clone(&schema))?;
    let werr = |rel: &str, e: datafusion::parquet::errors::ParquetError| {
        Error::parquet(format!("state: writing {rel}"), e)
    };
    for df in &set.buckets {
        let mut stream = df
            .clone()
            .execute_stream()
            .await
            .map_err(|e| Error::engine("running the model", e))?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| Error::engine("running the model", e))?;
            let kinds = tally.add(&batch)?;
            let keep: BooleanArray = kinds
                .iter()
                .map(|k| {
                    Some(matches!(
                        k,
                        ChangeKind::New | ChangeKind::Changed | ChangeKind::Deleted
                    ))
                })
                .collect();
            let bad: BooleanArray = kinds
                .iter()
                .map(|k| Some(*k == ChangeKind::Invalid))
                .collect();
            let f = |mask: &BooleanArray| {
                filter_record_batch(&batch, mask)
                    .map_err(|e| Error::arrow("filtering the change set", e))
            };
            let kept = f(&keep)?;
            if kept.num_rows() > 0 {
                changes.write(&kept).await.map_err(|e| werr(pass1, e))?;
            }
            let kept = f(&bad)?;
            if kept.num_rows() > 0 {
                invalid
                    .write(&kept)
                    .await
                    .map_err(|e| werr(invalid_rel, e))?;
            }
        }
    }
    changes.close().await.map_err(|e| werr(pass1, e))?;
    invalid.close().await.map_err(|e| werr(invalid_rel, e))?;
    Ok(tally)
}

/// Pass 2: the staged rows of pass 1 joined, changed rows only, with the state's stored
/// values to record which attributes changed, written to `rel`.
async fn record_changed_attributes(
    ctx: &SessionContext,
    settings: &Settings,
    state: &State,
    set: &ChangeSet,
    pass1: &str,
    rel: &str,
) -> Result<()> {
    let fail = |e: datafusion::error::DataFusionError| Error::from(StateError::files("staging", e));
    let staged = ctx
        .read_parquet(state.url(pass1), ParquetReadOptions::default())
        .await
        .map_err(fail)?;
    let stage1 = temp_view(ctx, "stage1", staged).map_err(fail)?;
    let state_cols = set.state.schema().as_arrow().clone();
    let state_view = temp_view(ctx, "stage_state", set.state.clone()).map_err(fail)?;
    let value_key = crate::functions::row_hash::VALUE_KEY;
    let mut stored = vec![quote(state::IDENTIFIER)];
    let mut tests = Vec::new();
    for m in &settings.attributes {
        let a = quote(&m.attribute);
        if state_cols.field_with_name(&m.attribute).is_ok() {
            stored.push(a.clone());
            // Parenthesised: DataFusion 55 misparses unparenthesised IS DISTINCT FROM chains.
            tests.push(format!(
                "CASE WHEN ({value_key}(c.{a}) IS DISTINCT FROM {value_key}(s.{a})) THEN '{}' END",
                m.attribute
            ));
        } else {
            tests.push(format!(
                "CASE WHEN ({value_key}(c.{a}) IS NOT NULL) THEN '{}' END",
                m.attribute
            ));
        }
    }
    // One entry per attribute, null where it did not change; array_compact drops the
    // nulls (array_remove(.., NULL) returns NULL in DataFusion 55).
    let sql = format!(
        "SELECT c.*, CASE WHEN (c.{KIND} = '{changed}') THEN array_compact(make_array({tests})) END AS {CHANGED_ATTRIBUTES} \
         FROM {stage1} c \
         LEFT JOIN (SELECT {stored} FROM {state_view}) s \
           ON (c.{KIND} = '{changed}' AND c.{id} = s.{id})",
        changed = ChangeKind::Changed,
        tests = tests.join(", "),
        stored = stored.join(", "),
        id = quote(state::IDENTIFIER),
    );
    let detailed = ctx.sql(&sql).await.map_err(fail)?;
    state.write(detailed, rel).await?;
    Ok(())
}
