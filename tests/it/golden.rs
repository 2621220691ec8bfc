//! A state written by an earlier release (`tests/fixtures/golden/`: snapshot, deltas of a
//! run killed mid-send, manifest, reports) must keep reading exactly as it did: `plan`,
//! `run` and `history` answer the JSON stored next to it, and the run leaves the state
//! described there. Only the real binary is used: its CLI, its `emulator` subcommand, its
//! stdout, its exit codes and the files it writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use serde_json::{Value, json};

use crate::common::{EmulatorProcess, Output, chmod_700_tree, cli, copy_tree, write_parquet};

const KEY: &str = "golden-api-key";
const KEY_ENV: &str = "GOLDEN_API_KEY";
/// The tenant the fixture was written against; the test's emulator is the same tenant.
const TENANT: &[&str] = &[
    "--custom-attributes",
    "tier,points",
    "--mandatory",
    "firstName",
];

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

fn key() -> [(&'static str, &'static str); 1] {
    [(KEY_ENV, KEY)]
}

fn state_dir(dir: &Path) -> PathBuf {
    dir.join("state/golden")
}

/// Runs `voyado-sync <args> -c <dir>/sync.toml`.
fn bin(dir: &Path, args: &[&str]) -> Output {
    let cfg = dir.join("sync.toml");
    let mut all = args.to_vec();
    all.extend(["-c", cfg.to_str().unwrap()]);
    cli(&all, &key())
}

fn point_at(dir: &Path, url: &str) {
    let cfg = dir.join("sync.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let start = text.find("url = \"").unwrap() + "url = \"".len();
    let end = start + text[start..].find('"').unwrap();
    std::fs::write(&cfg, format!("{}{url}{}", &text[..start], &text[end..])).unwrap();
}

fn parse(out: &Output) -> Value {
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            out.stdout, out.stderr
        )
    })
}

/// Every file under `root`, relative, sorted.
fn files(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(root, &e.path(), out);
            } else {
                let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
                out.push(rel.to_str().unwrap().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Rows of a Parquet file, from its footer.
fn parquet_rows(path: &Path) -> i64 {
    use datafusion::parquet::file::reader::FileReader;
    use datafusion::parquet::file::serialized_reader::SerializedFileReader;
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    reader.metadata().file_metadata().num_rows()
}

/// A Parquet file's rows as JSON objects of displayed values (nulls as null), sorted by
/// identifier.
fn parquet_values(path: &Path) -> Value {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let schema = batch.schema();
        let options = FormatOptions::default();
        let columns: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for i in 0..batch.num_rows() {
            let mut row = serde_json::Map::new();
            for (j, f) in schema.fields().iter().enumerate() {
                let v = if batch.column(j).is_null(i) {
                    Value::Null
                } else {
                    Value::String(columns[j].value(i).to_string())
                };
                row.insert(f.name().clone(), v);
            }
            rows.push(Value::Object(row));
        }
    }
    rows.sort_by_key(|r| (r["_identifier"].to_string(), r.to_string()));
    Value::Array(rows)
}

/// The state folder as data: each file (Parquet files with their row count, JSON files
/// with their content) under its relative path.
fn state_summary(state: &Path) -> Value {
    let mut out = serde_json::Map::new();
    for rel in files(state) {
        let path = state.join(&rel);
        let v = if rel.ends_with(".parquet") {
            json!({ "rows": parquet_rows(&path) })
        } else if rel.ends_with(".json") {
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
        } else {
            json!({ "bytes": std::fs::metadata(&path).unwrap().len() })
        };
        out.insert(rel, v);
    }
    Value::Object(out)
}

/// Replaces what differs between two runs of the same command: the run ids this test's
/// commands chose (wherever they appear, file names included), the time fields of the
/// objects they name (`started_at`, `duration_ms`, `committed_at`, `acquired_at`), and
/// the emulator's port. Everything the fixture itself holds stays as it is.
fn normalise(v: &Value, fresh: &[String], base_url: Option<&str>) -> Value {
    let text = |s: &str| {
        let mut s = s.to_string();
        for id in fresh {
            s = s.replace(id.as_str(), "<run_id>");
        }
        if let Some(url) = base_url {
            s = s.replace(url, "http://127.0.0.1:<port>");
        }
        s
    };
    match v {
        Value::String(s) => Value::String(text(s)),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| normalise(i, fresh, base_url))
                .collect(),
        ),
        Value::Object(map) => {
            let is_fresh = map
                .get("run_id")
                .and_then(Value::as_str)
                .is_some_and(|id| fresh.iter().any(|f| f == id));
            Value::Object(
                map.iter()
                    .map(|(k, v)| {
                        let k2 = text(k);
                        let timed = matches!(
                            k.as_str(),
                            "started_at" | "duration_ms" | "committed_at" | "acquired_at"
                        );
                        if is_fresh && timed {
                            (k2, Value::String(format!("<{k}>")))
                        } else {
                            (k2, normalise(v, fresh, base_url))
                        }
                    })
                    .collect(),
            )
        }
        other => other.clone(),
    }
}

fn run_id(v: &Value) -> String {
    v["run_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no run_id in {v}"))
        .to_string()
}

/// What the fixture reads as, through the binary: each entry normalised, named by the
/// file under `expected/` that holds it.
fn observe(dir: &Path) -> BTreeMap<&'static str, Value> {
    let state = state_dir(dir);
    let mut seen = BTreeMap::new();
    let before = state_summary(&state);

    let history = bin(dir, &["history", "--json"]);
    assert_eq!(history.code, 0, "{}", history.stderr);
    seen.insert(
        "history_before.json",
        json!({ "exit_code": history.code, "stdout": parse(&history) }),
    );

    let plan = bin(dir, &["plan", "--json"]);
    let plan_json = parse(&plan);
    seen.insert(
        "plan.json",
        normalise(
            &json!({ "exit_code": plan.code, "stdout": plan_json }),
            &[run_id(&plan_json)],
            None,
        ),
    );
    assert_eq!(
        state_summary(&state),
        before,
        "history and plan must not change the state"
    );

    let seed = dir.join("voyado.json");
    let emu = EmulatorProcess::start(
        KEY,
        &[
            TENANT,
            &["--seed", "3", "--seed-contacts", seed.to_str().unwrap()],
        ]
        .concat(),
    );
    point_at(dir, &emu.base_url);
    let run = bin(dir, &["run", "--json"]);
    let run_json = parse(&run);
    let fresh = vec![run_id(&run_json)];
    seen.insert(
        "run.json",
        normalise(
            &json!({ "exit_code": run.code, "stdout": run_json }),
            &fresh,
            Some(&emu.base_url),
        ),
    );
    seen.insert(
        "state_after_run.json",
        normalise(&state_summary(&state), &fresh, Some(&emu.base_url)),
    );
    // The new snapshot, row by row: identifiers, contactIds, statuses, hashes, values.
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("manifest.json")).unwrap())
            .unwrap();
    let snapshot = state.join(m["snapshot"][0].as_str().unwrap());
    seen.insert("snapshot_after_run.json", parquet_values(&snapshot));

    let history = bin(dir, &["history", "--json"]);
    seen.insert(
        "history_after_run.json",
        normalise(
            &json!({ "exit_code": history.code, "stdout": parse(&history) }),
            &fresh,
            Some(&emu.base_url),
        ),
    );

    // Nothing is left to send: a second run makes no request and changes no row.
    let again = bin(dir, &["run", "--json"]);
    let again_json = parse(&again);
    seen.insert(
        "run_again.json",
        normalise(
            &json!({ "exit_code": again.code, "stdout": again_json }),
            &[run_id(&again_json)],
            Some(&emu.base_url),
        ),
    );
    emu.stop();
    seen
}

/// The fixture in a temporary folder, its state folders owner-only as a run requires.
fn copy_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["sync.toml", "voyado.json"] {
        std::fs::copy(fixture().join(f), dir.path().join(f)).unwrap();
    }
    copy_tree(&fixture().join("data"), &dir.path().join("data"));
    copy_tree(&fixture().join("state"), &dir.path().join("state"));
    chmod_700_tree(&dir.path().join("state"));
    dir
}

#[test]
fn a_state_written_by_an_earlier_release_reads_the_same() {
    // The fixture names no path of the machine that wrote it.
    for rel in files(&fixture()) {
        if rel.ends_with(".json") || rel.ends_with(".toml") {
            let text = std::fs::read_to_string(fixture().join(&rel)).unwrap();
            assert!(
                !text.contains("/tmp/") && !text.contains("/work/") && !text.contains("/home/"),
                "{rel} holds an absolute path"
            );
        }
    }
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture().join("state/golden/manifest.json")).unwrap(),
    )
    .unwrap();
    assert!(
        !m["snapshot"].as_array().unwrap().is_empty()
            && !m["deltas"].as_array().unwrap().is_empty(),
        "the fixture holds a snapshot and deltas: {m}"
    );

    let dir = copy_fixture();
    let seen = observe(dir.path());
    for (name, got) in &seen {
        let path = fixture().join("expected").join(name);
        let want: Value = serde_json::from_str(
            &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        )
        .unwrap();
        assert_eq!(
            got,
            &want,
            "{name} differs from the stored one; got:\n{}",
            serde_json::to_string_pretty(got).unwrap()
        );
    }

    // The run committed everything into one new snapshot, as the manifest says.
    let state = state_dir(dir.path());
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["deltas"], json!([]));
    let snapshot = m["snapshot"].as_array().unwrap();
    assert_eq!(snapshot.len(), 1);
    let rows = parquet_rows(&state.join(snapshot[0].as_str().unwrap()));
    assert_eq!(m["snapshot_rows"].as_i64(), Some(rows));
}

// ---- how the fixture was written (see tests/fixtures/golden/README.md) ----

const CONFIG: &str = r#"name = "golden"

[source]
tables = { customers = "data/customers.parquet" }

[model]
sql = """SELECT email, first_name, tier, points FROM customers"""

[destination]
url = "http://127.0.0.1:9"
api_key_env = "GOLDEN_API_KEY"

[identifier]
column = "email"
key = "email"

[fields]
first_name = "firstName"

[custom_attributes]
columns = ["tier", "points"]

[sync]
mode = "upsert"
state = "state"
checkpoint_rows = 2

[limits]
concurrency = 1
"#;

type Customer = (&'static str, Option<&'static str>, &'static str, i64);

/// Day 1: ten customers; k has no first name (the tenant requires one: rejected); one
/// identifier is not an email (invalid).
const DAY1: &[Customer] = &[
    ("a@x.se", Some("Ada"), "gold", 10),
    ("b@x.se", Some("Bo"), "silver", 20),
    ("c@x.se", Some("Cy"), "bronze", 30),
    ("d@x.se", Some("Di"), "gold", 40),
    ("e@x.se", Some("Ed"), "silver", 50),
    ("f@x.se", Some("Fia"), "bronze", 60),
    ("g@x.se", Some("Gus"), "gold", 70),
    ("h@x.se", Some("Hal"), "silver", 80),
    ("i@x.se", Some("Ivy"), "bronze", 90),
    ("j@x.se", Some("Jo"), "gold", 100),
    ("k@x.se", None, "silver", 110),
    ("not-an-email", Some("Nemo"), "gold", 0),
];

/// Day 2: b and c change, d is gone, l is new.
const DAY2: &[Customer] = &[
    ("a@x.se", Some("Ada"), "gold", 10),
    ("b@x.se", Some("Bo"), "gold", 20),
    ("c@x.se", Some("Cy"), "bronze", 35),
    ("e@x.se", Some("Ed"), "silver", 50),
    ("f@x.se", Some("Fia"), "bronze", 60),
    ("g@x.se", Some("Gus"), "gold", 70),
    ("h@x.se", Some("Hal"), "silver", 80),
    ("i@x.se", Some("Ivy"), "bronze", 90),
    ("j@x.se", Some("Jo"), "gold", 100),
    ("k@x.se", None, "silver", 110),
    ("l@x.se", Some("Lia"), "bronze", 120),
    ("not-an-email", Some("Nemo"), "gold", 0),
];

/// Day 3 (the extract the fixture's config reads): e, f, g, h, i and k change (k now has
/// a first name), m and n are new, a is gone.
const DAY3: &[Customer] = &[
    ("b@x.se", Some("Bo"), "gold", 20),
    ("c@x.se", Some("Cy"), "bronze", 35),
    ("e@x.se", Some("Ed"), "gold", 50),
    ("f@x.se", Some("Fia"), "bronze", 66),
    ("g@x.se", Some("Gustav"), "gold", 70),
    ("h@x.se", Some("Hal"), "silver", 88),
    ("i@x.se", Some("Ivy"), "silver", 90),
    ("j@x.se", Some("Jo"), "gold", 100),
    ("k@x.se", Some("Kai"), "silver", 110),
    ("l@x.se", Some("Lia"), "bronze", 120),
    ("m@x.se", Some("Mo"), "silver", 130),
    ("n@x.se", Some("Nils"), "gold", 140),
    ("not-an-email", Some("Nemo"), "gold", 0),
];

fn extract(rows: &[Customer]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("email", DataType::Utf8, true),
        Field::new("first_name", DataType::Utf8, true),
        Field::new("tier", DataType::Utf8, true),
        Field::new("points", DataType::Int64, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(rows.iter().map(|r| r.1).collect::<StringArray>()),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3))),
        ],
    )
    .unwrap()
}

/// Writes `tests/fixtures/golden/` with the binary under test: only to be run on purpose,
/// when the stored state's format changes and the old fixture is kept beside the new one.
#[test]
#[ignore = "writes tests/fixtures/golden/; run on purpose with --ignored"]
fn write_golden_fixture() {
    let fx = fixture();
    for sub in ["state", "expected", "data"] {
        let _ = std::fs::remove_dir_all(fx.join(sub));
    }
    std::fs::create_dir_all(&fx).unwrap();
    std::fs::write(fx.join("sync.toml"), CONFIG).unwrap();
    for (name, rows) in [("day1", DAY1), ("day2", DAY2), ("day3", DAY3)] {
        write_parquet(&fx.join(format!("data/{name}.parquet")), &extract(rows));
    }

    // Written in a temporary folder, then copied in: the state names relative paths only.
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::copy(fx.join("sync.toml"), w.join("sync.toml")).unwrap();
    copy_tree(&fx.join("data"), &w.join("data"));
    let dump = w.join("voyado.json");
    // Slow enough answers that run 3 can be killed between two checkpoints.
    let emu = EmulatorProcess::start(
        KEY,
        &[
            TENANT,
            &[
                "--seed",
                "1",
                "--latency-ms",
                "150",
                "--dump-on-exit",
                dump.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    point_at(w, &emu.base_url);
    let land = |day: &str| {
        std::fs::copy(
            w.join(format!("data/{day}.parquet")),
            w.join("data/customers.parquet"),
        )
        .unwrap();
    };

    // Runs 1 and 2 commit (with a rejected and an invalid row: exit 3, warnings).
    for day in ["day1", "day2"] {
        land(day);
        let out = bin(w, &["run", "--json"]);
        eprintln!("{day}: exit {} {}", out.code, out.stdout);
        assert!(matches!(out.code, 0 | 3), "{}", out.stderr);
    }

    // Run 3 is killed once two checkpoints are in the manifest, before it commits.
    land("day3");
    let cfg = w.join("sync.toml");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_voyado-sync"))
        .args(["-q", "run", "-c", cfg.to_str().unwrap()])
        .env(KEY_ENV, KEY)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let manifest = state_dir(w).join("manifest.json");
    let deltas = || -> usize {
        std::fs::read_to_string(&manifest)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|m| m["deltas"].as_array().map(Vec::len))
            .unwrap_or(0)
    };
    let mut waited = 0;
    while deltas() < 2 {
        assert!(child.try_wait().unwrap().is_none(), "run 3 ended first");
        std::thread::sleep(Duration::from_millis(5));
        waited += 1;
        assert!(waited < 6000, "no checkpoint within 30 s");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    emu.stop();
    // The killed run's lock names a process of this machine: a later run here or elsewhere
    // would take it over or wait an hour, by rules that are not what the fixture is for.
    std::fs::remove_file(state_dir(w).join("lock.json")).unwrap();

    copy_tree(&w.join("state"), &fx.join("state"));
    std::fs::copy(&dump, fx.join("voyado.json")).unwrap();
    std::fs::copy(
        w.join("data/customers.parquet"),
        fx.join("data/customers.parquet"),
    )
    .unwrap();

    // What today's binary reads from it.
    let dir = copy_fixture();
    let seen = observe(dir.path());
    std::fs::create_dir_all(fx.join("expected")).unwrap();
    for (name, v) in seen {
        let text = serde_json::to_string_pretty(&v).unwrap() + "\n";
        std::fs::write(fx.join("expected").join(name), text).unwrap();
    }
}
