//! The exit codes and one-line errors the real binary gives for each kind of failure, per
//! command: a contract for schedulers and scripts that branch on them. Only the binary is
//! used (its CLI, its `emulator` subcommand, stderr, exit codes and the state folder).
//!
//! Codes (README): 0 done, 1 internal, 2 configuration / input / credentials, 3 committed
//! with a warning threshold breached, 4 could not complete (Voyado or storage unreachable,
//! lock held), 5 a guard refused the run.

use std::path::{Path, PathBuf};

use crate::common::{EmulatorProcess, Output, cli, free_port, lock_hostname};

const KEY: &str = "exit-codes-api-key";
const KEY_ENV: &str = "EXIT_CODES_API_KEY";
const WRONG_KEY_ENV: &str = "EXIT_CODES_WRONG_KEY";

/// A valid sync over the golden fixture's day-2 extract (12 rows, one invalid identifier),
/// tolerant of that invalid row, and giving up on Voyado at the first failed attempt.
const CONFIG: &str = r#"name = "codes"

[source]
tables = { customers = "data/customers.parquet" }

[model]
sql = """SELECT email, first_name, tier, points FROM customers"""

[destination]
url = "EMULATOR_URL"
api_key_env = "EXIT_CODES_API_KEY"

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

[limits]
max_retries = 0

[warnings]
max_invalid_percent = 50
"#;

/// One sync folder: the config, the extract, the state.
struct Folder {
    dir: tempfile::TempDir,
}

impl Folder {
    fn new(emulator_url: &str) -> Folder {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let extract =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/data/day2.parquet");
        std::fs::copy(extract, dir.path().join("data/customers.parquet")).unwrap();
        std::fs::write(
            dir.path().join("sync.toml"),
            CONFIG.replace("EMULATOR_URL", emulator_url),
        )
        .unwrap();
        Folder { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn config(&self) -> String {
        self.path("sync.toml").to_str().unwrap().to_string()
    }

    /// Replaces `from` (which must be there) with `to` in the config.
    fn edit(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(self.path("sync.toml")).unwrap();
        assert!(text.contains(from), "the config has no {from:?}");
        std::fs::write(self.path("sync.toml"), text.replacen(from, to, 1)).unwrap();
    }

    fn state(&self) -> PathBuf {
        self.path("state/codes")
    }

    /// Sets the destination URL.
    fn set_url(&self, url: &str) {
        let text = std::fs::read_to_string(self.path("sync.toml")).unwrap();
        let start = text.find("url = \"").unwrap() + "url = \"".len();
        let end = start + text[start..].find('"').unwrap();
        let text = format!("{}{url}{}", &text[..start], &text[end..]);
        std::fs::write(self.path("sync.toml"), text).unwrap();
    }

    /// Runs `voyado-sync -q COMMAND -c sync.toml` with the right API key in `KEY_ENV` and a
    /// wrong one in `WRONG_KEY_ENV`.
    fn bin(&self, command: &str) -> Output {
        cli(
            &["-q", command, "-c", &self.config()],
            &[(KEY_ENV, KEY), (WRONG_KEY_ENV, "not-the-api-key")],
        )
    }
}

type Step = Box<dyn Fn(&Folder)>;

struct Case {
    failure: &'static str,
    /// Breaks the valid sync (or leaves it valid).
    setup: Step,
    /// (command, exit code, what its one `error:` line names; for exit 3, what its
    /// warning names; for exit 0, nothing).
    expect: Vec<(&'static str, i32, &'static str)>,
    /// Checks the folder after the last command.
    after: Step,
}

fn case(
    failure: &'static str,
    setup: impl Fn(&Folder) + 'static,
    expect: &[(&'static str, i32, &'static str)],
) -> Case {
    Case {
        failure,
        setup: Box::new(setup),
        expect: expect.to_vec(),
        after: Box::new(|_| {}),
    }
}

impl Case {
    fn then(mut self, after: impl Fn(&Folder) + 'static) -> Case {
        self.after = Box::new(after);
        self
    }
}

/// The same exit code and error from every command that reads the config and the model.
fn all_three(code: i32, names: &'static str) -> [(&'static str, i32, &'static str); 3] {
    [
        ("check", code, names),
        ("plan", code, names),
        ("run", code, names),
    ]
}

fn manifest(f: &Folder) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(f.state().join("manifest.json")).ok()?;
    Some(serde_json::from_str(&text).unwrap())
}

fn no_manifest(f: &Folder) {
    assert!(manifest(f).is_none(), "nothing may be committed");
}

/// A lock held by a live process of this host: this test's own.
fn hold_lock(f: &Folder) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(f.state()).unwrap();
    for d in [f.path("state"), f.state()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let lock = serde_json::json!({
        "run_id": "other-run", "command": "run", "pid": std::process::id(),
        "host": lock_hostname(), "acquired_at": chrono::Utc::now().to_rfc3339(),
    });
    std::fs::write(f.state().join("lock.json"), lock.to_string()).unwrap();
}

fn baseline(f: &Folder) {
    let out = f.bin("baseline");
    assert_eq!(out.code, 0, "{}", out.stderr);
}

fn cases() -> Vec<Case> {
    let closed_port = free_port();
    vec![
        case("success", |_| {}, &all_three(0, "")).then(|f| {
            let m = manifest(f).expect("committed");
            assert_eq!(m["snapshot_rows"], 11, "{m}");
        }),
        // config
        case(
            "config: unknown key",
            |f| f.edit("mode = \"upsert\"", "mode = \"upsert\"\nmodee = 1"),
            &all_three(2, "unknown field `modee`"),
        ),
        case(
            "config: missing required key",
            |f| f.edit("mode = \"upsert\"\n", ""),
            // The line names the key; the section it names is not [sync] today.
            &all_three(2, "missing field `mode`"),
        ),
        case(
            "config: bad value",
            |f| f.edit("mode = \"upsert\"", "mode = \"sideways\""),
            &all_three(2, "[sync] mode: \"sideways\" is not one of"),
        ),
        case(
            "config: the config file is missing",
            |f| std::fs::remove_file(f.path("sync.toml")).unwrap(),
            &all_three(2, "sync.toml"),
        ),
        // credentials
        case(
            "credentials: the API key variable is not set",
            |f| f.edit(KEY_ENV, "EXIT_CODES_UNSET_KEY"),
            // plan sends nothing and does not need the key
            &[
                (
                    "check",
                    2,
                    "api_key_env: environment variable EXIT_CODES_UNSET_KEY is not set",
                ),
                ("plan", 0, ""),
                (
                    "run",
                    2,
                    "api_key_env: environment variable EXIT_CODES_UNSET_KEY is not set",
                ),
            ],
        )
        .then(no_manifest),
        case(
            "credentials: Voyado rejects the API key",
            |f| f.edit(KEY_ENV, WRONG_KEY_ENV),
            &[
                ("check", 0, ""),
                ("plan", 0, ""),
                ("run", 2, "API key rejected (401)"),
            ],
        )
        .then(no_manifest),
        // SQL
        case(
            "SQL: syntax error",
            |f| f.edit("SELECT email", "SELEC email"),
            &all_three(
                2,
                "[model] sql: SQL error: ParserError(\"Expected: an SQL statement, found: SELEC",
            ),
        ),
        case(
            "SQL: unknown column in the model",
            |f| f.edit("SELECT email, first_name", "SELECT email, nope"),
            &all_three(2, "[model] sql: Schema error: No field named nope"),
        ),
        case(
            "SQL: a value the model cannot compute",
            |f| {
                f.edit(
                    "SELECT email, first_name",
                    "SELECT email, CAST(first_name AS INT) AS first_name",
                )
            },
            // check plans the model but runs nothing
            &[
                ("check", 0, ""),
                ("plan", 2, "Cast error"),
                ("run", 2, "Cast error"),
            ],
        )
        .then(no_manifest),
        // unreadable data
        case(
            "data: a source file that is not Parquet",
            |f| std::fs::write(f.path("data/customers.parquet"), b"not parquet at all").unwrap(),
            &all_three(2, "[source] tables.customers: cannot read "),
        )
        .then(no_manifest),
        case(
            "data: a missing source path",
            |f| f.edit("data/customers.parquet", "data/absent.parquet"),
            &all_three(2, "[source] tables.customers: "),
        )
        .then(|f| {
            let out = f.bin("plan");
            assert!(
                out.stderr.contains("absent.parquet does not exist"),
                "{}",
                out.stderr
            );
        }),
        // storage
        case(
            "storage: the state location is a file",
            |f| {
                std::fs::write(f.path("statefile"), b"in the way").unwrap();
                f.edit("state = \"state\"", "state = \"statefile\"");
            },
            &[
                // The same unusable state is 4 from every command.
                ("check", 4, "state: reading manifest.json"),
                ("plan", 4, "state: reading manifest.json"),
                ("run", 4, "state: cannot create "),
            ],
        ),
        // Voyado
        case(
            "Voyado down: nothing listens on its port",
            move |f| f.set_url(&format!("http://127.0.0.1:{closed_port}")),
            &[
                ("check", 0, ""),
                ("plan", 0, ""),
                ("run", 4, "Voyado cannot be used at http://127.0.0.1:"),
            ],
        )
        .then(no_manifest),
        // lock
        case(
            "lock: held by a live process",
            |f| {
                baseline(f);
                hold_lock(f);
            },
            &[
                ("check", 0, ""),
                ("plan", 0, ""),
                (
                    "run",
                    4,
                    "sync codes is locked by another run (run other-run",
                ),
                (
                    "baseline",
                    4,
                    "sync codes is locked by another run (run other-run",
                ),
                (
                    "reset",
                    4,
                    "sync codes is locked by another run (run other-run",
                ),
                ("history", 0, ""),
            ],
        )
        .then(|f| {
            assert!(
                f.state().join("lock.json").exists(),
                "the lock is not taken"
            )
        }),
        // guards
        case(
            "guard: too many deletions",
            |f| {
                baseline(f);
                f.edit("FROM customers", "FROM customers WHERE email < 'f'");
            },
            &[
                ("check", 0, ""),
                ("plan", 0, ""),
                (
                    "run",
                    5,
                    "guard max_deleted_percent: 7 of 11 snapshot rows would be deleted",
                ),
            ],
        )
        .then(|f| {
            let m = manifest(f).unwrap();
            assert_eq!(m["snapshot_rows"], 11, "the snapshot is kept");
            assert_eq!(m["deltas"], serde_json::json!([]));
        }),
        // warnings
        case(
            "warning: invalid rows above max_invalid_percent",
            |f| f.edit("max_invalid_percent = 50", "max_invalid_percent = 1"),
            &[
                ("check", 0, ""),
                ("plan", 0, ""),
                (
                    "run",
                    3,
                    "1 of 12 model rows are invalid (8.3%, max_invalid_percent = 1)",
                ),
            ],
        )
        .then(|f| {
            let m = manifest(f).expect("a warning commits");
            assert_eq!(m["snapshot_rows"], 11, "{m}");
        }),
    ]
}

#[test]
fn each_failure_gives_its_exit_code_and_names_its_cause() {
    let emu = EmulatorProcess::start(KEY, &["--custom-attributes", "tier,points"]);
    let mut failed = Vec::new();
    for case in cases() {
        let f = Folder::new(&emu.base_url);
        (case.setup)(&f);
        for (command, code, names) in &case.expect {
            let out = f.bin(command);
            let errors: Vec<&str> = out
                .stderr
                .lines()
                .filter(|l| l.starts_with("error: "))
                .collect();
            let problem = if out.code != *code {
                Some(format!("exit {} instead of {code}", out.code))
            } else if out.stderr.contains("panicked") {
                Some("a panic".to_string())
            } else {
                match code {
                    0 => (!errors.is_empty()).then(|| "an error line".to_string()),
                    3 => (!errors.is_empty() || !out.stderr.contains(names))
                        .then(|| format!("no warning naming {names:?}")),
                    _ => (errors.len() != 1 || !errors[0].contains(names))
                        .then(|| format!("not one error line naming {names:?}")),
                }
            };
            if let Some(p) = problem {
                failed.push(format!(
                    "{} / {command}: {p}\n  stderr: {}",
                    case.failure,
                    out.stderr.trim()
                ));
            }
        }
        (case.after)(&f);
    }
    emu.stop();
    assert!(failed.is_empty(), "\n{}", failed.join("\n"));
}
