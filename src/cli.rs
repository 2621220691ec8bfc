//! Command-line interface (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The `voyado-sync` command line: global verbosity flags and one subcommand.
#[derive(Debug, Parser)]
#[command(
    name = "voyado-sync",
    version,
    about = "Keep Voyado Engage contacts in sync with a SQL model over Parquet extracts, sending only what changed"
)]
pub struct Cli {
    /// Only warnings and errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More detail on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The options of every command that works on a sync: its configuration file and,
/// optionally, one shard.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The sync's TOML configuration file; relative paths in it resolve against its folder.
    #[arg(
        short,
        long,
        env = "VOYADO_SYNC_CONFIG",
        default_value = "voyado-sync.toml"
    )]
    pub config: PathBuf,
    /// Work on one shard of the sync: the rows whose identifier hashes to shard I of N
    /// (0 <= I < N), with their own state and lock, so N workers can run side by side.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<crate::config::Shard>,
}

impl ConfigArg {
    /// The sync this invocation works on: the configuration file and the shard, if any.
    pub fn target(&self) -> crate::config::Target {
        crate::config::Target {
            config: self.config.clone(),
            shard: self.shard,
        }
    }
}

/// What to do: one of the subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the configuration, sources, model and mapping without sending anything.
    Check {
        /// The configuration file and shard to work on.
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Dry run: count new, changed, unchanged, deleted and invalid rows. Writes nothing.
    Plan {
        /// The configuration file and shard to work on.
        #[command(flatten)]
        config: ConfigArg,
        /// Print the report as exactly one JSON object on stdout instead of text (logs stay
        /// on stderr).
        #[arg(long)]
        json: bool,
        /// Only run the model and discard its output, printing its row count and time
        /// (the benchmark's floor).
        #[arg(long)]
        model_only: bool,
    },
    /// Adopt the model's current output as the snapshot without sending anything.
    Baseline {
        /// The configuration file and shard to work on.
        #[command(flatten)]
        config: ConfigArg,
        /// Print the report as exactly one JSON object on stdout instead of text (logs stay
        /// on stderr).
        #[arg(long)]
        json: bool,
    },
    /// Sync: send the change set to Voyado and commit what it confirmed.
    Run {
        /// The configuration file and shard to work on.
        #[command(flatten)]
        config: ConfigArg,
        /// Print the report (with outcomes, requests and retries) as exactly one JSON object
        /// on stdout instead of text, and draw no progress line.
        #[arg(long)]
        json: bool,
        /// Run even when a guard (max_deleted_percent, max_changed_percent) trips.
        #[arg(long)]
        force: bool,
    },
    /// List past runs of this sync, from the reports stored with its state.
    History {
        /// The configuration file and shard to work on.
        #[command(flatten)]
        config: ConfigArg,
        /// Print the stored reports as one JSON array on stdout, oldest first, instead of
        /// one line per run.
        #[arg(long)]
        json: bool,
    },
    /// Sync the bundled sample twice against the built-in Voyado emulator.
    Demo {
        /// Keep the demo's files (config, state, reports) in this folder.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Forget the snapshot so the next run sends every row; without --shard, every shard's too.
    Reset {
        /// The configuration file and shard to work on.
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run a strict local Voyado Engage emulator (prints its address; stops on Ctrl-C).
    Emulator(Box<voyado_emulator::EmulatorArgs>),
    /// Run a Ballista scheduler for syncs with `[engine] kind = "ballista"` (stops on Ctrl-C).
    #[cfg(feature = "ballista")]
    BallistaScheduler {
        /// Address to listen on: clients and executors connect here.
        #[arg(long, default_value = "127.0.0.1:50050")]
        bind: std::net::SocketAddr,
        /// A sync's configuration: its [storage] options and object-store locations (sources,
        /// state) are made reachable. Without it, only local files are.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Run a Ballista executor that registers with a scheduler (stops on Ctrl-C).
    #[cfg(feature = "ballista")]
    BallistaExecutor {
        /// The scheduler, host:port.
        #[arg(long, default_value = "127.0.0.1:50050")]
        scheduler: String,
        /// Interface to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind_host: String,
        /// The host the scheduler and clients reach this executor at (default: --bind-host).
        #[arg(long)]
        external_host: Option<String>,
        /// gRPC port the scheduler sends tasks to.
        #[arg(long, default_value_t = 50052)]
        bind_port: u16,
        /// Arrow Flight port serving shuffle data and query results.
        #[arg(long, default_value_t = 50051)]
        flight_port: u16,
        /// A sync's configuration, as for ballista-scheduler; its memory_limit_mb also bounds
        /// this executor.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Folder for shuffle and spill files (they hold personal data; default: a private
        /// temporary folder removed on exit).
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
}

impl Command {
    /// The commands that run a Ballista process (they need deep stacks and Ballista's logs).
    pub fn is_cluster(&self) -> bool {
        #[cfg(feature = "ballista")]
        if matches!(
            self,
            Command::BallistaScheduler { .. } | Command::BallistaExecutor { .. }
        ) {
            return true;
        }
        false
    }
}
