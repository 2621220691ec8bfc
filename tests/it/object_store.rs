//! Sources and state on a real S3-compatible server (moto's server mode, started per test
//! on 127.0.0.1), checked against the emulator's contacts.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use voyado_emulator::{Emulator, Endpoint};

use crate::common::{Sync, json as parse};
use crate::diff::{MAPPING, Row, batch};
use crate::sync::{KEY, assert_no_violations, by_email, emulator_config, outcomes, row};

/// A moto S3 server on a free loopback port, stopped on drop.
pub(crate) struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    pub(crate) async fn start() -> Moto {
        let port = crate::common::free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with moto (pip install 'moto[server]'; .ci/run installs it)");
        crate::common::wait_for_port(port).await;
        let endpoint = format!("http://127.0.0.1:{port}");
        Moto { child, endpoint }
    }

    pub(crate) async fn bucket(&self, name: &str) -> Arc<dyn ObjectStore> {
        let r = reqwest::Client::new()
            .put(format!("{}/{name}", self.endpoint))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "create bucket {name}: {}",
            r.status()
        );
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(&self.endpoint)
                .with_allow_http(true)
                .with_region("us-east-1")
                .with_bucket_name(name)
                .with_access_key_id("moto")
                .with_secret_access_key("moto-secret")
                .build()
                .unwrap(),
        )
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parquet_bytes(rows: &[Row]) -> Vec<u8> {
    let b = batch(rows);
    let mut buf = Vec::new();
    let mut w =
        datafusion::parquet::arrow::ArrowWriter::try_new(&mut buf, b.schema(), None).unwrap();
    w.write(&b).unwrap();
    w.close().unwrap();
    buf
}

pub(crate) async fn upload(store: &Arc<dyn ObjectStore>, path: &str, rows: &[Row]) {
    store
        .put(&ObjPath::from(path), PutPayload::from(parquet_bytes(rows)))
        .await
        .unwrap();
}

pub(crate) fn rows(range: std::ops::Range<usize>, i_offset: i64) -> Vec<Row> {
    range
        .map(|i| row(&format!("u{i}@x.se"), i as i64 + i_offset))
        .collect()
}

/// One object-store backend under test: its two buckets, how the config names them, and
/// the environment the binary needs.
struct Backend {
    extracts: Arc<dyn ObjectStore>,
    state: Arc<dyn ObjectStore>,
    scheme: &'static str,
    storage_options: String,
    env: Vec<(String, String)>,
}

impl Backend {
    fn config(&self, s: &Sync, emu: &Emulator, extra: &str) {
        s.write_config(
            "SELECT * FROM t",
            "id",
            "email",
            "upsert",
            &format!("{MAPPING}\n{extra}"),
        );
        let sc = self.scheme;
        let text = std::fs::read_to_string(s.config())
            .unwrap()
            .replace("http://127.0.0.1:9", &emu.base_url())
            .replace(
                "\"data/t.parquet\"",
                &format!("\"{sc}://extracts/customers/\""),
            )
            .replace(
                "state = \"state\"",
                &format!("state = \"{sc}://state/syncs\""),
            );
        let storage = format!(
            "\n[storage.\"{sc}://extracts\"]\n{o}\n[storage.\"{sc}://state\"]\n{o}",
            o = self.storage_options
        );
        std::fs::write(s.config(), text + &storage).unwrap();
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        env.push(("VOYADO_SYNC_TEST_KEY".into(), KEY.into()));
        env
    }

    fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    async fn run(&self, s: &Sync) -> crate::common::Output {
        let cfg = s.config().to_str().unwrap().to_string();
        let env = self.env();
        crate::common::cli_async(&["run", "--json", "-c", &cfg], &Self::env_refs(&env)).await
    }

    fn spawn(&self, s: &Sync) -> Child {
        let env = self.env();
        crate::common::spawn_run(&s.config(), &Self::env_refs(&env))
    }
}

async fn manifest(state: &Arc<dyn ObjectStore>) -> Option<serde_json::Value> {
    let r = state
        .get(&ObjPath::from("syncs/test-sync/manifest.json"))
        .await
        .ok()?;
    serde_json::from_slice(&r.bytes().await.ok()?).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_incremental_nochange_killed_and_concurrent_runs_on_s3() {
    let moto = Moto::start().await;
    let backend = Backend {
        extracts: moto.bucket("extracts").await,
        state: moto.bucket("state").await,
        scheme: "s3",
        storage_options: format!(
            "endpoint = \"{}\"\nallow_http = true\nregion = \"us-east-1\"\n",
            moto.endpoint
        ),
        env: vec![
            ("AWS_ACCESS_KEY_ID".into(), "moto".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "moto-secret".into()),
        ],
    };
    scenario(&backend).await;
}

/// Full, incremental, no-change, killed-and-resumed and concurrent runs, extracts in one
/// bucket and state in another, checked against the emulator's contacts.
async fn scenario(b: &Backend) {
    let (extracts, state) = (&b.extracts, &b.state);
    let emu = Emulator::start(emulator_config()).await.unwrap();
    let s = Sync::new();
    b.config(
        &s,
        &emu,
        "[limits]\nrequests_per_second = 400\nconcurrency = 16\n",
    );

    // full
    upload(extracts, "customers/part-0.parquet", &rows(0..40, 0)).await;
    let out = b.run(&s).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(outcomes(&parse(&out)), [40, 0, 0, 0, 0, 0]);
    let m = manifest(state)
        .await
        .expect("the manifest lives in the state bucket");
    assert_eq!(m["snapshot_rows"], 40);
    assert!(!s.path("state").exists(), "nothing written locally");

    // incremental: a new file lands and an old one changes
    upload(extracts, "customers/part-0.parquet", &rows(0..40, 100)).await;
    upload(extracts, "customers/part-1.parquet", &rows(40..60, 0)).await;
    let out = b.run(&s).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(outcomes(&parse(&out)), [20, 40, 0, 0, 0, 0]);

    // no change
    let before = emu.requests().total();
    let out = b.run(&s).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(emu.requests().total(), before);

    // killed mid-run, resumed
    let text = std::fs::read_to_string(s.config()).unwrap();
    std::fs::write(
        s.config(),
        text.replacen(
            "\n[sync]\n",
            "\n[sync]\ncheckpoint_rows = 100\ncheckpoint_secs = 1\n",
            1,
        ),
    )
    .unwrap();
    upload(extracts, "customers/part-2.parquet", &rows(60..1600, 0)).await;
    let mut child = b.spawn(&s);
    let confirmed = loop {
        let m = manifest(state).await;
        let deltas = m
            .as_ref()
            .map_or(0, |m| m["deltas"].as_array().map_or(0, Vec::len));
        if deltas >= 3 {
            break deltas;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(confirmed >= 3);
    let out = b.run(&s).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = parse(&out);
    assert!(
        r["counts"]["unchanged"].as_u64().unwrap() >= 60 + 300,
        "resumed from the checkpoints: {r}"
    );
    let contacts = by_email(&emu);
    assert_eq!(contacts.len(), 1600, "no duplicates, none missing");
    for i in 0..1600 {
        let want = if i < 40 { i + 100 } else { i };
        assert_eq!(contacts[&format!("u{i}@x.se")]["i"], want as i64);
    }

    // two concurrent runs: the second is refused while the first holds the lock
    let text = std::fs::read_to_string(s.config()).unwrap();
    std::fs::write(
        s.config(),
        text.replace("requests_per_second = 400", "requests_per_second = 10"),
    )
    .unwrap();
    upload(extracts, "customers/part-3.parquet", &rows(1600..1700, 0)).await;
    let mut first = b.spawn(&s);
    let lock = ObjPath::from("syncs/test-sync/lock.json");
    for _ in 0..400 {
        if state.head(&lock).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        state.head(&lock).await.is_ok(),
        "the lock is an object in the state bucket"
    );
    let second = b.run(&s).await;
    assert_eq!(second.code, 4, "{}", second.stderr);
    assert!(
        second.stderr.contains("locked by another run"),
        "{}",
        second.stderr
    );
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(emu.requests().endpoint(Endpoint::Unknown) == 0);
    assert_no_violations(&emu);
}

/// Azurite's blob service on a free loopback port, stopped on drop.
struct Azurite {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

impl Azurite {
    async fn start() -> Azurite {
        let local = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(".ci/node/node_modules/.bin/azurite-blob");
        let bin = if local.exists() {
            local.to_string_lossy().into_owned()
        } else {
            "azurite-blob".into()
        };
        let port = crate::common::free_port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(&bin)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--skipApiVersionCheck",
                "--silent",
                "--location",
            ])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("azurite-blob (npm install azurite; .ci/run installs it)");
        crate::common::wait_for_port(port).await;
        Azurite {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// Creates a container (with Python's Azure SDK: object_store cannot) and opens it.
    fn container(&self, name: &str) -> Arc<dyn ObjectStore> {
        let conn = format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};BlobEndpoint={}/devstoreaccount1;",
            self.url
        );
        let ok = Command::new("python3")
            .args([
                "-c",
                "import sys\nfrom azure.storage.blob import BlobServiceClient\nBlobServiceClient.from_connection_string(sys.argv[1]).create_container(sys.argv[2])",
                &conn,
                name,
            ])
            .status()
            .unwrap();
        assert!(
            ok.success(),
            "create container {name} (pip install azure-storage-blob)"
        );
        Arc::new(
            object_store::azure::MicrosoftAzureBuilder::new()
                .with_account("devstoreaccount1")
                .with_access_key(AZURITE_KEY)
                .with_container_name(name)
                .with_endpoint(format!("{}/devstoreaccount1", self.url))
                .with_allow_http(true)
                .build()
                .unwrap(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_incremental_nochange_killed_and_concurrent_runs_on_azure() {
    let az = Azurite::start().await;
    let backend = Backend {
        extracts: az.container("extracts"),
        state: az.container("state"),
        scheme: "az",
        storage_options: "use_emulator = true\n".to_string(),
        env: vec![("AZURITE_BLOB_STORAGE_URL".into(), az.url.clone())],
    };
    scenario(&backend).await;
}

/// Counts what a store serves: bytes of every GET and the most GETs in flight at once.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn ObjectStore>,
    bytes: std::sync::atomic::AtomicU64,
    in_flight: std::sync::atomic::AtomicUsize,
    max_in_flight: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Display for Counting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for Counting {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjPath,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.in_flight.fetch_add(1, SeqCst) + 1;
        self.max_in_flight.fetch_max(now, SeqCst);
        // Hold the slot briefly so overlapping requests are visible even on a fast server.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let r = self.inner.get_opts(location, options).await;
        self.in_flight.fetch_sub(1, SeqCst);
        let r = r?;
        if !r.meta.location.as_ref().is_empty() {
            self.bytes.fetch_add(r.range.end - r.range.start, SeqCst);
        }
        Ok(r)
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<'static, object_store::Result<ObjPath>>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<ObjPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjPath>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjPath>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjPath,
        to: &ObjPath,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_of_many_files_is_read_in_parallel_fetching_about_its_size() {
    use futures::TryStreamExt;
    let moto = Moto::start().await;
    let extracts = moto.bucket("extracts").await;
    for k in 0..16 {
        upload(
            &extracts,
            &format!("many/part-{k:02}.parquet"),
            &rows(k * 12000..(k + 1) * 12000, 0),
        )
        .await;
    }
    let total: u64 = extracts
        .list(Some(&ObjPath::from("many")))
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .iter()
        .map(|m| m.size)
        .sum();
    let counting = Arc::new(Counting {
        inner: extracts,
        bytes: Default::default(),
        in_flight: Default::default(),
        max_in_flight: Default::default(),
    });
    // The session voyado-sync runs its model in, reading through the counting store.
    let s = Sync::new();
    s.write_config("SELECT * FROM t", "id", "email", "upsert", MAPPING);
    let settings = voyado_sync::config::load(&s.config()).unwrap();
    let ctx = voyado_sync::catalog::session(&settings).unwrap();
    ctx.register_object_store(&url::Url::parse("s3://extracts").unwrap(), counting.clone());
    ctx.register_parquet(
        "t",
        "s3://extracts/many/",
        datafusion::prelude::ParquetReadOptions::default(),
    )
    .await
    .unwrap();
    let n: usize = ctx
        .sql("SELECT * FROM t")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(n, 192_000);
    let fetched = counting.bytes.load(std::sync::atomic::Ordering::SeqCst);
    let ratio = fetched as f64 / total as f64;
    println!("fetched {fetched} of {total} bytes ({ratio:.3}x)");
    assert!(
        ratio <= 1.1,
        "fetched {fetched} bytes for {total} bytes of files ({ratio:.2}x)"
    );
    assert!(
        counting
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2,
        "reads overlap"
    );
}
