//! Change detection against a plain reference model, over every supported type.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::array::*;
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use proptest::prelude::*;
use voyado_sync::pipeline;

use crate::common::Sync;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub id: Option<String>,
    pub s: Option<String>,
    pub b: Option<bool>,
    pub d: Option<i128>,
    pub dt: Option<i32>,
    pub ts: Option<i64>,
    pub i: Option<i64>,
    pub f: Option<f64>,
}

impl Row {
    /// A row with only its identifier set.
    pub(crate) fn id(id: &str) -> Row {
        Row {
            id: Some(id.to_string()),
            s: None,
            b: None,
            d: None,
            dt: None,
            ts: None,
            i: None,
            f: None,
        }
    }
}

pub(crate) fn batch(rows: &[Row]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, true),
        Field::new("s", DataType::Utf8, true),
        Field::new("b", DataType::Boolean, true),
        Field::new("d", DataType::Decimal128(10, 2), true),
        Field::new("dt", DataType::Date32, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("i", DataType::Int64, true),
        Field::new("f", DataType::Float64, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.id.clone()))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.s.clone()))),
        Arc::new(BooleanArray::from_iter(rows.iter().map(|r| r.b))),
        Arc::new(
            Decimal128Array::from_iter(rows.iter().map(|r| r.d))
                .with_precision_and_scale(10, 2)
                .unwrap(),
        ),
        Arc::new(Date32Array::from_iter(rows.iter().map(|r| r.dt))),
        Arc::new(
            TimestampMicrosecondArray::from_iter(rows.iter().map(|r| r.ts)).with_timezone("UTC"),
        ),
        Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.i))),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.f))),
    ];
    RecordBatch::try_new(schema, cols).unwrap()
}

pub(crate) const MAPPING: &str = r#"
[fields]
s = "firstName"
dt = "birthDay"

[custom_attributes]
columns = ["b", "d", "ts", "i", "f"]
"#;

/// The reference: what a careful person would compute by hand.
fn norm_id(id: &Option<String>) -> Option<String> {
    id.as_ref().map(|s| s.trim().to_lowercase())
}

fn valid_shape(id: &str) -> bool {
    let parts: Vec<&str> = id.split('@').collect();
    parts.len() == 2
        && !parts[0].is_empty()
        && !id.contains(char::is_whitespace)
        && parts[1].contains('.')
        && !parts[1].starts_with('.')
        && !parts[1].ends_with('.')
        && !parts[1].contains("..")
}

type Values = (
    Option<String>,
    Option<bool>,
    Option<i128>,
    Option<i32>,
    Option<i64>,
    Option<i64>,
    Option<u64>,
);

fn values(r: &Row) -> Values {
    (
        r.s.clone().filter(|s| !s.trim().is_empty()),
        r.b,
        r.d,
        r.dt,
        r.ts,
        r.i,
        r.f.filter(|f| f.is_finite())
            .map(|f| if f == 0.0 { 0f64 } else { f }.to_bits()),
    )
}

/// (valid rows by normalised id, number of invalid rows, every normalised id present).
fn valid_rows(rows: &[Row]) -> (BTreeMap<String, Values>, u64, BTreeSet<String>) {
    let mut by_id: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    let mut invalid = 0;
    let mut present = BTreeSet::new();
    for r in rows {
        match norm_id(&r.id) {
            Some(id) if !id.is_empty() && valid_shape(&id) => {
                present.insert(id.clone());
                by_id.entry(id).or_default().push(r)
            }
            Some(id) => {
                present.insert(id);
                invalid += 1
            }
            None => invalid += 1,
        }
    }
    let mut valid = BTreeMap::new();
    for (id, rs) in by_id {
        if rs.len() > 1 {
            invalid += rs.len() as u64;
        } else {
            valid.insert(id, values(rs[0]));
        }
    }
    (valid, invalid, present)
}

pub(crate) fn expected(old: &[Row], new: &[Row]) -> [u64; 5] {
    let (snap, _, _) = valid_rows(old);
    let (cur, invalid, present) = valid_rows(new);
    let (mut n, mut c, mut u) = (0, 0, 0);
    for (id, v) in &cur {
        match snap.get(id) {
            None => n += 1,
            Some(old) if old == v => u += 1,
            Some(_) => c += 1,
        }
    }
    let d = snap.keys().filter(|id| !present.contains(*id)).count() as u64;
    [n, c, u, d, invalid]
}

fn counts(r: &voyado_sync::report::Report) -> [u64; 5] {
    let c = r.counts;
    [c.new, c.changed, c.unchanged, c.deleted, c.invalid]
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn id_strategy() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        8 => (0u8..10).prop_map(|i| Some(format!("user{i}@example.com"))),
        2 => (0u8..10).prop_map(|i| Some(format!("  USER{i}@Example.com "))),
        1 => Just(Some("not-an-email".to_string())),
        1 => Just(Some(String::new())),
        1 => Just(None),
    ]
}

fn row_strategy() -> impl Strategy<Value = Row> {
    (
        id_strategy(),
        prop_oneof![
            Just(None),
            Just(Some(String::new())),
            Just(Some("  ".to_string())),
            Just(Some("Ada".to_string())),
            Just(Some("Åsa".to_string()))
        ],
        proptest::option::of(any::<bool>()),
        proptest::option::of(prop_oneof![
            Just(0i128),
            Just(1250),
            Just(-1),
            Just(99_999_999)
        ]),
        proptest::option::of(prop_oneof![Just(0i32), Just(19000), Just(-365)]),
        proptest::option::of(prop_oneof![
            Just(0i64),
            Just(1_700_000_000_000_001),
            Just(-5)
        ]),
        proptest::option::of(prop_oneof![Just(0i64), Just(42), Just(i64::MIN)]),
        proptest::option::of(prop_oneof![
            Just(0.0f64),
            Just(-0.0),
            Just(1.5),
            Just(f64::NAN),
            Just(f64::INFINITY)
        ]),
    )
        .prop_map(|(id, s, b, d, dt, ts, i, f)| Row {
            id,
            s,
            b,
            d,
            dt,
            ts,
            i,
            f,
        })
}

/// Baselines `old`, then plans `new`; returns the plan's counts. `partitions` > 1 splits the
/// diff into identifier buckets; `slices` > 1 also runs the model in slices of `t` by `i`.
fn diff(old: &[Row], new: &[Row], partitions: u32) -> [u64; 5] {
    diff_sliced(old, new, partitions, 1)
}

/// `[model]` lines running the model in `slices` slices of `t` by `key`.
fn sliced_by(slices: u32, key: &str) -> String {
    format!("partitions = {slices}\npartition_keys = {{ t = \"{key}\" }}\n")
}

/// The model `SELECT * FROM t` with the test mapping, its diff in `partitions` buckets.
fn write_bucketed(sync: &Sync, partitions: u32) {
    sync.write_config(
        "SELECT * FROM t",
        "id",
        "email",
        "upsert",
        &format!("{MAPPING}\n[limits]\ndiff_partitions = {partitions}\n"),
    );
}

fn diff_sliced(old: &[Row], new: &[Row], partitions: u32, slices: u32) -> [u64; 5] {
    let sync = Sync::new();
    write_bucketed(&sync, partitions);
    if slices > 1 {
        sync.add_model_lines(&sliced_by(slices, "i"));
    }
    let cfg = sync.config();
    rt().block_on(async {
        if !old.is_empty() {
            sync.land(&batch(old));
            pipeline::baseline(&cfg).await.unwrap();
        }
        sync.land(&batch(new));
        counts(&pipeline::plan(&cfg).await.unwrap())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn diff_matches_the_reference(
        old in proptest::collection::vec(row_strategy(), 1..14),
        new in proptest::collection::vec(row_strategy(), 1..14),
        (partitions, slices) in prop_oneof![
            Just((1u32, 1u32)),
            Just((3, 1)),
            Just((0, 4)),
            Just((1, 3))
        ],
    ) {
        let got = diff_sliced(&old, &new, partitions, slices);
        let want = expected(&old, &new);
        prop_assert_eq!(got, want);
        // counts add up on both sides
        prop_assert_eq!(got[0] + got[1] + got[2] + got[4], new.len() as u64);
    }

    #[test]
    fn diff_of_a_table_with_itself_is_all_unchanged(
        rows in proptest::collection::vec(row_strategy(), 1..14),
    ) {
        let got = diff(&rows, &rows, 1);
        let (valid, invalid, _) = valid_rows(&rows);
        prop_assert_eq!(got, [0, 0, valid.len() as u64, 0, invalid]);
    }

    #[test]
    fn diff_from_nothing_is_all_new_and_order_does_not_matter(
        rows in proptest::collection::vec(row_strategy(), 1..14),
        seed in any::<u64>(),
    ) {
        let (valid, invalid, _) = valid_rows(&rows);
        prop_assert_eq!(diff(&[], &rows, 1), [valid.len() as u64, 0, 0, 0, invalid]);
        // a permutation of both inputs gives the same answer
        let mut old = rows.clone();
        let mut new: Vec<Row> = rows.iter().rev().cloned().collect();
        if let Some(r) = new.first_mut() { r.b = r.b.map(|b| !b).or(Some(true)); }
        let want = diff(&old, &new, 1);
        let k = (seed as usize) % old.len();
        old.rotate_left(k);
        let n = new.len().max(1);
        new.rotate_right(k % n);
        prop_assert_eq!(diff(&old, &new, 1), want);
    }
}

/// A row with every column set (`i` chosen by the caller).
pub(crate) fn row_i(id: &str, i: i64) -> Row {
    Row {
        id: Some(id.to_string()),
        s: Some("Ada".into()),
        b: Some(true),
        d: Some(1250),
        dt: Some(19000),
        ts: Some(1_700_000_000_000_000),
        i: Some(i),
        f: Some(1.5),
    }
}

fn row(id: &str) -> Row {
    row_i(id, 7)
}

#[test]
fn a_boolean_change_alone_is_detected() {
    // Guards against DataFusion 55 misparsing chained IS DISTINCT FROM with booleans.
    let old = vec![row("a@x.se"), row("b@x.se")];
    let mut new = old.clone();
    new[0].b = Some(false);
    assert_eq!(diff(&old, &new, 1), [0, 1, 1, 0, 0]);
    new[1].b = None;
    assert_eq!(diff(&old, &new, 1), [0, 2, 0, 0, 0]);
}

#[test]
fn empty_values_are_equivalent_to_null() {
    let mut old = vec![row("a@x.se")];
    old[0].s = None;
    let mut new = old.clone();
    new[0].s = Some("  ".into());
    new[0].f = None;
    old[0].f = Some(f64::NAN);
    assert_eq!(diff(&old, &new, 1), [0, 0, 1, 0, 0]);
}

#[test]
fn large_state_is_split_into_buckets_with_the_same_answer() {
    let old: Vec<Row> = (0..200).map(|i| row(&format!("u{i}@x.se"))).collect();
    let mut new = old.clone();
    new.truncate(180);
    for r in new.iter_mut().take(30) {
        r.i = Some(8);
    }
    new.push(row("fresh@x.se"));
    let want = [1, 30, 150, 20, 0];
    assert_eq!(diff(&old, &new, 1), want);
    assert_eq!(diff(&old, &new, 7), want);
}

#[test]
fn nan_among_equal_values_is_read_as_nan() {
    // Parquet min/max statistics leave NaN out; a reader trusting them as "constant column"
    // would turn this NaN into 1.5 and send it.
    let old = vec![row("a@x.se"), row("b@x.se")];
    let mut new = old.clone();
    new[1].f = Some(f64::NAN);
    assert_eq!(diff(&old, &new, 1), [0, 1, 1, 0, 0]);
}

/// A model that joins a table to an aggregate of itself plans the same in slices keyed by
/// the join key as whole: the slices' files carry every row of a key to one slice, and the
/// diff's buckets see every slice's rows.
#[test]
fn a_sliced_join_model_plans_like_the_whole_model() {
    let row = |k: usize, s: &str| Row {
        id: Some(match k % 50 {
            7 => format!("broken-{k}"),
            _ => format!("user{}@example.com", k % 180),
        }),
        s: Some(s.to_string()),
        b: Some(k.is_multiple_of(2)),
        d: Some(k as i128 * 25),
        dt: Some(k as i32),
        ts: None,
        i: None,
        f: Some(k as f64 / 4.0),
    };
    let old: Vec<Row> = (0..200).map(|k| row(k, "a")).collect();
    let new: Vec<Row> = (70..230)
        .chain([75, 76])
        .map(|k| row(k, if k.is_multiple_of(9) { "b" } else { "a" }))
        .collect();
    let model = "SELECT t.id, t.s, t.b, t.d, t.dt, t.ts, g.n AS i, t.f FROM t \
                 LEFT JOIN (SELECT id, count(*) AS n FROM t GROUP BY id) g ON t.id = g.id";
    let plan = |slices: u32| {
        let sync = Sync::new();
        sync.write_config(model, "id", "email", "upsert", MAPPING);
        if slices > 1 {
            sync.add_model_lines(&sliced_by(slices, "id"));
        }
        let cfg = sync.config();
        rt().block_on(async {
            sync.land(&batch(&old));
            pipeline::baseline(&cfg).await.unwrap();
            sync.land(&batch(&new));
            counts(&pipeline::plan(&cfg).await.unwrap())
        })
    };
    let whole = plan(1);
    // 50..69 are gone, 75 and 76 appear twice, every 50th row is malformed and every 9th
    // row's s changed: all kinds occur.
    assert!(whole.iter().all(|&c| c > 0), "{whole:?}");
    assert_eq!(plan(5), whole);
}

/// A keyed table is split into slices with only the columns the model reads, its filters'
/// and its slice key included; a model whose SQL names more than it reads (a CTE's unused
/// column) keeps every column, and every model still plans on its slices.
#[test]
fn a_sliced_model_splits_only_the_columns_it_reads() {
    use crate::common::{cli, counts, json};
    let split = |model: &str, key: &str| {
        let sync = Sync::new();
        let attrs = "[custom_attributes]\ncolumns = [\"s\"]\n";
        sync.write_config(model, "id", "email", "upsert", attrs);
        sync.add_model_lines(&sliced_by(3, key));
        sync.land(&batch(&[row("a@x.se"), row("b@x.se"), row_i("c@x.se", -1)]));
        let config = sync.config();
        let out = cli(
            &["-vv", "plan", "--json", "-c", config.to_str().unwrap()],
            &[],
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        let at = out.stderr.find("columns=\"").expect("the split is logged") + 9;
        let columns = out.stderr[at..].split('"').next().unwrap().to_string();
        (columns, counts(&json(&out)))
    };
    assert_eq!(
        split("SELECT id, s FROM t", "id"),
        ("id,s".into(), [3, 0, 0, 0, 0])
    );
    // The key is split with the rows, read or not; a filter's column is read.
    assert_eq!(split("SELECT id, s FROM t", "i").0, "id,s,i");
    assert_eq!(
        split("SELECT id, s FROM t WHERE i > 0", "id"),
        ("id,s,i".into(), [2, 0, 0, 0, 0])
    );
    // The optimizer drops `b`, which the SQL still names: every column is kept.
    assert_eq!(
        split(
            "WITH x AS (SELECT id, s, b FROM t) SELECT id, s FROM x",
            "id"
        ),
        ("id,s,b,d,dt,ts,i,f".into(), [3, 0, 0, 0, 0])
    );
}

/// A model that fails in its slices leaves the session's source tables as they were: the
/// slices' views over temporary files are not left registered under the tables' names.
#[test]
fn a_failed_sliced_plan_restores_the_source_tables() {
    let sync = Sync::new();
    sync.write_config("SELECT * FROM t", "id", "email", "upsert", MAPPING);
    sync.add_model_lines(&sliced_by(3, "id"));
    let rows: Vec<Row> = (0..40)
        .map(|k| Row::id(&format!("user{k}@example.com")))
        .collect();
    sync.land(&batch(&rows));
    let mut settings = voyado_sync::config::load(&sync.config()).unwrap();
    rt().block_on(async {
        let ctx = voyado_sync::catalog::session(&settings).unwrap();
        voyado_sync::catalog::register_sources(&ctx, &settings)
            .await
            .unwrap();
        settings.model_sql = "SELECT * FROM t WHERE no_such_column = 1".into();
        assert!(voyado_sync::model::slices(&ctx, &settings).await.is_err());
        let whole = ctx.table("t").await.unwrap().count().await.unwrap();
        assert_eq!(whole, 40);
    });
}

/// A first `baseline` has no snapshot to size its buckets by: a model whose rows would not
/// fit the memory limit in one bucket is bucketed from its sources' size instead of failing
/// "Resources exhausted".
#[test]
fn a_first_baseline_too_large_for_one_bucket_is_bucketed_by_its_sources() {
    use crate::common::{cli, counts, json};
    let rows = 200_000;
    // Values that do not compress: the sources' size then tells the rows' size.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let ids: Vec<String> = (0..rows).map(|i| format!("u{i}@x.se")).collect();
    let values: Vec<String> = (0..rows)
        .map(|_| (0..16).map(|_| format!("{:016x}", next())).collect())
        .collect();
    let batch = RecordBatch::try_from_iter([
        ("id", Arc::new(StringArray::from(ids)) as ArrayRef),
        ("s", Arc::new(StringArray::from(values)) as ArrayRef),
    ])
    .unwrap();
    let sync = Sync::new();
    sync.land(&batch);
    sync.write_config(
        "SELECT id, s FROM t",
        "id",
        "email",
        "upsert",
        "[custom_attributes]\ncolumns = [\"s\"]\n[limits]\nmemory_limit_mb = 64\n",
    );
    let config = sync.config();
    let config = config.to_str().unwrap();
    let out = cli(&["baseline", "--json", "-c", config], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(counts(&json(&out)), [rows, 0, 0, 0, 0]);
    // The snapshot holds every row: the next plan finds them all unchanged, in buckets
    // each small enough for the classification (none falls back to the SQL join).
    let out = cli(&["-vv", "plan", "--json", "-c", config], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(counts(&json(&out)), [0, 0, rows, 0, 0]);
    assert!(out.stderr.contains("state routed to buckets"));
    assert!(
        !out.stderr.contains("streaming SQL join"),
        "a bucket fell back to the SQL join"
    );
    // Each bucket's classification fits half the pool: two run at once.
    assert!(out.stderr.contains("at_once=2"), "{}", out.stderr);
    // Two buckets, each too large to hold (100 K identifiers at 320 bytes and their files
    // against half of 64 MB), are classified by the SQL join, which streams the model's
    // rows through the narrow bucket files: same counts.
    sync.write_config(
        "SELECT id, s FROM t",
        "id",
        "email",
        "upsert",
        "[custom_attributes]\ncolumns = [\"s\"]\n[limits]\nmemory_limit_mb = 64\ndiff_partitions = 2\n",
    );
    let out = cli(&["-vv", "plan", "--json", "-c", config], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("streaming SQL join"));
    // A hash join's table is not bounded by half the pool: one bucket at a time.
    assert!(out.stderr.contains("at_once=1"), "{}", out.stderr);
    assert_eq!(counts(&json(&out)), [0, 0, rows, 0, 0]);
}

/// A plan in buckets reports what the same plan in one piece reports, samples included:
/// its bucket files leave out raw identifiers equal to their normalised ones, and a
/// duplicate's sample must still name it.
#[test]
fn a_bucketed_plan_reports_the_samples_of_one_in_one_piece() {
    use crate::common::{cli, json};
    let sync = Sync::new();
    let old = [row("gone@x.se"), row("kept@x.se"), row("dup@x.se")];
    let mut changed = row("kept@x.se");
    changed.i = Some(8);
    let new = [
        changed,
        row("dup@x.se"),
        row("dup@x.se"),
        row(" Twice@X.se"),
        row("twice@x.se"),
        row(""),
        row("fresh@x.se"),
    ];
    let report = |partitions: u32| {
        write_bucketed(&sync, partitions);
        let config = sync.config();
        let config = config.to_str().unwrap();
        sync.land(&batch(&old));
        let out = cli(&["baseline", "-c", config], &[]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        sync.land(&batch(&new));
        let out = cli(&["plan", "--json", "-c", config], &[]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let r = json(&out);
        // Five invalid rows, all sampled: in buckets they come in another order.
        let samples: BTreeMap<String, Vec<String>> = r["samples"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(kind, s)| {
                let mut s: Vec<String> = s
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_string())
                    .collect();
                s.sort();
                (kind.clone(), s)
            })
            .collect();
        let out = cli(&["reset", "-c", config], &[]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        (r["counts"].clone(), samples)
    };
    let whole = report(1);
    assert_eq!(whole, report(3));
    let invalid = &whole.1["invalid"];
    assert!(
        invalid.iter().any(|s| s.contains("\"dup@x.se\"")),
        "{invalid:?}"
    );
    assert!(
        invalid.iter().any(|s| s.contains("\"twice@x.se\"")),
        "{invalid:?}"
    );
    assert!(
        invalid.iter().any(|s| s.contains("\" Twice@X.se\"")),
        "{invalid:?}"
    );
}

/// A model run in one piece has its partitions sized to its sources (logged at debug
/// level); a bucketed run keeps one per core and does not list its sources for it.
#[test]
fn partitions_are_sized_only_for_a_model_run_in_one_piece() {
    use crate::common::cli;
    let sync = Sync::new();
    sync.land(&batch(&[row("a@x.se"), row("b@x.se")]));
    let sized = |extra: &str| {
        sync.write_config("SELECT * FROM t", "id", "email", "upsert", extra);
        let out = cli(&["-vv", "plan", "-c", sync.config().to_str().unwrap()], &[]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.stderr.contains("partitions sized to the sources")
    };
    assert!(sized(MAPPING));
    assert!(!sized(&format!(
        "{MAPPING}\n[limits]\ndiff_partitions = 3\n"
    )));
}
