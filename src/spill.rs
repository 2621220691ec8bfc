//! Buckets on disk: rows routed by a hash into one Arrow IPC file per bucket, so that each
//! bucket's classification reads only its own rows and holds only its own hash tables
//! (DataFusion 55's hash join does not spill). The model's sources are split by slice key
//! this way, and the model's rows and the state by identifier.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::{Schema, SchemaRef, UInt32Type};
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::prelude::{DataFrame, SessionContext};
use futures::StreamExt;

use crate::error::{Error, Result};
use crate::strings::{cast_columns, plain_fields};

/// The routing column the spilled frames carry last (dropped before writing).
pub(crate) const BUCKET_COLUMN: &str = "__bucket";
/// Rows gathered per bucket before a write, so readers get batches of a useful size, but
/// fewer with many buckets, so that what waits (partitions x buckets batches) stays small.
fn write_rows(buckets: u32) -> usize {
    (65_536 / buckets.max(1) as usize).clamp(1024, 8192)
}

/// Routes the rows of `df` (whose last column, [`BUCKET_COLUMN`], holds each row's bucket)
/// into files under `dir`; returns the row count and, per bucket, its files.
pub(crate) async fn split(
    df: DataFrame,
    dir: &Path,
    name: &str,
    buckets: u32,
    what: &str,
) -> Result<(u64, Vec<Vec<PathBuf>>)> {
    let mut router = Router::new(dir, name, buckets);
    let rows = router.route(df, what).await?;
    Ok((rows, router.finish()?))
}

/// Bucket files that several frames of the same schema are routed into in turn (a sliced
/// model's slices): each bucket gets a file per partition, not one per frame and
/// partition, so that a filesystem's file creation is paid once (measured: about 1 ms a
/// file on ext4) and each bucket is read back from a few large files.
pub(crate) struct Router {
    dir: PathBuf,
    name: String,
    buckets: u32,
    /// One set per partition of the frames, created by the first frame that has it.
    files: Vec<Option<BucketFiles>>,
}

impl Router {
    pub(crate) fn new(dir: &Path, name: &str, buckets: u32) -> Self {
        Router {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            buckets,
            files: Vec::new(),
        }
    }

    /// Routes the rows of `df` (whose last column, [`BUCKET_COLUMN`], holds each row's
    /// bucket); returns its row count. Each of the frame's partitions is routed by its own
    /// task into its own files, so routing and writing run on every core rather than
    /// behind one merged stream.
    pub(crate) async fn route(&mut self, df: DataFrame, what: &str) -> Result<u64> {
        let schema = without_bucket(df.schema().as_arrow());
        if let Some(files) = self.files.iter().flatten().next()
            && files.schema.fields() != schema.fields()
        {
            return Err(Error::Internal(format!(
                "{what}: a frame routed into {} has another schema",
                self.name
            )));
        }
        let streams = df
            .execute_stream_partitioned()
            .await
            .map_err(|e| Error::engine(what, e))?;
        if self.files.len() < streams.len() {
            self.files.resize_with(streams.len(), || None);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (k, mut stream) in streams.into_iter().enumerate() {
            let mut files = match self.files[k].take() {
                Some(files) => files,
                None => BucketFiles::create(
                    &self.dir,
                    &format!("{}-p{k}", self.name),
                    Arc::clone(&schema),
                    self.buckets,
                )?,
            };
            let what = what.to_string();
            tasks.spawn(async move {
                let mut rows = 0u64;
                while let Some(batch) = stream.next().await {
                    let batch = batch.map_err(|e| Error::engine(&what, e))?;
                    rows += batch.num_rows() as u64;
                    files.route(&batch)?;
                }
                Ok::<_, Error>((k, rows, files))
            });
        }
        let mut rows = 0;
        while let Some(done) = tasks.join_next().await {
            let (k, n, files) =
                done.map_err(|e| Error::Internal(format!("routing rows: {e}")))??;
            rows += n;
            self.files[k] = Some(files);
        }
        Ok(rows)
    }

    /// Writes what is pending and closes the files; returns, per bucket, its files.
    pub(crate) fn finish(self) -> Result<Vec<Vec<PathBuf>>> {
        let mut by_bucket = vec![Vec::new(); self.buckets as usize];
        for files in self.files.into_iter().flatten() {
            for (b, path) in files.finish()?.into_iter().enumerate() {
                by_bucket[b].push(path);
            }
        }
        Ok(by_bucket)
    }
}

/// One partition's files, one per bucket.
struct BucketFiles {
    schema: SchemaRef,
    writers: Vec<FileWriter<BufWriter<File>>>,
    pending: Vec<Vec<RecordBatch>>,
    pending_rows: Vec<usize>,
    paths: Vec<PathBuf>,
}

fn temporary(path: &Path) -> String {
    format!("temporary file {}", path.display())
}

impl BucketFiles {
    /// One file per bucket, `<dir>/<name>-<b>.arrow`.
    fn create(dir: &Path, name: &str, schema: SchemaRef, buckets: u32) -> Result<Self> {
        let mut writers = Vec::new();
        let mut paths = Vec::new();
        for b in 0..buckets {
            let path = dir.join(format!("{name}-{b}.arrow"));
            let file = File::create(&path).map_err(|e| Error::io(temporary(&path), e))?;
            let w = FileWriter::try_new(BufWriter::with_capacity(256 << 10, file), &schema)
                .map_err(|e| Error::arrow(temporary(&path), e))?;
            writers.push(w);
            paths.push(path);
        }
        Ok(BucketFiles {
            schema,
            writers,
            pending: vec![Vec::new(); buckets as usize],
            pending_rows: vec![0; buckets as usize],
            paths,
        })
    }

    fn route(&mut self, batch: &RecordBatch) -> Result<()> {
        let last = batch.num_columns() - 1;
        let buckets = batch.column(last).as_primitive::<UInt32Type>();
        let mut indices: Vec<Vec<u32>> = vec![Vec::new(); self.writers.len()];
        for (i, b) in buckets.values().iter().enumerate() {
            let b = indices.get_mut(*b as usize).ok_or_else(|| {
                Error::Internal(format!("bucket {b} out of range while routing rows"))
            })?;
            b.push(i as u32);
        }
        let arrow = |e| Error::arrow("routing rows to diff buckets", e);
        // Plain arrays, as `without_bucket` says.
        let rows = cast_columns(&batch.columns()[..last], &self.schema).map_err(arrow)?;
        for (b, idx) in indices.into_iter().enumerate() {
            if idx.is_empty() {
                continue;
            }
            let part = take_record_batch(&rows, &UInt32Array::from(idx)).map_err(arrow)?;
            self.pending_rows[b] += part.num_rows();
            self.pending[b].push(part);
            if self.pending_rows[b] >= write_rows(self.writers.len() as u32) {
                self.flush(b)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, b: usize) -> Result<()> {
        let parts = std::mem::take(&mut self.pending[b]);
        self.pending_rows[b] = 0;
        if parts.is_empty() {
            return Ok(());
        }
        let batch = concat_batches(&self.schema, &parts)
            .map_err(|e| Error::arrow("gathering a diff bucket", e))?;
        self.writers[b]
            .write(&batch)
            .map_err(|e| Error::arrow(temporary(&self.paths[b]), e))
    }

    /// Writes what is pending and closes the files; returns their paths, by bucket.
    fn finish(mut self) -> Result<Vec<PathBuf>> {
        for b in 0..self.writers.len() {
            self.flush(b)?;
        }
        for (w, path) in self.writers.iter_mut().zip(&self.paths) {
            w.finish().map_err(|e| Error::arrow(temporary(path), e))?;
        }
        Ok(self.paths)
    }
}

/// `schema` without its last (routing) column, view types as plain ones and dictionaries
/// as their values (an IPC file cannot change a field's dictionary between batches).
pub(crate) fn without_bucket(schema: &Schema) -> SchemaRef {
    let fields = schema.fields();
    Arc::new(Schema::new(plain_fields(&fields[..fields.len() - 1])))
}

/// The bytes of spilled files (Arrow IPC: about their size in memory).
pub(crate) fn bytes(paths: &[PathBuf]) -> u64 {
    paths
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Reads one bucket's files as a frame.
pub(crate) async fn read(
    ctx: &SessionContext,
    paths: &[PathBuf],
) -> datafusion::error::Result<DataFrame> {
    ctx.read_arrow(
        paths
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>(),
        datafusion::datasource::file_format::options::ArrowReadOptions::default(),
    )
    .await
}

/// A private temporary folder for bucket files, removed when dropped. Its name carries the
/// process (`voyado-sync-spill-<pid namespace>-<pid>-`), so that folders a killed process
/// left behind are removed by the next command that spills.
pub(crate) fn temp_dir() -> Result<tempfile::TempDir> {
    let root = std::env::temp_dir();
    sweep(&root);
    tempfile::Builder::new()
        .prefix(&format!("{}{}-", SPILL_PREFIX, owner()))
        .tempdir_in(&root)
        .map_err(|e| Error::io("temporary folder for spilled rows", e))
}

const SPILL_PREFIX: &str = "voyado-sync-spill-";

/// This process as spill folders name it: its PID namespace and its id, since processes of
/// two containers sharing one temporary folder may have the same id.
fn owner() -> String {
    format!("{}-{}", pid_namespace().unwrap_or(0), std::process::id())
}

#[cfg(target_os = "linux")]
fn pid_namespace() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino())
}

#[cfg(not(target_os = "linux"))]
fn pid_namespace() -> Option<u64> {
    None
}

/// Removes the spill folders under `root` of processes of this PID namespace that no
/// longer run (killed before they could clean up). Folders of running processes, of other
/// namespaces, and any other name are left alone; so is everything where the PID
/// namespace cannot be read.
fn sweep(root: &Path) {
    let Some(ns) = pid_namespace() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(SPILL_PREFIX)) else {
            continue;
        };
        let mut parts = rest.splitn(3, '-');
        let (Some(their_ns), Some(pid)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if their_ns.parse() == Ok(ns) && !crate::state::lock::process_alive(pid) {
            tracing::debug!(folder = %entry.path().display(), "removing a dead process's spill folder");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn folders_of_dead_processes_are_swept_others_kept() {
        let root = tempfile::tempdir().unwrap();
        let ns = pid_namespace().unwrap();
        // A process that has ended: its id is free (until the system reuses it).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let dirs = [
            (format!("{SPILL_PREFIX}{ns}-{dead}-abc123"), false),
            (
                format!("{SPILL_PREFIX}{ns}-{}-def456", std::process::id()),
                true,
            ),
            (format!("{SPILL_PREFIX}{}-{dead}-ghi789", ns + 1), true),
            (format!("{SPILL_PREFIX}old-style"), true),
            (format!("unrelated-{ns}-{dead}-x"), true),
        ];
        for (d, _) in &dirs {
            std::fs::create_dir(root.path().join(d)).unwrap();
            std::fs::write(root.path().join(d).join("bucket-0.arrow"), b"x").unwrap();
        }
        sweep(root.path());
        for (d, kept) in &dirs {
            assert_eq!(root.path().join(d).exists(), *kept, "{d}");
        }
        // A new spill folder is named after this process.
        let dir = temp_dir().unwrap();
        let name = dir
            .path()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            name.starts_with(&format!("{SPILL_PREFIX}{}-", owner())),
            "{name}"
        );
    }
    use datafusion::arrow::array::{ArrayRef, StringViewArray, UInt32Array};
    use datafusion::arrow::datatypes::{DataType, Field};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dictionary_columns_are_written_as_their_values() {
        use datafusion::arrow::array::DictionaryArray;
        use datafusion::arrow::datatypes::Int32Type;
        let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let schema = Arc::new(Schema::new(vec![
            Field::new("segment", dict, true),
            Field::new(BUCKET_COLUMN, DataType::UInt32, false),
        ]));
        // Two batches with different dictionaries, each filling both buckets past a write,
        // so every file gets batches with different dictionaries.
        let n = 20_000;
        let batches = [["a", "b"], ["c", "d"]]
            .into_iter()
            .map(|values| {
                let d: DictionaryArray<Int32Type> = (0..n).map(|i| values[i % 2]).collect();
                let b = UInt32Array::from_iter_values((0..n).map(|i| (i / 2 % 2) as u32));
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![Arc::new(d) as ArrayRef, Arc::new(b)],
                )
                .unwrap()
            })
            .collect::<Vec<_>>();
        let ctx = SessionContext::new();
        let df = ctx
            .read_batches(batches)
            .unwrap()
            .repartition(datafusion::logical_expr::Partitioning::RoundRobinBatch(1))
            .unwrap();
        let dir = temp_dir().unwrap();
        let (rows, paths) = split(df, dir.path(), "d", 2, "test").await.unwrap();
        assert_eq!(rows, 2 * n as u64);
        let mut got = std::collections::BTreeMap::new();
        for files in &paths {
            for batch in read(&ctx, files).await.unwrap().collect().await.unwrap() {
                let c = batch.column(0).as_string::<i32>();
                for v in c.iter().flatten() {
                    *got.entry(v.to_string()).or_insert(0) += 1;
                }
            }
        }
        let quarter = n / 2;
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            [
                ("a", quarter),
                ("b", quarter),
                ("c", quarter),
                ("d", quarter)
            ]
            .map(|(v, c)| (v.to_string(), c))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_routed_in_turn_share_one_file_per_partition_and_bucket() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new(BUCKET_COLUMN, DataType::UInt32, false),
        ]));
        let ctx = SessionContext::new();
        // Each frame in two partitions (a memory table of two), as a model's run has.
        let frame = |slice: usize| {
            let part = |half: usize| {
                let rows = (half * 1500)..(half * 1500 + 1500);
                let ids: Vec<String> = rows.clone().map(|i| format!("s{slice}-{i}")).collect();
                vec![
                    RecordBatch::try_new(
                        Arc::clone(&schema),
                        vec![
                            Arc::new(datafusion::arrow::array::StringArray::from(ids)) as ArrayRef,
                            Arc::new(UInt32Array::from_iter_values(rows.map(|i| i as u32 % 3))),
                        ],
                    )
                    .unwrap(),
                ]
            };
            let table = datafusion::datasource::MemTable::try_new(
                Arc::clone(&schema),
                vec![part(0), part(1)],
            )
            .unwrap();
            ctx.read_table(Arc::new(table)).unwrap()
        };
        let dir = temp_dir().unwrap();
        let mut router = Router::new(dir.path(), "m", 3);
        for slice in 0..4 {
            assert_eq!(router.route(frame(slice), "test").await.unwrap(), 3000);
        }
        // A frame of another schema cannot share the files.
        let other = ctx
            .read_batch(
                RecordBatch::try_from_iter([
                    ("n", Arc::new(UInt32Array::from(vec![1])) as ArrayRef),
                    (
                        BUCKET_COLUMN,
                        Arc::new(UInt32Array::from(vec![0])) as ArrayRef,
                    ),
                ])
                .unwrap(),
            )
            .unwrap();
        let refused = router.route(other, "test").await.unwrap_err().to_string();
        assert!(refused.contains("another schema"), "{refused}");
        let paths = router.finish().unwrap();
        // Two partitions' files per bucket, whatever the number of frames.
        assert_eq!(paths.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 2]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 6);
        for (b, files) in paths.iter().enumerate() {
            let mut ids = Vec::new();
            for batch in read(&ctx, files).await.unwrap().collect().await.unwrap() {
                let c = batch.column(0).as_string::<i32>();
                ids.extend(c.iter().flatten().map(str::to_string));
            }
            ids.sort();
            let mut want: Vec<String> = (0..4)
                .flat_map(|s| {
                    (0..3000)
                        .filter(|i| i % 3 == b)
                        .map(move |i| format!("s{s}-{i}"))
                })
                .collect();
            want.sort();
            assert_eq!(ids, want, "bucket {b}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn split_routes_every_row_to_its_bucket_once_and_compactly() {
        let n = 20_000usize;
        let names: Vec<String> = (0..n).map(|i| format!("{i:0>100}")).collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8View, false),
            Field::new(BUCKET_COLUMN, DataType::UInt32, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringViewArray::from_iter_values(&names)) as ArrayRef,
                Arc::new(UInt32Array::from_iter_values(
                    (0..n).map(|i| (i % 7) as u32),
                )),
            ],
        )
        .unwrap();
        let ctx = SessionContext::new();
        let df = ctx.read_batch(batch).unwrap();
        let dir = temp_dir().unwrap();
        let (rows, paths) = split(df, dir.path(), "t", 7, "test").await.unwrap();
        assert_eq!(rows, n as u64);
        let mut seen = 0;
        for (b, files) in paths.iter().enumerate() {
            let batches = read(&ctx, files).await.unwrap().collect().await.unwrap();
            for batch in &batches {
                assert_eq!(batch.schema().field(0).data_type(), &DataType::Utf8);
                for v in batch.column(0).as_string::<i32>().iter().flatten() {
                    assert_eq!(v.parse::<usize>().unwrap() % 7, b, "{v} in bucket {b}");
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, n);
        // Each row's 100 bytes written once, not the whole source buffer per bucket.
        let bytes: u64 = paths
            .iter()
            .flatten()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        assert!(bytes < 2 * 100 * n as u64, "{bytes} bytes for {n} rows");
    }
}
