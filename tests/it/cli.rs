//! The real binary on the bundled sample and on broken configurations.

use std::path::Path;

use crate::common::{Sync, cli, counts, json, with_model_lines};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// The repository's sample (configs, queries, data) in a temporary folder.
fn sample() -> tempfile::TempDir {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&root.join("sample_data"), &dir.path().join("sample_data"));
    copy_dir(&root.join("queries"), &dir.path().join("queries"));
    for f in ["voyado-sync.v1.toml", "voyado-sync.v2.toml"] {
        std::fs::copy(root.join(f), dir.path().join(f)).unwrap();
    }
    dir
}

#[test]
fn sample_check_plan_baseline_plan_reset() {
    let dir = sample();
    let v1 = dir.path().join("voyado-sync.v1.toml");
    let v2 = dir.path().join("voyado-sync.v2.toml");
    let (v1, v2) = (v1.to_str().unwrap(), v2.to_str().unwrap());
    let state = dir.path().join(".voyado-sync");

    let out = cli(
        &["check", "-c", v1],
        &[("VOYADO_API_KEY", "s3cr3t-key-value")],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.starts_with("ok: customer-attributes"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("s3cr3t") && !out.stderr.contains("s3cr3t"));

    // plan writes nothing
    let out = cli(&["plan", "-c", v1, "--json"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = json(&out);
    assert_eq!(counts(&report), [36, 0, 0, 0, 4]);
    assert_eq!(report["sync"], "customer-attributes");
    assert_eq!(report["mode"], "upsert");
    assert!(report["run_id"].as_str().unwrap().len() > 10);
    assert!(report["started_at"].as_str().unwrap().ends_with('Z'));
    let reasons: Vec<&str> = report["samples"]["invalid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reason"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"email is not shaped local@domain.tld"));
    assert!(reasons.contains(&"identifier is empty"));
    assert!(reasons.contains(&"identifier shared by several rows"));
    assert!(!state.exists(), "plan must not create the state");

    let out = cli(&["baseline", "-c", v1, "--json"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(counts(&json(&out)), [36, 0, 0, 0, 4]);

    let out = cli(&["plan", "-c", v1, "--json"], &[]);
    assert_eq!(counts(&json(&out)), [0, 0, 36, 0, 4]);

    // the changed extract lands
    let out = cli(&["plan", "-c", v2, "--json"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(counts(&json(&out)), [5, 7, 26, 3, 3]);

    // human output names every count
    let out = cli(&["plan", "-c", v2], &[]);
    assert!(
        out.stdout.contains("changed             7"),
        "{}",
        out.stdout
    );

    let out = cli(&["reset", "-c", v2], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = cli(&["plan", "-c", v2, "--json"], &[]);
    assert_eq!(counts(&json(&out)), [38, 0, 0, 0, 3]);
}

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let dir = sample();
    let cwd = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("voyado-sync.v1.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_voyado-sync"))
        .args(["plan", "--json", "-c", cfg.to_str().unwrap()])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A valid config over a small table; `edit` rewrites its text to break one thing.
fn broken(edit: impl Fn(String) -> String) -> (Sync, crate::common::Output) {
    let sync = Sync::new();
    sync.land(&crate::diff::batch(&[crate::diff::Row {
        s: Some("Ada".into()),
        ..crate::diff::Row::id("a@x.se")
    }]));
    sync.write_config(
        "SELECT * FROM t",
        "id",
        "email",
        "upsert",
        crate::diff::MAPPING,
    );
    let text = std::fs::read_to_string(sync.config()).unwrap();
    std::fs::write(sync.config(), edit(text)).unwrap();
    let out = cli(
        &["check", "-c", sync.config().to_str().unwrap()],
        &[("VOYADO_SYNC_TEST_KEY", "k")],
    );
    (sync, out)
}

fn assert_error(out: &crate::common::Output, needles: &[&str]) {
    assert_eq!(out.code, 2, "stdout: {} stderr: {}", out.stdout, out.stderr);
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in {}", out.stderr));
    for n in needles {
        assert!(line.contains(n), "{line:?} should name {n:?}");
    }
    assert!(!out.stderr.contains("panicked"));
}

#[test]
fn check_accepts_the_valid_config() {
    let (_s, out) = broken(|t| t);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn check_names_every_problem() {
    type Edit = Box<dyn Fn(String) -> String>;
    let model = |lines: &'static str| -> Edit { Box::new(move |t| with_model_lines(&t, lines)) };
    let cases: Vec<(Edit, Vec<&str>)> = vec![
        (
            Box::new(|t| t.replace("mode = \"upsert\"", "mode = \"upsert\"\nmodee = 1")),
            vec!["[sync]", "modee"],
        ),
        (Box::new(|t| t.replace("name = ", "nam = ")), vec!["nam"]),
        (
            Box::new(|t| t.replace("mode = \"upsert\"", "mode = \"sideways\"")),
            vec!["[sync] mode", "sideways"],
        ),
        (
            Box::new(|t| t.replace("sql = \"\"\"SELECT * FROM t\"\"\"", "query = \"nope.sql\"")),
            vec!["[model] query", "nope.sql"],
        ),
        (
            Box::new(|t| t.replace("SELECT * FROM t", "SELEC * FROM t")),
            vec!["model", "SELEC"],
        ),
        (
            model("partitions = 4\n"),
            vec!["[model] partition_keys", "required"],
        ),
        (model("partitions = 0\n"), vec!["[model] partitions", "0"]),
        (
            model("partitions = 4\npartition_keys = { orders = \"id\" }\n"),
            vec!["[model] partition_keys.orders", "no such table"],
        ),
        (
            model("partitions = 4\npartition_keys = { t = \"customer\" }\n"),
            vec!["[model] partition_keys.t", "no column \"customer\""],
        ),
        (
            model("partitions = 4\npartition_keys = { t = \"f\" }\n"),
            vec!["[model] partition_keys.t", "Float64"],
        ),
        (
            Box::new(|t| {
                with_model_lines(
                    &t,
                    "partitions = 4\npartition_keys = { t = \"i\", u = \"s\" }\n",
                )
                .replace(
                    "tables = { t = \"data/t.parquet\" }",
                    "tables = { t = \"data/t.parquet\", u = \"data/t.parquet\" }",
                )
            }),
            vec![
                "[model] partition_keys",
                "t.i is integer or date",
                "u.s is string",
            ],
        ),
        (
            Box::new(|t| t.replace("SELECT * FROM t", "SELECT * FROM missing_table")),
            vec!["model", "missing_table"],
        ),
        (
            Box::new(|t| t.replace("SELECT * FROM t", "CREATE TABLE x AS SELECT 1")),
            vec!["model"],
        ),
        (
            Box::new(|t| t.replace("column = \"id\"", "column = \"nope\"")),
            vec!["[identifier] column", "nope"],
        ),
        (
            Box::new(|t| {
                t.replace(
                    "s = \"firstName\"",
                    "s = \"firstName\"\nmissing_col = \"lastName\"",
                )
            }),
            vec!["[fields]", "missing_col"],
        ),
        (
            Box::new(|t| {
                t.replace(
                    "SELECT * FROM t",
                    "SELECT *, make_array(1, 2) AS tags FROM t",
                )
                .replace("s = \"firstName\"", "s = \"firstName\"\ntags = \"city\"")
            }),
            vec!["[fields]", "tags", "List"],
        ),
        (
            Box::new(|t| {
                t.replace(
                    "SELECT * FROM t",
                    "SELECT *, named_struct('a', 1) AS st FROM t",
                )
                .replace("s = \"firstName\"", "s = \"firstName\"\nst = \"city\"")
            }),
            vec!["st", "Struct"],
        ),
        (
            Box::new(|t| {
                t.replace(
                    "SELECT * FROM t",
                    "SELECT *, CAST('x' AS BYTEA) AS bin FROM t",
                )
                .replace("s = \"firstName\"", "s = \"firstName\"\nbin = \"city\"")
            }),
            vec!["bin", "Binary"],
        ),
        (
            Box::new(|t| t.replace("dt = \"birthDay\"", "dt = \"firstName\"")),
            vec!["dt", "s", "firstName"],
        ),
        (
            Box::new(|t| t.replace("columns = [\"b\"", "columns = [\"s\", \"b\"")),
            vec!["column s is mapped twice"],
        ),
        (
            Box::new(|t| t.replace("s = \"firstName\"", "s = \"firstName\"\nid = \"city\"")),
            vec!["[fields] id", "identifier column"],
        ),
        (
            Box::new(|t| t.replace("key = \"email\"", "key = \"contactId\"")),
            vec!["[identifier] key", "contactId", "upsert"],
        ),
        (
            Box::new(|t| t.replace("key = \"email\"", "key = \"memberNumber\"")),
            vec!["[identifier] key", "memberNumber", "upsert"],
        ),
        (
            Box::new(|t| t.replace("key = \"email\"", "key = \"phone\"")),
            vec!["[identifier] key", "phone"],
        ),
        (
            Box::new(|t| t.replace("http://127.0.0.1:9", "http://acme.voyado.com")),
            vec!["[destination] url", "https"],
        ),
        (
            Box::new(|t| t.replace("http://127.0.0.1:9", "ftp://acme.voyado.com")),
            vec!["[destination] url", "ftp"],
        ),
        (
            Box::new(|t| t.replace("VOYADO_SYNC_TEST_KEY", "VOYADO_SYNC_UNSET_KEY")),
            vec!["api_key_env", "VOYADO_SYNC_UNSET_KEY", "not set"],
        ),
        (
            Box::new(|t| {
                t.replace(
                    "api_key_env = \"VOYADO_SYNC_TEST_KEY\"",
                    "api_key_file = \"key.txt\"",
                )
            }),
            vec!["api_key_file", "key.txt"],
        ),
        (
            Box::new(|t| t.replace("data/t.parquet", "data/absent.parquet")),
            vec!["[source] tables.t", "absent.parquet", "does not exist"],
        ),
        (
            Box::new(|t| t.replace("data/t.parquet", "ftp://bucket/x.parquet")),
            vec!["[source] tables.t", "ftp"],
        ),
        (
            Box::new(|t| t.replace("[custom_attributes]", "[custom_attributes]\nextra = 1")),
            vec!["[custom_attributes]", "extra"],
        ),
        (
            Box::new(|t| t.replace("s = \"firstName\"", "s = \"age\"")),
            vec!["[fields] s", "age", "managed by Voyado"],
        ),
        (
            Box::new(|t| t.replace("[sync]", "[limits]\nconcurrency = 0\n\n[sync]")),
            vec!["[limits] concurrency"],
        ),
    ];
    for (edit, needles) in cases {
        let (_sync, out) = broken(edit);
        assert_error(&out, &needles);
    }
}

#[test]
fn an_unreadable_parquet_file_is_named() {
    let (sync, _) = broken(|t| t);
    std::fs::write(sync.path("data/t.parquet"), b"not parquet at all").unwrap();
    let out = cli(&["plan", "-c", sync.config().to_str().unwrap()], &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("tables.t"), "{}", out.stderr);
}

#[test]
fn check_notes_custom_keys_and_unknown_attributes() {
    let (_s, out) = broken(|t| {
        t.replace("key = \"email\"", "key = \"externalId\"")
            .replace("s = \"firstName\"", "s = \"fristName\"")
    });
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("customKey"), "{}", out.stderr);
    assert!(out.stderr.contains("fristName"), "{}", out.stderr);
}

#[test]
fn a_missing_config_file_is_exit_2() {
    let out = cli(&["plan", "-c", "/nonexistent/sync.toml"], &[]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("/nonexistent/sync.toml"));
}

/// `[engine]` problems are config errors (exit 2), one line each; a build without the
/// `ballista` feature names the feature.
#[test]
fn engine_config_errors() {
    let s = Sync::new();
    let cfg = s.config();
    let cfg = cfg.to_str().unwrap();
    let with_engine = |engine: &str| {
        let extra = format!("{}\n{engine}", crate::diff::MAPPING);
        s.write_config("SELECT * FROM t", "id", "email", "upsert", &extra);
    };
    let key = [("VOYADO_SYNC_TEST_KEY", "k")];

    with_engine("[engine]\nkind = \"ballista\"\nurl = \"df://127.0.0.1:50050\"\n");
    if !cfg!(feature = "ballista") {
        for command in ["check", "run"] {
            let out = cli(&[command, "-c", cfg], &key);
            assert_eq!(out.code, 2, "{}", out.stderr);
            let lines: Vec<&str> = out.stderr.trim().lines().collect();
            assert_eq!(lines.len(), 1, "{}", out.stderr);
            assert!(
                lines[0].contains("[engine] kind = \"ballista\"")
                    && lines[0].contains("`ballista` feature"),
                "{}",
                out.stderr
            );
        }
    }

    with_engine("[engine]\nkind = \"spark\"\n");
    let out = cli(&["check", "-c", cfg], &key);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("[engine] kind: \"spark\" is not"),
        "{}",
        out.stderr
    );

    with_engine("[engine]\nkind = \"ballista\"\nurl = \"http://127.0.0.1:50050\"\n");
    let out = cli(&["check", "-c", cfg], &key);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("[engine] url: \"http://127.0.0.1:50050\" is not"),
        "{}",
        out.stderr
    );

    with_engine("[engine]\nkind = \"ballista\"\n");
    let out = cli(&["check", "-c", cfg], &key);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("[engine] url: required"),
        "{}",
        out.stderr
    );
}
