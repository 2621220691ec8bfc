//! `voyado-sync emulator`: the emulator as a process, for the demo and manual testing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde_json::{Map, Value};

use super::{
    ApiKey, ContactTypeConfig, Dump, Emulator, EmulatorConfig, EmulatorError, Faults, RateLimit,
};

/// Flags of `voyado-sync emulator`.
#[derive(Debug, Args)]
pub struct EmulatorArgs {
    /// Address to listen on; port 0 picks a free one. The address is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The API key clients must send in the `apikey` header.
    #[arg(long, env = "VOYADO_EMULATOR_API_KEY", hide_env_values = true)]
    pub api_key: ApiKey,
    /// JSON file of contacts present at start: an array of flat contact objects, or a dump.
    #[arg(long, value_name = "FILE")]
    pub seed_contacts: Option<PathBuf>,
    /// Custom attribute ids configured on the tenant (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    pub custom_attributes: Vec<String>,
    /// Attributes mandatory on create, besides the key (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "ATTRIBUTES")]
    pub mandatory: Vec<String>,
    /// A contact type and its key attribute, e.g. `Member=email` (repeatable).
    #[arg(
        long = "contact-type",
        value_name = "NAME=KEY",
        default_value = "Member=email"
    )]
    pub contact_types: Vec<ContactTypeConfig>,
    /// What `customKey=` lookups match: externalId or memberNumber.
    #[arg(long, default_value = "externalId")]
    pub custom_key: String,
    /// Answer 429 above this many requests per second.
    #[arg(long, value_name = "N")]
    pub rate_limit: Option<u32>,
    /// Send `Retry-After: S` with every 429.
    #[arg(long, value_name = "S", requires = "rate_limit")]
    pub retry_after_secs: Option<u64>,
    /// Share (0..1) of requests answered 500, 502 or 503.
    #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
    pub error_rate: f64,
    /// Latency added to every request, in milliseconds.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub latency_ms: u64,
    /// Share of successful writes applied but whose connection is cut before the answer.
    #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
    pub lost_answer_rate: f64,
    /// Share of 404 lookups after which another writer creates that contact.
    #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
    pub race_create_rate: f64,
    /// Share of the seed contacts deleted at start (contacts deleted between runs).
    #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
    pub delete_on_start: f64,
    /// Time after acceptance at which a bulk batch is applied, in milliseconds; until then
    /// its status is Queued, then Processing.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    pub bulk_delay_ms: u64,
    /// Share of accepted bulk batches that never finish (status Processing forever,
    /// nothing applied).
    #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
    pub bulk_stall_rate: f64,
    /// Share of accepted bulk batches that end Failed with nothing applied.
    #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
    pub bulk_fail_rate: f64,
    /// Seed of every random fault: the same seed replays the same faults.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the dump (contacts, request counts, violations) to this file on exit.
    #[arg(long, value_name = "FILE")]
    pub dump_on_exit: Option<PathBuf>,
}

/// Seed contacts from a file: an array of flat objects, or an earlier dump.
fn read_seed(path: &Path) -> Result<Vec<Map<String, Value>>, EmulatorError> {
    let fail = |m: String| EmulatorError::Seed(format!("{}: {m}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
    match value {
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Object(map) => Ok(map),
                _ => Err(fail("every contact must be a JSON object".into())),
            })
            .collect(),
        Value::Object(_) => {
            let dump: Dump =
                serde_json::from_value(value).map_err(|e| fail(format!("not a dump: {e}")))?;
            Ok(dump
                .contacts
                .iter()
                .filter_map(|c| match c.to_api() {
                    Value::Object(map) => Some(map),
                    _ => None,
                })
                .collect())
        }
        _ => Err(fail("expected an array of contacts or a dump".into())),
    }
}

impl EmulatorArgs {
    fn into_config(self) -> Result<EmulatorConfig, EmulatorError> {
        let seed_contacts = match &self.seed_contacts {
            Some(path) => read_seed(path)?,
            None => Vec::new(),
        };
        Ok(EmulatorConfig {
            listen: self.listen,
            api_key: self.api_key,
            contact_types: self.contact_types,
            custom_attributes: self.custom_attributes,
            mandatory: self.mandatory,
            custom_key: self.custom_key,
            seed_contacts,
            faults: Faults {
                seed: self.seed,
                rate_limit: self.rate_limit.map(|requests| RateLimit {
                    requests,
                    window: Duration::from_secs(1),
                    retry_after_secs: self.retry_after_secs,
                }),
                error_rate: self.error_rate,
                latency: Duration::from_millis(self.latency_ms),
                lost_answer_rate: self.lost_answer_rate,
                race_create_rate: self.race_create_rate,
                delete_on_start: self.delete_on_start,
                bulk_stall_rate: self.bulk_stall_rate,
                bulk_fail_rate: self.bulk_fail_rate,
            },
            bulk_delay: Duration::from_millis(self.bulk_delay_ms),
            dump_on_exit: self.dump_on_exit,
        })
    }
}

/// Why `voyado-sync emulator` stopped with an error. The binary reports the two kinds as
/// its own input and storage errors, so the process exits 2 or 4 as the sync does for the
/// same kind of failure.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag, the seed file or the configuration is unusable; nothing was served.
    #[error(transparent)]
    Input(EmulatorError),
    /// The dump could not be written on exit.
    #[error(transparent)]
    Storage(EmulatorError),
}

impl From<EmulatorError> for CliError {
    fn from(e: EmulatorError) -> Self {
        match e {
            EmulatorError::Dump { .. } => CliError::Storage(e),
            _ => CliError::Input(e),
        }
    }
}

/// Ctrl-C or, on Unix, SIGTERM. On Unix the handlers are installed when this is called,
/// not when the future is first polled: a signal sent as soon as the base URL is printed
/// would otherwise kill the process before it dumps.
fn stop_signal() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            return Box::pin(async move {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            });
        }
    }
    Box::pin(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// Runs the emulator until Ctrl-C or SIGTERM. Prints its base URL as the first stdout line.
pub async fn run_cli(args: EmulatorArgs) -> Result<(), CliError> {
    let config = args.into_config()?;
    let emulator = Emulator::start(config).await?;
    let stop = stop_signal();
    println!("{}", emulator.base_url());
    stop.await;
    let dump = emulator.shutdown().await?;
    eprintln!(
        "emulator stopped: {} contacts, {} requests, {} violations",
        dump.contacts.len(),
        dump.request_total,
        dump.violation_total
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: EmulatorArgs,
    }

    #[test]
    fn every_flag_reaches_the_config() {
        let w = Wrapper::try_parse_from([
            "x",
            "--listen",
            "127.0.0.1:9999",
            "--api-key",
            "k",
            "--custom-attributes",
            "a,b",
            "--mandatory",
            "firstName",
            "--contact-type",
            "Member=mobilePhone",
            "--contact-type",
            "Lead=email",
            "--custom-key",
            "memberNumber",
            "--rate-limit",
            "5",
            "--retry-after-secs",
            "2",
            "--error-rate",
            "0.15",
            "--latency-ms",
            "20",
            "--lost-answer-rate",
            "0.05",
            "--race-create-rate",
            "0.1",
            "--delete-on-start",
            "0.2",
            "--bulk-delay-ms",
            "250",
            "--bulk-stall-rate",
            "0.3",
            "--bulk-fail-rate",
            "0.4",
            "--seed",
            "77",
            "--dump-on-exit",
            "/tmp/d.json",
        ])
        .unwrap();
        let c = w.args.into_config().unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.api_key, ApiKey::new("k"));
        assert_eq!(c.custom_attributes, ["a", "b"]);
        assert_eq!(c.mandatory, ["firstName"]);
        assert_eq!(c.contact_types.len(), 2);
        assert_eq!(c.contact_types[0].key, "mobilePhone");
        assert_eq!(c.custom_key, "memberNumber");
        let f = &c.faults;
        assert_eq!(
            f.rate_limit,
            Some(RateLimit {
                requests: 5,
                window: Duration::from_secs(1),
                retry_after_secs: Some(2)
            })
        );
        assert_eq!(
            (
                f.error_rate,
                f.lost_answer_rate,
                f.race_create_rate,
                f.delete_on_start
            ),
            (0.15, 0.05, 0.1, 0.2)
        );
        assert_eq!((f.bulk_stall_rate, f.bulk_fail_rate), (0.3, 0.4));
        assert_eq!(c.bulk_delay, Duration::from_millis(250));
        assert_eq!(f.latency, Duration::from_millis(20));
        assert_eq!(f.seed, 77);
        assert_eq!(c.dump_on_exit, Some(PathBuf::from("/tmp/d.json")));
    }

    #[test]
    fn defaults_are_a_plain_member_tenant_without_faults() {
        let w = Wrapper::try_parse_from(["x", "--api-key", "k"]).unwrap();
        let c = w.args.into_config().unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.contact_types, EmulatorConfig::new("k").contact_types);
        assert_eq!(c.faults, Faults::default());
        assert_eq!(c.bulk_delay, EmulatorConfig::new("k").bulk_delay);
    }
}
