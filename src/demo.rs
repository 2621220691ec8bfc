//! `voyado-sync demo`: the bundled sample synced twice against the built-in emulator, to show
//! a full sync, then an incremental one that sends only the changes, then one that sends
//! nothing. Everything it needs is compiled in, so it runs from any folder.

use std::path::Path;

use voyado_emulator::{Emulator, EmulatorConfig, Endpoint};

use crate::error::{Error, Result, exit};
use crate::pipeline::{RunOptions, run};

/// (path in the landing folder, file contents)
type Extract = [(&'static str, &'static [u8])];

const V1: [(&str, &[u8]); 3] = [
    (
        "customers.parquet",
        include_bytes!("../sample_data/v1/customers.parquet"),
    ),
    (
        "orders/part-0.parquet",
        include_bytes!("../sample_data/v1/orders/part-0.parquet"),
    ),
    (
        "orders/part-1.parquet",
        include_bytes!("../sample_data/v1/orders/part-1.parquet"),
    ),
];
const V2: [(&str, &[u8]); 4] = [
    (
        "customers.parquet",
        include_bytes!("../sample_data/v2/customers.parquet"),
    ),
    (
        "orders/part-0.parquet",
        include_bytes!("../sample_data/v2/orders/part-0.parquet"),
    ),
    (
        "orders/part-1.parquet",
        include_bytes!("../sample_data/v2/orders/part-1.parquet"),
    ),
    (
        "orders/part-2.parquet",
        include_bytes!("../sample_data/v2/orders/part-2.parquet"),
    ),
];
const MODEL: &str = include_str!("../queries/customer_attributes.sql");
const CUSTOM: [&str; 5] = [
    "newsletter_opt_in",
    "order_count",
    "total_spent",
    "last_order_at",
    "loyalty_tier",
];
const DEMO_KEY: &str = "demo-api-key";

fn io(what: &str, e: std::io::Error) -> Error {
    Error::io(format!("demo: {what}"), e)
}

/// Replaces the landing folder's extract with one version of the sample.
fn land(dir: &Path, files: &Extract) -> Result<()> {
    let landing = dir.join("landing");
    if landing.exists() {
        std::fs::remove_dir_all(&landing).map_err(|e| io("clearing the landing folder", e))?;
    }
    for (name, bytes) in files {
        let path = landing.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("creating the landing folder", e))?;
        }
        std::fs::write(&path, bytes).map_err(|e| io("writing the sample", e))?;
    }
    Ok(())
}

fn config(url: &str) -> String {
    format!(
        r#"name = "demo"

[source]
tables = {{ customers = "landing/customers.parquet", orders = "landing/orders/" }}

[model]
query = "customer_attributes.sql"

[destination]
url = "{url}"
api_key_file = "api-key.txt"
source = "warehouse"

[identifier]
column = "email"
key = "email"

[fields]
first_name = "firstName"
last_name = "lastName"
city = "city"
country_code = "countryCode"
birth_date = "birthDay"

[custom_attributes]
columns = [{custom}]

[sync]
mode = "upsert"
state = "state"

[warnings]
max_invalid_percent = 15   # the sample holds a few broken rows on purpose
"#,
        custom = CUSTOM.map(|c| format!("\"{c}\"")).join(", ")
    )
}

/// Runs the demo in `dir` (a temporary folder unless given) and prints what happened.
pub async fn demo(dir: Option<&Path>) -> Result<u8> {
    let temp;
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| io("creating the demo folder", e))?;
            d.to_path_buf()
        }
        None => {
            temp = tempfile::tempdir().map_err(|e| io("creating a temporary folder", e))?;
            temp.path().to_path_buf()
        }
    };
    let mut ec = EmulatorConfig::new(DEMO_KEY);
    ec.custom_attributes = CUSTOM.map(String::from).to_vec();
    let emulator = Emulator::start(ec)
        .await
        .map_err(|e| Error::Internal(format!("demo emulator: {e}")))?;
    println!(
        "Voyado Engage emulator listening on {}",
        emulator.base_url()
    );
    std::fs::write(dir.join("api-key.txt"), DEMO_KEY).map_err(|e| io("writing the key file", e))?;
    std::fs::write(dir.join("customer_attributes.sql"), MODEL)
        .map_err(|e| io("writing the model", e))?;
    let cfg = dir.join("voyado-sync.toml");
    std::fs::write(&cfg, config(&emulator.base_url())).map_err(|e| io("writing the config", e))?;
    println!("sync folder: {}\n", dir.display());

    let steps: [(&str, &Extract); 3] = [
        (
            "1. Full sync of day 1's extract: every valid customer is created",
            &V1,
        ),
        ("2. Day 2's extract lands: only what changed is sent", &V2),
        ("3. Nothing changed since: nothing is sent", &V2),
    ];
    let mut worst = exit::OK;
    for (title, files) in steps {
        land(&dir, files)?;
        let before = emulator.requests();
        let result = run(&cfg, &RunOptions::default()).await?;
        let after = emulator.requests();
        let delta = |e: Endpoint| after.endpoint(e) - before.endpoint(e);
        println!("{title}");
        print!("{}", result.report.render());
        println!(
            "  Voyado saw: {} lookups (the API key probe included), {} creates, {} updates; it now holds {} contacts; protocol violations: {}\n",
            delta(Endpoint::Lookup),
            delta(Endpoint::Create),
            delta(Endpoint::Update),
            emulator.contacts().len(),
            emulator
                .violations()
                .0
                .values()
                .map(|v| v.count)
                .sum::<u64>()
        );
        worst = worst.max(result.exit_code);
    }
    let sample = emulator.contacts().into_iter().find(|c| {
        c.str("email")
            .is_some_and(|e| e.starts_with("new.customer"))
    });
    if let Some(c) = sample {
        println!(
            "One contact as Voyado holds it:\n{}",
            serde_json::to_string_pretty(&c.to_api()).unwrap_or_default()
        );
    }
    Ok(worst)
}
