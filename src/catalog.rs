//! The session and its tables: one SQL table per configured source, local or object store.

use std::sync::Arc;

use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use object_store::ObjectStore;

use crate::config::{Engine, Location, Settings};
use crate::error::{Error, Result, one_line};

#[cfg(feature = "ballista")]
pub mod ballista;
pub mod build_side;

/// A session bounded by `memory_limit_mb`, with the crate's functions registered; with
/// `[engine] kind = "ballista"`, one whose queries run on the cluster.
pub fn session(settings: &Settings) -> Result<SessionContext> {
    let runtime = runtime(settings)?;
    match &settings.engine {
        Engine::Local => {
            let config = tune(SessionConfig::new(), settings)?;
            let state = SessionStateBuilder::new()
                .with_config(config)
                .with_runtime_env(runtime)
                .with_default_features()
                .with_physical_optimizer_rules(physical_rules())
                .build();
            let ctx = SessionContext::new_with_state(state);
            crate::functions::register(&ctx);
            Ok(ctx)
        }
        #[cfg(feature = "ballista")]
        Engine::Ballista { url } => {
            ballista::client_session(url, runtime, |config| tune(config, settings))
        }
        #[cfg(not(feature = "ballista"))]
        Engine::Ballista { .. } => Err(Error::config(
            "[engine] kind = \"ballista\": this voyado-sync was built without the `ballista` feature (build it with --features ballista)",
        )),
    }
}

/// DataFusion's physical optimizer rules with [`build_side::BuildOnUniqueSide`] right
/// after the rule it refines.
fn physical_rules() -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    let mut rules = PhysicalOptimizer::new().rules;
    let at = rules
        .iter()
        .position(|r| r.name() == build_side::AFTER)
        .map_or(rules.len(), |i| i + 1);
    rules.insert(at, Arc::new(build_side::BuildOnUniqueSide));
    rules
}

fn runtime(settings: &Settings) -> Result<Arc<RuntimeEnv>> {
    let bytes = settings.limits.memory_limit_mb as usize * 1024 * 1024;
    RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(bytes)))
        .build_arc()
        .map_err(|e| Error::engine("memory pool", e))
}

/// The crate's options, then the user's `[datafusion]` ones, on a session config (shared by
/// the local and the Ballista engine).
fn tune(config: SessionConfig, settings: &Settings) -> Result<SessionConfig> {
    let mut config = config
        .with_target_partitions(cores())
        .with_information_schema(false);
    // DataFusion 55 replaces a column by a literal when a file's min and max statistics are
    // equal and it has no nulls; Parquet writers leave NaN out of min/max, so a NaN among
    // equal values silently became that value. Without file statistics it reads the data.
    config.options_mut().execution.collect_statistics = false;
    // Footers are a few KiB: a smaller first read than DataFusion's 512 KiB default keeps
    // the bytes fetched from object stores close to the files' size (one extra request when
    // a footer is larger).
    config.options_mut().execution.parquet.metadata_size_hint = Some(16 * 1024);
    // Plain Utf8 rather than Utf8View strings: view arrays keep whole shared buffers alive,
    // so after repartitioning every batch is accounted at many times its size and sorts
    // spill or fail far below the memory limit.
    config
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = false;
    // The user's `[datafusion]` options come last, so they can override any choice above
    // (checked when the config was loaded).
    for (key, value) in &settings.datafusion {
        config
            .options_mut()
            .set(key, value)
            .map_err(|e| Error::config(format!("[datafusion] {key}: {}", one_line(&e))))?;
    }
    Ok(config)
}

/// The session option [`size_partitions`] chooses.
const TARGET_PARTITIONS: &str = "datafusion.execution.target_partitions";
/// Parquet source bytes per partition of a model run in one piece.
const SOURCE_BYTES_PER_PARTITION: u64 = 24 << 20;
/// The most partitions [`size_partitions`] gives (never fewer than the cores).
const MAX_SIZED_PARTITIONS: usize = 16;

/// The cores this process may use (2 when unknown): the session's partitions by default.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Gives a model run in one piece (no slices, one change detection bucket, local engine:
/// see `diff::size_session`) one partition per 24 MiB of its Parquet sources (`bytes`),
/// from one per core up to 16: a large model's aggregates then build many small hash
/// tables that stay in the CPU's caches (BENCHMARKS.md). Sliced or bucketed runs keep one
/// per core, since each partition writes its own bucket files. A `target_partitions` set
/// in `[datafusion]` is left as it is.
pub fn size_partitions(ctx: &SessionContext, settings: &Settings, bytes: u64) {
    if (settings.datafusion.iter()).any(|(k, _)| k == TARGET_PARTITIONS) {
        return;
    }
    let partitions = partitions_for(bytes, cores());
    tracing::debug!(bytes, partitions, "partitions sized to the sources");
    let state = ctx.state_ref();
    let mut state = state.write();
    state.config_mut().options_mut().execution.target_partitions = partitions;
}

/// Partitions for `bytes` of sources on `cores` cores.
fn partitions_for(bytes: u64, cores: usize) -> usize {
    let by_size = usize::try_from(bytes / SOURCE_BYTES_PER_PARTITION).unwrap_or(usize::MAX);
    by_size.clamp(cores, cores.max(MAX_SIZED_PARTITIONS))
}

/// The bytes of every file the registered source tables read, or None when one cannot be
/// listed (the model's own run then reports why).
pub async fn source_bytes(ctx: &SessionContext, settings: &Settings) -> Option<u64> {
    use datafusion::datasource::listing::ListingTable;
    use futures::TryStreamExt;
    let state = ctx.state();
    let mut total = 0;
    for (table, _) in &settings.tables {
        let provider = ctx.table_provider(table.as_str()).await.ok()?;
        let listing = provider.downcast_ref::<ListingTable>()?;
        let ext = listing.options().file_extension.as_str();
        for url in listing.table_paths() {
            let store = state.runtime_env().object_store(url).ok()?;
            let files = url.list_all_files(&state, store.as_ref(), ext).await.ok()?;
            total += files
                .try_fold(0, |n, f| async move { Ok(n + f.size) })
                .await
                .ok()?;
        }
    }
    Some(total)
}

/// Builds the object store for a bucket/container URL from the environment's usual
/// credentials (`AWS_*`, `GOOGLE_*`, `AZURE_*` variables), then the `[storage]` options for
/// that location. Option values are never echoed: they may be secrets.
pub fn object_store_for(
    url: &url::Url,
    options: &[(String, String)],
) -> Result<Arc<dyn ObjectStore>> {
    let fail = |e: object_store::Error| {
        Error::config(format!(
            "object store for {}: {}",
            redact(url),
            one_line(&e)
        ))
    };
    let bad_key = |k: &str| {
        Error::config(format!(
            "[storage] option {k:?} is not known for {}:// locations",
            url.scheme()
        ))
    };
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "s3" | "s3a" => {
            let mut b = object_store::aws::AmazonS3Builder::from_env().with_url(url.as_str());
            for (k, v) in options {
                let key = k.parse().map_err(|_| bad_key(k))?;
                b = b.with_config(key, v);
            }
            Arc::new(b.build().map_err(fail)?)
        }
        "gs" => {
            let mut b =
                object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(url.as_str());
            for (k, v) in options {
                let key = k.parse().map_err(|_| bad_key(k))?;
                b = b.with_config(key, v);
            }
            Arc::new(b.build().map_err(fail)?)
        }
        "az" | "abfs" | "abfss" | "azure" => {
            let mut b =
                object_store::azure::MicrosoftAzureBuilder::from_env().with_url(url.as_str());
            for (k, v) in options {
                let key = k.parse().map_err(|_| bad_key(k))?;
                b = b.with_config(key, v);
            }
            Arc::new(b.build().map_err(fail)?)
        }
        other => return Err(Error::config(format!("unsupported URL scheme {other}://"))),
    };
    Ok(store)
}

/// Registers the store serving `url` on the session (idempotent per bucket).
pub fn register_store(
    ctx: &SessionContext,
    settings: &Settings,
    url: &url::Url,
) -> Result<Arc<dyn ObjectStore>> {
    let store = object_store_for(url, settings.storage_options(url))?;
    ctx.register_object_store(url, Arc::clone(&store));
    Ok(store)
}

/// A URL without credentials or query, for messages.
pub fn redact(url: &url::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.set_query(None);
    u.to_string()
}

/// Registers every configured source as a SQL table; errors name the table and location.
pub async fn register_sources(ctx: &SessionContext, settings: &Settings) -> Result<()> {
    for (table, loc) in &settings.tables {
        let path = match loc {
            Location::Local(p) => {
                let s = p.to_string_lossy();
                let is_glob = s.contains(['*', '?', '[']);
                if !is_glob && !p.exists() {
                    return Err(Error::Input(format!(
                        "[source] tables.{table}: {} does not exist",
                        p.display()
                    )));
                }
                let mut s = s.into_owned();
                if p.is_dir() && !s.ends_with('/') {
                    s.push('/');
                }
                s
            }
            Location::Url(u) => {
                register_store(ctx, settings, u)?;
                u.to_string()
            }
        };
        let ext = if path.ends_with('/') || path.contains(['*', '?', '[']) {
            ".parquet"
        } else {
            ""
        };
        let opts = ParquetReadOptions::default().file_extension(ext);
        let local_glob = matches!(loc, Location::Local(_)) && path.contains(['*', '?', '[']);
        let registered = if settings.engine.is_ballista() && local_glob {
            register_glob_files(ctx, table, &path, opts).await
        } else {
            ctx.register_parquet(table.as_str(), &path, opts).await
        };
        registered
            .map_err(|e| Error::engine(format!("[source] tables.{table}: cannot read {loc}"), e))?;
    }
    Ok(())
}

/// Registers the files a glob matches, listed here, as one table. A plan sent to a Ballista
/// scheduler carries table paths as URLs without their glob, so the cluster would read every
/// Parquet file of the folder instead.
async fn register_glob_files(
    ctx: &SessionContext,
    table: &str,
    glob: &str,
    opts: ParquetReadOptions<'_>,
) -> datafusion::error::Result<()> {
    use datafusion::datasource::file_format::options::ReadOptions;
    use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};
    use futures::TryStreamExt;

    let glob = ListingTableUrl::parse(glob)?;
    let state = ctx.state();
    let options = opts.to_listing_options(&ctx.copied_config(), ctx.copied_table_options());
    let store = state.runtime_env().object_store(glob.object_store())?;
    let files: Vec<_> = glob
        .list_all_files(&state, store.as_ref(), &options.file_extension)
        .await?
        .try_collect()
        .await?;
    let base = glob.object_store();
    let mut urls = files
        .iter()
        .map(|f| ListingTableUrl::parse(format!("{}{}", base.as_str(), f.location)))
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    if urls.is_empty() {
        return datafusion::common::plan_err!("no file matches {glob}");
    }
    urls.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    // The same schema as a local run: merged over the files the glob matches.
    let schema = options.infer_schema(&state, &glob).await?;
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(schema);
    ctx.register_table(table, Arc::new(ListingTable::try_new(config)?))?;
    Ok(())
}

/// Registers `df` under a fresh name for SQL to refer to. Commands load the state, stage
/// and compact within one session, so fixed names would collide.
pub fn temp_view(
    ctx: &SessionContext,
    prefix: &str,
    df: datafusion::prelude::DataFrame,
) -> datafusion::error::Result<String> {
    static VIEWS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = VIEWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("__vs_{prefix}_{n}");
    ctx.register_table(name.as_str(), df.into_view())?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_grow_with_the_sources_between_the_cores_and_sixteen() {
        let mib = 1 << 20;
        assert_eq!(partitions_for(0, 2), 2);
        assert_eq!(partitions_for(47 * mib, 2), 2);
        assert_eq!(partitions_for(120 * mib, 2), 5);
        assert_eq!(partitions_for(428 * mib, 2), 16);
        assert_eq!(partitions_for(u64::MAX, 2), 16);
        // A machine with more cores than that keeps one partition per core.
        assert_eq!(partitions_for(u64::MAX, 32), 32);
        assert_eq!(partitions_for(0, 32), 32);
    }

    /// A session with `tables` registered from a config written in `dir`.
    async fn session_of(
        dir: &std::path::Path,
        tables: &str,
        extra: &str,
    ) -> (SessionContext, Settings) {
        let config = dir.join("sync.toml");
        std::fs::write(dir.join("model.sql"), "SELECT email, email AS city FROM a").unwrap();
        std::fs::write(
            &config,
            format!(
                "name = \"t\"\n[source]\ntables = {{ {tables} }}\n[model]\nquery = \"model.sql\"\n\
                 [destination]\nurl = \"http://127.0.0.1:9\"\napi_key_env = \"VOYADO_API_KEY\"\n\
                 [identifier]\ncolumn = \"email\"\nkey = \"email\"\n[fields]\ncity = \"city\"\n\
                 [sync]\nmode = \"upsert\"\nstate = \"state\"\n{extra}"
            ),
        )
        .unwrap();
        let settings = crate::config::load(&config)
            .map_err(|e| e.to_string())
            .unwrap();
        let ctx = session(&settings).unwrap();
        register_sources(&ctx, &settings).await.unwrap();
        (ctx, settings)
    }

    fn write_parquet(path: &std::path::Path, rows: usize) -> u64 {
        use datafusion::arrow::array::StringArray;
        use datafusion::arrow::record_batch::RecordBatch;
        let emails: Vec<String> = (0..rows).map(|i| format!("u{i}@x.se")).collect();
        let batch = RecordBatch::try_from_iter([(
            "email",
            Arc::new(StringArray::from(emails)) as datafusion::arrow::array::ArrayRef,
        )])
        .unwrap();
        let file = std::fs::File::create(path).unwrap();
        let mut w =
            datafusion::parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        std::fs::metadata(path).unwrap().len()
    }

    #[tokio::test]
    async fn sources_are_measured_as_listed_files_folders_and_globs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        let a = write_parquet(&dir.path().join("a.parquet"), 100);
        let b1 = write_parquet(&dir.path().join("b/1.parquet"), 200);
        let b2 = write_parquet(&dir.path().join("b/2.parquet"), 300);
        let c = write_parquet(&dir.path().join("c-1.parquet"), 50);
        // Not matched by the glob.
        write_parquet(&dir.path().join("d-1.parquet"), 70);
        let (ctx, settings) = session_of(
            dir.path(),
            r#"a = "a.parquet", b = "b", c = "c-*.parquet""#,
            "",
        )
        .await;
        assert_eq!(source_bytes(&ctx, &settings).await, Some(a + b1 + b2 + c));
        // Small sources get one partition per core, whatever the session had.
        ctx.state_ref()
            .write()
            .config_mut()
            .options_mut()
            .execution
            .target_partitions = 99;
        size_partitions(&ctx, &settings, a + b1 + b2 + c);
        assert_eq!(ctx.state().config().target_partitions(), cores());
    }

    #[tokio::test]
    async fn partitions_set_in_the_config_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        write_parquet(&dir.path().join("a.parquet"), 10);
        let extra = "[datafusion]\n\"execution.target_partitions\" = 3\n";
        let (ctx, settings) = session_of(dir.path(), r#"a = "a.parquet""#, extra).await;
        size_partitions(&ctx, &settings, 1 << 40);
        assert_eq!(ctx.state().config().target_partitions(), 3);
    }
}
