//! Hostile and broken input: each ends in a one-line error naming the culprit (or a
//! documented per-row outcome), a documented exit code, nothing sent where the run cannot be
//! trusted, and the previous state untouched.

use voyado_emulator::Emulator;

use crate::common::{Sync, cli, counts, json as parse, write_parquet};
use crate::diff::{MAPPING, batch};
use crate::sync::{assert_no_violations, by_email, emulator_config, outcomes, row, run, sync_for};

fn manifest(s: &Sync) -> Option<String> {
    std::fs::read_to_string(s.state_dir().join("manifest.json")).ok()
}

/// Runs a broken model after a good baseline: exit 2, nothing sent, state as it was.
async fn assert_refused(emu: &Emulator, s: &Sync, needles: &[&str]) {
    let before_requests = emu.requests().total();
    let before_state = manifest(s);
    let out = run(s, &[]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    for n in needles {
        assert!(line.contains(n), "{line:?} should name {n:?}");
    }
    assert!(!out.stderr.contains("panicked"));
    assert_eq!(emu.requests().total(), before_requests, "nothing sent");
    assert_eq!(manifest(s), before_state, "state untouched");
}

fn set_sql(s: &Sync, sql: &str) {
    let text = std::fs::read_to_string(s.config()).unwrap();
    let start = text.find("sql = \"\"\"").unwrap();
    let end = text[start + 9..].find("\"\"\"").unwrap() + start + 12;
    let text = format!("{}sql = \"\"\"{sql}\"\"\"{}", &text[..start], &text[end..]);
    std::fs::write(s.config(), text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_data_and_failing_sql_send_nothing() {
    let emu = Emulator::start(emulator_config()).await.unwrap();
    let s = sync_for(&emu, "email", "upsert", "");
    s.land(&batch(&[row("a@x.se", 1), row("b@x.se", 2)]));
    assert_eq!(run(&s, &[]).await.code, 0);
    s.land(&batch(&[row("a@x.se", 5), row("b@x.se", 0)]));

    // SQL that fails while running, not while planning
    set_sql(&s, "SELECT id, s, b, d, dt, ts, 10 / i AS i, f FROM t");
    assert_refused(&emu, &s, &["running the model", "Divide by zero"]).await;
    set_sql(
        &s,
        "SELECT id, s, b, d, dt, ts, CAST(s AS INT) AS i, f FROM t",
    );
    assert_refused(&emu, &s, &["running the model", "Ada"]).await;
    set_sql(&s, "SELECT id, nope FROM t");
    assert_refused(&emu, &s, &["model", "nope"]).await;
    set_sql(&s, "SELECT * FROM t");

    // a truncated Parquet file
    let path = s.path("data/t.parquet");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_refused(&emu, &s, &["tables.t"]).await;

    // a folder mixing incompatible schemas
    let text = std::fs::read_to_string(s.config()).unwrap();
    std::fs::write(s.config(), text.replace("data/t.parquet", "mixed/")).unwrap();
    write_parquet(&s.path("mixed/a.parquet"), &batch(&[row("a@x.se", 1)]));
    let other = datafusion::arrow::array::RecordBatch::try_from_iter(vec![(
        "id",
        std::sync::Arc::new(datafusion::arrow::array::Int64Array::from(vec![1])) as _,
    )])
    .unwrap();
    write_parquet(&s.path("mixed/b.parquet"), &other);
    let before = emu.requests().total();
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("error:"), "{}", out.stderr);
    assert_eq!(emu.requests().total(), before);
    assert_eq!(by_email(&emu)["a@x.se"]["i"], 1, "Voyado untouched");
    assert_no_violations(&emu);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_models_null_identifiers_and_collapsing_row_counts() {
    let emu = Emulator::start(emulator_config()).await.unwrap();
    let s = sync_for(&emu, "email", "upsert", "");
    // an empty model on a first run: nothing to do
    s.land(&batch(&[row("a@x.se", 1)]));
    set_sql(&s, "SELECT * FROM t WHERE false");
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(emu.requests().total(), 0);

    // an identifier column that is entirely null: every row invalid, nothing sent, warned
    set_sql(
        &s,
        "SELECT CAST(NULL AS VARCHAR) AS id, s, b, d, dt, ts, i, f FROM t",
    );
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    let r = parse(&out);
    assert_eq!(counts(&r), [0, 0, 0, 0, 1]);
    assert_eq!(r["samples"]["invalid"][0]["reason"], "identifier is empty");
    assert_eq!(emu.requests().total(), 0);

    // a model that suddenly returns far fewer rows trips the guard
    set_sql(&s, "SELECT * FROM t");
    let all: Vec<_> = (0..10).map(|i| row(&format!("u{i}@x.se"), i)).collect();
    s.land(&batch(&all));
    assert_eq!(run(&s, &[]).await.code, 0);
    set_sql(&s, "SELECT * FROM t WHERE false");
    let before = emu.requests().total();
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(out.stderr.contains("max_deleted_percent"));
    assert_eq!(emu.requests().total(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_strings_and_unusual_unicode_arrive_exactly() {
    let emu = Emulator::start(emulator_config()).await.unwrap();
    let s = sync_for(&emu, "email", "upsert", "");
    let long = "x".repeat(100_000);
    let values = [
        long.as_str(),
        "e\u{0301}e\u{0301} combining",
        "\u{05E9}\u{05DC}\u{05D5}\u{05DD} right-to-left \u{202E}override",
        "emoji 👩\u{200D}💻 🇸🇪",
        "quotes \" and \\ and \u{0000} nul",
    ];
    let mut data = Vec::new();
    for (k, v) in values.iter().enumerate() {
        let mut r = row(&format!("ünïcødé.{k}@exämple.se"), k as i64);
        r.s = Some(v.to_string());
        data.push(r);
    }
    s.land(&batch(&data));
    let out = run(&s, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(outcomes(&parse(&out)), [5, 0, 0, 0, 0, 0]);
    let contacts = by_email(&emu);
    for (k, v) in values.iter().enumerate() {
        assert_eq!(
            contacts[&format!("ünïcødé.{k}@exämple.se")]["firstName"],
            *v
        );
    }
    assert_no_violations(&emu);
}

#[test]
fn config_values_of_the_wrong_type_are_named() {
    let s = Sync::new();
    s.land(&batch(&[row("a@x.se", 1)]));
    s.write_config(
        "SELECT * FROM t",
        "id",
        "email",
        "upsert",
        &format!("{MAPPING}\n[limits]\nconcurrency = \"eight\"\n"),
    );
    let out = cli(&["plan", "-c", s.config().to_str().unwrap()], &[]);
    assert_eq!(out.code, 2);
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap();
    assert!(
        line.contains("[limits]") && line.contains("invalid type"),
        "{line}"
    );
    // a folder where the config file should be
    let out = cli(&["plan", "-c", s.path("data").to_str().unwrap()], &[]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("cannot read config file"),
        "{}",
        out.stderr
    );
}

#[test]
fn datafusion_options_are_applied_and_unknown_ones_named() {
    let s = Sync::new();
    s.land(&batch(&[row("a@x.se", 1), row("b@x.se", 2)]));
    let write = |options: &str| {
        s.write_config(
            "SELECT * FROM t",
            "id",
            "email",
            "upsert",
            &format!("{MAPPING}\n[datafusion]\n{options}\n"),
        )
    };
    write("\"optimizer.prefer_hash_join\" = false\n\"datafusion.execution.batch_size\" = 1");
    let out = cli(&["plan", "--json", "-c", s.config().to_str().unwrap()], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(counts(&parse(&out)), [2, 0, 0, 0, 0]);
    write(
        "\"optimizer.prefer_hash_joins\" = false\n\"execution.batch_size\" = \"many\"\n\"execution.collect_statistics\" = true",
    );
    let out = cli(&["plan", "-c", s.config().to_str().unwrap()], &[]);
    assert_eq!(out.code, 2);
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("[datafusion]"))
        .collect();
    assert_eq!(errors.len(), 3, "{}", out.stderr);
    assert!(errors[0].contains("execution.batch_size"), "{}", out.stderr);
    // Statistics would bring back the NaN-read-as-constant trap: refused, with the reason.
    assert!(
        errors[1].contains("execution.collect_statistics") && errors[1].contains("NaN"),
        "{}",
        out.stderr
    );
    assert!(
        errors[2].contains("optimizer.prefer_hash_joins"),
        "{}",
        out.stderr
    );
}

#[test]
fn run_without_the_api_key_sends_nothing() {
    let s = Sync::new();
    s.land(&batch(&[row("a@x.se", 1)]));
    s.write_config("SELECT * FROM t", "id", "email", "upsert", MAPPING);
    let out = cli(&["run", "-c", s.config().to_str().unwrap()], &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("VOYADO_SYNC_TEST_KEY") && out.stderr.contains("not set"));
    assert!(manifest(&s).is_none());
}
