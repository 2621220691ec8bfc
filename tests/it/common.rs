//! Shared fixtures: Parquet files, sync folders with a config, and the real binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use datafusion::arrow::array::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;

pub(crate) fn write_parquet(path: &Path, batch: &RecordBatch) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// A sync in a temporary folder: `data/t.parquet` as table `t`, a config, a state folder.
pub(crate) struct Sync {
    pub dir: tempfile::TempDir,
}

impl Sync {
    pub(crate) fn new() -> Sync {
        Sync {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub(crate) fn config(&self) -> PathBuf {
        self.path("sync.toml")
    }

    /// Replaces the extract of table `t`.
    pub(crate) fn land(&self, batch: &RecordBatch) {
        write_parquet(&self.path("data/t.parquet"), batch);
    }

    /// Writes a config whose model is `sql` over table `t`, with `extra` TOML appended
    /// (mappings and overrides).
    pub(crate) fn write_config(&self, sql: &str, id_col: &str, key: &str, mode: &str, extra: &str) {
        let text = format!(
            r#"name = "test-sync"

[source]
tables = {{ t = "data/t.parquet" }}

[model]
sql = """{sql}"""

[destination]
url = "http://127.0.0.1:9"
api_key_env = "VOYADO_SYNC_TEST_KEY"

[identifier]
column = "{id_col}"
key = "{key}"

[sync]
mode = "{mode}"
state = "state"

{extra}
"#
        );
        std::fs::write(self.config(), text).unwrap();
    }

    /// Adds `lines` (`key = value`, newline-terminated) to the written config's `[model]`.
    pub(crate) fn add_model_lines(&self, lines: &str) {
        let text = std::fs::read_to_string(self.config()).unwrap();
        std::fs::write(self.config(), with_model_lines(&text, lines)).unwrap();
    }

    pub(crate) fn state_dir(&self) -> PathBuf {
        self.path("state/test-sync")
    }
}

/// `config` with `lines` added to its `[model]` table.
pub(crate) fn with_model_lines(config: &str, lines: &str) -> String {
    config.replacen("[model]\n", &format!("[model]\n{lines}"), 1)
}

pub(crate) struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the real binary.
pub(crate) fn cli(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_voyado-sync"));
    cmd.args(args)
        .env_remove("VOYADO_SYNC_CONFIG")
        .env("NO_COLOR", "1");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub(crate) fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {}", out.stdout))
}

pub(crate) fn counts(v: &serde_json::Value) -> [u64; 5] {
    let c = &v["counts"];
    ["new", "changed", "unchanged", "deleted", "invalid"].map(|k| c[k].as_u64().unwrap())
}

/// Runs the real binary off the async runtime, so in-process servers (the emulator, scripted
/// servers) keep answering while it works.
pub(crate) async fn cli_async(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let envs: Vec<(String, String)> = envs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        cli(&args, &envs)
    })
    .await
    .unwrap()
}

/// Starts `voyado-sync -q run -c CONFIG` in the background (to be killed or waited for).
pub(crate) fn spawn_run(config: &Path, envs: &[(&str, &str)]) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_voyado-sync"));
    cmd.args(["-q", "run", "-c", config.to_str().unwrap()]);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// A free loopback port for a server a test starts.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (up to 30 s) until something listens on the loopback port.
pub(crate) async fn wait_for_port(port: u16) {
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("nothing listens on 127.0.0.1:{port}");
}

/// Serves a scripted server (what a broken tenant or gateway might answer) on 127.0.0.1.
pub(crate) async fn serve(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Copies the folder `from` into `to`, recursively.
pub(crate) fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Makes `dir` and every folder under it readable by its owner only, as a state folder
/// must be (git and a plain copy keep no folder modes).
pub(crate) fn chmod_700_tree(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            chmod_700_tree(&e.path());
        }
    }
}

/// The real binary's `voyado-sync emulator` as a child process on 127.0.0.1 (a free port),
/// so a test depends on the emulator's command line only. Killed when dropped.
pub(crate) struct EmulatorProcess {
    child: std::process::Child,
    /// `http://127.0.0.1:<port>`, as the emulator printed it.
    pub base_url: String,
}

impl EmulatorProcess {
    /// Starts `voyado-sync emulator --api-key KEY ARGS...` and waits for its address.
    pub(crate) fn start(api_key: &str, args: &[&str]) -> EmulatorProcess {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_voyado-sync"))
            .args([
                "emulator",
                "-q",
                "--listen",
                "127.0.0.1:0",
                "--api-key",
                api_key,
            ])
            .args(args)
            .env_remove("VOYADO_EMULATOR_API_KEY")
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base_url = line.trim().to_string();
        assert!(
            base_url.starts_with("http://127.0.0.1:"),
            "the emulator printed {line:?} instead of its address"
        );
        EmulatorProcess { child, base_url }
    }

    /// Stops it with SIGTERM, as Ctrl-C would, and waits: `--dump-on-exit` is written.
    pub(crate) fn stop(mut self) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the emulator exited {status}");
    }
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// This host's name as the state's lock file records it.
pub(crate) fn lock_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}
