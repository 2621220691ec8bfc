//! The `voyado-sync` command: parses the command line, sets up logging, runs the command
//! and turns its outcome into the documented exit code.

use std::process::ExitCode;

use clap::Parser;
use voyado_sync::cli::{Cli, Command};
use voyado_sync::error::{Error, exit};
use voyado_sync::pipeline;

fn init_logging(cli: &Cli) {
    let default = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let cluster = if cli.command.is_cluster() {
        format!(",ballista_scheduler={default},ballista_executor={default}")
    } else {
        String::new()
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("VOYADO_SYNC_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!(
                "warn,voyado_sync={default},voyado_sync_cli={default},voyado_emulator={default}{cluster}"
            ))
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    out(&format!("{}\n", serde_json::to_string(value)?))
}

// One match arm per command, each a few lines: the whole dispatch reads in one place,
// which matters more here than the function's length.
async fn run(cli: Cli) -> Result<u8, Error> {
    match cli.command {
        Command::Check { config } => {
            let outcome = pipeline::check(config.target()).await?;
            for note in &outcome.notes {
                eprintln!("note: {note}");
            }
            println!(
                "ok: {} ({} mode, key {}, {} mapped attributes); model columns: {}",
                outcome.settings.name,
                outcome.settings.mode.as_str(),
                outcome.settings.key.as_str(),
                outcome.settings.attributes.len(),
                outcome.columns.join(", ")
            );
            Ok(exit::OK)
        }
        Command::Plan {
            config,
            model_only: true,
            ..
        } => {
            let (rows, ms) = pipeline::model_only(config.target()).await?;
            println!("{{\"model_rows\": {rows}, \"duration_ms\": {ms}}}");
            Ok(exit::OK)
        }
        Command::Plan { config, json, .. } => {
            let report = pipeline::plan(config.target()).await?;
            emit(&report, json)
        }
        Command::Baseline { config, json } => {
            let report = pipeline::baseline(config.target()).await?;
            emit(&report, json)
        }
        Command::Run {
            config,
            json,
            force,
        } => {
            let options = pipeline::RunOptions {
                force,
                progress: !cli.quiet && !json,
                ..Default::default()
            };
            let result = pipeline::run(config.target(), &options).await?;
            emit(&result.report, json)?;
            Ok(result.exit_code)
        }
        Command::History { config, json } => {
            let reports = pipeline::history(config.target()).await?;
            if json {
                print_json(&reports).map_err(|e| Error::Internal(e.to_string()))?;
            } else if reports.is_empty() {
                println!("no runs recorded");
            } else {
                for r in &reports {
                    println!("{}", pipeline::history_line(r));
                }
            }
            Ok(exit::OK)
        }
        Command::Demo { dir } => voyado_sync::demo::demo(dir.as_deref()).await,
        Command::Reset { config } => {
            let existed = pipeline::reset(config.target()).await?;
            if existed {
                println!("state forgotten: the next run sends every row");
            } else {
                println!("no state to forget: the next run sends every row");
            }
            Ok(exit::OK)
        }
        Command::Emulator(args) => {
            voyado_emulator::run_cli(*args).await?;
            Ok(exit::OK)
        }
        #[cfg(feature = "ballista")]
        Command::BallistaScheduler { bind, config } => {
            let settings = config
                .as_deref()
                .map(voyado_sync::config::load)
                .transpose()?;
            voyado_sync::cluster::run_scheduler(settings.as_ref(), bind).await?;
            Ok(exit::OK)
        }
        #[cfg(feature = "ballista")]
        Command::BallistaExecutor {
            scheduler,
            bind_host,
            external_host,
            bind_port,
            flight_port,
            config,
            work_dir,
        } => {
            let settings = config
                .as_deref()
                .map(voyado_sync::config::load)
                .transpose()?;
            let options = voyado_sync::cluster::ExecutorOptions {
                scheduler,
                bind_host,
                external_host,
                grpc_port: bind_port,
                flight_port,
                work_dir,
            };
            voyado_sync::cluster::run_executor(settings.as_ref(), options).await?;
            Ok(exit::OK)
        }
    }
}

fn emit(report: &voyado_sync::report::Report, json: bool) -> Result<u8, Error> {
    if json {
        print_json(report).map_err(|e| Error::Internal(e.to_string()))?;
    } else {
        out(&report.render()).map_err(|e| Error::Internal(e.to_string()))?;
    }
    Ok(exit::OK)
}

/// glibc's allocator, tuned for a process that builds and drops large Arrow buffers:
/// - one arena per thread that ever allocated, each keeping its freed pages, left every
///   DataFusion thread's memory resident: two arenas took a 10 M-row plan under a 512 MB
///   pool from 669 MB to 587 MB peak RSS at the same speed;
/// - buffers above a moving threshold (128 KiB at first) are mapped and unmapped one by
///   one, and a heap's free top above 128 KiB is given back, so the same memory was faulted
///   in again and again (about a fifth of all CPU time went to the kernel). Buffers up to
///   32 MiB now come from the heap, which keeps up to 256 MiB of free top: 10 M rows in
///   8 slices under 512 MB went from 11.1 s to 9.1 s (faults 524 K -> 117 K), 1 M rows from
///   0.57 s to 0.53 s (BENCHMARKS.md). The price is freed memory kept by the process:
///   about 100 MB more peak RSS there (377 -> 480 MB).
///
/// Each setting the environment makes (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`, ...,
/// or the same in `GLIBC_TUNABLES`) wins over ours.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    let (arenas, thresholds) = allocator_choices(|v| std::env::var(v).ok());
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        if arenas {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
        if thresholds {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
            libc::mallopt(libc::M_TOP_PAD, 32 << 20);
        }
    }
}

/// Which of our settings to make, given the environment (`var`): the arena cap, and the
/// three thresholds. Setting any threshold turns glibc's moving threshold off, so ours are
/// made all or none; 32 MiB is the largest threshold glibc accepts, on 64-bit targets.
#[cfg(any(test, all(target_os = "linux", target_env = "gnu")))]
fn allocator_choices(var: impl Fn(&str) -> Option<String>) -> (bool, bool) {
    let tunables = var("GLIBC_TUNABLES").unwrap_or_default();
    let set = |name: &str, tunable: &str| {
        var(name).is_some() || tunables.contains(&format!("glibc.malloc.{tunable}"))
    };
    let thresholds = [
        ("MALLOC_MMAP_THRESHOLD_", "mmap_threshold"),
        ("MALLOC_TRIM_THRESHOLD_", "trim_threshold"),
        ("MALLOC_TOP_PAD_", "top_pad"),
    ];
    (
        !set("MALLOC_ARENA_MAX", "arena_max"),
        cfg!(target_pointer_width = "64") && !thresholds.iter().any(|(v, t)| set(v, t)),
    )
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    init_logging(&cli);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if cli.command.is_cluster() {
        // Ballista plans recursively; its own binaries run with 32 MiB stacks.
        builder.thread_stack_size(32 << 20);
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::INTERNAL);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            for line in e.to_string().lines() {
                eprintln!("error: {line}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::allocator_choices;

    #[test]
    fn each_allocator_setting_made_in_the_environment_wins() {
        let with = |vars: &[(&str, &str)]| {
            allocator_choices(move |v| {
                vars.iter()
                    .find(|(name, _)| *name == v)
                    .map(|(_, value)| value.to_string())
            })
        };
        let ours = cfg!(target_pointer_width = "64");
        assert_eq!(with(&[]), (true, ours));
        // A tunable that is not the allocator's leaves ours in place.
        let cpu = [(
            "GLIBC_TUNABLES",
            "glibc.cpu.x86_non_temporal_threshold=0xffffffff",
        )];
        assert_eq!(with(&cpu), (true, ours));
        assert_eq!(with(&[("MALLOC_ARENA_MAX", "4")]), (false, ours));
        assert_eq!(
            with(&[("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")]),
            (false, ours)
        );
        assert_eq!(with(&[("MALLOC_TRIM_THRESHOLD_", "131072")]), (true, false));
        let pad = [("GLIBC_TUNABLES", "glibc.cpu.x=1:glibc.malloc.top_pad=0")];
        assert_eq!(with(&pad), (true, false));
    }
}
