//! The duplicate check and the comparison with the state as one hand-written operator.
//!
//! In SQL this is a grouped count of identifiers joined back to every row, then a full outer
//! join with the state: three hash tables, each input repartitioned by identifier, and each
//! stage waiting for the one below. Here both inputs are read side by side as they stream
//! in: each row's identifier goes, as its 128-bit hash with its row's number and row hash,
//! to one of 256 partitions by the top bits of that hash. Once both inputs end, the
//! partitions are joined on one thread per core (each partition's tables fit the CPU
//! caches): model rows are matched with state rows and counted per identifier, and each
//! model row gets its verdict; state rows that no model row claimed come out as deletions.
//! The output, built on the same threads, checks the identifiers the state lacks against
//! the key's rules: the state holds only identifiers that passed them (a baseline keeps
//! only valid rows, a run only rows Voyado confirmed), so a row it holds passes them too.
//! The SQL form checks every row; the two differ only on a state edited by hand.
//!
//! The model's rows are held until both inputs end, because the last row may turn the first
//! into a duplicate; they are charged to the session's memory pool. A bucketed diff runs
//! one operator per bucket. Under Ballista the SQL form in `Rules` runs instead.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::NullBufferBuilder;
use datafusion::arrow::array::{
    Array, ArrayRef, FixedSizeBinaryArray, StringBuilder, StringViewArray, UInt32Array,
    new_null_array,
};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Column;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::utils::memory::{RecordBatchMemoryCounter, get_record_batch_memory_size};
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, TableType};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, Time,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream, execute_stream,
};
use datafusion::prelude::DataFrame;
use futures::StreamExt;
use futures::stream::BoxStream;
use hashbrown::HashTable;

use super::{
    CHANGED, DELETED, INVALID, KIND, KNOWN_CONTACT_ID, NEW, PREV_STATUS, RAW_IDENTIFIER, REASON,
    UNCHANGED,
};
use crate::config::Key;
use crate::identity;
use crate::state;
use crate::strings::{Strings, view_of};

/// Compact state columns, as `compact` in the diff names them.
const S_ID: &str = "__s_id";
const S_HASH: &str = "__s_hash";
const S_CONTACT_ID: &str = "__s_contact_id";
const S_STATUS: &str = "__s_status";
/// Output columns filled from the state's rows (by index in the full output schema).
const COL_IDENTIFIER: usize = 1;
const COL_CONTACT_ID: usize = 5;
const COL_PREV_STATUS: usize = 6;
/// Output columns taken from the model's rows.
const COL_RAW: usize = 2;
const COL_KNOWN: usize = 4;
const COL_ROW_HASH: usize = 7;
/// Output columns before the values.
const FIXED_COLUMNS: usize = 8;
/// Rows per output batch of deletions.
const DELETED_BATCH: usize = 8192;
/// A row of one side, numbered across its batches in arrival order; NONE for no row.
type Row = u32;
const NONE: Row = Row::MAX;
/// What each held row costs besides its columns: a model row's partition entry and its
/// verdict's share of the output; a state row's entry and its place in the deletions.
const MODEL_ROW_BYTES: usize = 48;
const STATE_ROW_BYTES: usize = 40;
/// Bytes held per model batch besides its rows: where it starts in each partition.
const BATCH_BYTES: usize = PARTS * size_of::<u32>();

/// The change set of one model frame against one compact state frame, as a table.
#[derive(Debug)]
pub struct Classified {
    model: LogicalPlan,
    state: LogicalPlan,
    key: Key,
    /// Model columns carried through after the fixed ones (attribute values).
    values: Vec<String>,
    /// Identifiers expected (the state's rows), to size the table once.
    expected: usize,
    schema: SchemaRef,
}

impl Classified {
    /// `model` holds `_raw_identifier`, `_identifier`, `_known_contact_id`, `_row_hash` and
    /// the `values` columns (others are ignored); `state` holds the compact view
    /// (`__s_id`, `__s_hash`, `__s_contact_id`, `__s_status`) of about `expected` rows.
    pub fn new(
        model: DataFrame,
        state: DataFrame,
        key: Key,
        values: Vec<String>,
        expected: usize,
    ) -> Result<Self> {
        let schema = output_schema(
            model.schema().as_arrow(),
            state.schema().as_arrow(),
            &values,
        )?;
        Ok(Classified {
            model: model.logical_plan().clone(),
            state: state.logical_plan().clone(),
            key,
            values,
            expected,
            schema,
        })
    }
}

/// The change set's columns: the fixed ones, typed after the model's (`state` must hold
/// the compact view, its row hash typed as the model's), then the `values`.
fn output_schema(m: &Schema, s: &Schema, values: &[String]) -> Result<SchemaRef> {
    let field = |schema: &Schema, name: &str| -> Result<DataType> {
        Ok(schema.field_with_name(name)?.data_type().clone())
    };
    field(s, S_ID)?;
    if field(s, S_HASH)? != field(m, state::ROW_HASH)? {
        return internal_err!("the state's and the model's row hashes differ in type");
    }
    let mut fields = vec![
        Field::new(KIND, DataType::Utf8View, true),
        Field::new(state::IDENTIFIER, field(m, state::IDENTIFIER)?, true),
        Field::new(RAW_IDENTIFIER, field(m, RAW_IDENTIFIER)?, true),
        Field::new(REASON, DataType::Utf8View, true),
        Field::new(KNOWN_CONTACT_ID, field(m, KNOWN_CONTACT_ID)?, true),
        Field::new(state::CONTACT_ID, DataType::Utf8, true),
        Field::new(PREV_STATUS, DataType::Utf8, true),
        Field::new(state::ROW_HASH, field(m, state::ROW_HASH)?, true),
    ];
    for v in values {
        fields.push(Field::new(v, field(m, v)?, true));
    }
    Ok(Arc::new(Schema::new(fields)))
}

#[async_trait]
impl TableProvider for Classified {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        session: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // Values not asked for (a count, a plan) are left out of the model's plan, so they
        // are neither carried nor held: the row hash still reads them below.
        let wanted = |i: usize| projection.is_none_or(|p| p.contains(&(FIXED_COLUMNS + i)));
        let model = if (0..self.values.len()).all(wanted) {
            self.model.clone()
        } else {
            let kept = [
                RAW_IDENTIFIER,
                state::IDENTIFIER,
                KNOWN_CONTACT_ID,
                state::ROW_HASH,
            ]
            .into_iter()
            .chain(
                self.values
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| wanted(*i))
                    .map(|(_, v)| v.as_str()),
            )
            .map(|c| Expr::Column(Column::from_name(c)));
            LogicalPlanBuilder::from(self.model.clone())
                .project(kept)?
                .build()?
        };
        // A count needs no contactIds or statuses: the snapshot's columns are not even read.
        let state = if wanted_state(projection.map(Vec::as_slice)) {
            self.state.clone()
        } else {
            LogicalPlanBuilder::from(self.state.clone())
                .project([S_ID, S_HASH].map(|c| Expr::Column(Column::from_name(c))))?
                .build()?
        };
        let model = session.create_physical_plan(&model).await?;
        let state = session.create_physical_plan(&state).await?;
        ClassifyExec::try_new(
            model,
            state,
            self.key,
            &self.values,
            self.expected,
            Arc::clone(&self.schema),
            projection.cloned(),
        )
        .map(|e| Arc::new(e) as Arc<dyn ExecutionPlan>)
    }
}

/// Whether a projection asks for the state's contactIds or statuses.
fn wanted_state(projection: Option<&[usize]>) -> bool {
    projection.is_none_or(|p| p.contains(&COL_CONTACT_ID) || p.contains(&COL_PREV_STATUS))
}

/// Where the operator finds its input columns.
#[derive(Debug, Clone)]
struct Columns {
    raw: usize,
    ident: usize,
    known: usize,
    hash: usize,
    /// Each value's column, None for those the scan left out (not projected).
    values: Vec<Option<usize>>,
    s_id: usize,
    s_hash: usize,
    /// Absent when not asked for: the scan then leaves them out of the state's plan.
    s_contact_id: Option<usize>,
    s_status: Option<usize>,
    /// The model columns the output is built from, by index, ascending.
    held: Vec<usize>,
}

#[derive(Debug, Clone)]
struct ClassifyExec {
    model: Arc<dyn ExecutionPlan>,
    state: Arc<dyn ExecutionPlan>,
    key: Key,
    cols: Columns,
    expected: usize,
    /// Every output column, and the ones this scan returns.
    full: SchemaRef,
    projection: Option<Vec<usize>>,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl ClassifyExec {
    fn try_new(
        model: Arc<dyn ExecutionPlan>,
        state: Arc<dyn ExecutionPlan>,
        key: Key,
        values: &[String],
        expected: usize,
        full: SchemaRef,
        projection: Option<Vec<usize>>,
    ) -> Result<Self> {
        let (m, s) = (model.schema(), state.schema());
        let wanted = |column: usize| projection.as_ref().is_none_or(|p| p.contains(&column));
        let mut cols = Columns {
            raw: m.index_of(RAW_IDENTIFIER)?,
            ident: m.index_of(state::IDENTIFIER)?,
            known: m.index_of(KNOWN_CONTACT_ID)?,
            hash: m.index_of(state::ROW_HASH)?,
            values: values.iter().map(|v| m.index_of(v).ok()).collect(),
            s_id: s.index_of(S_ID)?,
            s_hash: s.index_of(S_HASH)?,
            s_contact_id: s.index_of(S_CONTACT_ID).ok(),
            s_status: s.index_of(S_STATUS).ok(),
            held: Vec::new(),
        };
        let fixed = [
            (COL_IDENTIFIER, cols.ident),
            (COL_RAW, cols.raw),
            (COL_KNOWN, cols.known),
            (COL_ROW_HASH, cols.hash),
        ];
        let values = (cols.values.iter().enumerate())
            .filter_map(|(i, at)| Some((FIXED_COLUMNS + i, (*at)?)));
        cols.held = fixed
            .into_iter()
            .chain(values)
            // The identifier always: rows the state lacks are checked against the key's rules.
            .filter(|(column, _)| wanted(*column) || *column == COL_IDENTIFIER)
            .map(|(_, at)| at)
            .collect();
        cols.held.sort_unstable();
        cols.held.dedup();
        if wanted_state(projection.as_deref())
            && (cols.s_contact_id.is_none() || cols.s_status.is_none())
        {
            return internal_err!("ClassifyExec: the state's contactIds and statuses are missing");
        }
        let out = match &projection {
            Some(p) => Arc::new(full.project(p)?),
            None => Arc::clone(&full),
        };
        for (i, v) in cols.values.iter().enumerate() {
            let column = FIXED_COLUMNS + i;
            if v.is_none() && projection.as_ref().is_none_or(|p| p.contains(&column)) {
                return internal_err!("ClassifyExec: no model column for {}", full.field(column));
            }
        }
        let props = PlanProperties::new(
            EquivalenceProperties::new(out),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(ClassifyExec {
            model,
            state,
            key,
            cols,
            expected,
            full,
            projection,
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for ClassifyExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ClassifyExec: key={}", self.key.as_str())
    }
}

impl ExecutionPlan for ClassifyExec {
    fn name(&self) -> &str {
        "ClassifyExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.model, &self.state]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (Some(state), Some(model), true) =
            (children.pop(), children.pop(), children.is_empty())
        else {
            return internal_err!("ClassifyExec takes two children");
        };
        Ok(Arc::new(ClassifyExec {
            model,
            state,
            metrics: ExecutionPlanMetricsSet::new(),
            ..(*self).clone()
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("ClassifyExec has one partition, not {partition}");
        }
        let model = execute_stream(Arc::clone(&self.model), Arc::clone(&context))?;
        let state = execute_stream(Arc::clone(&self.state), Arc::clone(&context))?;
        let reservation =
            MemoryConsumer::new("voyado change detection").register(context.memory_pool());
        // One thread per partition of the session, but no more than the cores: these are
        // OS threads, and a session may have more partitions than cores.
        let threads = (context.session_config().target_partitions()).min(crate::catalog::cores());
        let job = Job::new(self, partition, reservation, threads);
        let out = self.properties().eq_properties.schema().clone();
        let batches = futures::stream::once(job.collect(model, state))
            .map(|job| match job {
                Ok(job) => job.into_stream(),
                Err(e) => futures::stream::iter([Err(e)]).boxed(),
            })
            .flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(out, batches)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// Rows are spread over 2^PART_BITS partitions by the top bits of their identifier's hash,
/// so that each partition's hash tables fit the CPU caches: one table over the whole
/// state made every probe wait on memory (about 250 ns per row against 30 here).
const PART_BITS: u32 = 8;
const PARTS: usize = 1 << PART_BITS;

/// A buffered model batch: only the columns the output is built from (`Columns::held`;
/// once partitioned, a plan needs no row hashes).
type ModelBatch = RecordBatch;

/// A buffered state batch's compact columns (contactIds and statuses only when asked for).
struct StateBatch {
    ids: Strings,
    contact_ids: Option<Strings>,
    statuses: Option<Strings>,
}

/// Verdicts: the kind of a model row, and for invalid rows why.
const V_NEW: u8 = 0;
const V_CHANGED: u8 = 1;
const V_UNCHANGED: u8 = 2;
/// Invalid: `V_INVALID + i` for reason `REASONS[i]`.
const V_INVALID: u8 = 3;
const REASONS: [&str; 4] = [
    identity::REASON_EMPTY,
    identity::REASON_EMAIL,
    identity::REASON_PHONE,
    identity::REASON_DUPLICATE,
];

/// The change kinds, by `kind_of`.
const KINDS: [&str; 5] = [NEW, CHANGED, UNCHANGED, INVALID, DELETED];
const KIND_DELETED: usize = 4;

fn kind_of(verdict: u8) -> usize {
    usize::from(verdict.min(V_INVALID))
}

/// A column holding one of a few strings (or null) per row, as views: the strings are
/// written once and each row's view points at one (short ones are held in the view
/// itself), so a row costs 16 bytes and no copy.
fn few_strings(strings: &[&str], rows: impl ExactSizeIterator<Item = Option<usize>>) -> ArrayRef {
    let mut bytes = Vec::new();
    let views: Vec<u128> = strings.iter().map(|s| view_of(s, 0, &mut bytes)).collect();
    let mut nulls = NullBufferBuilder::new(rows.len());
    let out: Vec<u128> = rows
        .map(|r| {
            nulls.append(r.is_some());
            r.map_or(0, |r| views[r])
        })
        .collect();
    // SAFETY: each view is 0 under a null or made by `make_view` from a `str` that, when
    // longer than a view holds, was written to the one buffer at that offset.
    let a = unsafe {
        StringViewArray::new_unchecked(out.into(), vec![Buffer::from_vec(bytes)], nulls.finish())
    };
    Arc::new(a)
}

fn invalid(reason: &str) -> u8 {
    V_INVALID + REASONS.iter().position(|r| *r == reason).unwrap_or(0) as u8
}

/// What the join found. Each model row's verdict and first state row stay in its partition
/// entry (written in partition order, so the join writes memory in sequence); the output
/// reads them back batch by batch, since each partition holds its rows in arrival order.
struct Matches {
    model_parts: Vec<Part>,
    state_parts: Vec<Part>,
    /// Where each model batch's entries start in each partition (`PARTS` per batch).
    batch_starts: Vec<u32>,
    /// Further (state row, verdict) of identifiers the state holds more than once (a state
    /// should have none), by model row.
    more: HashMap<Row, Vec<(Row, u8)>>,
    /// State rows no model row claimed.
    deleted: Vec<Row>,
}

impl Matches {
    /// The verdicts and first state rows (NONE for none) of model batch `b`, its `rows`
    /// rows from row `start`, read from each partition where the batch's entries start
    /// (entries are in row order), so any thread can read any batch. Rows without an
    /// identifier are in no partition: their verdict stays "empty". State rows are looked
    /// up only when `resolve`: else 0 stands for any (a count needs no state columns, and
    /// each lookup is a random read).
    fn read_back(&self, b: usize, start: Row, rows: usize, resolve: bool) -> (Vec<u8>, Vec<Row>) {
        let mut verdicts = vec![invalid(identity::REASON_EMPTY); rows];
        let mut states = vec![NONE; rows];
        let starts = &self.batch_starts[b * PARTS..][..PARTS];
        for ((part, &from), sp) in self.model_parts.iter().zip(starts).zip(&self.state_parts) {
            for e in part[from as usize..].iter() {
                let r = (e.row - start) as usize;
                if r >= rows {
                    break;
                }
                verdicts[r] = e.verdict();
                if e.matched != NO_MATCH {
                    states[r] = match resolve {
                        true => sp[e.matched as usize].row,
                        false => 0,
                    };
                }
            }
        }
        (verdicts, states)
    }
}

struct Job {
    key: Key,
    cols: Columns,
    full: SchemaRef,
    projection: Option<Vec<usize>>,
    metrics: BaselineMetrics,
    /// CPU time of each phase: adding model rows, adding state rows, joining, classifying.
    phase: [Time; 4],
    reservation: MemoryReservation,
    /// Threads for the join and the output: the session's target partitions, at most one
    /// per core.
    threads: usize,
    /// The identifier hashes' seed, drawn at random for this classification.
    seed: u64,
    model: Vec<ModelBatch>,
    /// The buffers of `model` charged to the pool so far.
    counted: RecordBatchMemoryCounter,
    /// The model's first row of each batch, then its row count.
    model_starts: Vec<Row>,
    /// The model's identifiers, by partition.
    model_parts: Vec<Part>,
    /// Each model batch's first entry in each partition.
    batch_starts: Vec<u32>,
    /// Entries each partition is sized for when its side's first batch arrives.
    per_part: usize,
    /// The state's rows, added on a task of their own (see `collect`).
    state: StateSide,
    matches: Option<Matches>,
    /// Output progress: the next model batch, then the next deletion.
    next_batch: usize,
    next_deleted: usize,
}

fn part_of(id: u128) -> usize {
    (id >> (128 - PART_BITS)) as usize
}

/// One identifier of one side, copied next to the others of its partition so that joining
/// a partition reads memory that is close together. Identifiers are compared by their
/// 128-bit XXH3 hash rather than their bytes, less the top 8 bits that choose the partition
/// (the same for all of its entries): two different identifiers share the other 120 with a
/// probability below 10^-21 even among 30 M rows, and no bytes need copying. The hash is
/// seeded at random for each classification, so identifiers cannot be chosen in advance
/// (an e-mail address signed up with) to collide with someone else's.
///
/// Row hashes are compared by their first 8 bytes: a changed row passes for unchanged only
/// if its new hash agrees with its own old one there, a chance of 2^-64 per changed row.
#[derive(Clone, Copy)]
struct Entry {
    /// The identifier's hash, with `flags` in the top 8 bits instead of the partition.
    id: u128,
    row_hash: u64,
    row: Row,
    /// Model side, after the join: the first state row with this identifier (its index in
    /// the same partition), or NO_MATCH.
    matched: u32,
}

/// An entry's flags: whether the row has a row hash (a null one never equals anything, as
/// in SQL), and on the model side, after the join, the row's verdict.
const HAS_HASH: u8 = 0x80;
const VERDICT: u8 = 0x7f;
const FLAGS_AT: u32 = 128 - PART_BITS;
const ID_BITS: u128 = (1 << FLAGS_AT) - 1;

impl Entry {
    /// A row's entry, its verdict not yet known (0).
    fn new(id: u128, row_hash: Option<u64>, row: Row) -> Self {
        let flags = if row_hash.is_some() { HAS_HASH } else { 0 };
        Entry {
            id: (id & ID_BITS) | (u128::from(flags) << FLAGS_AT),
            row_hash: row_hash.unwrap_or_default(),
            row,
            matched: NO_MATCH,
        }
    }

    /// The identifier's hash as compared (without the partition bits).
    fn ident(&self) -> u128 {
        self.id & ID_BITS
    }

    fn flags(&self) -> u8 {
        (self.id >> FLAGS_AT) as u8
    }

    fn verdict(&self) -> u8 {
        self.flags() & VERDICT
    }

    fn set_verdict(&mut self, verdict: u8) {
        let flags = (self.flags() & HAS_HASH) | verdict;
        self.id = self.ident() | (u128::from(flags) << FLAGS_AT);
    }

    /// Equal row hashes, neither null.
    fn same_values(&self, other: &Entry) -> bool {
        self.flags() & other.flags() & HAS_HASH != 0 && self.row_hash == other.row_hash
    }
}

const NO_MATCH: u32 = u32::MAX;
/// 32 bytes: the join's partitions are read and written whole, so size is time.
const _: () = assert!(std::mem::size_of::<Entry>() == 32);
const _: () = assert!(V_INVALID as usize + REASONS.len() <= VERDICT as usize);

type Part = Vec<Entry>;

/// The hash table key of an identifier hash (its partition is from its top bits).
fn low(id: u128) -> u64 {
    id as u64
}

/// What joining some partitions found besides each model row's first match and verdict.
#[derive(Default)]
struct Found {
    /// (model row, state row, verdict) of further state rows with a model row's identifier.
    more: Vec<(Row, Row, u8)>,
    /// State rows whose identifier no model row has.
    deleted: Vec<Row>,
}

/// Joins model and state partitions pairwise: finds each model row's state rows, counts
/// each model identifier and writes each model row's verdict and first state row into its
/// entry. Most model identifiers are in the state, so they are counted on their state row;
/// only the others go through a table of their own. (Whether an identifier the state lacks
/// breaks the key's rules is left to the output, which reads the batch's identifiers.)
fn join_parts(model_parts: &mut [Part], state_parts: &[Part]) -> Found {
    /// Marks an `of_row` entry as an index into `new_counts` rather than a state row.
    const NEW_ID: u32 = 1 << 31;
    let mut found = Found::default();
    // State rows by identifier (index into the partition); identifiers the state does not
    // hold (index into `new_counts`: their first model row, their count).
    let mut states: HashTable<u32> = HashTable::new();
    let mut news: HashTable<u32> = HashTable::new();
    let mut new_counts: Vec<(u32, u32)> = Vec::new();
    // Model rows per state row (on an identifier's first state row), and whether any model
    // row has each state row's identifier.
    let mut state_counts: Vec<u32> = Vec::new();
    let mut claimed: Vec<bool> = Vec::new();
    // Each model row's first state row, or NEW_ID | its new identifier; then (model row,
    // state row) of further state rows with the same identifier, in model row order.
    let mut of_row: Vec<u32> = Vec::new();
    let mut extra: Vec<(u32, u32)> = Vec::new();
    for (mp, sp) in model_parts.iter_mut().zip(state_parts) {
        states.clear();
        for (j, e) in sp.iter().enumerate() {
            states.insert_unique(low(e.id), j as u32, |&j| low(sp[j as usize].id));
        }
        news.clear();
        new_counts.clear();
        state_counts.clear();
        state_counts.resize(sp.len(), 0);
        claimed.clear();
        claimed.resize(sp.len(), false);
        of_row.clear();
        extra.clear();
        for (i, e) in mp.iter().enumerate() {
            let mut first = None;
            for &j in states.iter_hash(low(e.id)) {
                if sp[j as usize].ident() == e.ident() {
                    claimed[j as usize] = true;
                    match first {
                        None => first = Some(j),
                        Some(_) => extra.push((i as u32, j)),
                    }
                }
            }
            if let Some(j) = first {
                state_counts[j as usize] += 1;
                of_row.push(j);
                continue;
            }
            let same = |&n: &u32| mp[new_counts[n as usize].0 as usize].ident() == e.ident();
            let n = match news.find(low(e.id), same) {
                Some(&n) => n,
                None => {
                    new_counts.push((i as u32, 0));
                    let n = new_counts.len() as u32 - 1;
                    news.insert_unique(low(e.id), n, |&n| {
                        low(mp[new_counts[n as usize].0 as usize].id)
                    });
                    n
                }
            };
            new_counts[n as usize].1 += 1;
            of_row.push(NEW_ID | n);
        }
        let dup = invalid(identity::REASON_DUPLICATE);
        let mut next_extra = extra.iter().peekable();
        for (i, e) in mp.iter_mut().enumerate() {
            let o = of_row[i];
            let (count, first) = if o & NEW_ID != 0 {
                (new_counts[(o & !NEW_ID) as usize].1, None)
            } else {
                (state_counts[o as usize], Some(o as usize))
            };
            let seen = *e;
            let verdict = |j: Option<usize>| match j {
                _ if count > 1 => dup,
                None => V_NEW,
                Some(j) if seen.same_values(&sp[j]) => V_UNCHANGED,
                Some(_) => V_CHANGED,
            };
            e.set_verdict(verdict(first));
            e.matched = first.map_or(NO_MATCH, |j| j as u32);
            while let Some(&(_, j)) = next_extra.next_if(|(row, _)| *row as usize == i) {
                let j = j as usize;
                found.more.push((seen.row, sp[j].row, verdict(Some(j))));
            }
        }
        found.deleted.extend(
            sp.iter()
                .zip(&claimed)
                .filter(|(_, c)| !**c)
                .map(|(e, _)| e.row),
        );
    }
    found
}

// Row hashes are compared by their first 8 bytes: all that a count's bucket files keep.
const _: () = assert!(super::row_hash::PREFIX_BYTES == 8);

/// Adds every identifier of `ids` (rows from `first` on) to its partition by its hash under
/// `seed`, with its row hash.
fn scatter(
    ids: &Strings,
    hashes: &FixedSizeBinaryArray,
    first: Row,
    seed: u64,
    parts: &mut [Part],
) {
    for i in 0..ids.len() {
        if let Some(id) = ids.get(i) {
            let h = xxhash_rust::xxh3::xxh3_128_with_seed(id.as_bytes(), seed);
            let row_hash = hashes
                .is_valid(i)
                .then(|| hashes.value(i).first_chunk::<8>());
            let row_hash = row_hash.flatten().map(|b| u64::from_le_bytes(*b));
            parts[part_of(h)].push(Entry::new(h, row_hash, first + i as Row));
        }
    }
}

/// Sizes each partition for `entries` when its side's first batch arrives rather than up
/// front: the model's first rows come once its own aggregates and joins have freed their
/// memory, which the allocator then gives to the partitions instead of fresh pages.
fn reserve(parts: &mut [Part], entries: usize) {
    for p in parts {
        p.reserve(entries);
    }
}

/// The state's side of a classification: its rows, where each batch starts, its
/// identifiers by partition and what they are charged.
struct StateSide {
    cols: Columns,
    seed: u64,
    per_part: usize,
    time: Time,
    reservation: MemoryReservation,
    batches: Vec<StateBatch>,
    /// The first row of each batch, then the row count.
    starts: Vec<Row>,
    parts: Vec<Part>,
}

impl StateSide {
    fn new(
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

    async fn collect(mut self, mut state: SendableRecordBatchStream) -> Result<Self> {
        while let Some(b) = state.next().await {
            self.add(b?)?;
        }
        Ok(self)
    }

    fn add(&mut self, batch: RecordBatch) -> Result<()> {
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

impl Job {
    fn new(
        exec: &ClassifyExec,
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
        .map(|n| MetricBuilder::new(&exec.metrics).subset_time(n, partition));
        let seed = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), partition);
        let state = StateSide::new(
            exec.cols.clone(),
            seed,
            per_part,
            phase[1].clone(),
            reservation.new_empty(),
        );
        Job {
            key: exec.key,
            cols: exec.cols.clone(),
            full: Arc::clone(&exec.full),
            projection: exec.projection.clone(),
            metrics: BaselineMetrics::new(&exec.metrics, partition),
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
    async fn collect(
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

    fn add_model(&mut self, batch: RecordBatch) -> Result<()> {
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

    /// Partition by partition: counts each model identifier and finds its state rows.
    fn join(&mut self) -> Result<()> {
        let time = self.phase[2].clone();
        let timer = time.timer();
        let mut model_parts = std::mem::take(&mut self.model_parts);
        let state_parts = std::mem::take(&mut self.state.parts);
        // Partitions are independent: split them over the session's threads. (Scoped OS
        // threads: this runs once both inputs have ended, so the runtime has nothing else
        // of this plan to run meanwhile.)
        let per = PARTS.div_ceil(self.threads.clamp(1, PARTS));
        let found: Vec<Found> = std::thread::scope(|scope| {
            let running: Vec<_> = model_parts
                .chunks_mut(per)
                .zip(state_parts.chunks(per))
                .map(|(mp, sp)| scope.spawn(|| join_parts(mp, sp)))
                .collect();
            running
                .into_iter()
                .map(|t| t.join())
                .collect::<std::result::Result<_, _>>()
        })
        .map_err(|_| DataFusionError::Internal("a change detection thread panicked".into()))?;
        timer.done();
        let time = self.phase[3].clone();
        let _timer = time.timer();
        let mut m = Matches {
            model_parts,
            state_parts,
            batch_starts: std::mem::take(&mut self.batch_starts),
            more: HashMap::new(),
            deleted: Vec::new(),
        };
        for f in found {
            for (at, sat, v) in f.more {
                m.more.entry(at).or_default().push((sat, v));
            }
            m.deleted.extend(f.deleted);
        }
        // In the state's order, whatever the partitions (their seed varies by run).
        m.deleted.sort_unstable();
        self.matches = Some(m);
        Ok(())
    }

    /// Classifies model batch `b`: one output row per model row, or one per matching state
    /// row when the state holds an identifier more than once.
    fn classify(&self, b: usize, m: &Matches) -> Result<RecordBatch> {
        let time = self.phase[3].clone();
        let _timer = time.timer();
        let mb = &self.model[b];
        let rows = mb.num_rows();
        // A count needs no contactIds or statuses: they are read only when asked for.
        let with_state = wanted_state(self.projection.as_deref());
        let builder = || with_state.then(|| StringBuilder::with_capacity(rows, rows * 4));
        let (mut contact_ids, mut statuses) = (builder(), builder());
        let mut take_rows: Option<Vec<u32>> = None;
        let none = Vec::new();
        let start = self.model_starts[b];
        let (mut verdicts, states) = m.read_back(b, start, rows, with_state);
        self.check_rules(mb, &mut verdicts, &states)?;
        // Each output row's verdict, written out as kinds and reasons at the end. A count
        // against a state without repeated identifiers has one row each, as they are.
        let mut out = Vec::with_capacity(rows);
        let simple = !with_state && m.more.is_empty();
        if simple {
            out = verdicts;
        } else {
            for i in 0..rows {
                let first = (states[i], verdicts[i]);
                let more = match first.0 {
                    _ if m.more.is_empty() => &none,
                    NONE => &none,
                    _ => m.more.get(&(start + i as Row)).unwrap_or(&none),
                };
                for (n, &(at, v)) in std::iter::once(&first).chain(more).enumerate() {
                    out.push(v);
                    if let (Some(c), Some(s)) = (contact_ids.as_mut(), statuses.as_mut()) {
                        let row = self.locate(at);
                        c.append_option(row.and_then(|(sb, r)| sb.contact_ids.as_ref()?.get(r)));
                        s.append_option(row.and_then(|(sb, r)| sb.statuses.as_ref()?.get(r)));
                    }
                    if n > 0 {
                        // A repeated state identifier: one more output row for this model row,
                        // after the rows so far (this one's first output included).
                        take_rows.get_or_insert_with(|| (0..=i as u32).collect());
                    }
                    if let Some(t) = take_rows.as_mut() {
                        t.push(i as u32);
                    }
                }
            }
        }
        let take_rows = take_rows.map(UInt32Array::from);
        let kinds_len = out.len();
        let col = |c: usize| -> Result<ArrayRef> {
            let Ok(at) = self.cols.held.binary_search(&c) else {
                return internal_err!("ClassifyExec: model column {c} was not held");
            };
            let a = mb.column(at);
            Ok(match &take_rows {
                Some(t) => take(a.as_ref(), t, None)?,
                None => Arc::clone(a),
            })
        };
        let c = &self.cols;
        self.output(kinds_len, |i| {
            Ok(match i {
                0 => few_strings(&KINDS, out.iter().map(|&v| Some(kind_of(v)))),
                COL_IDENTIFIER => col(c.ident)?,
                COL_RAW => col(c.raw)?,
                3 => few_strings(
                    &REASONS,
                    out.iter()
                        .map(|&v| v.checked_sub(V_INVALID).map(usize::from)),
                ),
                COL_KNOWN => col(c.known)?,
                COL_CONTACT_ID => state_column(contact_ids.take(), kinds_len),
                COL_PREV_STATUS => state_column(statuses.take(), kinds_len),
                COL_ROW_HASH => col(c.hash)?,
                v => match c.values[v - FIXED_COLUMNS] {
                    Some(at) => col(at)?,
                    None => return internal_err!("ClassifyExec: value column {v} was left out"),
                },
            })
        })
    }

    /// Gives the rows the state lacks whose identifier breaks the key's rules that verdict
    /// instead (it goes before a duplicate's). Rows the state holds are not checked: the
    /// state holds only identifiers that passed those rules and reached Voyado. Done here,
    /// on the batch's identifiers in order, rather than when rows arrive, so that a plan
    /// checks only its new rows' identifiers.
    fn check_rules(&self, mb: &RecordBatch, verdicts: &mut [u8], states: &[Row]) -> Result<()> {
        let Ok(at) = self.cols.held.binary_search(&self.cols.ident) else {
            return internal_err!("ClassifyExec: the identifier column was not held");
        };
        let ids = Strings::new(mb.column(at))?;
        let dup = invalid(identity::REASON_DUPLICATE);
        for (i, v) in verdicts.iter_mut().enumerate() {
            if states[i] == NONE
                && (*v == V_NEW || *v == dup)
                && let Some(problem) = identity::problem(ids.get(i), self.key)
            {
                *v = invalid(problem);
            }
        }
        Ok(())
    }

    /// State rows `places` as deletions.
    fn deleted(&self, places: &[Row]) -> Result<RecordBatch> {
        let time = self.phase[3].clone();
        let _timer = time.timer();
        let n = places.len();
        let rows: Vec<_> = places.iter().map(|&at| self.locate(at)).collect();
        let strings = |f: &dyn Fn(&StateBatch) -> Option<&Strings>| {
            let mut b = StringBuilder::with_capacity(n, n * 16);
            for row in &rows {
                b.append_option(row.and_then(|(sb, r)| f(sb)?.get(r)));
            }
            Arc::new(b.finish()) as ArrayRef
        };
        self.output(n, |i| {
            let t = self.full.field(i).data_type();
            Ok(match i {
                0 => few_strings(&KINDS, (0..n).map(|_| Some(KIND_DELETED))),
                COL_IDENTIFIER => cast(&strings(&|s| Some(&s.ids)), t)?,
                COL_CONTACT_ID => strings(&|s| s.contact_ids.as_ref()),
                COL_PREV_STATUS => strings(&|s| s.statuses.as_ref()),
                _ => new_null_array(t, n),
            })
        })
    }

    /// State row `at`'s batch and row in it; None for NONE.
    fn locate(&self, at: Row) -> Option<(&StateBatch, usize)> {
        if at == NONE {
            return None;
        }
        let starts = &self.state.starts;
        let b = starts.partition_point(|&s| s <= at) - 1;
        Some((&self.state.batches[b], (at - starts[b]) as usize))
    }

    /// The output batch of the projected columns, each built by `column(index in the full
    /// schema)` (only those: the others are never built).
    fn output(
        &self,
        rows: usize,
        mut column: impl FnMut(usize) -> Result<ArrayRef>,
    ) -> Result<RecordBatch> {
        let batch = match &self.projection {
            Some(p) => {
                let columns = p.iter().map(|&i| column(i)).collect::<Result<Vec<_>>>()?;
                let schema = Arc::new(self.full.project(p)?);
                RecordBatch::try_new_with_options(
                    schema,
                    columns,
                    &RecordBatchOptions::new().with_row_count(Some(rows)),
                )?
            }
            None => {
                let columns = (0..self.full.fields().len()).map(&mut column);
                RecordBatch::try_new(Arc::clone(&self.full), columns.collect::<Result<_>>()?)?
            }
        };
        self.metrics.record_output(batch.num_rows());
        Ok(batch)
    }
}

/// Output batches: the model's, in arrival order, then the deletions.
impl Iterator for Job {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let m = self.matches.take()?;
        let out = if self.next_batch < self.model.len() {
            self.next_batch += 1;
            Some(self.classify(self.next_batch - 1, &m))
        } else if self.next_deleted < m.deleted.len() {
            let places = deletions(&m, self.next_deleted);
            self.next_deleted += places.len();
            Some(self.deleted(places))
        } else {
            None
        };
        self.matches = Some(m);
        out
    }
}

impl Job {
    /// The output batches in order, ending at the first error. With more than one thread
    /// they are built on that many: each takes every n-th model batch, reading its entries
    /// where they start in each partition, one batch ahead of the reader (a batch of a few
    /// hundred KB per thread, left out of the pool's count), so the output costs its share
    /// of the time the inputs took to end, not all of it on one thread.
    fn into_stream(self) -> BoxStream<'static, Result<RecordBatch>> {
        let batches = self.model.len();
        let workers = self.threads.min(batches);
        if workers <= 1 {
            return futures::stream::iter(self).boxed();
        }
        let job = Arc::new(self);
        let mut built = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let job = Arc::clone(&job);
            let work = move || {
                let Some(m) = job.matches.as_ref() else {
                    return;
                };
                for b in (w..batches).step_by(workers) {
                    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        job.classify(b, m)
                    }))
                    .unwrap_or_else(|p| {
                        let why = (p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        internal_err!("change detection failed building its output: {why}")
                    });
                    let failed = out.is_err();
                    if tx.blocking_send(out).is_err() || failed {
                        return; // the reader stopped, or will at this error
                    }
                }
            };
            let named = std::thread::Builder::new().name(format!("voyado-classify-{w}"));
            if let Err(e) = named.spawn(work) {
                let e = DataFusionError::External(Box::new(e));
                return futures::stream::iter([Err(e)]).boxed();
            }
            built.push(rx);
        }
        let model = futures::stream::unfold((built, 0), move |(mut built, b)| async move {
            if b == batches {
                return None;
            }
            let out = match built[b % workers].recv().await {
                Some(out) => out,
                None => internal_err!("a change detection thread stopped"),
            };
            Some((out, (built, b + 1)))
        });
        let deleted = job.matches.as_ref().map_or(0, |m| m.deleted.len());
        let deletions = futures::stream::iter((0..deleted).step_by(DELETED_BATCH)).map(move |at| {
            let m = job.matches.as_ref().expect("joined");
            job.deleted(deletions(m, at))
        });
        until_first_error(model.chain(deletions)).boxed()
    }
}

/// `stream` up to and with its first error: a failed output thread's batches stop there.
fn until_first_error<T>(
    stream: impl futures::Stream<Item = Result<T>>,
) -> impl futures::Stream<Item = Result<T>> {
    let mut failed = false;
    stream.take_while(move |r| {
        let go = !failed;
        failed |= r.is_err();
        futures::future::ready(go)
    })
}

/// The deletions of the output batch from `at`.
fn deletions(m: &Matches, at: usize) -> &[Row] {
    &m.deleted[at..(at + DELETED_BATCH).min(m.deleted.len())]
}

/// A contactId or status column, or nulls when it was not asked for.
fn state_column(b: Option<StringBuilder>, rows: usize) -> ArrayRef {
    match b {
        Some(mut b) => Arc::new(b.finish()),
        None => new_null_array(&DataType::Utf8, rows),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{FixedSizeBinaryBuilder, StringArray};

    fn hashes(values: &[Option<u8>]) -> FixedSizeBinaryArray {
        let mut b = FixedSizeBinaryBuilder::new(16);
        for v in values {
            match v {
                Some(v) => b.append_value([*v; 16]).expect("16 bytes"),
                None => b.append_null(),
            }
        }
        b.finish()
    }

    /// Partitions of `ids` and their row hashes, split into batches of `batch` rows, and
    /// where each batch starts in each partition.
    fn parts(
        ids: &[Option<&str>],
        row_hashes: &[Option<u8>],
        batch: usize,
    ) -> (Vec<Part>, Vec<u32>) {
        let mut parts: Vec<Part> = (0..PARTS).map(|_| Part::default()).collect();
        let mut starts = Vec::new();
        for (b, (ids, row_hashes)) in ids.chunks(batch).zip(row_hashes.chunks(batch)).enumerate() {
            let ids: ArrayRef = Arc::new(StringArray::from(ids.to_vec()));
            let ids = Strings::new(&ids).expect("strings");
            starts.extend(parts.iter().map(|p| p.len() as u32));
            scatter(&ids, &hashes(row_hashes), (b * batch) as Row, 7, &mut parts);
        }
        (parts, starts)
    }

    fn field(name: &str, t: DataType) -> Field {
        Field::new(name, t, true)
    }

    /// The model's columns: raw and normalised identifier, known contactId, row hash and
    /// two values ("a", "b").
    fn model_schema() -> SchemaRef {
        let hash = DataType::FixedSizeBinary(16);
        Arc::new(Schema::new(vec![
            field(RAW_IDENTIFIER, DataType::Utf8),
            field(state::IDENTIFIER, DataType::Utf8),
            field(KNOWN_CONTACT_ID, DataType::Utf8),
            field(state::ROW_HASH, hash),
            field("a", DataType::Utf8),
            field("b", DataType::Utf8),
        ]))
    }

    /// The compact state's columns.
    fn state_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            field(S_ID, DataType::Utf8),
            field(S_HASH, DataType::FixedSizeBinary(16)),
            field(S_CONTACT_ID, DataType::Utf8),
            field(S_STATUS, DataType::Utf8),
        ]))
    }

    /// Model rows with these identifiers and row hashes.
    fn model_batch(ids: &[&str], row_hashes: &[Option<u8>]) -> RecordBatch {
        let text = |p: &str| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|id| format!("{p}{id}")),
            ))
        };
        let columns = vec![
            text(""),
            text(""),
            text("known-"),
            Arc::new(hashes(row_hashes)) as ArrayRef,
            text("a-"),
            text("b-"),
        ];
        RecordBatch::try_new(model_schema(), columns).unwrap()
    }

    /// A classification of the model above against a compact state, with `projection`.
    fn job(projection: Option<Vec<usize>>, expected: usize) -> Job {
        use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool};
        use datafusion::physical_plan::empty::EmptyExec;
        let values = ["a".to_string(), "b".to_string()];
        let full = output_schema(&model_schema(), &state_schema(), &values).unwrap();
        let exec = ClassifyExec::try_new(
            Arc::new(EmptyExec::new(model_schema())),
            Arc::new(EmptyExec::new(state_schema())),
            Key::Email,
            &values,
            expected,
            full,
            projection,
        )
        .unwrap();
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(1 << 30));
        let reservation = MemoryConsumer::new("test").register(&pool);
        Job::new(&exec, 0, reservation, 1)
    }

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
    fn an_identifier_the_state_holds_twice_comes_out_once_per_state_row() {
        let mut job = job(None, 2);
        job.add_model(model_batch(
            &["new@x.se", "twice@x.se"],
            &[Some(1), Some(1)],
        ))
        .unwrap();
        let state = RecordBatch::try_new(
            state_schema(),
            vec![
                Arc::new(StringArray::from(vec!["twice@x.se", "twice@x.se"])),
                Arc::new(hashes(&[Some(1), Some(2)])),
                Arc::new(StringArray::from(vec!["c1", "c2"])),
                Arc::new(StringArray::from(vec!["delivered", "delivered"])),
            ],
        )
        .unwrap();
        job.state.add(state).unwrap();
        job.join().unwrap();
        let out: Vec<RecordBatch> = Iterator::collect::<Result<_>>(job).unwrap();
        let mut rows: Vec<String> = Vec::new();
        for b in &out {
            let col = |name: &str| super::super::string_column(b, name).unwrap();
            let (kinds, ids, values) = (col(KIND), col(state::IDENTIFIER), col("a"));
            let contact_ids = col(state::CONTACT_ID);
            for i in 0..b.num_rows() {
                let contact = contact_ids.is_valid(i).then(|| contact_ids.value(i));
                rows.push(format!(
                    "{} {} {} {contact:?}",
                    kinds.value(i),
                    ids.value(i),
                    values.value(i)
                ));
            }
        }
        rows.sort();
        assert_eq!(
            rows,
            [
                "changed twice@x.se a-twice@x.se Some(\"c2\")",
                "new new@x.se a-new@x.se None",
                "unchanged twice@x.se a-twice@x.se Some(\"c1\")",
            ]
        );
    }

    /// Each output row as "kind identifier reason".
    fn rows_of(job: Job) -> Vec<String> {
        let out: Vec<RecordBatch> = Iterator::collect::<Result<_>>(job).unwrap();
        let mut rows: Vec<String> = Vec::new();
        for b in &out {
            let col = |name: &str| super::super::string_column(b, name).unwrap();
            let (kinds, ids, reasons) = (col(KIND), col(state::IDENTIFIER), col(REASON));
            for i in 0..b.num_rows() {
                let reason = reasons.is_valid(i).then(|| reasons.value(i));
                rows.push(format!("{} {} {reason:?}", kinds.value(i), ids.value(i)));
            }
        }
        rows.sort();
        rows
    }

    #[test]
    fn identifiers_the_state_lacks_are_checked_against_the_key_rules() {
        let mut job = job(None, 1);
        job.add_model(model_batch(
            &[
                "no-at-sign",
                "no-at-sign",
                "new@x.se",
                "held@x.se",
                "twice@x.se",
                "twice@x.se",
            ],
            &[Some(1); 6],
        ))
        .unwrap();
        let state = RecordBatch::try_new(
            state_schema(),
            vec![
                Arc::new(StringArray::from(vec!["held@x.se"])),
                Arc::new(hashes(&[Some(1)])),
                Arc::new(StringArray::from(vec!["c1"])),
                Arc::new(StringArray::from(vec!["delivered"])),
            ],
        )
        .unwrap();
        job.state.add(state).unwrap();
        job.join().unwrap();
        let (email, dup) = (identity::REASON_EMAIL, identity::REASON_DUPLICATE);
        assert_eq!(
            rows_of(job),
            [
                format!("invalid no-at-sign Some(\"{email}\")"),
                format!("invalid no-at-sign Some(\"{email}\")"),
                format!("invalid twice@x.se Some(\"{dup}\")"),
                format!("invalid twice@x.se Some(\"{dup}\")"),
                "new new@x.se None".to_string(),
                "unchanged held@x.se None".to_string(),
            ]
        );
    }

    #[tokio::test]
    async fn the_output_ends_at_its_first_error() {
        let items = [
            Ok(1),
            Ok(2),
            internal_err!("broken"),
            Ok(3),
            internal_err!("later"),
        ];
        let out: Vec<Result<i32>> = until_first_error(futures::stream::iter(items))
            .collect()
            .await;
        assert_eq!(out.len(), 3);
        assert_eq!(
            (out[0].as_ref().ok(), out[1].as_ref().ok()),
            (Some(&1), Some(&2))
        );
        assert!(out[2].as_ref().unwrap_err().to_string().contains("broken"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn output_built_on_several_threads_comes_in_order() {
        // Seven model batches of three rows, and an empty one among them, against a state
        // holding every other identifier (with another row hash every third) and some the
        // model lacks.
        let build = |threads: usize| {
            let mut job = job(None, 30);
            job.threads = threads;
            for b in 0..7 {
                let ids: Vec<String> = (0..3).map(|r| format!("u{}@x.se", b * 3 + r)).collect();
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                job.add_model(model_batch(&ids, &[Some(1); 3])).unwrap();
                if b == 3 {
                    job.add_model(model_batch(&[], &[])).unwrap();
                }
            }
            let ids: Vec<String> = (0..40).step_by(2).map(|i| format!("u{i}@x.se")).collect();
            let row_hashes: Vec<Option<u8>> =
                (0..20).map(|i| Some(1 + u8::from(i % 3 == 0))).collect();
            let n = ids.len();
            let state = RecordBatch::try_new(
                state_schema(),
                vec![
                    Arc::new(StringArray::from(ids)),
                    Arc::new(hashes(&row_hashes)),
                    Arc::new(StringArray::from_iter_values(
                        (0..n).map(|i| format!("c{i}")),
                    )),
                    Arc::new(StringArray::from(vec!["delivered"; n])),
                ],
            )
            .unwrap();
            job.state.add(state).unwrap();
            job.join().unwrap();
            job
        };
        let serial: Vec<RecordBatch> = Iterator::collect::<Result<_>>(build(1)).unwrap();
        assert_eq!(serial.len(), 8 + 1, "eight model batches and the deletions");
        // Model row k: odd ones are new; even ones are the state's row k / 2, changed where
        // that is a multiple of three. The state's u22 to u38 are deleted.
        let kinds: Vec<String> = serial
            .iter()
            .flat_map(|b| {
                Strings::new(b.column(0))
                    .unwrap()
                    .iter()
                    .map(|k| k.unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut want: Vec<&str> = (0..21)
            .map(|k| match k {
                _ if k % 2 == 1 => NEW,
                _ if (k / 2) % 3 == 0 => CHANGED,
                _ => UNCHANGED,
            })
            .collect();
        want.extend([DELETED; 9]);
        assert_eq!(kinds, want);
        for threads in [2, 3] {
            let out: Vec<Result<RecordBatch>> = build(threads).into_stream().collect().await;
            let out: Vec<RecordBatch> = out.into_iter().collect::<Result<_>>().unwrap();
            assert_eq!(out, serial, "{threads} threads");
        }
    }

    #[test]
    fn an_entry_keeps_its_identifier_row_hash_and_verdict_apart() {
        let id = u128::MAX - 5;
        let mut e = Entry::new(id, Some(9), 3);
        assert_eq!(e.verdict(), 0);
        e.set_verdict(invalid(identity::REASON_PHONE));
        assert_eq!(e.verdict(), invalid(identity::REASON_PHONE));
        e.set_verdict(V_UNCHANGED);
        assert_eq!(
            (e.verdict(), e.ident(), e.row),
            (V_UNCHANGED, id & ID_BITS, 3)
        );
        // Same identifier in another partition's bits, same row hash: same values.
        let other = Entry::new(id & ID_BITS, Some(9), 4);
        assert_eq!(other.ident(), e.ident());
        assert!(e.same_values(&other));
        assert!(!e.same_values(&Entry::new(id, Some(8), 4)));
        // A null row hash equals nothing, not even another null one.
        let null = Entry::new(id, None, 5);
        assert!(!null.same_values(&null) && !e.same_values(&null));
    }

    #[test]
    fn kinds_and_reasons_are_views_of_strings_written_once() {
        use datafusion::arrow::array::AsArray;
        let verdicts = [
            V_NEW,
            invalid(identity::REASON_DUPLICATE),
            V_UNCHANGED,
            V_CHANGED,
        ];
        let kinds = few_strings(&KINDS, verdicts.iter().map(|&v| Some(kind_of(v))));
        let reasons = few_strings(
            &REASONS,
            verdicts
                .iter()
                .map(|&v| v.checked_sub(V_INVALID).map(usize::from)),
        );
        let (kinds, reasons) = (kinds.as_string_view(), reasons.as_string_view());
        let kinds: Vec<&str> = kinds.iter().map(Option::unwrap).collect();
        assert_eq!(kinds, [NEW, INVALID, UNCHANGED, CHANGED]);
        let reasons: Vec<Option<&str>> = reasons.iter().collect();
        assert_eq!(
            reasons,
            [None, Some(identity::REASON_DUPLICATE), None, None]
        );
        // Each long reason is written once, whatever the rows.
        let long: usize = REASONS.iter().map(|r| r.len()).filter(|&n| n > 12).sum();
        assert_eq!(reasons_bytes(&REASONS), long);
        let deleted = few_strings(&KINDS, (0..3).map(|_| Some(KIND_DELETED)));
        assert_eq!(deleted.as_string_view().value(2), DELETED);
    }

    fn reasons_bytes(strings: &[&str]) -> usize {
        use datafusion::arrow::array::AsArray;
        let a = few_strings(strings, (0..1000).map(|i| Some(i % strings.len())));
        a.as_string_view()
            .data_buffers()
            .iter()
            .map(|b| b.len())
            .sum()
    }

    #[test]
    fn rows_past_what_a_row_number_holds_are_refused() {
        assert_eq!(next_start(&[0, 10], 5).unwrap(), 15);
        let err = next_start(&[0, NONE - 10], 10).unwrap_err();
        assert!(err.to_string().contains("diff_partitions"), "{err}");
        assert_eq!(next_start(&[0, NONE - 10], 9).unwrap(), NONE - 1);
    }

    #[test]
    fn the_join_gives_every_model_row_one_verdict() {
        // Model rows in two batches (rows 0-4, then 5-8), to read back batch by batch.
        let (model, batch_starts) = parts(
            &[
                Some("same@x.se"),
                Some("changed@x.se"),
                Some("new@x.se"),
                Some("twice@x.se"),
                Some("twice@x.se"),
                Some("no-at-sign"),
                None,
                Some("null-hash@x.se"),
                Some("repeated@x.se"),
            ],
            &[
                Some(1),
                Some(2),
                Some(3),
                Some(4),
                Some(4),
                Some(5),
                Some(6),
                None,
                Some(7),
            ],
            5,
        );
        let (state, _) = parts(
            &[
                Some("same@x.se"),
                Some("changed@x.se"),
                Some("twice@x.se"),
                Some("gone@x.se"),
                Some("null-hash@x.se"),
                Some("repeated@x.se"),
                Some("repeated@x.se"),
            ],
            &[Some(1), Some(9), Some(4), Some(1), None, Some(7), Some(8)],
            8,
        );
        // One thread, then the partitions split over three: the same answer.
        for threads in [1, 3] {
            let per = PARTS.div_ceil(threads);
            let mut model_parts = model.clone();
            let found: Vec<Found> = model_parts
                .chunks_mut(per)
                .zip(state.chunks(per))
                .map(|(mp, sp)| join_parts(mp, sp))
                .collect();
            let m = Matches {
                model_parts,
                state_parts: state.clone(),
                batch_starts: batch_starts.clone(),
                more: HashMap::new(),
                deleted: Vec::new(),
            };
            // The second batch reads the same before and after the first.
            let second = m.read_back(1, 5, 4, true);
            let (mut verdicts, mut states) = m.read_back(0, 0, 5, true);
            let (v1, s1) = m.read_back(1, 5, 4, true);
            assert_eq!((v1.clone(), s1.clone()), second);
            verdicts.extend(v1);
            states.extend(s1);
            let dup = invalid(identity::REASON_DUPLICATE);
            let empty = invalid(identity::REASON_EMPTY);
            // "repeated" matches two state rows, hashes 7 (unchanged) and 8 (changed).
            let (first, second) = if states[8] == 5 {
                (V_UNCHANGED, (6, V_CHANGED))
            } else {
                (V_CHANGED, (5, V_UNCHANGED))
            };
            assert_eq!(
                verdicts,
                [
                    V_UNCHANGED,
                    V_CHANGED,
                    V_NEW,
                    dup,
                    dup,
                    // Not yet checked against the key's rules: the output does that.
                    V_NEW,
                    empty,
                    V_CHANGED,
                    first
                ]
            );
            assert_eq!(&states[..3], &[0, 1, NONE]);
            // Both duplicates keep the state row, so it is not deleted.
            assert_eq!(states[3], 2);
            assert_eq!(states[4], 2);
            let more: Vec<(Row, Row, u8)> = found.iter().flat_map(|f| f.more.clone()).collect();
            let deleted: Vec<Row> = found.iter().flat_map(|f| f.deleted.clone()).collect();
            // The state holds "repeated" twice: the second row comes out too.
            assert_eq!(more, [(8, second.0, second.1)]);
            assert_eq!(deleted, [3]);
        }
    }
}
