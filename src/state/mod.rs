//! A sync's state, on a local folder or an object store: the snapshot of what Voyado
//! confirmed, deltas appended while a run goes, the manifest naming them, a lock, and run
//! reports.
//!
//! Layout under `<state>/<name>/`:
//! ```text
//! manifest.json                        written last; names the files below
//! snapshots/<generation>-<run>.parquet _identifier, _contact_id, _status, _row_hash, attributes
//! deltas/<generation>-<seq>-<run>.parquet  the same columns plus _op (upsert | delete)
//! staged/<run>.parquet                 a run's change set
//! reports/<run>.json                   a run's report
//! lock.json                            present while a run holds the sync
//! ```
//! Every file is written whole before the manifest names it, and the manifest is replaced
//! atomically, so a crash at any moment leaves the previous state (plus every delta it
//! already named) readable.

pub mod lock;
pub mod manifest;

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::{DataFrame, Expr, ParquetReadOptions, SessionContext, ident, lit};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::catalog::{redact, register_store, temp_view};
use crate::config::{Location, Settings};
use crate::error::{Error, Result, df_message, one_line};
use crate::strings::{cast_columns, plain_fields, plain_type};
pub use lock::Lock;
pub use manifest::Manifest;

/// Snapshot column names. Attribute columns follow them, named by attribute.
pub const IDENTIFIER: &str = "_identifier";
pub const CONTACT_ID: &str = "_contact_id";
pub const STATUS: &str = "_status";
pub const ROW_HASH: &str = "_row_hash";
/// Delta-only columns.
pub const OP: &str = "_op";
const SEQ: &str = "_seq";

pub const FIXED_COLUMNS: [&str; 4] = [IDENTIFIER, CONTACT_ID, STATUS, ROW_HASH];

/// Rows per row group of a state file: row groups are what a scan splits between threads,
/// and what a writer holds in memory before flushing.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// The codecs of the two columns every diff reads whole (the others are compressed like
/// DataFusion's own writes): identifiers in LZ4, which decodes several times faster than
/// ZSTD, and row hashes, random bytes that no codec shrinks, as they are. Neither has a
/// dictionary: their values are (nearly) all distinct, so it only adds a lookup per read.
const READ_WHOLE: [(&str, &str); 2] = [(IDENTIFIER, "lz4_raw"), (ROW_HASH, "uncompressed")];

/// The session's Parquet options for a snapshot, with its row groups at [`ROW_GROUP_ROWS`]
/// and the columns of [`READ_WHOLE`] as it says.
fn snapshot_options(
    session: &datafusion::common::config::ParquetOptions,
) -> datafusion::common::config::TableParquetOptions {
    use datafusion::common::config::{ParquetColumnOptions, TableParquetOptions};
    let mut options = TableParquetOptions {
        global: session.clone(),
        ..Default::default()
    };
    options.global.max_row_group_size = ROW_GROUP_ROWS;
    for (column, codec) in READ_WHOLE {
        options.column_specific_options.insert(
            column.to_owned(),
            ParquetColumnOptions {
                dictionary_enabled: Some(false),
                compression: Some(codec.to_owned()),
                ..Default::default()
            },
        );
    }
    options
}

/// `df` with its columns of [`plain_type`]s. State files are read back with the types they
/// were written with, and the next diff holds their identifiers per row: as plain strings
/// 4 bytes a row besides their bytes, as views 16 (and a view's shared buffers are
/// accounted once per batch that points into them).
fn plain_columns(df: DataFrame) -> datafusion::error::Result<DataFrame> {
    let fields = df.schema().fields().clone();
    if fields
        .iter()
        .all(|f| plain_type(f.data_type()) == *f.data_type())
    {
        return Ok(df);
    }
    let columns = fields.iter().map(|f| match plain_type(f.data_type()) {
        t if t == *f.data_type() => ident(f.name()),
        t => datafusion::prelude::cast(ident(f.name()), t).alias(f.name()),
    });
    df.select(columns.collect::<Vec<Expr>>())
}

/// Snapshot statuses.
pub const DELIVERED: &str = "delivered";
pub const NOT_FOUND: &str = "not_found";
pub const REJECTED: &str = "rejected";

#[derive(Debug, Clone)]
pub struct State {
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    url_base: String,
    sync: String,
    display: String,
    /// Write state files from this process, from the query's result stream. A distributed
    /// engine would otherwise write them on an executor, with its files and credentials.
    client_writes: bool,
}

fn storage(what: &str, e: &dyn std::fmt::Display) -> Error {
    Error::Storage(format!("state: {what}: {}", one_line(e)))
}

impl State {
    /// Opens (and for a local folder, creates with owner-only permissions) the state of the
    /// sync named in `settings`.
    /// With `create` false (read-only commands), a missing local folder is not created.
    pub fn open(ctx: &SessionContext, settings: &Settings, create: bool) -> Result<State> {
        // A shard's state is a sync of its own one level down, with its own lock.
        let sync = match settings.shard {
            Some(s) => format!("{}/{}", settings.name, shard_dir(s)),
            None => settings.name.clone(),
        };
        match &settings.state {
            Location::Local(base) => {
                let dir = base.join(&sync);
                let made = if create || dir.exists() {
                    create_private_dir(&dir)
                } else {
                    Ok(())
                };
                made.map_err(|e| {
                    Error::Storage(format!(
                        "state: cannot create {}: {}",
                        dir.display(),
                        e.kind()
                    ))
                })?;
                let dir = dir.canonicalize().unwrap_or(dir);
                let dir = std::path::absolute(&dir).unwrap_or(dir);
                check_private(&dir)?;
                let prefix = ObjPath::from_absolute_path(&dir)
                    .map_err(|e| storage(&dir.display().to_string(), &e))?;
                let url = url::Url::from_directory_path(&dir).map_err(|_| {
                    Error::Storage(format!("state: {} is not an absolute path", dir.display()))
                })?;
                Ok(State {
                    store: Arc::new(object_store::local::LocalFileSystem::new()),
                    prefix,
                    url_base: url.to_string(),
                    sync,
                    display: dir.display().to_string(),
                    client_writes: settings.engine.is_ballista(),
                })
            }
            Location::Url(url) => {
                let store = register_store(ctx, settings, url)?;
                let base = url.path().trim_matches('/');
                let prefix = if base.is_empty() {
                    ObjPath::from(sync.as_str())
                } else {
                    ObjPath::from(format!("{base}/{sync}"))
                };
                let host = url.host_str().unwrap_or_default();
                let url_base = format!("{}://{host}/{prefix}/", url.scheme());
                Ok(State {
                    store,
                    prefix,
                    display: redact(&url::Url::parse(&url_base).unwrap_or(url.clone())),
                    url_base,
                    sync,
                    client_writes: settings.engine.is_ballista(),
                })
            }
        }
    }

    pub fn location(&self) -> &str {
        &self.display
    }

    fn path(&self, rel: &str) -> ObjPath {
        ObjPath::from(format!("{}/{rel}", self.prefix))
    }

    /// The URL DataFusion reads and writes a state file at.
    pub fn url(&self, rel: &str) -> String {
        format!("{}{rel}", self.url_base)
    }

    pub async fn manifest(&self) -> Result<Option<Manifest>> {
        let path = self.path("manifest.json");
        match self.store.get(&path).await {
            Ok(r) => {
                let bytes = r
                    .bytes()
                    .await
                    .map_err(|e| storage("reading manifest.json", &e))?;
                let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::Storage(format!(
                        "state: {}/manifest.json is not a valid manifest: {e}",
                        self.display
                    ))
                })?;
                if m.format_version > manifest::FORMAT_VERSION {
                    return Err(Error::Storage(format!(
                        "state: manifest format {} is newer than this version of voyado-sync understands ({})",
                        m.format_version,
                        manifest::FORMAT_VERSION
                    )));
                }
                Ok(Some(m))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(storage("reading manifest.json", &e)),
        }
    }

    async fn put_manifest(&self, m: &Manifest) -> Result<()> {
        let body = serde_json::to_vec_pretty(m)
            .map_err(|e| Error::Internal(format!("manifest encode: {e}")))?;
        self.store
            .put(&self.path("manifest.json"), PutPayload::from(body))
            .await
            .map_err(|e| storage("writing manifest.json", &e))?;
        Ok(())
    }

    pub async fn lock(&self, run_id: &str, command: &str, stale_secs: u64) -> Result<Lock> {
        Lock::acquire(
            Arc::clone(&self.store),
            self.path("lock.json"),
            &self.sync,
            run_id,
            command,
            stale_secs,
        )
        .await
    }

    /// A Parquet writer streaming into a state file (side files, staged change sets).
    pub fn parquet_writer(
        &self,
        rel: &str,
        schema: datafusion::arrow::datatypes::SchemaRef,
    ) -> Result<datafusion::parquet::arrow::AsyncArrowWriter<object_store::buffered::BufWriter>>
    {
        self.writer_with(rel, schema, None)
    }

    fn writer_with(
        &self,
        rel: &str,
        schema: datafusion::arrow::datatypes::SchemaRef,
        props: Option<datafusion::parquet::file::properties::WriterProperties>,
    ) -> Result<datafusion::parquet::arrow::AsyncArrowWriter<object_store::buffered::BufWriter>>
    {
        let writer =
            object_store::buffered::BufWriter::new(Arc::clone(&self.store), self.path(rel));
        datafusion::parquet::arrow::AsyncArrowWriter::try_new(writer, schema, props)
            .map_err(|e| Error::Storage(format!("state: writing {rel}: {e}")))
    }

    /// Writes `batches` as one Parquet file at `rel`, returning its row count.
    async fn write_batches(
        &self,
        rel: &str,
        schema: datafusion::arrow::datatypes::SchemaRef,
        mut batches: impl futures::Stream<Item = Result<RecordBatch>> + Unpin,
    ) -> Result<u64> {
        use datafusion::parquet::basic::{Compression, ZstdLevel};
        use datafusion::parquet::file::properties::WriterProperties;
        use datafusion::parquet::schema::types::ColumnPath;
        // Compressed like DataFusion's own Parquet writes: snapshots are the state's bulk,
        // but for the columns of READ_WHOLE. The writer holds a row group in memory until
        // it is full: 128 Ki rows rather than the default 1 Mi keeps that to tens of MB for
        // wide rows.
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
        for (column, codec) in READ_WHOLE {
            let codec = codec
                .parse()
                .map_err(|e| Error::Internal(format!("{codec}: {e}")))?;
            props = props
                .set_column_dictionary_enabled(ColumnPath::from(column), false)
                .set_column_compression(ColumnPath::from(column), codec);
        }
        let props = props.build();
        let fail = |e: &dyn std::fmt::Display| {
            Error::Storage(format!("state: writing {rel}: {}", one_line(e)))
        };
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new_with_metadata(
            plain_fields(schema.fields()),
            schema.metadata().clone(),
        ));
        let mut writer = self.writer_with(rel, Arc::clone(&schema), Some(props))?;
        let mut rows = 0u64;
        while let Some(batch) = batches.try_next().await? {
            rows += batch.num_rows() as u64;
            let batch = cast_columns(batch.columns(), &schema).map_err(|e| fail(&e))?;
            writer.write(&batch).await.map_err(|e| fail(&e))?;
        }
        writer.close().await.map_err(|e| fail(&e))?;
        Ok(rows)
    }

    /// Removes a state file, best effort (used for temporary files).
    pub async fn remove(&self, rel: &str) {
        if let Err(e) = self.store.delete(&self.path(rel)).await {
            tracing::debug!(file = rel, error = %one_line(&e), "could not remove a temporary state file");
        }
    }

    /// Stores a small JSON document (a run report) under `rel`.
    pub async fn put_json(&self, rel: &str, value: &serde_json::Value) -> Result<()> {
        let body = serde_json::to_vec_pretty(value)
            .map_err(|e| Error::Internal(format!("json encode: {e}")))?;
        self.store
            .put(&self.path(rel), PutPayload::from(body))
            .await
            .map_err(|e| storage(&format!("writing {rel}"), &e))?;
        Ok(())
    }

    /// Every stored run report, oldest first (run ids sort by start time).
    pub async fn reports(&self) -> Result<Vec<serde_json::Value>> {
        let prefix = self.path("reports");
        let mut listed: Vec<ObjPath> =
            match self.store.list(Some(&prefix)).try_collect::<Vec<_>>().await {
                Ok(v) => v.into_iter().map(|o| o.location).collect(),
                Err(object_store::Error::NotFound { .. }) => Vec::new(),
                Err(e) => return Err(storage("listing reports", &e)),
            };
        listed.retain(|p| p.as_ref().ends_with(".json"));
        listed.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        let mut out = Vec::new();
        for p in listed {
            let bytes = match self.store.get(&p).await {
                Ok(r) => r
                    .bytes()
                    .await
                    .map_err(|e| storage("reading a report", &e))?,
                Err(e) => return Err(storage("reading a report", &e)),
            };
            match serde_json::from_slice(&bytes) {
                Ok(v) => out.push(v),
                Err(e) => tracing::warn!(report = %p, error = %e, "skipping an unreadable report"),
            }
        }
        out.sort_by(|a: &serde_json::Value, b: &serde_json::Value| {
            let key = |v: &serde_json::Value| {
                (
                    v["started_at"].as_str().unwrap_or_default().to_string(),
                    v["run_id"].as_str().unwrap_or_default().to_string(),
                )
            };
            key(a).cmp(&key(b))
        });
        Ok(out)
    }

    /// The current state as one frame: the snapshot with every named delta applied (the
    /// latest delta row per identifier wins; `_op = 'delete'` removes it).
    pub async fn load(&self, ctx: &SessionContext, m: &Manifest) -> Result<DataFrame> {
        let mut frames = Vec::new();
        for rel in &m.snapshot {
            frames.push((rel.clone(), self.read(ctx, rel).await?, None));
        }
        for (seq, rel) in m.deltas.iter().enumerate() {
            frames.push((rel.clone(), self.read(ctx, rel).await?, Some(seq as i64)));
        }
        // Target schema: fixed columns, then every attribute column; a column's type is the
        // one in the newest file holding it.
        let mut attrs: BTreeMap<String, DataType> = BTreeMap::new();
        let mut fixed: BTreeMap<String, DataType> = BTreeMap::new();
        for (_, df, _) in &frames {
            for f in df.schema().fields() {
                let name = f.name();
                if FIXED_COLUMNS.contains(&name.as_str()) {
                    fixed.insert(name.clone(), f.data_type().clone());
                } else if name != OP {
                    attrs.insert(name.clone(), f.data_type().clone());
                }
            }
        }
        let mut target: Vec<Field> = Vec::new();
        for name in FIXED_COLUMNS {
            let t = fixed.get(name).cloned().unwrap_or(DataType::Utf8);
            target.push(Field::new(name, t, true));
        }
        for (name, t) in &attrs {
            target.push(Field::new(name, t.clone(), true));
        }
        let names: Vec<String> = target.iter().map(|f| f.name().clone()).collect();

        let mut base: Option<DataFrame> = None;
        let mut deltas: Option<DataFrame> = None;
        for (rel, df, seq) in frames {
            let ctxmsg = |e: datafusion::error::DataFusionError| {
                Error::Storage(df_message(&format!("state: {rel}"), &e))
            };
            match seq {
                None => {
                    let df = align(df, &target, &[]).map_err(ctxmsg)?;
                    base = Some(match base {
                        None => df,
                        Some(b) => b.union(df).map_err(ctxmsg)?,
                    });
                }
                Some(seq) => {
                    let extra = [(OP.to_string(), None), (SEQ.to_string(), Some(lit(seq)))];
                    let df = align(df, &target, &extra).map_err(ctxmsg)?;
                    deltas = Some(match deltas {
                        None => df,
                        Some(d) => d.union(df).map_err(ctxmsg)?,
                    });
                }
            }
        }
        let fail = |e: datafusion::error::DataFusionError| {
            Error::Storage(df_message("state: applying deltas", &e))
        };
        let base = match base {
            Some(b) => b,
            None => empty_frame(ctx, &target).map_err(fail)?,
        };
        let Some(deltas) = deltas else {
            return Ok(base);
        };
        let base_name = temp_view(ctx, "state_base", base).map_err(fail)?;
        let delta_name = temp_view(ctx, "state_deltas", deltas).map_err(fail)?;
        let cols = names
            .iter()
            .map(|n| quote(n))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {cols} FROM {base_name} \
               WHERE {id} NOT IN (SELECT {id} FROM {delta_name}) \
             UNION ALL \
             SELECT {cols} FROM ( \
               SELECT *, row_number() OVER (PARTITION BY {id} ORDER BY {seq} DESC) AS __rn \
               FROM {delta_name}) \
             WHERE __rn = 1 AND {op} = 'upsert'",
            id = quote(IDENTIFIER),
            seq = quote(SEQ),
            op = quote(OP),
        );
        ctx.sql(&sql).await.map_err(fail)
    }

    async fn read(&self, ctx: &SessionContext, rel: &str) -> Result<DataFrame> {
        ctx.read_parquet(self.url(rel), ParquetReadOptions::default())
            .await
            .map_err(|e| Error::Storage(df_message(&format!("state: cannot read {rel}"), &e)))
    }

    /// Appends a delta (snapshot columns plus `_op`), written from this process, and names
    /// it in the manifest. Once this returns, the rows are part of the state, even if the
    /// process dies right after.
    pub async fn append_delta(
        &self,
        m: &mut Manifest,
        batches: Vec<RecordBatch>,
        run_id: &str,
    ) -> Result<u64> {
        let Some(schema) = batches.first().map(|b| b.schema()) else {
            return Ok(0);
        };
        let rel = format!(
            "deltas/{:08}-{:06}-{run_id}.parquet",
            m.generation,
            m.deltas.len() + 1
        );
        let stream = futures::stream::iter(batches.into_iter().map(Ok));
        let rows = self.write_batches(&rel, schema, stream).await?;
        m.deltas.push(rel);
        self.put_manifest(m).await?;
        Ok(rows)
    }

    /// Writes `frames` (snapshot columns; one per diff bucket, or one) as the new snapshot
    /// and then the manifest naming it. Until the manifest is replaced, readers see the
    /// previous state whole.
    pub async fn commit(
        &self,
        prev: Option<&Manifest>,
        mut frames: Vec<DataFrame>,
        fields: &NewSnapshot,
    ) -> Result<Manifest> {
        let generation = prev.map_or(1, |m| m.generation + 1);
        let rel = format!("snapshots/{generation:08}-{}.parquet", fields.run_id);
        let rows = match frames.len() {
            1 => self.write(frames.remove(0), &rel).await?,
            _ => self.write_in_turn(frames, &rel).await?,
        };
        let m = Manifest {
            format_version: manifest::FORMAT_VERSION,
            hash_version: crate::diff::row_hash::HASH_VERSION,
            generation,
            identifier_key: fields.identifier_key.clone(),
            attributes: fields.attributes.clone(),
            snapshot: vec![rel],
            deltas: Vec::new(),
            snapshot_rows: rows,
            run_id: fields.run_id.clone(),
            committed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        self.put_manifest(&m).await?;
        self.collect_garbage(&m).await;
        Ok(m)
    }

    /// Writes frames one after another into one Parquet file at `rel`, returning its row
    /// count. Unlike a union, which runs all its inputs at once, each frame's joins hold
    /// memory only while it is read: how a diff split into buckets stays within the pool.
    async fn write_in_turn(&self, frames: Vec<DataFrame>, rel: &str) -> Result<u64> {
        let fail = move |e: datafusion::error::DataFusionError| {
            Error::Storage(df_message(&format!("state: writing {rel}"), &e))
        };
        let mut frames = frames.into_iter();
        let Some(first) = frames.next() else {
            return Err(Error::Internal(format!("state: nothing to write to {rel}")));
        };
        // The file's schema is the executed stream's (a frame's logical schema can differ
        // in nullability or string types from the batches it yields).
        let first = first.execute_stream().await.map_err(fail)?;
        let schema = first.schema();
        let rest = futures::stream::iter(frames)
            .then(|df| async move { df.execute_stream().await.map_err(fail) })
            .map_ok(move |s| s.map_err(fail))
            .try_flatten();
        self.write_batches(rel, schema, Box::pin(first.map_err(fail).chain(rest)))
            .await
    }

    /// Writes a frame as one Parquet file at `rel`, returning its row count.
    pub async fn write(&self, df: DataFrame, rel: &str) -> Result<u64> {
        if self.client_writes {
            return self.write_in_turn(vec![df], rel).await;
        }
        let options = snapshot_options(&df.task_ctx().session_config().options().execution.parquet);
        let out = plain_columns(df)
            .map_err(|e| Error::Storage(df_message(&format!("state: writing {rel}"), &e)))?
            .write_parquet(
                &self.url(rel),
                DataFrameWriteOptions::new().with_single_file_output(true),
                Some(options),
            )
            .await
            .map_err(|e| Error::Storage(df_message(&format!("state: writing {rel}"), &e)))?;
        let mut rows = 0u64;
        for b in out {
            if let Some(c) = b.column_by_name("count")
                && let Some(a) = c
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::UInt64Array>()
            {
                rows += a.iter().flatten().sum::<u64>();
            }
        }
        Ok(rows)
    }

    /// Forgets the snapshot: the next run is a full sync. Returns whether there was one.
    pub async fn reset(&self) -> Result<bool> {
        let existed = self.manifest().await?.is_some();
        match self.store.delete(&self.path("manifest.json")).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(storage("removing manifest.json", &e)),
        }
        for dir in ["snapshots", "deltas", "staged"] {
            self.remove_unlisted(dir, &[]).await;
        }
        Ok(existed)
    }

    /// Removes data files the manifest no longer names (best effort: leftovers are
    /// harmless, since readers only follow the manifest).
    async fn collect_garbage(&self, m: &Manifest) {
        let keep: Vec<String> = m.snapshot.iter().chain(&m.deltas).cloned().collect();
        // Staged change sets of runs that died are useless once a commit happened.
        for dir in ["snapshots", "deltas", "staged"] {
            self.remove_unlisted(dir, &keep).await;
        }
    }

    async fn remove_unlisted(&self, dir: &str, keep: &[String]) {
        let prefix = self.path(dir);
        let listed: Vec<ObjPath> =
            match self.store.list(Some(&prefix)).try_collect::<Vec<_>>().await {
                Ok(v) => v.into_iter().map(|o| o.location).collect(),
                Err(_) => return,
            };
        for p in listed {
            let rel = p
                .as_ref()
                .strip_prefix(self.prefix.as_ref())
                .unwrap_or(p.as_ref())
                .trim_start_matches('/')
                .to_string();
            if !keep.contains(&rel)
                && let Err(e) = self.store.delete(&p).await
            {
                tracing::debug!(file = %p, error = %one_line(&e), "could not remove an old state file");
            }
        }
    }
}

/// The folder of a shard's state under the sync's: `shard-<i>-of-<n>`.
pub fn shard_dir(s: crate::config::Shard) -> String {
    format!("shard-{}-of-{}", s.index, s.count)
}

/// How a sync's state is laid out now: an unsharded snapshot, and the shards that have one.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub unsharded: bool,
    pub shards: Vec<crate::config::Shard>,
}

impl State {
    /// Reads the layout of the sync's whole state (opened unsharded), so a sharded run can
    /// refuse a state split another way.
    pub async fn layout(&self) -> Result<Layout> {
        let mut layout = Layout {
            unsharded: self.manifest().await?.is_some(),
            shards: Vec::new(),
        };
        let listed = match self.store.list_with_delimiter(Some(&self.prefix)).await {
            Ok(l) => l,
            Err(object_store::Error::NotFound { .. }) => return Ok(layout),
            Err(e) => return Err(storage("listing shard states", &e)),
        };
        for dir in listed.common_prefixes {
            let Some(name) = dir.filename() else { continue };
            let Some((i, n)) = name
                .strip_prefix("shard-")
                .and_then(|r| r.split_once("-of-"))
            else {
                continue;
            };
            let (Ok(index), Ok(count)) = (i.parse(), n.parse()) else {
                continue;
            };
            let manifest = dir.clone().join("manifest.json");
            match self.store.head(&manifest).await {
                Ok(_) => layout.shards.push(crate::config::Shard { index, count }),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(storage("reading a shard's manifest", &e)),
            }
        }
        layout.shards.sort_by_key(|s| (s.count, s.index));
        Ok(layout)
    }
}

/// What a commit records besides the rows.
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    pub run_id: String,
    pub identifier_key: String,
    pub attributes: BTreeMap<String, String>,
}

/// Double-quotes a SQL identifier.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Projects `df` onto `target`: missing columns become typed nulls, columns of another type
/// are converted with `try_cast` (a value that cannot be converted becomes null, so its row
/// compares as changed), and `extra` columns are appended (None = keep the frame's column).
fn align(
    df: DataFrame,
    target: &[Field],
    extra: &[(String, Option<Expr>)],
) -> datafusion::error::Result<DataFrame> {
    let schema = df.schema().clone();
    let mut exprs = Vec::new();
    for f in target {
        let name = f.name();
        let e = match schema.field_with_unqualified_name(name) {
            Ok(have) if have.data_type() == f.data_type() => ident(name),
            Ok(_) => datafusion::prelude::try_cast(ident(name), f.data_type().clone()).alias(name),
            Err(_) => lit(ScalarValue::try_from(f.data_type())?).alias(name),
        };
        exprs.push(e);
    }
    for (name, e) in extra {
        exprs.push(match e {
            Some(e) => e.clone().alias(name),
            None => ident(name),
        });
    }
    df.select(exprs)
}

/// A frame with no rows. An empty table rather than an in-memory batch: a plan holding
/// batches cannot be sent to a Ballista scheduler.
fn empty_frame(ctx: &SessionContext, target: &[Field]) -> datafusion::error::Result<DataFrame> {
    let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(target.to_vec()));
    ctx.read_table(Arc::new(datafusion::datasource::empty::EmptyTable::new(
        schema,
    )))
}

/// The state holds personal data (identifiers, attribute values): refuse a folder other
/// users can read, rather than spread it further.
#[cfg(unix)]
fn check_private(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::config(format!(
            "[sync] state: {} is open to other users (mode {mode:o}) but holds personal data; run `chmod 700 {}`",
            dir.display(),
            dir.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_dir: &std::path::Path) -> Result<()> {
    Ok(())
}

#[cfg(unix)]
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// A state with no rows, for a first run.
pub fn empty_snapshot(ctx: &SessionContext) -> datafusion::error::Result<DataFrame> {
    let target = vec![
        Field::new(IDENTIFIER, DataType::Utf8, true),
        Field::new(CONTACT_ID, DataType::Utf8, true),
        Field::new(STATUS, DataType::Utf8, true),
        Field::new(
            ROW_HASH,
            DataType::FixedSizeBinary(crate::diff::row_hash::HASH_BYTES),
            true,
        ),
    ];
    empty_frame(ctx, &target)
}
