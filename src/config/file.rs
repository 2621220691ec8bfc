//! What users write: the TOML file's tables, unknown keys refused, defaults filled in.
//! Nothing here is checked beyond its type; `validate` turns it into settings.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub name: String,
    pub source: SourceConfig,
    pub model: ModelConfig,
    pub destination: DestinationConfig,
    pub identifier: IdentifierConfig,
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    #[serde(default)]
    pub custom_attributes: CustomAttributesConfig,
    pub sync: SyncConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub warnings: WarningsConfig,
    #[serde(default)]
    pub guards: GuardsConfig,
    /// Per-location object-store settings: URL prefix -> object_store options
    /// (`endpoint`, `region`, `allow_http`, ...).
    #[serde(default)]
    pub storage: BTreeMap<String, BTreeMap<String, toml::Value>>,
    /// DataFusion session options by name (`"optimizer.prefer_hash_join" = false`), for
    /// tuning the model's execution beyond what `[limits]` chooses.
    #[serde(default)]
    pub datafusion: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub engine: EngineConfig,
}

/// Where the model and the change detection run.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// `local` (default: DataFusion in this process) or `ballista` (a Ballista cluster).
    pub kind: Option<String>,
    /// The Ballista scheduler, `df://host:port`.
    pub url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarningsConfig {
    /// Percent of the rows attempted.
    #[serde(default = "default_five")]
    pub max_rejected_percent: f64,
    /// Percent of the model's rows.
    #[serde(default = "default_five")]
    pub max_invalid_percent: f64,
}

impl Default for WarningsConfig {
    fn default() -> Self {
        WarningsConfig {
            max_rejected_percent: 5.0,
            max_invalid_percent: 5.0,
        }
    }
}

fn default_five() -> f64 {
    5.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardsConfig {
    /// Percent of a non-empty snapshot.
    #[serde(default = "default_twenty")]
    pub max_deleted_percent: f64,
    /// Percent of the snapshot; off unless set.
    #[serde(default)]
    pub max_changed_percent: Option<f64>,
}

impl Default for GuardsConfig {
    fn default() -> Self {
        GuardsConfig {
            max_deleted_percent: 20.0,
            max_changed_percent: None,
        }
    }
}

fn default_twenty() -> f64 {
    20.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// SQL table name -> Parquet file, folder or glob (local path or object-store URL).
    pub tables: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub query: Option<String>,
    pub sql: Option<String>,
    /// Run the model once per slice of its sources (a model larger than memory).
    pub partitions: Option<u32>,
    /// Table -> the column whose hash picks each row's slice.
    #[serde(default)]
    pub partition_keys: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    pub url: String,
    pub api_key_env: Option<String>,
    pub api_key_file: Option<String>,
    #[serde(default = "default_contact_type")]
    pub contact_type: String,
    pub source: Option<String>,
    pub store_external_id: Option<String>,
}

fn default_contact_type() -> String {
    "Member".to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentifierConfig {
    pub column: String,
    pub key: String,
    /// A model column holding a known Voyado contactId, used when non-null.
    pub contact_id_column: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomAttributesConfig {
    #[serde(default)]
    pub columns: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    pub mode: String,
    #[serde(default = "default_state")]
    pub state: String,
    #[serde(default = "default_lock_stale_secs")]
    pub lock_stale_secs: u64,
    #[serde(default = "default_checkpoint_rows")]
    pub checkpoint_rows: u64,
    #[serde(default = "default_checkpoint_secs")]
    pub checkpoint_secs: u64,
    /// `single` (one request per contact) or `bulk` (Voyado's bulk endpoints).
    #[serde(default = "default_api")]
    pub api: String,
    /// Items per bulk request; Voyado's documented maximum is 4000.
    #[serde(default = "default_bulk_batch_size")]
    pub bulk_batch_size: u32,
    /// A bulk batch not reported finished within this time leaves its rows unconfirmed.
    #[serde(default = "default_bulk_timeout_secs")]
    pub bulk_timeout_secs: u64,
    /// First wait before polling a bulk batch's status; later waits grow to 30 s.
    #[serde(default = "default_bulk_poll_interval_ms")]
    pub bulk_poll_interval_ms: u64,
}

fn default_api() -> String {
    "single".to_string()
}

fn default_bulk_batch_size() -> u32 {
    4000
}

fn default_bulk_timeout_secs() -> u64 {
    1800
}

fn default_bulk_poll_interval_ms() -> u64 {
    1000
}

fn default_checkpoint_rows() -> u64 {
    5000
}

fn default_checkpoint_secs() -> u64 {
    30
}

fn default_state() -> String {
    ".voyado-sync".to_string()
}

fn default_lock_stale_secs() -> u64 {
    3600
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "default_rps")]
    pub requests_per_second: u32,
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    #[serde(default = "default_memory_limit_mb")]
    pub memory_limit_mb: u64,
    /// 0 = choose from the snapshot size and the memory limit.
    #[serde(default)]
    pub diff_partitions: u32,
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    #[serde(default = "default_retry_budget_secs")]
    pub retry_budget_secs: u64,
    /// First backoff step; each retry doubles it (with jitter), up to 60 s.
    #[serde(default = "default_retry_initial_backoff_ms")]
    pub retry_initial_backoff_ms: u64,
}

fn default_retry_initial_backoff_ms() -> u64 {
    500
}

fn default_max_retries() -> u32 {
    8
}
fn default_request_timeout_secs() -> u64 {
    30
}
fn default_retry_budget_secs() -> u64 {
    300
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            requests_per_second: default_rps(),
            concurrency: default_concurrency(),
            memory_limit_mb: default_memory_limit_mb(),
            diff_partitions: 0,
            max_retries: default_max_retries(),
            request_timeout_secs: default_request_timeout_secs(),
            retry_budget_secs: default_retry_budget_secs(),
            retry_initial_backoff_ms: default_retry_initial_backoff_ms(),
        }
    }
}

fn default_rps() -> u32 {
    40
}
fn default_concurrency() -> u32 {
    8
}
fn default_memory_limit_mb() -> u64 {
    2048
}
