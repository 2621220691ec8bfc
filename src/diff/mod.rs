//! Change detection: which valid model rows are new, changed, unchanged or deleted since the
//! last successful sync, by joining the model's rows with the state on the normalised
//! identifier.
//!
//! The join compares a compact view of the state (identifier, row hash, contactId, status)
//! with the model's rows and their freshly computed row hash, so memory grows with the
//! number of identifiers, not with the width of the rows. On the local engine the duplicate
//! check and the join are one operator ([`classify`]); under Ballista, and for a bucket too
//! large to hold, they are SQL (a grouped count joined back, then a full outer join). When
//! the state is too large for the memory budget, or the model runs in slices, the model's
//! rows and the compact state are routed once into per-bucket temporary files by identifier
//! (`voyado_bucket`, see [`crate::spill`]) and each bucket is classified on its own files;
//! under Ballista each bucket is a filtered query instead.

mod classify;
pub mod row_hash;

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::builder::make_view;
use datafusion::arrow::array::{Array, AsArray, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::{DataFrame, SessionContext};
use futures::StreamExt;
use serde::Serialize;

use crate::config::Settings;
use crate::error::{Error, Result, df_message};
use crate::identity;
use crate::spill;
use crate::state::{self, Manifest, quote};
use crate::strings::Strings;

/// Column names of the classified change set (attribute columns follow, by attribute name).
pub const KIND: &str = "_kind";
pub const RAW_IDENTIFIER: &str = "_raw_identifier";
pub const REASON: &str = "_reason";
pub const PREV_STATUS: &str = "_prev_status";
/// The model's own contactId column (`[identifier] contact_id_column`), when configured.
pub const KNOWN_CONTACT_ID: &str = "_known_contact_id";

pub const NEW: &str = "new";
pub const CHANGED: &str = "changed";
pub const UNCHANGED: &str = "unchanged";
pub const DELETED: &str = "deleted";
pub const INVALID: &str = "invalid";

/// Bytes held per snapshot identifier by a bucket's classification (its compact state row,
/// its model row's identifiers and hash, both partition entries: about 270 charged to the
/// pool at 1 M and 10 M rows), for choosing the number of buckets.
const BYTES_PER_STATE_ROW: u64 = 320;
/// Parquet source bytes per model row assumed when there is no snapshot to count rows in:
/// the benchmark's extracts (a customer and two orders each) take 43; a model that
/// aggregates more source rows into one has fewer rows than estimated, which costs buckets,
/// not memory.
const SOURCE_BYTES_PER_ROW: u64 = 40;
/// Buckets per model slice when the rows carry their values: a slice's rows with their
/// values must fit a bucket's share of the pool.
const BUCKETS_PER_SLICE: u32 = 4;
/// Bytes a narrow row (counting only) takes in a bucket's files: its identifier, row hash
/// prefix and the state's (about 75 with the benchmark's emails), with room for longer ones.
const NARROW_FILE_BYTES: u64 = 128;
const SAMPLES_PER_KIND: usize = 5;
/// Bucket files are classified this many at a time once the model has run: one bucket
/// alone leaves a core idle while it reads its files. Two fit the pool: `plan` sends to
/// `ClassifyExec` only buckets whose files plus [`BYTES_PER_STATE_ROW`] per row fit half
/// of it, and `ClassifyExec` charges about 270 bytes per row in all (the rows it reads
/// from the files included).
const BUCKETS_AT_ONCE: usize = 2;
/// Each bucket is a file per partition while the model's rows are routed: beyond this,
/// open files and write buffers cost more than smaller buckets save.
const MAX_AUTO_BUCKETS: u32 = 256;

#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub new: u64,
    pub changed: u64,
    pub unchanged: u64,
    pub deleted: u64,
    pub invalid: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.new += o.new;
        self.changed += o.changed;
        self.unchanged += o.unchanged;
        self.deleted += o.deleted;
        self.invalid += o.invalid;
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Sample {
    pub identifier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    pub counts: Counts,
    pub samples: BTreeMap<String, Vec<Sample>>,
}

/// The planned change set: one frame per identifier bucket, and the current mapping's
/// attribute type classes (recorded with the next snapshot).
pub struct ChangeSet {
    pub buckets: Vec<DataFrame>,
    /// The state the change set was computed against, with its stored values (staging
    /// reads them to tell which attributes changed).
    pub state: DataFrame,
    pub attributes: BTreeMap<String, String>,
    /// Buckets that may be classified at once (see [`BUCKETS_AT_ONCE`]).
    pub at_once: usize,
    /// Keeps the spilled files the frames read alive.
    _spill: Vec<tempfile::TempDir>,
}

/// Plans the model, the identity rules and the comparison with the state.
/// `snapshot` is the loaded state and its manifest, or None for a first run.
/// With `wide` false the value columns are left out of the change set (counting needs
/// only kinds and identifiers); staging and baselines need them.
pub async fn plan(
    ctx: &SessionContext,
    settings: &Settings,
    snapshot: Option<(DataFrame, &Manifest)>,
    wide: bool,
) -> Result<ChangeSet> {
    let snapshot_rows = snapshot.as_ref().map(|(_, m)| m.snapshot_rows);
    let state_rows = snapshot_rows.unwrap_or(0);
    let buckets = size_session(ctx, settings, snapshot_rows, wide).await;
    let (slices, slice_files) = crate::model::plan_slices(ctx, settings).await?;
    let schema = slices[0].schema().as_arrow().clone();
    let problems = crate::model::check_output(&schema, settings);
    if !problems.is_empty() {
        return Err(Error::Config(problems));
    }
    let mut attributes = BTreeMap::new();
    for m in &settings.attributes {
        let t = schema
            .field_with_name(&m.column)
            .map(|f| f.data_type().clone())
            .unwrap_or(DataType::Null);
        let class = row_hash::type_class(&t).unwrap_or("null");
        attributes.insert(m.attribute.clone(), class.to_string());
    }
    let key = settings.key.as_str();
    let rules = Rules::new(settings);

    // Compact state view, hashes recomputed from stored values when they cannot be trusted.
    let (state_df, manifest) = match snapshot {
        Some((df, m)) => (df, Some(m)),
        None => (state::empty_snapshot(ctx).map_err(fail("state"))?, None),
    };
    if let Some(m) = manifest
        && m.identifier_key != key
    {
        return Err(Error::config(format!(
            "[identifier] key: the state was built with key {}, not {key}; run `voyado-sync reset` to start over with the new key",
            m.identifier_key
        )));
    }
    let stored_hash_ok = manifest.is_none_or(|m| {
        m.hash_version == row_hash::HASH_VERSION
            && m.attributes
                .iter()
                .all(|(a, class)| attributes.get(a) == Some(class))
    });
    let state_schema = state_df.schema().as_arrow().clone();
    let snap_hash = if stored_hash_ok {
        quote(state::ROW_HASH)
    } else {
        tracing::info!("stored row hashes do not cover the current mapping; comparing values");
        row_hash::sql_call(
            settings
                .attributes
                .iter()
                .map(|m| m.attribute.as_str())
                .filter(|a| state_schema.field_with_name(a).is_ok())
                .map(|a| (a, quote(a))),
        )
    };
    ctx.register_table("__vs_state", state_df.clone().into_view())
        .map_err(fail("state"))?;
    let compact = format!(
        "SELECT {id} AS __s_id, {snap_hash} AS __s_hash, {cid} AS __s_contact_id, {st} AS __s_status FROM __vs_state",
        id = quote(state::IDENTIFIER),
        cid = quote(state::CONTACT_ID),
        st = quote(state::STATUS),
    );

    let values = if wide {
        rules
            .attr_cols
            .iter()
            .map(|c| format!(", m.{c}"))
            .collect::<String>()
    } else {
        String::new()
    };
    let mut frames = Vec::new();
    // Under Ballista bucket files would be written on this machine, which executors may not
    // see: each bucket's query recomputes the model there instead.
    if buckets > 1 && !settings.engine.is_ballista() {
        // Model rows and the compact state, each routed once into per-bucket files; each
        // bucket then checks duplicates and joins on its own rows only.
        let dir = spill::temp_dir()?;
        let route = |ident: &str| {
            format!(
                ", {}({ident}, {buckets}) AS {}",
                identity::udf::BUCKET,
                spill::BUCKET_COLUMN
            )
        };
        // A count needs only the state's identifiers and hash prefixes (see `narrow`).
        let snap_cols = if wide {
            "*".to_string()
        } else {
            format!("__s_id, {}(__s_hash) AS __s_hash", row_hash::HASH_PREFIX)
        };
        let snap = ctx
            .sql(&format!(
                "SELECT {snap_cols}{} FROM ({compact})",
                route("__s_id")
            ))
            .await
            .map_err(fail("state"))?;
        // The state is routed beside the model: it streams, and takes the core the model
        // leaves idle while its joins build their tables on one thread.
        let state_routed = spill::split(snap, dir.path(), "state", buckets, "reading the state");
        let model_routed = async {
            let mut router = spill::Router::new(dir.path(), "model", buckets);
            let mut model_rows = 0;
            for (i, slice) in slices.into_iter().enumerate() {
                let src = format!("__vs_model_src_{i}");
                ctx.register_table(src.as_str(), slice.into_view())
                    .map_err(fail("model"))?;
                let sql = rules.routed(&src, wide, &route(&rules.routing_id()));
                let df = ctx.sql(&sql).await.map_err(fail("model"))?;
                let rows = router.route(df, "running the model").await?;
                model_rows += rows;
                tracing::debug!(slice = i, rows, "model rows routed to buckets");
            }
            Ok::<_, Error>((router.finish()?, model_rows))
        };
        let (model, state) = tokio::join!(model_routed, state_routed);
        let ((model_paths, model_rows), (_, snap_paths)) = (model?, state?);
        // The slices' source files are read: free their disk.
        drop(slice_files);
        tracing::debug!(buckets, "state routed to buckets");
        let pool = settings.limits.memory_limit_mb * 1024 * 1024;
        let mut at_once = BUCKETS_AT_ONCE;
        for (b, (m, s)) in model_paths.iter().zip(&snap_paths).enumerate() {
            let mut model = spill::read(ctx, m).await.map_err(fail("model"))?;
            let mut snap = spill::read(ctx, s).await.map_err(fail("state"))?;
            if !wide {
                (model, snap) = narrow(model, snap).map_err(fail("change detection"))?;
            }
            // Per bucket, the larger side's rows: on a first run the snapshot has none.
            let rows = state_rows.max(model_rows) / u64::from(buckets);
            // ClassifyExec holds the bucket's model rows; when they would not fit half the
            // pool (wide rows, few buckets), the SQL join streams them instead.
            let held = spill::bytes(m) + spill::bytes(s) + rows * BYTES_PER_STATE_ROW;
            if held <= pool / 2 {
                frames.push(classified(ctx, model, snap, settings, wide, rows)?);
                continue;
            }
            tracing::debug!(
                bucket = b,
                held,
                "bucket classified by the streaming SQL join"
            );
            // A hash join's table is not bounded by the held check: one bucket at a time.
            at_once = 1;
            let (mv, sv) = (format!("__vs_model_{b}"), format!("__vs_snap_{b}"));
            ctx.register_table(mv.as_str(), model.into_view())
                .map_err(fail("model"))?;
            ctx.register_table(sv.as_str(), snap.into_view())
                .map_err(fail("state"))?;
            let valid = rules.checked(&mv);
            frames.push(
                ctx.sql(&rules.compare(&format!("SELECT * FROM {sv}"), &valid, &values))
                    .await
                    .map_err(fail("change detection"))?,
            );
        }
        tracing::debug!(buckets, at_once, "bucket files classified at once");
        return Ok(ChangeSet {
            buckets: frames,
            state: state_df,
            attributes,
            at_once,
            _spill: vec![dir],
        });
    }

    // In memory: one operator over the whole model and state; under Ballista, one SQL plan
    // per bucket over filtered inputs. (A sliced model has buckets >= slices > 1, so it took
    // the files above: slices are refused under Ballista.)
    let [model] = <[DataFrame; 1]>::try_from(slices)
        .map_err(|_| Error::Internal("a sliced model outside bucket files".into()))?;
    ctx.register_table("__vs_model_src", model.into_view())
        .map_err(fail("model"))?;
    if !settings.engine.is_ballista() {
        let model = ctx
            .sql(&rules.projection("__vs_model_src", wide, ""))
            .await
            .map_err(fail("model"))?;
        let snap = ctx.sql(&compact).await.map_err(fail("state"))?;
        // A count reads neither contactIds nor statuses: left unread (see `narrow`).
        let (model, snap) = if wide {
            (model, snap)
        } else {
            narrow(model, snap).map_err(fail("change detection"))?
        };
        return Ok(ChangeSet {
            buckets: vec![classified(ctx, model, snap, settings, wide, state_rows)?],
            state: state_df,
            attributes,
            at_once: 1,
            _spill: slice_files.into_iter().collect(),
        });
    }
    let projected = ctx
        .sql(&rules.projection("__vs_model_src", true, ""))
        .await
        .map_err(fail("model"))?;
    ctx.register_table("__vs_model", projected.into_view())
        .map_err(fail("model"))?;
    ctx.register_table(
        "__vs_snap",
        ctx.sql(&compact).await.map_err(fail("state"))?.into_view(),
    )
    .map_err(fail("state"))?;
    let valid = rules.checked("__vs_model");
    for b in 0..buckets {
        let (sf, mf) = if buckets > 1 {
            (
                format!("WHERE {}(__s_id, {buckets}) = {b}", identity::udf::BUCKET),
                format!(
                    "WHERE {}({}, {buckets}) = {b}",
                    identity::udf::BUCKET,
                    rules.routing_id()
                ),
            )
        } else {
            (String::new(), String::new())
        };
        let sql = rules.compare(
            &format!("SELECT * FROM __vs_snap {sf}"),
            &format!("SELECT * FROM ({valid}) {mf}"),
            &values,
        );
        frames.push(ctx.sql(&sql).await.map_err(fail("change detection"))?);
    }
    Ok(ChangeSet {
        buckets: frames,
        state: state_df,
        attributes,
        at_once: 1,
        _spill: slice_files.into_iter().collect(),
    })
}

/// Chooses the buckets `plan` classifies in against a snapshot of `snapshot_rows` (None on
/// a first run) and, when that is one (so the model runs in one piece: buckets are at
/// least the slices), sizes the session's partitions to the model's sources. The sources
/// are listed only when that can change something: on a first run, or for one bucket.
pub async fn size_session(
    ctx: &SessionContext,
    settings: &Settings,
    snapshot_rows: Option<u64>,
    wide: bool,
) -> u32 {
    // Under Ballista each bucket's query recomputes the model on the cluster, and the
    // cluster's memory is not this pool: a first run there is not bucketed by estimate,
    // and its buckets have no files.
    let ballista = settings.engine.is_ballista();
    let buckets = |rows| {
        bucket_count(
            settings.limits.diff_partitions,
            settings.limits.memory_limit_mb,
            settings.slices.count,
            rows,
            wide,
            !ballista,
        )
    };
    if ballista {
        return buckets(snapshot_rows.unwrap_or(0));
    }
    let sources = match snapshot_rows {
        Some(rows) if buckets(rows) > 1 => None,
        _ => crate::catalog::source_bytes(ctx, settings).await,
    };
    let chosen = buckets(rows_to_bucket(snapshot_rows, sources));
    if chosen == 1
        && let Some(bytes) = sources
    {
        crate::catalog::size_partitions(ctx, settings, bytes);
    }
    chosen
}

/// The rows to choose buckets for: the snapshot's (`state_rows`), or on a first run, which
/// has none, an estimate from the size of the model's sources (`source_bytes`, None when
/// they could not be listed), so that a large first `baseline` is bucketed like the runs
/// after it instead of failing for memory.
fn rows_to_bucket(state_rows: Option<u64>, source_bytes: Option<u64>) -> u64 {
    state_rows.unwrap_or_else(|| source_bytes.map_or(0, |b| b / SOURCE_BYTES_PER_ROW))
}

/// Identifier buckets: `diff_partitions` when set; else 1 unless the state's identifiers
/// would not fit half the memory pool (the model runs beside an unbucketed classification
/// and takes the other half), or a quarter when the classification also holds the rows'
/// values (staging, `wide`, which this estimate does not count). Once a narrow plan is
/// bucketed into `files` (not under Ballista), each bucket also holds its files' rows
/// ([`NARROW_FILE_BYTES`]): counted here as `plan`'s held check counts them, so that no
/// bucket falls back to the SQL join. A
/// sliced model (too large for memory by the user's own account) gets at least a bucket per
/// slice, `BUCKETS_PER_SLICE` when the rows carry their values.
fn bucket_count(
    diff_partitions: u32,
    memory_limit_mb: u64,
    slices: u32,
    state_rows: u64,
    wide: bool,
    files: bool,
) -> u32 {
    let pool = memory_limit_mb * 1024 * 1024;
    let buckets = |per_row: u64, budget: u64| {
        ((state_rows * per_row).div_ceil(budget.max(1)) as u32).min(MAX_AUTO_BUCKETS)
    };
    let chosen = if diff_partitions > 0 {
        diff_partitions
    } else if wide {
        buckets(BYTES_PER_STATE_ROW, pool / 4)
    } else {
        match buckets(BYTES_PER_STATE_ROW, pool / 2) {
            0 | 1 => 1,
            n if !files => n,
            _ => buckets(BYTES_PER_STATE_ROW + NARROW_FILE_BYTES, pool / 2),
        }
    };
    let per_slice = if wide { BUCKETS_PER_SLICE } else { 1 };
    let sliced = if slices > 1 {
        (slices * per_slice).min(MAX_AUTO_BUCKETS.max(slices))
    } else {
        1
    };
    chosen.max(sliced)
}

/// A counting bucket's frames with the columns the classification expects: what
/// [`Rules::routed`] and the state's routing left out comes back as nulls, read by nothing a
/// count reports ([`Tally`] takes an invalid row's raw identifier as its normalised one when
/// the raw one was left out for being equal).
fn narrow(model: DataFrame, snap: DataFrame) -> datafusion::error::Result<(DataFrame, DataFrame)> {
    use datafusion::prelude::lit;
    let null = || lit(datafusion::scalar::ScalarValue::Utf8(None));
    Ok((
        model.with_column(KNOWN_CONTACT_ID, null())?,
        snap.with_column("__s_contact_id", null())?
            .with_column("__s_status", null())?,
    ))
}

/// The change set of `model` (the projection's columns) against the compact `state`, as
/// classified by [`classify`].
fn classified(
    ctx: &SessionContext,
    model: DataFrame,
    state: DataFrame,
    settings: &Settings,
    wide: bool,
    expected: u64,
) -> Result<DataFrame> {
    let values = if wide {
        settings
            .attributes
            .iter()
            .map(|m| m.attribute.clone())
            .collect()
    } else {
        Vec::new()
    };
    let table = classify::Classified::new(
        model,
        state,
        settings.key,
        values,
        expected.min(1 << 28) as usize,
    )
    .map_err(|e| Error::Internal(df_message("change detection", &e)))?;
    ctx.read_table(Arc::new(table))
        .map_err(|e| Error::Internal(df_message("change detection", &e)))
}

fn fail(what: &str) -> impl Fn(datafusion::error::DataFusionError) -> Error {
    let what = what.to_string();
    move |e| Error::Input(df_message(&what, &e))
}

/// The SQL of the identity rules and the comparison, over tables named by the caller (the
/// whole model and state, or one bucket's files).
struct Rules {
    key: &'static str,
    raw: String,
    norm: String,
    known: String,
    hash: String,
    values: String,
    attr_cols: Vec<String>,
    shard_filter: String,
}

impl Rules {
    fn new(settings: &Settings) -> Self {
        let key = settings.key.as_str();
        let id = quote(&settings.identifier_column);
        let raw = format!("CAST({id} AS VARCHAR)");
        let norm = format!("{}({raw}, '{key}')", identity::udf::NORMALIZE);
        // A shard keeps the rows whose normalised identifier hashes to it; rows without one
        // (invalid) go by their raw value, so every row lands in exactly one shard.
        let shard_filter = match settings.shard {
            Some(s) => format!(
                " WHERE {}(COALESCE({norm}, {raw}, ''), {}) = {}",
                identity::udf::SHARD,
                s.count,
                s.index
            ),
            None => String::new(),
        };
        Rules {
            key,
            hash: row_hash::sql_call(
                settings
                    .attributes
                    .iter()
                    .map(|m| (m.attribute.as_str(), quote(&m.column))),
            ),
            values: settings
                .attributes
                .iter()
                .map(|m| format!(", {} AS {}", quote(&m.column), quote(&m.attribute)))
                .collect(),
            attr_cols: settings
                .attributes
                .iter()
                .map(|m| quote(&m.attribute))
                .collect(),
            known: match &settings.contact_id_column {
                Some(c) => format!("NULLIF(trim(CAST({} AS VARCHAR)), '')", quote(c)),
                None => "CAST(NULL AS VARCHAR)".to_string(),
            },
            raw,
            norm,
            shard_filter,
        }
    }

    /// The identifier a row's bucket is chosen by: normalised, or raw for invalid rows.
    fn routing_id(&self) -> String {
        format!(
            "COALESCE({}, {RAW_IDENTIFIER}, '')",
            quote(state::IDENTIFIER)
        )
    }

    /// The model's rows with their identifiers and row hash (computed here, before the
    /// duplicate check, so a plan that needs only counts moves narrow rows), plus `extra`
    /// columns computed from those (a routing column).
    fn projection(&self, src: &str, values: bool, extra: &str) -> String {
        let values = if values { self.values.as_str() } else { "" };
        let inner = format!(
            "SELECT {raw} AS {RAW_IDENTIFIER}, {norm} AS {ident}, {known} AS {KNOWN_CONTACT_ID}, \
               {hash} AS {row_hash}{values} FROM {src}{filter}",
            raw = self.raw,
            norm = self.norm,
            known = self.known,
            hash = self.hash,
            ident = state::IDENTIFIER,
            row_hash = state::ROW_HASH,
            filter = self.shard_filter,
        );
        if extra.is_empty() {
            inner
        } else {
            format!("SELECT *{extra} FROM ({inner})")
        }
    }

    /// The query routing the model's rows of `src` to bucket files: the projection plus
    /// `extra` (the routing column). Rows routed to count only (not `wide`) leave out what a
    /// count does not read: the known contactId, the raw identifier where it equals the
    /// normalised one (most rows; see [`narrow`]), and all of the row hash but the prefix
    /// that is compared: half of the files' bytes.
    fn routed(&self, src: &str, wide: bool, extra: &str) -> String {
        let inner = self.projection(src, wide, "");
        if wide {
            return format!("SELECT *{extra} FROM ({inner})");
        }
        let (ident, rh) = (quote(state::IDENTIFIER), quote(state::ROW_HASH));
        format!(
            "SELECT NULLIF({RAW_IDENTIFIER}, {ident}) AS {RAW_IDENTIFIER}, {ident}, \
               {prefix}({rh}) AS {rh}{extra} FROM ({inner})",
            prefix = row_hash::HASH_PREFIX,
        )
    }

    /// Every row of `model` with `__present` and its `_reason` when invalid (identifier
    /// rules, or an identifier shared by several rows). Duplicates come from a grouped count
    /// over the identifier column alone, joined back to every row (the small side is the
    /// one built, so rows stream through): measured 1.9 s -> 1.1 s and 740 -> 460 MB for a
    /// 1 M-row plan against `count(*) OVER (PARTITION BY ...)`, whose window operator sorts
    /// and evaluates a million single-row partitions.
    fn checked(&self, model: &str) -> String {
        format!(
            "SELECT m.*, TRUE AS __present, \
               COALESCE({problem}(m.{ident}, '{key}'), \
                 CASE WHEN d.__dup_id IS NOT NULL THEN '{dup}' END) AS {REASON} \
             FROM (SELECT {ident} AS __dup_id FROM {model} GROUP BY {ident} HAVING count(*) > 1) d \
             RIGHT JOIN {model} m ON d.__dup_id = m.{ident}",
            problem = identity::udf::PROBLEM,
            ident = state::IDENTIFIER,
            dup = identity::REASON_DUPLICATE,
            key = self.key,
        )
    }

    /// Classifies each row of the full outer join of the compact state with the checked
    /// model rows. Comparisons are parenthesised: DataFusion 55 misparses chained
    /// IS DISTINCT FROM.
    fn compare(&self, snap: &str, valid: &str, values: &str) -> String {
        format!(
            "SELECT \
               CASE WHEN (m.__present IS NULL) THEN '{DELETED}' \
                    WHEN (m.{REASON} IS NOT NULL) THEN '{INVALID}' \
                    WHEN (s.__s_id IS NULL) THEN '{NEW}' \
                    WHEN (m.{rh} = s.__s_hash) THEN '{UNCHANGED}' \
                    ELSE '{CHANGED}' END AS {KIND}, \
               COALESCE(m.{ident}, s.__s_id) AS {ident}, \
               m.{RAW_IDENTIFIER}, m.{REASON}, m.{KNOWN_CONTACT_ID}, \
               s.__s_contact_id AS {cid}, s.__s_status AS {PREV_STATUS}, \
               m.{rh}{values} \
             FROM ({snap}) s \
             FULL OUTER JOIN ({valid}) m \
               ON (s.__s_id = m.{ident})",
            rh = quote(state::ROW_HASH),
            ident = quote(state::IDENTIFIER),
            cid = quote(state::CONTACT_ID),
        )
    }
}

/// A change-set column as plain strings (identifiers, kinds, reasons arrive as Utf8,
/// Utf8View or null-typed columns depending on the plan).
pub fn string_column(batch: &RecordBatch, name: &str) -> Result<StringArray> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| Error::Internal(format!("change set has no column {name}")))?;
    let c = cast(c, &DataType::Utf8)
        .map_err(|e| Error::Internal(format!("change set column {name}: {e}")))?;
    Ok(c.as_string::<i32>().clone())
}

/// Counts kinds and keeps samples while a change set streams by.
#[derive(Debug, Default)]
pub struct Tally {
    pub summary: Summary,
}

impl Tally {
    /// Counts one classified batch (which must hold `_kind`, `_identifier`,
    /// `_raw_identifier` and `_reason`) and returns each row's kind.
    pub fn add(&mut self, batch: &RecordBatch) -> Result<Strings> {
        let col = |name: &str| string_column(batch, name);
        // Read in place: kinds arrive as views, and a cast would copy every one.
        let kinds = batch
            .column_by_name(KIND)
            .map(Strings::new)
            .transpose()
            .map_err(|e| Error::Internal(format!("change set column {KIND}: {e}")))?
            .ok_or_else(|| Error::Internal(format!("change set has no column {KIND}")))?;
        // Identifiers and reasons are read only for samples: casting them costs a copy.
        let mut sampled = None;
        // Most rows are unchanged: as views, they are told by their view alone.
        let unchanged = make_view(UNCHANGED.as_bytes(), 0, 0);
        let views = match &kinds {
            Strings::View(a) => Some(a),
            _ => None,
        };
        for i in 0..batch.num_rows() {
            if views.is_some_and(|a| a.views()[i] == unchanged && a.is_valid(i)) {
                self.summary.counts.unchanged += 1;
                continue;
            }
            let kind = kinds.get(i).unwrap_or_default();
            let c = &mut self.summary.counts;
            match kind {
                NEW => c.new += 1,
                CHANGED => c.changed += 1,
                UNCHANGED => c.unchanged += 1,
                DELETED => c.deleted += 1,
                INVALID => c.invalid += 1,
                other => return Err(Error::Internal(format!("unknown change kind {other}"))),
            }
            if kind == UNCHANGED {
                continue;
            }
            let samples = self.summary.samples.entry(kind.to_string()).or_default();
            if samples.len() < SAMPLES_PER_KIND {
                let (ids, raws, reasons) = match sampled {
                    Some(ref s) => s,
                    None => sampled.insert((
                        col(state::IDENTIFIER)?,
                        col(RAW_IDENTIFIER)?,
                        col(REASON)?,
                    )),
                };
                let (identifier, reason) = if kind == INVALID {
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
pub async fn summarize(set: &ChangeSet) -> Result<Summary> {
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
        .map_err(|e| Error::Internal(df_message("change set", &e)))?;
    let task = df.task_ctx();
    let plan = df
        .create_physical_plan()
        .await
        .map_err(|e| Error::Input(df_message("change detection", &e)))?;
    let mut stream = datafusion::physical_plan::execute_stream(plan.clone(), Arc::new(task))
        .map_err(|e| Error::Input(df_message("change detection", &e)))?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| Error::Input(df_message("change detection", &e)))?;
        tally.add(&batch)?;
    }
    log_metrics(&plan);
    Ok(tally)
}

/// With `-vv`, the executed plan with its metrics (rows, time, memory, spills per operator):
/// where a slow diff spends its time.
pub fn log_metrics(plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) {
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
    use super::*;

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
            samples: BTreeMap::from([(NEW.to_string(), ids.iter().map(|i| sample(i)).collect())]),
        };
        let mut tally = Tally::default();
        tally.merge(summary(3, &["a", "b", "c"]));
        tally.merge(summary(4, &["d", "e", "f", "g"]));
        tally.merge(summary(1, &["h"]));
        let s = tally.summary;
        assert_eq!((s.counts.new, s.counts.unchanged), (8, 30));
        let kept: Vec<_> = s.samples[NEW]
            .iter()
            .map(|x| x.identifier.clone().unwrap())
            .collect();
        assert_eq!(kept, ["a", "b", "c", "d", "e"]);
    }

    #[test]
    fn a_first_run_buckets_by_its_sources_later_runs_by_their_snapshot() {
        // A snapshot's rows win, even an empty one's.
        assert_eq!(rows_to_bucket(Some(5), Some(1 << 30)), 5);
        assert_eq!(rows_to_bucket(Some(0), Some(1 << 30)), 0);
        // No snapshot: rows estimated from the sources' bytes; none when they are unknown.
        assert_eq!(rows_to_bucket(None, Some(40 * 1000)), 1000);
        assert_eq!(rows_to_bucket(None, None), 0);
    }

    #[test]
    fn kinds_are_counted_as_views_and_as_plain_strings() {
        use datafusion::arrow::array::{ArrayRef, StringViewArray};
        use datafusion::arrow::datatypes::{Field, Schema};
        let kinds = [UNCHANGED, NEW, UNCHANGED, DELETED, INVALID, UNCHANGED];
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
            let invalid = &tally.summary.samples[INVALID][0];
            assert_eq!(invalid.reason.as_deref(), Some("bad"));
            assert_eq!(
                tally.summary.samples[NEW][0].identifier.as_deref(),
                Some("u1@x.se")
            );
        }
    }

    #[test]
    fn buckets_follow_the_snapshot_the_pool_and_the_slices() {
        // 1 M identifiers at 320 bytes: 305 MiB.
        let rows = 1_000_000;
        // A plan (narrow) may use half of the pool, staging (wide) a quarter.
        assert_eq!(bucket_count(0, 1024, 1, rows, false, true), 1);
        assert_eq!(bucket_count(0, 1024, 1, rows, true, true), 2);
        assert_eq!(bucket_count(0, 512, 1, rows, false, true), 2);
        assert_eq!(bucket_count(0, 512, 1, rows, true, true), 3);
        // No snapshot, no buckets; never more than MAX_AUTO_BUCKETS of our own choosing.
        assert_eq!(bucket_count(0, 64, 1, 0, true, true), 1);
        assert_eq!(
            bucket_count(0, 64, 1, 1 << 40, true, true),
            MAX_AUTO_BUCKETS
        );
        // Bucketed, a plan's rows also count their files: 10 M identifiers under 2048 MB
        // take 5 buckets of 2 M (each holding 854 MiB against 1 GiB), not 3 of 3.3 M
        // (1.4 GiB), which would each fall back to the SQL join.
        assert_eq!(bucket_count(0, 2048, 1, 10 * rows, false, true), 5);
        // Under Ballista buckets have no files (and each recomputes the model).
        assert_eq!(bucket_count(0, 2048, 1, 10 * rows, false, false), 3);
        // The user's number wins, but slices still get a bucket each, four with values.
        assert_eq!(bucket_count(7, 64, 1, rows, true, true), 7);
        assert_eq!(bucket_count(7, 64, 8, rows, true, true), 32);
        assert_eq!(bucket_count(7, 64, 8, rows, false, true), 8);
        assert_eq!(bucket_count(0, 12000, 8, rows, false, true), 8);
        assert_eq!(bucket_count(0, 12000, 300, 0, false, true), 300);
        assert_eq!(bucket_count(0, 512, 8, 10 * rows, false, true), 17);
    }
}
