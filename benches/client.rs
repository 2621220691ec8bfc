//! Client throughput against the built-in emulator on loopback: unthrottled at concurrency
//! 64 (the client must never be what limits a tenant), then paced to a set rate with the
//! emulator capped slightly above it (the rate must hold with no 429).
//!
//!     cargo bench --bench client

#![allow(clippy::unwrap_used)] // a failed setup step should stop the run where it failed

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use voyado_emulator::{Emulator, EmulatorConfig, Endpoint, Faults, RateLimit};
use voyado_sync::sink::voyado::{ApiKey, Client};

fn settings(url: &str, rps: u32, concurrency: u32) -> voyado_sync::config::Settings {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            r#"name = "bench"
[source]
tables = {{ t = "x.parquet" }}
[model]
sql = "SELECT 1"
[destination]
url = "{url}"
api_key_env = "UNUSED"
[identifier]
column = "email"
key = "email"
[fields]
a = "firstName"
[sync]
mode = "update"
[limits]
requests_per_second = {rps}
concurrency = {concurrency}
"#
        ),
    )
    .unwrap();
    voyado_sync::config::load(&path).unwrap()
}

async fn drive(
    client: Arc<Client>,
    ids: Arc<Vec<String>>,
    requests: usize,
    concurrency: usize,
) -> f64 {
    let started = Instant::now();
    futures::stream::iter(0..requests)
        .map(|k| {
            let c = client.clone();
            let ids = ids.clone();
            async move {
                let id = &ids[k % ids.len()];
                c.update(id, "{\"firstName\":\"Ada\"}").await
            }
        })
        .buffer_unordered(concurrency)
        .for_each(|_| async {})
        .await;
    requests as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let key = "bench-key";
    let mut c = EmulatorConfig::new(key);
    c.seed_contacts = (0..1000)
        .map(|i| {
            serde_json::from_value(serde_json::json!({"email": format!("u{i}@x.se")})).unwrap()
        })
        .collect();
    let emu = Emulator::start(c).await.unwrap();
    let ids: Arc<Vec<String>> = Arc::new(emu.contacts().into_iter().map(|c| c.id).collect());
    let client = Arc::new(
        Client::new(
            &settings(&emu.base_url(), 1_000_000, 64),
            &ApiKey::from_value(key),
        )
        .unwrap(),
    );
    drive(client.clone(), ids.clone(), 2_000, 64).await; // warm up connections
    let rate = drive(client, ids.clone(), 30_000, 64).await;
    println!("client, no cap, concurrency 64: {rate:.0} requests/s");

    let target = 200u32;
    let mut c = EmulatorConfig::new(key);
    c.seed_contacts = (0..100)
        .map(|i| {
            serde_json::from_value(serde_json::json!({"email": format!("u{i}@x.se")})).unwrap()
        })
        .collect();
    c.faults = Faults {
        rate_limit: Some(RateLimit {
            requests: target * 105 / 100,
            window: Duration::from_secs(1),
            retry_after_secs: None,
        }),
        ..Faults::default()
    };
    let emu = Emulator::start(c).await.unwrap();
    let ids: Arc<Vec<String>> = Arc::new(emu.contacts().into_iter().map(|c| c.id).collect());
    let client = Arc::new(
        Client::new(
            &settings(&emu.base_url(), target, 64),
            &ApiKey::from_value(key),
        )
        .unwrap(),
    );
    let rate = drive(client, ids, (target * 10) as usize, 64).await;
    println!(
        "client, requests_per_second = {target}, emulator capped at {}/s: {rate:.1} requests/s ({:+.1} %), 429 answers: {}",
        target * 105 / 100,
        (rate / f64::from(target) - 1.0) * 100.0,
        emu.requests().count(Endpoint::Update, 429)
    );
}
