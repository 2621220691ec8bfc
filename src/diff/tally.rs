//! Counting a change set as it streams by: kinds, and a few samples of each.

use std::sync::Arc;

use datafusion::arrow::array::Array;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::DataFrame;
use futures::StreamExt;

use super::{ChangeSet, Sample, Summary};
use crate::columns::{self, ChangeKind, KIND, RAW_IDENTIFIER, REASON, string_column};
use crate::error::{Error, Result};
use crate::state;

const SAMPLES_PER_KIND: usize = 5;

/// Counts kinds and keeps samples while a change set streams by.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub summary: Summary,
}

impl Tally {
    /// Counts one classified batch (which must hold `_kind`, `_identifier`,
    /// `_raw_identifier` and `_reason`) and returns each row's kind.
    pub(crate) fn add(&mut self, batch: &RecordBatch) -> Result<Vec<ChangeKind>> {
        let col = |name: &str| string_column(batch, name);
        let kinds = columns::kinds(batch)?;
        // Identifiers and reasons are read only for samples: casting them costs a copy.
        let mut sampled = None;
        for (i, &kind) in kinds.iter().enumerate() {
            let c = &mut self.summary.counts;
            match kind {
                ChangeKind::New => c.new += 1,
                ChangeKind::Changed => c.changed += 1,
                ChangeKind::Unchanged => {
                    c.unchanged += 1;
                    continue;
                }
                ChangeKind::Deleted => c.deleted += 1,
                ChangeKind::Invalid => c.invalid += 1,
            }
            let samples = self
                .summary
                .samples
                .entry(kind.as_str().to_string())
                .or_default();
            if samples.len() < SAMPLES_PER_KIND {
                let (ids, raws, reasons) = match sampled {
                    Some(ref s) => s,
                    None => sampled.insert((
                        col(state::IDENTIFIER)?,
                        col(RAW_IDENTIFIER)?,
                        col(REASON)?,
                    )),
                };
                let (identifier, reason) = if kind == ChangeKind::Invalid {
                    // A raw identifier equal to its normalised one may be left out (`narrow`).
                    let raw = if raws.is_valid(i) { raws } else { ids };
                    (
                        raw.is_valid(i).then(|| raw.value(i).to_string()),
                        reasons.is_valid(i).then(|| reasons.value(i).to_string()),
                    )
                } else {
                    (ids.is_valid(i).then(|| ids.value(i).to_string()), None)
                };
                samples.push(Sample { identifier, reason });
            }
        }
        Ok(kinds)
    }

    /// Adds a later bucket's tally: its counts, and its samples where this one has room.
    fn merge(&mut self, later: Summary) {
        self.summary.counts += later.counts;
        for (kind, samples) in later.samples {
            let kept = self.summary.samples.entry(kind).or_default();
            let room = SAMPLES_PER_KIND.saturating_sub(kept.len());
            kept.extend(samples.into_iter().take(room));
        }
    }
}

/// Streams the change set once, counting each kind and keeping a few samples of each.
/// Buckets run `at_once` at a time, each on its own task (so on its own core), and are
/// tallied in order: the samples are those a one-by-one run keeps.
pub(crate) async fn summarize(set: &ChangeSet) -> Result<Summary> {
    let tallies = set.buckets.iter().map(|df| {
        let df = df.clone();
        datafusion::common::runtime::SpawnedTask::spawn(tally_bucket(df)).join()
    });
    let mut tallies = futures::stream::iter(tallies).buffered(set.at_once.max(1));
    let mut tally = Tally::default();
    while let Some(done) = tallies.next().await {
        let done =
            done.map_err(|e| Error::Internal(format!("change detection task failed: {e}")))??;
        tally.merge(done.summary);
    }
    Ok(tally.summary)
}

/// Counts one bucket of a change set.
async fn tally_bucket(df: DataFrame) -> Result<Tally> {
    let mut tally = Tally::default();
    let df = df
        .select_columns(&[KIND, state::IDENTIFIER, RAW_IDENTIFIER, REASON])
        .map_err(|e| Error::engine("change set", e))?;
    let task = df.task_ctx();
    let plan = df
        .create_physical_plan()
        .await
        .map_err(|e| Error::engine("change detection", e))?;
    let mut stream = datafusion::physical_plan::execute_stream(plan.clone(), Arc::new(task))
        .map_err(|e| Error::engine("change detection", e))?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| Error::engine("change detection", e))?;
        tally.add(&batch)?;
    }
    log_metrics(&plan);
    Ok(tally)
}

/// With `-vv`, the executed plan with its metrics (rows, time, memory, spills per operator):
/// where a slow diff spends its time.
pub(crate) fn log_metrics(plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) {
    if tracing::enabled!(tracing::Level::TRACE) {
        let shown = datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(
            plan.as_ref(),
        )
        .indent(true)
        .to_string();
        tracing::trace!("executed plan with metrics:\n{shown}");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::datatypes::DataType;

    use super::*;
    use crate::diff::Counts;

    /// Reports (and `history`, reading old ones) name each count as its kind is stored.
    #[test]
    fn each_kind_is_counted_under_its_name() {
        let json = serde_json::to_value(Counts::default()).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut names = ChangeKind::ALL.map(ChangeKind::as_str);
        keys.sort_unstable();
        names.sort_unstable();
        assert_eq!(keys, names);
    }

    #[test]
    fn tallies_merge_in_bucket_order_keeping_the_first_samples() {
        let sample = |id: &str| Sample {
            identifier: Some(id.to_string()),
            reason: None,
        };
        let summary = |new: u64, ids: &[&str]| Summary {
            counts: Counts {
                new,
                unchanged: 10,
                ..Counts::default()
            },
            samples: BTreeMap::from([("new".to_string(), ids.iter().map(|i| sample(i)).collect())]),
        };
        let mut tally = Tally::default();
        tally.merge(summary(3, &["a", "b", "c"]));
        tally.merge(summary(4, &["d", "e", "f", "g"]));
        tally.merge(summary(1, &["h"]));
        let s = tally.summary;
        assert_eq!((s.counts.new, s.counts.unchanged), (8, 30));
        let kept: Vec<_> = s.samples["new"]
            .iter()
            .map(|x| x.identifier.clone().unwrap())
            .collect();
        assert_eq!(kept, ["a", "b", "c", "d", "e"]);
    }

    #[test]
    fn kinds_are_counted_as_views_and_as_plain_strings() {
        use datafusion::arrow::array::{ArrayRef, StringViewArray};
        use datafusion::arrow::datatypes::{Field, Schema};
        let kinds = [
            "unchanged",
            "new",
            "unchanged",
            "deleted",
            "invalid",
            "unchanged",
        ];
        let ids: Vec<String> = (0..kinds.len()).map(|i| format!("u{i}@x.se")).collect();
        let reasons = [None, None, None, None, Some("bad"), None];
        for view in [true, false] {
            let text = |v: Vec<Option<&str>>| -> ArrayRef {
                match view {
                    true => Arc::new(StringViewArray::from(v)),
                    false => Arc::new(StringArray::from(v)),
                }
            };
            let t = if view {
                DataType::Utf8View
            } else {
                DataType::Utf8
            };
            let schema = Schema::new(
                [KIND, state::IDENTIFIER, RAW_IDENTIFIER, REASON]
                    .map(|n| Field::new(n, t.clone(), true))
                    .to_vec(),
            );
            let batch = RecordBatch::try_new(
                Arc::new(schema),
                vec![
                    text(kinds.iter().map(|k| Some(*k)).collect()),
                    text(ids.iter().map(|i| Some(i.as_str())).collect()),
                    text(ids.iter().map(|i| Some(i.as_str())).collect()),
                    text(reasons.to_vec()),
                ],
            )
            .unwrap();
            let mut tally = Tally::default();
            tally.add(&batch).unwrap();
            tally.add(&batch).unwrap();
            let c = &tally.summary.counts;
            assert_eq!(
                [c.new, c.changed, c.unchanged, c.deleted, c.invalid],
                [2, 0, 6, 2, 2],
                "views: {view}"
            );
            let invalid = &tally.summary.samples["invalid"][0];
            assert_eq!(invalid.reason.as_deref(), Some("bad"));
            assert_eq!(
                tally.summary.samples["new"][0].identifier.as_deref(),
                Some("u1@x.se")
            );
        }
    }
}
