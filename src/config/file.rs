//! What users write: the TOML file's tables, unknown keys refused, defaults filled in.
//! Nothing here is checked beyond its type; `validate` turns it into settings.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One sync's TOML config file as written, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Names the sync (required); its state lives under `<state>/<name>/`.
    pub name: String,
    /// `[source]`: the Parquet tables the model reads (required).
    pub source: SourceConfig,
    /// `[model]`: the SQL query producing the rows to sync (required).
    pub model: ModelConfig,
    /// `[destination]`: the Voyado tenant and its API key (required).
    pub destination: DestinationConfig,
    /// `[identifier]`: the model column identifying a contact, and which Voyado key it holds
    /// (required).
    pub identifier: IdentifierConfig,
    /// `[fields]`: model column -> Voyado attribute; default empty.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// `[custom_attributes]`: model columns sent as attributes of the same name; default empty.
    #[serde(default)]
    pub custom_attributes: CustomAttributesConfig,
    /// `[sync]`: mode, state location, checkpoints and API choice (required, for `mode`).
    pub sync: SyncConfig,
    /// `[limits]`: request rate, concurrency, memory and retry limits; each key has its own
    /// default.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[warnings]`: thresholds above which a committed run exits 3.
    #[serde(default)]
    pub warnings: WarningsConfig,
    /// `[guards]`: thresholds above which `run` refuses to start (exit 5) unless `--force`.
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
    /// `[engine]`: where the model and the change detection run; default local.
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

/// `[warnings]`: percentages (0 to 100) above which a committed run exits 3.
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

/// `[guards]`: percentages (0 to 100) above which `run` refuses to start (exit 5) unless `--force`.
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

/// `[source]`: the Parquet inputs, each registered as a SQL table for the model.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// SQL table name -> Parquet file, folder or glob (local path or object-store URL).
    pub tables: BTreeMap<String, String>,
}

/// `[model]`: the SQL query whose output is synced; set exactly one of `query` and `sql`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Path of a `.sql` file holding one query, relative to the config file's folder.
    pub query: Option<String>,
    /// The query inline; only queries run (DDL, DML and `SET` statements are refused).
    pub sql: Option<String>,
    /// Run the model once per slice of its sources (a model larger than memory).
    pub partitions: Option<u32>,
    /// Table -> the column whose hash picks each row's slice.
    #[serde(default)]
    pub partition_keys: BTreeMap<String, String>,
}

/// `[destination]`: the Voyado tenant and where its API key comes from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// The tenant's base URL, without a path or query; `https`, or `http` only for loopback hosts.
    pub url: String,
    /// Name of the environment variable holding the API key; set this or `api_key_file`.
    pub api_key_env: Option<String>,
    /// Path of a file holding the API key; set this or `api_key_env`.
    pub api_key_file: Option<String>,
    /// Voyado contact type of the synced contacts; default `"Member"`.
    #[serde(default = "default_contact_type")]
    pub contact_type: String,
    /// `source` query parameter sent when creating a contact; default none.
    pub source: Option<String>,
    /// `storeExternalId` query parameter sent when creating a contact; default none.
    pub store_external_id: Option<String>,
}

fn default_contact_type() -> String {
    "Member".to_string()
}

/// `[identifier]`: how a model row is matched to a Voyado contact.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentifierConfig {
    /// Model column identifying the contact (string or integer).
    pub column: String,
    /// The Voyado key that column holds: `contactId`, `email`, `mobilePhone`,
    /// `socialSecurityNumber`, `externalId` or `memberNumber`.
    pub key: String,
    /// A model column holding a known Voyado contactId, used when non-null.
    pub contact_id_column: Option<String>,
}

/// `[custom_attributes]`: model columns exported as Voyado attributes of the same name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomAttributesConfig {
    /// The model columns to export; default empty.
    #[serde(default)]
    pub columns: Vec<String>,
}

/// `[sync]`: how the sync delivers rows and where it keeps its state.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// `upsert` (create missing contacts) or `update` (existing contacts only); required.
    pub mode: String,
    /// Folder or object-store URL for snapshots, staged change sets, reports and the lock;
    /// default `".voyado-sync"`.
    #[serde(default = "default_state")]
    pub state: String,
    /// Age in seconds after which a lock is taken over; default 3600, at least 1.
    #[serde(default = "default_lock_stale_secs")]
    pub lock_stale_secs: u64,
    /// Confirmed outcomes are appended to the state at least every this many rows; default
    /// 5000, at least 1.
    #[serde(default = "default_checkpoint_rows")]
    pub checkpoint_rows: u64,
    /// Confirmed outcomes are appended to the state at least this often, in seconds; default
    /// 30, at least 1.
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

/// `[limits]`: request rate, concurrency, memory and retry limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Client-side rate limit in requests per second; default 40 (Voyado asks for under 50 per
    /// key), at least 1.
    #[serde(default = "default_rps")]
    pub requests_per_second: u32,
    /// Requests in flight at once; default 8, at least 1.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// DataFusion's memory pool for the model and the diff, in MiB; default 2048, at least 64.
    #[serde(default = "default_memory_limit_mb")]
    pub memory_limit_mb: u64,
    /// 0 = choose from the snapshot size and the memory limit.
    #[serde(default)]
    pub diff_partitions: u32,
    /// Retries of one request; default 8.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Timeout of each request, in seconds; default 30, at least 1.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// Total time one request may spend retrying, in seconds; default 300.
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
