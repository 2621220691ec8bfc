//! Sources and state on a real S3-compatible server (moto's server mode, started per test
//! on 127.0.0.1), checked against the emulator's contacts.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use voyado_sync::emulator::{Emulator, Endpoint};

use crate::common::{Sync, json as parse};
use crate::diff::{MAPPING, Row, batch};
use crate::sync::{KEY, assert_no_violations, by_email, emulator_config, outcomes, row};

/// A moto S3 server on a free loopback port, stopped on drop.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    pub async fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (pip install 'moto[server]'; .ci/run installs it)");
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let endpoint = format!("http://127.0.0.1:{port}");
        Moto { child, endpoint }
    }

    pub async fn bucket(&self, name: &str) -> Arc<dyn ObjectStore> {
        let r = reqwest::Client::new()
            .put(format!("{}/{name}", self.endpoint))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "create bucket {name}: {}", r.status());
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
    let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(&mut buf, b.schema(), None).unwrap();
    w.write(&b).unwrap();
    w.close().unwrap();
    buf
}

async fn upload(store: &Arc<dyn ObjectStore>, path: &str, rows: &[Row]) {
    store
        .put(&ObjPath::from(path), PutPayload::from(parquet_bytes(rows)))
        .await
        .unwrap();
}

fn rows(range: std::ops::Range<usize>, i_offset: i64) -> Vec<Row> {
    range.map(|i| row(&format!("u{i}@x.se"), i as i64 + i_offset)).collect()
}

fn config(s: &Sync, emu: &Emulator, moto: &Moto, extra: &str) {
    s.write_config("SELECT * FROM t", "id", "email", "upsert", &format!("{MAPPING}\n{extra}"));
    let text = std::fs::read_to_string(s.config())
        .unwrap()
        .replace("http://127.0.0.1:9", &emu.base_url())
        .replace("\"data/t.parquet\"", "\"s3://extracts/customers/\"")
        .replace("state = \"state\"", "state = \"s3://state/syncs\"");
    let storage = format!(
        "\n[storage.\"s3://extracts\"]\nendpoint = \"{e}\"\nallow_http = true\nregion = \"us-east-1\"\n\n[storage.\"s3://state\"]\nendpoint = \"{e}\"\nallow_http = true\nregion = \"us-east-1\"\n",
        e = moto.endpoint
    );
    std::fs::write(s.config(), text + &storage).unwrap();
}

const AWS_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "moto"),
    ("AWS_SECRET_ACCESS_KEY", "moto-secret"),
    ("VOYADO_SYNC_TEST_KEY", KEY),
];

async fn run_s3(s: &Sync) -> crate::common::Output {
    let cfg = s.config().to_str().unwrap().to_string();
    tokio::task::spawn_blocking(move || crate::common::cli(&["run", "--json", "-c", &cfg], &AWS_ENV))
        .await
        .unwrap()
}

fn spawn_s3(s: &Sync) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_voyado-sync"));
    cmd.args(["-q", "run", "-c", s.config().to_str().unwrap()]);
    for (k, v) in AWS_ENV {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

async fn manifest(state: &Arc<dyn ObjectStore>) -> Option<serde_json::Value> {
    let r = state.get(&ObjPath::from("syncs/test-sync/manifest.json")).await.ok()?;
    serde_json::from_slice(&r.bytes().await.ok()?).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_incremental_nochange_killed_and_concurrent_runs_on_s3() {
    let moto = Moto::start().await;
    let extracts = moto.bucket("extracts").await;
    let state = moto.bucket("state").await;
    let emu = Emulator::start(emulator_config()).await.unwrap();
    let s = Sync::new();
    config(&s, &emu, &moto, "[limits]\nrequests_per_second = 400\nconcurrency = 16\n");

    // full
    upload(&extracts, "customers/part-0.parquet", &rows(0..40, 0)).await;
    let out = run_s3(&s).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(outcomes(&parse(&out)), [40, 0, 0, 0, 0, 0]);
    let m = manifest(&state).await.expect("the manifest lives in the state bucket");
    assert_eq!(m["snapshot_rows"], 40);
    assert!(!s.path("state").exists(), "nothing written locally");

    // incremental: a new file lands and an old one changes
    upload(&extracts, "customers/part-0.parquet", &rows(0..40, 100)).await;
    upload(&extracts, "customers/part-1.parquet", &rows(40..60, 0)).await;
    let out = run_s3(&s).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(outcomes(&parse(&out)), [20, 40, 0, 0, 0, 0]);

    // no change
    let before = emu.requests().total();
    let out = run_s3(&s).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(emu.requests().total(), before);

    // killed mid-run, resumed
    let text = std::fs::read_to_string(s.config()).unwrap();
    std::fs::write(
        s.config(),
        text.replace("state = \"s3://state/syncs\"", "state = \"s3://state/syncs\"\ncheckpoint_rows = 100\ncheckpoint_secs = 1"),
    )
    .unwrap();
    upload(&extracts, "customers/part-2.parquet", &rows(60..1600, 0)).await;
    let mut child = spawn_s3(&s);
    let confirmed = loop {
        let m = manifest(&state).await;
        let deltas = m.as_ref().map_or(0, |m| m["deltas"].as_array().map_or(0, Vec::len));
        if deltas >= 3 {
            break deltas;
        }
        assert!(child.try_wait().unwrap().is_none(), "finished before it could be killed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(confirmed >= 3);
    let out = run_s3(&s).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = parse(&out);
    assert!(r["counts"]["unchanged"].as_u64().unwrap() >= 60 + 300, "resumed from the checkpoints: {r}");
    let contacts = by_email(&emu);
    assert_eq!(contacts.len(), 1600, "no duplicates, none missing");
    for i in 0..1600 {
        let want = if i < 40 { i + 100 } else { i };
        assert_eq!(contacts[&format!("u{i}@x.se")]["i"], want as i64);
    }

    // two concurrent runs: the second is refused while the first holds the lock
    let text = std::fs::read_to_string(s.config()).unwrap();
    std::fs::write(s.config(), text.replace("requests_per_second = 400", "requests_per_second = 10")).unwrap();
    upload(&extracts, "customers/part-3.parquet", &rows(1600..1700, 0)).await;
    let mut first = spawn_s3(&s);
    let lock = ObjPath::from("syncs/test-sync/lock.json");
    for _ in 0..400 {
        if state.head(&lock).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(state.head(&lock).await.is_ok(), "the lock is an object in the state bucket");
    let second = run_s3(&s).await;
    assert_eq!(second.code, 4, "{}", second.stderr);
    assert!(second.stderr.contains("locked by another run"), "{}", second.stderr);
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(emu.requests().endpoint(Endpoint::Unknown) == 0);
    assert_no_violations(&emu);
}
