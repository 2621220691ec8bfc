//! The state's file I/O on a local folder or an object store: Parquet files written whole
//! (snapshots and deltas compressed for the diff that reads them), temporary files removed,
//! and the folder kept private to its owner.

use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::{DataFrame, Expr, ident};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjPath;

use super::{IDENTIFIER, ROW_HASH, State};
use crate::error::one_line;
use crate::error::{Error, Result};
use crate::strings::{cast_columns, plain_fields, plain_type};

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

impl State {
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
            .map_err(|e| Error::parquet(format!("state: writing {rel}"), e))
    }

    /// Writes `batches` as one Parquet file at `rel`, returning its row count.
    pub(super) async fn write_batches(
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
        let what = format!("state: writing {rel}");
        let fail = |e| Error::parquet(what.clone(), e);
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new_with_metadata(
            plain_fields(schema.fields()),
            schema.metadata().clone(),
        ));
        let mut writer = self.writer_with(rel, Arc::clone(&schema), Some(props))?;
        let mut rows = 0u64;
        while let Some(batch) = batches.try_next().await? {
            rows += batch.num_rows() as u64;
            let batch = cast_columns(batch.columns(), &schema)
                .map_err(|e| Error::arrow(what.clone(), e))?;
            writer.write(&batch).await.map_err(fail)?;
        }
        writer.close().await.map_err(fail)?;
        Ok(rows)
    }

    /// Removes a state file, best effort (used for temporary files).
    pub async fn remove(&self, rel: &str) {
        if let Err(e) = self.store.delete(&self.path(rel)).await {
            tracing::debug!(file = rel, error = %one_line(&e), "could not remove a temporary state file");
        }
    }

    /// Writes frames one after another into one Parquet file at `rel`, returning its row
    /// count. Unlike a union, which runs all its inputs at once, each frame's joins hold
    /// memory only while it is read: how a diff split into buckets stays within the pool.
    pub(super) async fn write_in_turn(&self, frames: Vec<DataFrame>, rel: &str) -> Result<u64> {
        let fail = move |e: datafusion::error::DataFusionError| {
            Error::engine(format!("state: writing {rel}"), e)
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
            .map_err(|e| Error::engine(format!("state: writing {rel}"), e))?
            .write_parquet(
                &self.url(rel),
                DataFrameWriteOptions::new().with_single_file_output(true),
                Some(options),
            )
            .await
            .map_err(|e| Error::engine(format!("state: writing {rel}"), e))?;
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

    pub(super) async fn remove_unlisted(&self, dir: &str, keep: &[String]) {
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

/// The state holds personal data (identifiers, attribute values): refuse a folder other
/// users can read, rather than spread it further.
#[cfg(unix)]
pub(super) fn check_private(dir: &std::path::Path) -> Result<()> {
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
pub(super) fn check_private(_dir: &std::path::Path) -> Result<()> {
    Ok(())
}

#[cfg(unix)]
pub(super) fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
pub(super) fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}
