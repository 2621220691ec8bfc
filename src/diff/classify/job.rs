//! One classification: both inputs read to their ends, the model's rows held and charged
//! to the pool, the state's rows added on a task of their own.

use std::sync::Arc;

use datafusion::arrow::array::{Array, FixedSizeBinaryArray};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::utils::memory::{RecordBatchMemoryCounter, get_record_batch_memory_size};
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::metrics::{
    BaselineMetrics, ExecutionPlanMetricsSet, MetricBuilder, Time,
};
use futures::StreamExt;

use super::entry::{NONE, PARTS, Part, Row, reserve, scatter};
use super::join::{self, Matches};
use crate::config::Key;
use crate::strings::Strings;

/// What each held row costs besides its columns: a model row's partition entry and its
/// verdict's share of the output; a state row's entry and its place in the deletions.
const MODEL_ROW_BYTES: usize = 48;
const STATE_ROW_BYTES: usize = 40;
/// Bytes held per model batch besides its rows: where it starts in each partition.
const BATCH_BYTES: usize = PARTS * size_of::<u32>();

/// Where the operator finds its input columns.
#[derive(Debug, Clone)]
pub(super) struct Columns {
    pub(super) raw: usize,
    pub(super) ident: usize,
    pub(super) known: usize,
    pub(super) hash: usize,
    /// Each value's column, None for those the scan left out (not projected).
    pub(super) values: Vec<Option<usize>>,
    pub(super) s_id: usize,
    pub(super) s_hash: usize,
    /// Absent when not asked for: the scan then leaves them out of the state's plan.
    pub(super) s_contact_id: Option<usize>,
    pub(super) s_status: Option<usize>,
    /// The model columns the output is built from, by index, ascending.
    pub(super) held: Vec<usize>,
}

/// What one execution takes from its operator (`ClassifyExec::spec`): the key, where the
/// columns are, the rows expected, the output's schema and projection, and the metrics.
pub(super) struct Spec<'a> {
    pub(super) key: Key,
    pub(super) cols: &'a Columns,
    pub(super) expected: usize,
    pub(super) full: &'a SchemaRef,
    pub(super) projection: &'a Option<Vec<usize>>,
    pub(super) metrics: &'a ExecutionPlanMetricsSet,
}

/// A buffered model batch: only the columns the output is built from (`Columns::held`;
/// once partitioned, a plan needs no row hashes).
pub(super) type ModelBatch = RecordBatch;

/// A buffered state batch's compact columns (contactIds and statuses only when asked for).
pub(super) struct StateBatch {
    pub(super) ids: Strings,
    pub(super) contact_ids: Option<Strings>,
    pub(super) statuses: Option<Strings>,
}

/// One execution of `ClassifyExec`: the model's held rows and both sides' partitions, then
/// the join's matches and how far the output has got.
pub(super) struct ClassifyJob {
    pub(super) key: Key,
    pub(super) cols: Columns,
    pub(super) full: SchemaRef,
    pub(super) projection: Option<Vec<usize>>,
    pub(super) metrics: BaselineMetrics,
    /// CPU time of each phase: adding model rows, adding state rows, joining, classifying.
    pub(super) phase: [Time; 4],
    pub(super) reservation: MemoryReservation,
    /// Threads for the join and the output: the session's target partitions, at most one
    /// per core.
    pub(super) threads: usize,
    /// The identifier hashes' seed, drawn at random for this classification.
    pub(super) seed: u64,
    pub(super) model: Vec<ModelBatch>,
    /// The buffers of `model` charged to the pool so far.
    pub(super) counted: RecordBatchMemoryCounter,
    /// The model's first row of each batch, then its row count.
    pub(super) model_starts: Vec<Row>,
    /// The model's identifiers, by partition.
    pub(super) model_parts: Vec<Part>,
    /// Each model batch's first entry in each partition.
    pub(super) batch_starts: Vec<u32>,
    /// Entries each partition is sized for when its side's first batch arrives.
    pub(super) per_part: usize,
    /// The state's rows, added on a task of their own (see `collect`).
    pub(super) state: StateSide,
    pub(super) matches: Option<Matches>,
    /// Output progress: the next model batch, then the next deletion.
    pub(super) next_batch: usize,
    pub(super) next_deleted: usize,
}

/// The state's side of a classification: its rows, where each batch starts, its
/// identifiers by partition and what they are charged.
pub(super) struct StateSide {
    pub(super) cols: Columns,
    pub(super) seed: u64,
    pub(super) per_part: usize,
    pub(super) time: Time,
    pub(super) reservation: MemoryReservation,
    pub(super) batches: Vec<StateBatch>,
    /// The first row of each batch, then the row count.
    pub(super) starts: Vec<Row>,
    pub(super) parts: Vec<Part>,
}

impl StateSide {
    pub(super) fn new(
        cols: Columns,
        seed: u64,
        per_part: usize,
        time: Time,
        reservation: MemoryReservation,
    ) -> Self {
        StateSide {
            cols,
            seed,
            per_part,
            time,
            reservation,
            batches: Vec::new(),
            starts: vec![0],
            parts: (0..PARTS).map(|_| Vec::new()).collect(),
        }
    }

    /// A side with no rows yet, configured like this one.
    fn emptied(&self) -> Self {
        let r = self.reservation.new_empty();
        StateSide::new(
            self.cols.clone(),
            self.seed,
            self.per_part,
            self.time.clone(),
            r,
        )
    }

    pub(super) async fn collect(mut self, mut state: SendableRecordBatchStream) -> Result<Self> {
        while let Some(b) = state.next().await {
            self.add(b?)?;
        }
        Ok(self)
    }

    pub(super) fn add(&mut self, batch: RecordBatch) -> Result<()> {
        let time = self.time.clone();
        let _timer = time.timer();
        let c = &self.cols;
        let hashes = batch.column(c.s_hash);
        let Some(hashes) = hashes.as_any().downcast_ref::<FixedSizeBinaryArray>() else {
            return internal_err!("the state's row hash is {}", hashes.data_type());
        };
        let strings = |at: Option<usize>| at.map(|at| Strings::new(batch.column(at))).transpose();
        let sb = StateBatch {
            ids: Strings::new(batch.column(c.s_id))?,
            contact_ids: strings(c.s_contact_id)?,
            statuses: strings(c.s_status)?,
        };
        let end = next_start(&self.starts, sb.ids.len())?;
        let first = self.starts[self.batches.len()];
        if self.batches.is_empty() {
            reserve(&mut self.parts, self.per_part);
        }
        scatter(&sb.ids, hashes, first, self.seed, &mut self.parts);
        let bytes = get_record_batch_memory_size(&batch) + sb.ids.len() * STATE_ROW_BYTES;
        self.batches.push(sb);
        self.starts.push(end);
        charge(&mut self.reservation, bytes)
    }
}

/// Charges `bytes` to the pool, naming what holds them when it is exhausted.
fn charge(reservation: &mut MemoryReservation, bytes: usize) -> Result<()> {
    reservation.try_grow(bytes).map_err(|e| match e {
        DataFusionError::ResourcesExhausted(m) => DataFusionError::ResourcesExhausted(
            format!("change detection holds the model's rows of a bucket in memory ({m}); raise memory_limit_mb or set [limits] diff_partitions higher"),
        ),
        other => other,
    })
}

fn next_start(starts: &[Row], rows: usize) -> Result<Row> {
    let first = starts.last().copied().unwrap_or(0);
    match Row::try_from(rows).ok().and_then(|r| first.checked_add(r)) {
        Some(end) if end < NONE => Ok(end),
        _ => Err(DataFusionError::ResourcesExhausted(format!(
            "change detection takes at most {} rows per bucket; set [limits] diff_partitions higher",
            NONE - 1
        ))),
    }
}

impl ClassifyJob {
    pub(super) fn new(
        exec: Spec<'_>,
        partition: usize,
        reservation: MemoryReservation,
        threads: usize,
    ) -> Self {
        // Sized for the expected rows, plus an eighth for new identifiers and skew.
        let per_part = exec.expected / PARTS + exec.expected / PARTS / 8;
        let phase = [
            "add_model_time",
            "add_state_time",
            "join_time",
            "classify_time",
        ]
        .map(|n| MetricBuilder::new(exec.metrics).subset_time(n, partition));
        let seed = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), partition);
        let state = StateSide::new(
            exec.cols.clone(),
            seed,
            per_part,
            phase[1].clone(),
            reservation.new_empty(),
        );
        ClassifyJob {
            key: exec.key,
            cols: exec.cols.clone(),
            full: Arc::clone(exec.full),
            projection: exec.projection.clone(),
            metrics: BaselineMetrics::new(exec.metrics, partition),
            phase,
            reservation,
            threads,
            seed,
            model: Vec::new(),
            counted: RecordBatchMemoryCounter::new(),
            model_starts: vec![0],
            model_parts: (0..PARTS).map(|_| Vec::new()).collect(),
            per_part,
            state,
            matches: None,
            batch_starts: Vec::new(),
            next_batch: 0,
            next_deleted: 0,
        }
    }

    /// Reads both inputs to their ends, then joins them. The state's rows are added on a
    /// task of their own, beside the model's: from a bucket's files both come faster than
    /// one thread adds them.
    pub(super) async fn collect(
        mut self,
        mut model: SendableRecordBatchStream,
        state: SendableRecordBatchStream,
    ) -> Result<Self> {
        let empty = self.state.emptied();
        let side = std::mem::replace(&mut self.state, empty);
        let side = datafusion::common::runtime::SpawnedTask::spawn(side.collect(state));
        while let Some(b) = model.next().await {
            self.add_model(b?)?;
        }
        self.state = side
            .join()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))??;
        self.join()?;
        Ok(self)
    }

    /// Joins the model's and the state's partitions, once both inputs have ended.
    pub(super) fn join(&mut self) -> Result<()> {
        let matches = join::join(
            std::mem::take(&mut self.model_parts),
            std::mem::take(&mut self.state.parts),
            std::mem::take(&mut self.batch_starts),
            self.threads,
            [&self.phase[2], &self.phase[3]],
        )?;
        self.matches = Some(matches);
        Ok(())
    }

    pub(super) fn add_model(&mut self, batch: RecordBatch) -> Result<()> {
        let time = self.phase[0].clone();
        let _timer = time.timer();
        let ids = Strings::new(batch.column(self.cols.ident))?;
        let hashes = batch.column(self.cols.hash);
        let Some(hashes) = hashes.as_any().downcast_ref::<FixedSizeBinaryArray>() else {
            return internal_err!("the model's row hash is {}", hashes.data_type());
        };
        let end = next_start(&self.model_starts, ids.len())?;
        let first = self.model_starts[self.model.len()];
        if self.model.is_empty() {
            reserve(&mut self.model_parts, self.per_part);
        }
        self.batch_starts
            .extend(self.model_parts.iter().map(|p| p.len() as u32));
        scatter(&ids, hashes, first, self.seed, &mut self.model_parts);
        let held = batch.project(&self.cols.held)?;
        // The held columns' buffers, each counted once (columns read from a bucket's file
        // share one), where the batch starts in each partition, and per row its partition
        // entry and its verdict's output.
        let bytes = self.counted.count_batch(&held) + BATCH_BYTES + ids.len() * MODEL_ROW_BYTES;
        self.model.push(held);
        self.model_starts.push(end);
        charge(&mut self.reservation, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn held_model_columns_are_only_those_asked_for_each_buffer_charged_once() {
        use datafusion::arrow::ipc::{reader::FileReader, writer::FileWriter};
        let rows = 2000;
        let ids: Vec<String> = (0..rows).map(|i| format!("user{i}@x.se")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let batch = model_batch(&ids, &vec![Some(1); rows]);
        // The raw and normalised identifiers' buffers.
        let ids_only = get_record_batch_memory_size(&batch.project(&[0, 1]).unwrap());
        // Written and read back as a bucket's file is: the columns are slices of one buffer.
        let mut file = Vec::new();
        let mut w = FileWriter::try_new(&mut file, &model_schema()).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        drop(w);
        let mut reader = FileReader::try_new(std::io::Cursor::new(file), None).unwrap();
        let read = reader.next().unwrap().unwrap();
        let once = get_record_batch_memory_size(&read);
        let per_column: usize = read
            .columns()
            .iter()
            .map(|a| a.get_array_memory_size())
            .sum();
        assert!(per_column > 3 * once, "the columns should share one buffer");

        let charged = |projection: Option<Vec<usize>>, batch: RecordBatch| {
            let mut job = job(projection, rows);
            job.add_model(batch).unwrap();
            job.reservation.size()
        };
        // Every column is held (no projection), its shared buffer charged once, plus each
        // row's partition entry and where the batch starts in each partition.
        let per_batch = rows * MODEL_ROW_BYTES + BATCH_BYTES;
        assert_eq!(charged(None, read), once + per_batch);
        // A count holds only the identifiers: not the row hashes, values or contactIds.
        assert_eq!(charged(Some(vec![0, 1, 2, 3]), batch), ids_only + per_batch);
    }

    #[test]
    fn rows_past_what_a_row_number_holds_are_refused() {
        assert_eq!(next_start(&[0, 10], 5).unwrap(), 15);
        let err = next_start(&[0, NONE - 10], 10).unwrap_err();
        assert!(err.to_string().contains("diff_partitions"), "{err}");
        assert_eq!(next_start(&[0, NONE - 10], 9).unwrap(), NONE - 1);
    }
}
