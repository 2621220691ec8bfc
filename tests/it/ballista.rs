//! The model and the change detection on a Ballista cluster (a scheduler and an executor
//! started from the real binary), with sources and state on moto's S3 server: the same
//! change sets and the same contacts as the local engine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use voyado_emulator::Emulator;

use crate::common::{
    Sync, cli_async, counts, free_port, json as parse, wait_for_port, write_parquet,
};
use crate::diff::{MAPPING, batch};
use crate::object_store::{Moto, rows, upload};
use crate::sync::{KEY, assert_no_violations, by_email, emulator_config, outcomes, row};

/// A scheduler and one executor, killed on drop (also when an assertion fails).
struct Cluster {
    children: Vec<Child>,
    logs: Vec<PathBuf>,
    url: String,
}

impl Cluster {
    async fn start(config: &Path, dir: &Path, env: &[(&str, &str)]) -> Cluster {
        let (scheduler, grpc, flight) = (free_port(), free_port(), free_port());
        let mut cluster = Cluster {
            children: Vec::new(),
            logs: Vec::new(),
            url: format!("df://127.0.0.1:{scheduler}"),
        };
        let cfg = config.to_str().unwrap();
        let bind = format!("127.0.0.1:{scheduler}");
        cluster.spawn(
            dir,
            "scheduler",
            &["ballista-scheduler", "--bind", &bind, "-c", cfg],
            env,
        );
        wait_for_port(scheduler).await;
        let work = dir.join("executor-work");
        cluster.spawn(
            dir,
            "executor",
            &[
                "ballista-executor",
                "--scheduler",
                &bind,
                "--bind-port",
                &grpc.to_string(),
                "--flight-port",
                &flight.to_string(),
                "-c",
                cfg,
                "--work-dir",
                work.to_str().unwrap(),
            ],
            env,
        );
        wait_for_port(flight).await;
        wait_for_port(grpc).await;
        cluster
    }

    fn spawn(&mut self, dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_voyado-sync"));
        cmd.args(args)
            .env_remove("VOYADO_SYNC_CONFIG")
            .stdout(Stdio::null())
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.children.push(cmd.spawn().unwrap());
        self.logs.push(log);
    }

    /// The processes' logs, for failure messages.
    fn logs(&self) -> String {
        self.logs
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {}\n{}", p.display(), tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

const AWS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "moto"),
    ("AWS_SECRET_ACCESS_KEY", "moto-secret"),
];

/// A sync over the extracts in `s3://extracts/customers/` and the local files `glob`
/// matches, with its state under `s3://state/<state>`, on the local engine or on the
/// cluster at `engine`.
fn configure(
    s: &Sync,
    emu: &Emulator,
    moto: &Moto,
    glob: &Path,
    state: &str,
    engine: Option<&str>,
) {
    s.write_config(
        "SELECT * FROM t UNION ALL SELECT * FROM g",
        "id",
        "email",
        "upsert",
        MAPPING,
    );
    let text = std::fs::read_to_string(s.config())
        .unwrap()
        .replace("http://127.0.0.1:9", &emu.base_url())
        .replace(
            "t = \"data/t.parquet\"",
            &format!(
                "t = \"s3://extracts/customers/\", g = \"{}\"",
                glob.display()
            ),
        )
        .replace(
            "state = \"state\"",
            &format!("state = \"s3://state/{state}\""),
        );
    let options = format!(
        "endpoint = \"{}\"\nallow_http = true\nregion = \"us-east-1\"\n",
        moto.endpoint
    );
    let engine = match engine {
        Some(url) => format!("\n[engine]\nkind = \"ballista\"\nurl = \"{url}\"\n"),
        None => String::new(),
    };
    let extra = format!(
        "\n[storage.\"s3://extracts\"]\n{options}\n[storage.\"s3://state\"]\n{options}{engine}"
    );
    std::fs::write(s.config(), text + &extra).unwrap();
}

/// `plan --json` then `run --json`: the change-set counts and the outcomes.
async fn sync(s: &Sync, logs: impl Fn() -> String) -> ([u64; 5], [u64; 6]) {
    let cfg = s.config().to_str().unwrap().to_string();
    let mut env = AWS.to_vec();
    env.push(("VOYADO_SYNC_TEST_KEY", KEY));
    let plan = cli_async(&["plan", "--json", "-c", &cfg], &env).await;
    assert_eq!(plan.code, 0, "plan: {}\n{}", plan.stderr, logs());
    let run = cli_async(&["run", "--json", "-c", &cfg], &env).await;
    assert_eq!(run.code, 0, "run: {}\n{}", run.stderr, logs());
    let report: Value = parse(&run);
    assert_eq!(counts(&report), counts(&parse(&plan)), "run and plan agree");
    (counts(&parse(&plan)), outcomes(&report))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ballista_cluster_syncs_like_the_local_engine() {
    let moto = Moto::start().await;
    let extracts = moto.bucket("extracts").await;
    let _state = moto.bucket("state").await;
    let local_emu = Emulator::start(emulator_config()).await.unwrap();
    let cluster_emu = Emulator::start(emulator_config()).await.unwrap();
    let local = Sync::new();
    let remote = Sync::new();
    // A local glob (the cluster shares this machine) next to a file it leaves out.
    let glob = local.path("more/part-*.parquet");
    write_parquet(
        &local.path("more/part-0.parquet"),
        &batch(&rows(100..105, 0)),
    );
    write_parquet(
        &local.path("more/other.parquet"),
        &batch(&rows(1000..1010, 0)),
    );
    configure(&local, &local_emu, &moto, &glob, "local", None);
    // The scheduler and executor read the sync's [storage] options; the engine URL is only
    // known once their ports are, so the config is written twice.
    configure(
        &remote,
        &cluster_emu,
        &moto,
        &glob,
        "ballista",
        Some("df://127.0.0.1:1"),
    );
    let cluster = Cluster::start(&remote.config(), remote.dir.path(), &AWS).await;
    configure(
        &remote,
        &cluster_emu,
        &moto,
        &glob,
        "ballista",
        Some(&cluster.url),
    );
    let logs = || cluster.logs();

    // full, with one invalid identifier
    let mut first = rows(0..40, 0);
    first.push(row("not-an-email", 1));
    upload(&extracts, "customers/part-0.parquet", &first).await;
    let want = local_sync(&local).await;
    assert_eq!(want, ([45, 0, 0, 0, 1], [45, 0, 0, 0, 0, 0]));
    assert_eq!(sync(&remote, logs).await, want, "full sync");

    // incremental: changed, unchanged, deleted and new rows
    let mut second = rows(0..10, 100);
    second.extend(rows(10..35, 0));
    upload(&extracts, "customers/part-0.parquet", &second).await;
    upload(&extracts, "customers/part-1.parquet", &rows(40..60, 0)).await;
    let want = local_sync(&local).await;
    assert_eq!(want.0, [20, 10, 30, 5, 0]);
    assert_eq!(sync(&remote, logs).await, want, "incremental sync");

    let contacts = by_email(&local_emu);
    assert_eq!(contacts.len(), 65);
    assert_eq!(by_email(&cluster_emu), contacts);
    assert_no_violations(&local_emu);
    assert_no_violations(&cluster_emu);
    drop(cluster);
}

async fn local_sync(s: &Sync) -> ([u64; 5], [u64; 6]) {
    sync(s, String::new).await
}
