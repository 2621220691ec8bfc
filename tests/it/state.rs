//! The state: deltas applied on read, interrupted commits, locks, staging and schema
//! evolution between runs.

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use voyado_sync::{config, pipeline, state::State};

use crate::common::{Sync, cli, counts, json};
use crate::diff::{MAPPING, Row, batch};

use crate::diff::row_i as row;

fn sync_with(extra: &str, sql: &str) -> Sync {
    let s = Sync::new();
    s.write_config(sql, "id", "email", "upsert", extra);
    s
}

fn plan_json(s: &Sync) -> serde_json::Value {
    let out = cli(&["plan", "--json", "-c", s.config().to_str().unwrap()], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    json(&out)
}

fn baseline(s: &Sync) {
    let out = cli(&["baseline", "-c", s.config().to_str().unwrap()], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

async fn collect_strings(ctx: &SessionContext, sql: &str) -> Vec<Vec<Option<String>>> {
    let batches: Vec<RecordBatch> = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let mut rows = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            rows.push(
                b.columns()
                    .iter()
                    .map(|c| {
                        let c = cast(c, &DataType::Utf8).unwrap();
                        let c = c.as_string::<i32>();
                        c.is_valid(r).then(|| c.value(r).to_string())
                    })
                    .collect(),
            );
        }
    }
    rows
}

/// Appends a delta built from `rows` (each with status, contactId and op).
async fn append_delta(s: &Sync, rows: &[(Row, &str, &str, &str)]) {
    let settings = config::load(&s.config()).unwrap();
    let ctx = voyado_sync::catalog::session(&settings).unwrap();
    let state = State::open(&ctx, &settings, true).unwrap();
    let mut m = state.manifest().await.unwrap().expect("a baseline first");
    let data: Vec<Row> = rows.iter().map(|r| r.0.clone()).collect();
    ctx.register_batch("d", batch(&data)).unwrap();
    let meta: Vec<String> = rows
        .iter()
        .map(|(r, status, cid, op)| {
            format!(
                "SELECT '{}' AS k, '{status}' AS st, '{cid}' AS cid, '{op}' AS op",
                r.id.as_deref().unwrap()
            )
        })
        .collect();
    let pairs: Vec<String> = settings
        .attributes
        .iter()
        .map(|a| format!("'{}', d.\"{}\"", a.attribute, a.column))
        .collect();
    let values: Vec<String> = settings
        .attributes
        .iter()
        .map(|a| format!("d.\"{}\" AS \"{}\"", a.column, a.attribute))
        .collect();
    let sql = format!(
        "SELECT d.id AS _identifier, NULLIF(m.cid, '') AS _contact_id, m.st AS _status, \
           voyado_row_hash({}) AS _row_hash, {}, m.op AS _op \
         FROM d JOIN ({}) m ON m.k = d.id",
        pairs.join(", "),
        values.join(", "),
        meta.join(" UNION ALL ")
    );
    let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    state
        .append_delta(&mut m, batches, "test-run")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_are_applied_on_read() {
    let s = sync_with(MAPPING, "SELECT * FROM t");
    s.land(&batch(&[
        row("a@x.se", 1),
        row("b@x.se", 1),
        row("c@x.se", 1),
    ]));
    baseline(&s);
    append_delta(
        &s,
        &[
            (row("a@x.se", 8), "delivered", "c-a", "upsert"),
            (row("b@x.se", 1), "delivered", "", "delete"),
        ],
    )
    .await;
    append_delta(
        &s,
        &[
            (row("a@x.se", 9), "delivered", "c-a2", "upsert"),
            (row("d@x.se", 1), "not_found", "", "upsert"),
        ],
    )
    .await;

    let settings = config::load(&s.config()).unwrap();
    let ctx = voyado_sync::catalog::session(&settings).unwrap();
    let state = State::open(&ctx, &settings, false).unwrap();
    let m = state.manifest().await.unwrap().unwrap();
    assert_eq!(m.deltas.len(), 2);
    let df = state.load(&ctx, &m).await.unwrap();
    ctx.register_table("st", df.into_view()).unwrap();
    let rows = collect_strings(
        &ctx,
        "SELECT _identifier, _contact_id, _status, i FROM st ORDER BY _identifier",
    )
    .await;
    let s3 = |a: &str, b: Option<&str>, c: &str, d: &str| {
        vec![
            Some(a.to_string()),
            b.map(String::from),
            Some(c.to_string()),
            Some(d.to_string()),
        ]
    };
    assert_eq!(
        rows,
        vec![
            s3("a@x.se", Some("c-a2"), "delivered", "9"),
            s3("c@x.se", None, "delivered", "1"),
            s3("d@x.se", None, "not_found", "1"),
        ]
    );

    // The diff runs against the state with its deltas.
    s.land(&batch(&[
        row("a@x.se", 9),
        row("c@x.se", 1),
        row("d@x.se", 1),
        row("e@x.se", 1),
    ]));
    assert_eq!(counts(&plan_json(&s)), [1, 0, 3, 0, 0]);

    // A changed row whose status is not_found is staged as changed, with its status.
    s.land(&batch(&[
        row("a@x.se", 9),
        row("c@x.se", 1),
        row("d@x.se", 2),
    ]));
    let (report, staged, state) = pipeline::stage(&s.config()).await.unwrap();
    assert_eq!(
        [
            report.counts.new,
            report.counts.changed,
            report.counts.unchanged,
            report.counts.deleted
        ],
        [0, 1, 2, 0]
    );
    let ctx = SessionContext::new();
    let df = ctx
        .read_parquet(state.url(&staged.rel), ParquetReadOptions::default())
        .await
        .unwrap();
    ctx.register_table("staged", df.into_view()).unwrap();
    let rows = collect_strings(
        &ctx,
        "SELECT _identifier, _kind, _prev_status, array_to_string(_changed, ',') FROM staged",
    )
    .await;
    assert_eq!(
        rows,
        vec![vec![
            Some("d@x.se".into()),
            Some("changed".into()),
            Some("not_found".into()),
            Some("i".into())
        ]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_records_exactly_the_changed_attributes() {
    let s = sync_with(MAPPING, "SELECT * FROM t");
    let base = vec![
        row("a@x.se", 1),
        row("b@x.se", 1),
        row("c@x.se", 1),
        row("d@x.se", 1),
    ];
    s.land(&batch(&base));
    baseline(&s);
    let mut next = base.clone();
    next[0].b = Some(false); // a boolean alone
    next[1].s = Some("Bea".into());
    next[1].ts = Some(1_700_000_000_000_001); // a string and a timestamp
    next[2].d = None; // a decimal removed upstream
    next.remove(3); // d deleted
    next.push(row("new@x.se", 1));
    next.push(Row {
        id: Some("broken".into()),
        ..row("x", 1)
    });
    s.land(&batch(&next));
    let (report, staged, state) = pipeline::stage(&s.config()).await.unwrap();
    assert_eq!(report.counts.invalid, 1);
    let ctx = SessionContext::new();
    for (name, rel) in [("staged", &staged.rel), ("invalid", &staged.invalid_rel)] {
        let df = ctx
            .read_parquet(state.url(rel), ParquetReadOptions::default())
            .await
            .unwrap();
        ctx.register_table(name, df.into_view()).unwrap();
    }
    let rows = collect_strings(
        &ctx,
        "SELECT _identifier, _kind, array_to_string(_changed, ',') FROM staged ORDER BY _identifier",
    )
    .await;
    let r = |a: &str, k: &str, c: Option<&str>| {
        vec![
            Some(a.to_string()),
            Some(k.to_string()),
            c.map(String::from),
        ]
    };
    assert_eq!(
        rows,
        vec![
            r("a@x.se", "changed", Some("b")),
            r("b@x.se", "changed", Some("firstName,ts")),
            r("c@x.se", "changed", Some("d")),
            r("d@x.se", "deleted", None),
            r("new@x.se", "new", None),
        ]
    );
    let bad = collect_strings(&ctx, "SELECT _raw_identifier, _reason FROM invalid").await;
    assert_eq!(
        bad,
        vec![vec![
            Some("broken".into()),
            Some("email is not shaped local@domain.tld".into())
        ]]
    );
    // staging leaves the snapshot alone
    assert_eq!(counts(&plan_json(&s)), [1, 3, 0, 1, 1]);
}

#[test]
fn an_interrupted_commit_leaves_the_previous_state_readable() {
    let s = sync_with(MAPPING, "SELECT * FROM t");
    s.land(&batch(&[row("a@x.se", 1), row("b@x.se", 1)]));
    baseline(&s);
    let dir = s.state_dir();
    let manifest = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    // A commit that died after writing its files but before the manifest:
    std::fs::write(
        dir.join("snapshots/00000002-crashed.parquet"),
        b"PAR1 half a file",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("deltas")).unwrap();
    std::fs::write(
        dir.join("deltas/00000001-000001-crashed.parquet"),
        b"garbage",
    )
    .unwrap();
    assert_eq!(counts(&plan_json(&s)), [0, 0, 2, 0, 0]);
    assert_eq!(
        std::fs::read_to_string(dir.join("manifest.json")).unwrap(),
        manifest
    );
    // The next commit succeeds and sweeps the leftovers.
    s.land(&batch(&[row("a@x.se", 2)]));
    baseline(&s);
    assert!(!dir.join("snapshots/00000002-crashed.parquet").exists());
    assert!(!dir.join("deltas/00000001-000001-crashed.parquet").exists());
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["generation"], 2);
    assert_eq!(m["snapshot_rows"], 1);
    assert_eq!(counts(&plan_json(&s)), [0, 0, 1, 0, 0]);
}

#[test]
fn a_corrupt_manifest_is_a_storage_error_naming_it() {
    let s = sync_with(MAPPING, "SELECT * FROM t");
    s.land(&batch(&[row("a@x.se", 1)]));
    baseline(&s);
    std::fs::write(s.state_dir().join("manifest.json"), b"{ truncated").unwrap();
    let out = cli(&["plan", "-c", s.config().to_str().unwrap()], &[]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("manifest.json"), "{}", out.stderr);
}

fn write_lock(s: &Sync, pid: u32, host: &str, at: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(s.state_dir()).unwrap();
    std::fs::set_permissions(s.state_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let lock = serde_json::json!({
        "run_id": "other-run", "command": "run", "pid": pid, "host": host, "acquired_at": at
    });
    std::fs::write(s.state_dir().join("lock.json"), lock.to_string()).unwrap();
}

#[test]
fn a_held_lock_refuses_and_a_dead_or_stale_one_is_taken_over() {
    let s = sync_with(MAPPING, "SELECT * FROM t");
    s.land(&batch(&[row("a@x.se", 1)]));
    let cfg = s.config();
    let cfg = cfg.to_str().unwrap();
    let host = voyado_sync::state::lock::hostname();
    let now = chrono::Utc::now().to_rfc3339();

    // held by a live process on this host
    write_lock(&s, std::process::id(), &host, &now);
    let out = cli(&["baseline", "-c", cfg], &[]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("locked by another run"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("other-run"), "{}", out.stderr);
    let out = cli(&["reset", "-c", cfg], &[]);
    assert_eq!(out.code, 4);
    // plan only reads
    assert_eq!(cli(&["plan", "-c", cfg], &[]).code, 0);

    // held by a live process elsewhere, recently
    write_lock(&s, 1, "some-other-host", &now);
    assert_eq!(cli(&["baseline", "-c", cfg], &[]).code, 4);

    // its owner is gone
    write_lock(&s, 999_999_999, &host, &now);
    let out = cli(&["baseline", "-c", cfg], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("taking over a stale lock"),
        "{}",
        out.stderr
    );
    assert!(
        !s.state_dir().join("lock.json").exists(),
        "released after the run"
    );

    // older than lock_stale_secs
    write_lock(&s, 1, "some-other-host", "2020-01-01T00:00:00Z");
    let out = cli(&["baseline", "-c", cfg], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn schema_evolution_between_runs() {
    let s = sync_with(MAPPING, "SELECT * FROM t");
    let rows = vec![row("a@x.se", 1), row("b@x.se", 2), row("c@x.se", 3)];
    s.land(&batch(&rows));
    baseline(&s);

    // A newly mapped column counts only where its new value is non-empty.
    s.write_config(
        "SELECT *, CASE WHEN id = 'a@x.se' THEN 'gold' WHEN id = 'b@x.se' THEN ' ' END AS tier FROM t",
        "id",
        "email",
        "upsert",
        &MAPPING.replace("\"f\"]", "\"f\", \"tier\"]"),
    );
    assert_eq!(counts(&plan_json(&s)), [0, 1, 2, 0, 0]);

    // An unmapped column is ignored.
    s.write_config(
        "SELECT * FROM t",
        "id",
        "email",
        "upsert",
        &MAPPING.replace(", \"i\"", ""),
    );
    assert_eq!(counts(&plan_json(&s)), [0, 0, 3, 0, 0]);

    // Widening within a type class is not a change.
    s.write_config(
        "SELECT id, s, b, d, dt, ts, CAST(i AS INT) AS i, CAST(f AS FLOAT) AS f FROM t",
        "id",
        "email",
        "upsert",
        MAPPING,
    );
    assert_eq!(counts(&plan_json(&s)), [0, 0, 3, 0, 0]);

    // A changed type class counts as changed where the value is non-empty, without failing.
    s.write_config(
        "SELECT id, s, b, d, dt, ts, CASE WHEN i = 1 THEN NULL ELSE CAST(i AS VARCHAR) END AS i, f FROM t",
        "id",
        "email",
        "upsert",
        MAPPING,
    );
    assert_eq!(counts(&plan_json(&s)), [0, 3, 0, 0, 0]);
    // ...and after a baseline with the new types, everything is unchanged again.
    baseline(&s);
    assert_eq!(counts(&plan_json(&s)), [0, 0, 3, 0, 0]);
}

/// Overwrites every stored row hash in the snapshot with zeros.
fn zero_stored_hashes(s: &Sync) {
    use datafusion::arrow::array::{ArrayRef, FixedSizeBinaryArray};
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(s.state_dir().join("manifest.json")).unwrap(),
    )
    .unwrap();
    let path = s.state_dir().join(m["snapshot"][0].as_str().unwrap());
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader
        .map(|b| {
            let b = b.unwrap();
            let i = b.schema().index_of("_row_hash").unwrap();
            let zeros: ArrayRef = std::sync::Arc::new(
                FixedSizeBinaryArray::try_from_iter((0..b.num_rows()).map(|_| [0u8; 16])).unwrap(),
            );
            let mut cols = b.columns().to_vec();
            cols[i] = zeros;
            RecordBatch::try_new(b.schema(), cols).unwrap()
        })
        .collect();
    let mut w = ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        batches[0].schema(),
        None,
    )
    .unwrap();
    for b in &batches {
        w.write(b).unwrap();
    }
    w.close().unwrap();
}

/// Checks a state file keeps its identifiers and row hashes quick to read: identifiers as
/// plain strings in LZ4, row hashes uncompressed, neither with a dictionary, the stored
/// values compressed (ZSTD).
pub(crate) fn assert_quick_to_read(path: &std::path::Path) {
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use datafusion::parquet::basic::{Compression, Encoding};
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let group = reader.metadata().row_group(0);
    let codecs: Vec<(String, Compression, bool)> = group
        .columns()
        .iter()
        .map(|c| {
            let dictionary = c.encodings().any(|e| e == Encoding::RLE_DICTIONARY);
            (c.column_path().string(), c.compression(), dictionary)
        })
        .collect();
    let of = |name: &str| codecs.iter().find(|c| c.0 == name).unwrap().clone();
    assert_eq!(of("_identifier").1, Compression::LZ4_RAW, "{codecs:?}");
    assert_eq!(of("_row_hash").1, Compression::UNCOMPRESSED, "{codecs:?}");
    assert!(!of("_identifier").2 && !of("_row_hash").2, "{codecs:?}");
    assert!(
        matches!(of("_status").1, Compression::ZSTD(_)),
        "{codecs:?}"
    );
    // Read back as plain strings: the next diff holds every identifier.
    let file = std::fs::File::open(path).unwrap();
    let schema = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .schema()
        .clone();
    let id = schema.field_with_name("_identifier").unwrap();
    assert_eq!(id.data_type(), &DataType::Utf8, "{}", path.display());
}

#[test]
fn snapshots_keep_identifiers_and_row_hashes_quick_to_read() {
    let s = sync_with(MAPPING, "SELECT * FROM t");
    s.land(&batch(&[row("a@x.se", 1), row("b@x.se", 2)]));
    baseline(&s);
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(s.state_dir().join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_quick_to_read(&s.state_dir().join(m["snapshot"][0].as_str().unwrap()));
}

#[test]
fn an_older_hash_version_falls_back_to_comparing_values() {
    let s = sync_with(MAPPING, "SELECT * FROM t");
    s.land(&batch(&[row("a@x.se", 1), row("b@x.se", 2)]));
    baseline(&s);
    zero_stored_hashes(&s);
    // Trusted as version 1, the broken hashes make every row look changed...
    assert_eq!(counts(&plan_json(&s)), [0, 2, 0, 0, 0]);
    // ...recorded as another version, the stored values decide, so they are unchanged.
    let path = s.state_dir().join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["hash_version"] = 0.into();
    std::fs::write(&path, m.to_string()).unwrap();
    assert_eq!(counts(&plan_json(&s)), [0, 0, 2, 0, 0]);
    s.land(&batch(&[row("a@x.se", 1), row("b@x.se", 5)]));
    assert_eq!(counts(&plan_json(&s)), [0, 1, 1, 0, 0]);
}

#[test]
fn a_changed_identifier_key_requires_a_reset() {
    let s = sync_with(MAPPING, "SELECT * FROM t");
    s.land(&batch(&[row("a@x.se", 1)]));
    baseline(&s);
    s.write_config("SELECT * FROM t", "id", "externalId", "upsert", MAPPING);
    let out = cli(&["plan", "-c", s.config().to_str().unwrap()], &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("reset"), "{}", out.stderr);
    assert_eq!(
        cli(&["reset", "-c", s.config().to_str().unwrap()], &[]).code,
        0
    );
    assert_eq!(counts(&plan_json(&s)), [1, 0, 0, 0, 0]);
}

#[test]
fn the_state_folder_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let s = sync_with(MAPPING, "SELECT * FROM t");
    s.land(&batch(&[row("a@x.se", 1)]));
    baseline(&s);
    let mode = std::fs::metadata(s.state_dir())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "state folder mode {mode:o}");
}
