//! The duplicate check and the comparison with the state as one hand-written operator.
//!
//! In SQL this is a grouped count of identifiers joined back to every row, then a full outer
//! join with the state: three hash tables, each input repartitioned by identifier, and each
//! stage waiting for the one below. Here one hash table keyed by identifier takes the
//! state's rows and the model's rows as they stream in, side by side, counting the model's
//! rows per identifier; once both inputs end, each buffered model row is classified by its
//! table entry and the state rows that no model row claimed come out as deletions.
//!
//! The model's rows are buffered until both inputs end, because the last row may turn the
//! first into a duplicate; they are charged to the session's memory pool. A bucketed diff
//! runs one operator per bucket. Under Ballista the SQL form in `Rules` runs instead.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeBinaryArray, StringBuilder, UInt32Array, new_null_array,
};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::{Expr, LogicalPlan, TableType};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream, execute_stream,
};
use datafusion::prelude::DataFrame;
use futures::StreamExt;
use hashbrown::HashTable;

use super::{
    CHANGED, DELETED, INVALID, KIND, KNOWN_CONTACT_ID, NEW, PREV_STATUS, RAW_IDENTIFIER, REASON,
    UNCHANGED,
};
use crate::config::Key;
use crate::identity;
use crate::state;

/// Compact state columns, as `compact` in the diff names them.
const S_ID: &str = "__s_id";
const S_HASH: &str = "__s_hash";
const S_CONTACT_ID: &str = "__s_contact_id";
const S_STATUS: &str = "__s_status";
/// Rows per output batch of deletions.
const DELETED_BATCH: usize = 8192;
/// A row's place: bit 63 set for the model's side, batch in bits 32..63, row in 0..32.
const MODEL_SIDE: u64 = 1 << 63;
const NONE: u64 = u64::MAX;

/// The change set of one model frame against one compact state frame, as a table.
#[derive(Debug)]
pub struct Classified {
    model: LogicalPlan,
    state: LogicalPlan,
    key: Key,
    /// Model columns carried through after the fixed ones (attribute values).
    values: Vec<String>,
    schema: SchemaRef,
}

impl Classified {
    /// `model` holds `_raw_identifier`, `_identifier`, `_known_contact_id`, `_row_hash` and
    /// the `values` columns (others are ignored); `state` holds the compact view
    /// (`__s_id`, `__s_hash`, `__s_contact_id`, `__s_status`).
    pub fn new(model: DataFrame, state: DataFrame, key: Key, values: Vec<String>) -> Result<Self> {
        let m = model.schema().as_arrow().clone();
        let s = state.schema().as_arrow().clone();
        let field = |schema: &Schema, name: &str| -> Result<DataType> {
            Ok(schema.field_with_name(name)?.data_type().clone())
        };
        field(&s, S_ID)?;
        if field(&s, S_HASH)? != field(&m, state::ROW_HASH)? {
            return internal_err!("the state's and the model's row hashes differ in type");
        }
        let mut fields = vec![
            Field::new(KIND, DataType::Utf8, true),
            Field::new(state::IDENTIFIER, field(&m, state::IDENTIFIER)?, true),
            Field::new(RAW_IDENTIFIER, field(&m, RAW_IDENTIFIER)?, true),
            Field::new(REASON, DataType::Utf8, true),
            Field::new(KNOWN_CONTACT_ID, field(&m, KNOWN_CONTACT_ID)?, true),
            Field::new(state::CONTACT_ID, DataType::Utf8, true),
            Field::new(PREV_STATUS, DataType::Utf8, true),
            Field::new(state::ROW_HASH, field(&m, state::ROW_HASH)?, true),
        ];
        for v in &values {
            fields.push(Field::new(v, field(&m, v)?, true));
        }
        Ok(Classified {
            model: model.logical_plan().clone(),
            state: state.logical_plan().clone(),
            key,
            values,
            schema: Arc::new(Schema::new(fields)),
        })
    }
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
        let model = session.create_physical_plan(&self.model).await?;
        let state = session.create_physical_plan(&self.state).await?;
        ClassifyExec::try_new(
            model,
            state,
            self.key,
            &self.values,
            Arc::clone(&self.schema),
            projection.cloned(),
        )
        .map(|e| Arc::new(e) as Arc<dyn ExecutionPlan>)
    }
}

/// Where the operator finds its input columns.
#[derive(Debug, Clone)]
struct Columns {
    raw: usize,
    ident: usize,
    known: usize,
    hash: usize,
    values: Vec<usize>,
    s_id: usize,
    s_hash: usize,
    s_contact_id: usize,
    s_status: usize,
}

#[derive(Debug, Clone)]
struct ClassifyExec {
    model: Arc<dyn ExecutionPlan>,
    state: Arc<dyn ExecutionPlan>,
    key: Key,
    cols: Columns,
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
        full: SchemaRef,
        projection: Option<Vec<usize>>,
    ) -> Result<Self> {
        let (m, s) = (model.schema(), state.schema());
        let cols = Columns {
            raw: m.index_of(RAW_IDENTIFIER)?,
            ident: m.index_of(state::IDENTIFIER)?,
            known: m.index_of(KNOWN_CONTACT_ID)?,
            hash: m.index_of(state::ROW_HASH)?,
            values: values
                .iter()
                .map(|v| m.index_of(v))
                .collect::<std::result::Result<_, _>>()?,
            s_id: s.index_of(S_ID)?,
            s_hash: s.index_of(S_HASH)?,
            s_contact_id: s.index_of(S_CONTACT_ID)?,
            s_status: s.index_of(S_STATUS)?,
        };
        let out = match &projection {
            Some(p) => Arc::new(full.project(p)?),
            None => Arc::clone(&full),
        };
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
        let (Some(state), Some(model), true) = (children.pop(), children.pop(), children.is_empty())
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
        let job = Job {
            key: self.key,
            cols: self.cols.clone(),
            full: Arc::clone(&self.full),
            projection: self.projection.clone(),
            metrics: BaselineMetrics::new(&self.metrics, partition),
            reservation,
            table: Table::default(),
            model: Vec::new(),
            state: Vec::new(),
            deleted_at: 0,
        };
        let out = self.properties().eq_properties.schema().clone();
        let batches = futures::stream::once(job.collect(model, state))
            .map(|job| match job {
                Ok(job) => futures::stream::iter(job).boxed(),
                Err(e) => futures::stream::iter([Err(e)]).boxed(),
            })
            .flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(out, batches)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// One identifier seen on either side.
struct Entry {
    hash: u64,
    /// Where the identifier's text is (the first row that had it).
    key: u64,
    /// The first state row with the identifier, or NONE.
    state: u64,
    /// Further state rows with the same identifier (a state should have none), chained
    /// through `Table::more`.
    more: u32,
    model_rows: u32,
}

#[derive(Default)]
struct Table {
    index: HashTable<u32>,
    entries: Vec<Entry>,
    /// (state row, next) links of identifiers held by several state rows.
    more: Vec<(u64, u32)>,
}

/// A buffered model batch, its identifiers and each row's entry (u32::MAX: no identifier).
struct ModelBatch {
    batch: RecordBatch,
    ids: Strings,
    entries: Vec<u32>,
}

/// A buffered state batch's compact columns.
struct StateBatch {
    ids: Strings,
    hashes: FixedSizeBinaryArray,
    contact_ids: Strings,
    statuses: Strings,
}

/// A string column of any of Arrow's string layouts.
enum Strings {
    Utf8(ArrayRef),
    View(ArrayRef),
    Null(usize),
}

impl Strings {
    fn new(a: &ArrayRef) -> Result<Self> {
        Ok(match a.data_type() {
            DataType::Utf8 => Strings::Utf8(Arc::clone(a)),
            DataType::Utf8View => Strings::View(Arc::clone(a)),
            DataType::Null => Strings::Null(a.len()),
            _ => Strings::Utf8(cast(a, &DataType::Utf8)?),
        })
    }

    #[inline]
    fn get(&self, i: usize) -> Option<&str> {
        match self {
            Strings::Utf8(a) => {
                let a = a.as_string::<i32>();
                a.is_valid(i).then(|| a.value(i))
            }
            Strings::View(a) => {
                let a = a.as_string_view();
                a.is_valid(i).then(|| a.value(i))
            }
            Strings::Null(_) => None,
        }
    }

    fn len(&self) -> usize {
        match self {
            Strings::Utf8(a) | Strings::View(a) => a.len(),
            Strings::Null(n) => *n,
        }
    }
}

struct Job {
    key: Key,
    cols: Columns,
    full: SchemaRef,
    projection: Option<Vec<usize>>,
    metrics: BaselineMetrics,
    reservation: MemoryReservation,
    table: Table,
    model: Vec<ModelBatch>,
    state: Vec<StateBatch>,
    /// The next entry to look at for deletions, once the model batches are out.
    deleted_at: usize,
}

fn place(side: u64, batch: usize, row: usize) -> u64 {
    side | ((batch as u64) << 32) | row as u64
}

impl Job {
    /// Reads both inputs to their ends, filling the table as batches arrive.
    async fn collect(
        mut self,
        mut model: SendableRecordBatchStream,
        mut state: SendableRecordBatchStream,
    ) -> Result<Self> {
        let (mut model_open, mut state_open) = (true, true);
        while model_open || state_open {
            tokio::select! {
                b = model.next(), if model_open => match b {
                    Some(b) => self.add_model(b?)?,
                    None => model_open = false,
                },
                b = state.next(), if state_open => match b {
                    Some(b) => self.add_state(b?)?,
                    None => state_open = false,
                },
            }
        }
        self.model.reverse();
        Ok(self)
    }

    fn charge(&mut self, bytes: usize) -> Result<()> {
        self.reservation.try_grow(bytes).map_err(|e| match e {
            DataFusionError::ResourcesExhausted(m) => DataFusionError::ResourcesExhausted(
                format!("change detection holds the model's rows of a bucket in memory ({m}); raise memory_limit_mb or set [limits] diff_partitions higher"),
            ),
            other => other,
        })
    }

    fn add_model(&mut self, batch: RecordBatch) -> Result<()> {
        let time = self.metrics.elapsed_compute().clone();
        let _timer = time.timer();
        let ids = Strings::new(batch.column(self.cols.ident))?;
        let bytes = batch.get_array_memory_size() + ids.len() * 4;
        let b = self.model.len();
        self.model.push(ModelBatch {
            batch,
            ids,
            entries: Vec::new(),
        });
        let before = self.table.entries.capacity();
        let Job { table, model, state, .. } = self;
        let ids = &model[b].ids;
        let mut entries = Vec::with_capacity(ids.len());
        for i in 0..ids.len() {
            entries.push(match ids.get(i) {
                Some(id) => {
                    let e = table.entry(id, place(MODEL_SIDE, b, i), model, state);
                    table.entries[e as usize].model_rows += 1;
                    e
                }
                None => u32::MAX,
            });
        }
        self.model[b].entries = entries;
        let grown = (self.table.entries.capacity() - before) * (size_of::<Entry>() + 8);
        self.charge(bytes + grown)
    }

    fn add_state(&mut self, batch: RecordBatch) -> Result<()> {
        let time = self.metrics.elapsed_compute().clone();
        let _timer = time.timer();
        let c = &self.cols;
        let hashes = batch.column(c.s_hash);
        let Some(hashes) = hashes.as_any().downcast_ref::<FixedSizeBinaryArray>() else {
            return internal_err!("the state's row hash is {}", hashes.data_type());
        };
        let sb = StateBatch {
            ids: Strings::new(batch.column(c.s_id))?,
            hashes: hashes.clone(),
            contact_ids: Strings::new(batch.column(c.s_contact_id))?,
            statuses: Strings::new(batch.column(c.s_status))?,
        };
        let bytes = batch.get_array_memory_size();
        let b = self.state.len();
        self.state.push(sb);
        let before = self.table.entries.capacity();
        let Job { table, model, state, .. } = self;
        let ids = &state[b].ids;
        for i in 0..ids.len() {
            let Some(id) = ids.get(i) else { continue };
            let at = place(0, b, i);
            let e = table.entry(id, at, model, state) as usize;
            if table.entries[e].state == NONE {
                table.entries[e].state = at;
            } else {
                table.more.push((at, table.entries[e].more));
                table.entries[e].more = table.more.len() as u32;
            }
        }
        let grown = (self.table.entries.capacity() - before) * (size_of::<Entry>() + 8);
        self.charge(bytes + grown)
    }

    /// Classifies one buffered model batch: one output row per model row, or one per
    /// matching state row when the state holds an identifier more than once.
    fn classify(&mut self, mb: ModelBatch) -> Result<RecordBatch> {
        let time = self.metrics.elapsed_compute().clone();
        let _timer = time.timer();
        let rows = mb.ids.len();
        let mut kinds = StringBuilder::with_capacity(rows, rows * 8);
        let mut reasons = StringBuilder::with_capacity(rows, 0);
        let mut contact_ids = StringBuilder::with_capacity(rows, rows * 4);
        let mut statuses = StringBuilder::with_capacity(rows, rows * 4);
        let hashes = mb.batch.column(self.cols.hash);
        let Some(hashes) = hashes.as_any().downcast_ref::<FixedSizeBinaryArray>() else {
            return internal_err!("the model's row hash is {}", hashes.data_type());
        };
        let mut take_rows: Option<Vec<u32>> = None;
        for i in 0..rows {
            let e = mb.entries[i];
            let entry = (e != u32::MAX).then(|| &self.table.entries[e as usize]);
            let reason = identity::problem(mb.ids.get(i), self.key).or_else(|| {
                entry
                    .filter(|en| en.model_rows > 1)
                    .map(|_| identity::REASON_DUPLICATE)
            });
            let first = entry.map_or(NONE, |en| en.state);
            let mut next = entry.map_or(0, |en| en.more);
            let mut at = first;
            loop {
                let kind = if reason.is_some() {
                    INVALID
                } else if at == NONE {
                    NEW
                } else if same_hash(hashes, i, &self.state, at) {
                    UNCHANGED
                } else {
                    CHANGED
                };
                kinds.append_value(kind);
                reasons.append_option(reason);
                contact_ids.append_option(self.state_str(at, |s| &s.contact_ids));
                statuses.append_option(self.state_str(at, |s| &s.statuses));
                if let Some(t) = take_rows.as_mut() {
                    t.push(i as u32);
                }
                if next == 0 {
                    break;
                }
                // A repeated state identifier: one more output row for this model row.
                let (more_at, more_next) = self.table.more[next as usize - 1];
                at = more_at;
                next = more_next;
                take_rows.get_or_insert_with(|| (0..=i as u32).collect());
            }
        }
        let pick = |a: &ArrayRef| -> Result<ArrayRef> {
            match &take_rows {
                Some(t) => Ok(take(a.as_ref(), &UInt32Array::from(t.clone()), None)?),
                None => Ok(Arc::clone(a)),
            }
        };
        let c = &self.cols;
        let col = |i: usize| pick(mb.batch.column(i));
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(kinds.finish()),
            col(c.ident)?,
            col(c.raw)?,
            Arc::new(reasons.finish()),
            col(c.known)?,
            Arc::new(contact_ids.finish()),
            Arc::new(statuses.finish()),
            col(c.hash)?,
        ];
        for &v in &c.values {
            columns.push(col(v)?);
        }
        self.output(columns)
    }

    /// The next batch of state rows whose identifier no model row had.
    fn deleted(&mut self) -> Result<Option<RecordBatch>> {
        let time = self.metrics.elapsed_compute().clone();
        let _timer = time.timer();
        let mut places = Vec::new();
        while self.deleted_at < self.table.entries.len() && places.len() < DELETED_BATCH {
            let en = &self.table.entries[self.deleted_at];
            self.deleted_at += 1;
            if en.model_rows > 0 || en.state == NONE {
                continue;
            }
            places.push(en.state);
            let mut next = en.more;
            while next != 0 {
                let (at, n) = self.table.more[next as usize - 1];
                places.push(at);
                next = n;
            }
        }
        if places.is_empty() {
            return Ok(None);
        }
        let n = places.len();
        let strings = |f: &dyn Fn(&StateBatch) -> &Strings| {
            let mut b = StringBuilder::with_capacity(n, n * 16);
            for &at in &places {
                b.append_option(self.state_str(at, f));
            }
            Arc::new(b.finish()) as ArrayRef
        };
        let ids = strings(&|s| &s.ids);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.full.fields().len());
        for (i, f) in self.full.fields().iter().enumerate() {
            columns.push(match i {
                0 => {
                    let mut k = StringBuilder::with_capacity(n, n * DELETED.len());
                    (0..n).for_each(|_| k.append_value(DELETED));
                    Arc::new(k.finish()) as ArrayRef
                }
                1 => cast(&ids, f.data_type())?,
                5 => strings(&|s| &s.contact_ids),
                6 => strings(&|s| &s.statuses),
                _ => new_null_array(f.data_type(), n),
            });
        }
        self.output(columns).map(Some)
    }

    fn state_str(&self, at: u64, f: impl Fn(&StateBatch) -> &Strings) -> Option<&str> {
        if at == NONE {
            return None;
        }
        f(&self.state[(at >> 32) as usize]).get(at as u32 as usize)
    }

    fn output(&self, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
        let batch = RecordBatch::try_new(Arc::clone(&self.full), columns)?;
        let batch = match &self.projection {
            Some(p) => batch.project(p)?,
            None => batch,
        };
        self.metrics.record_output(batch.num_rows());
        Ok(batch)
    }
}

/// Output batches: the model's, in arrival order, then the deletions.
impl Iterator for Job {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(mb) = self.model.pop() {
            return Some(self.classify(mb));
        }
        self.deleted().transpose()
    }
}

/// Whether model row `i`'s hash equals the state row's at `at` (a null on either side
/// never equals, as in SQL).
fn same_hash(m: &FixedSizeBinaryArray, i: usize, state: &[StateBatch], at: u64) -> bool {
    let s = &state[(at >> 32) as usize].hashes;
    let j = at as u32 as usize;
    m.is_valid(i) && s.is_valid(j) && m.value(i) == s.value(j)
}

impl Table {
    /// The entry of identifier `id`, first seen at `at`: found, or added.
    fn entry(&mut self, id: &str, at: u64, model: &[ModelBatch], state: &[StateBatch]) -> u32 {
        let hash = xxhash_rust::xxh3::xxh3_64(id.as_bytes());
        let entries = &mut self.entries;
        let text = |key: u64| {
            let (b, r) = (((key & !MODEL_SIDE) >> 32) as usize, key as u32 as usize);
            if key & MODEL_SIDE != 0 {
                model[b].ids.get(r)
            } else {
                state[b].ids.get(r)
            }
        };
        match self.index.entry(
            hash,
            |&e| {
                let en = &entries[e as usize];
                en.hash == hash && text(en.key) == Some(id)
            },
            |&e| entries[e as usize].hash,
        ) {
            hashbrown::hash_table::Entry::Occupied(o) => *o.get(),
            hashbrown::hash_table::Entry::Vacant(v) => {
                let e = entries.len() as u32;
                entries.push(Entry {
                    hash,
                    key: at,
                    state: NONE,
                    more: 0,
                    model_rows: 0,
                });
                v.insert(e);
                e
            }
        }
    }
}
