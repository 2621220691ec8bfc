//! The validated configuration every later stage relies on. Built only by
//! `validate`, so a value of these types has passed every static check.

use std::fmt;
use std::path::{Path, PathBuf};

/// A validated, ready-to-use configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The sync's name; its state lives under `<state>/<name>/`.
    pub name: String,
    /// Folder of the config file, against which relative paths resolve.
    pub config_dir: PathBuf,
    /// SQL table name -> where its Parquet data lives.
    pub tables: Vec<(String, Location)>,
    /// The model's SQL query text.
    pub model_sql: String,
    /// Where the SQL came from, for error messages.
    pub model_origin: String,
    /// How many slices the model runs in, and by which key column of which table.
    pub slices: Slices,
    /// The Voyado tenant, contact type and API key source.
    pub destination: DestinationSettings,
    /// Model column identifying each contact.
    pub identifier_column: String,
    /// The Voyado key the identifier column holds.
    pub key: Key,
    /// Optional model column with known contactIds.
    pub contact_id_column: Option<String>,
    /// Mapped columns, sorted by attribute name (the order the row hash uses).
    pub attributes: Vec<AttributeMapping>,
    /// Whether missing contacts are created (`upsert`) or only existing ones updated.
    pub mode: Mode,
    /// Which Voyado endpoints carry the rows.
    pub api: Api,
    /// Batch size and timing of the bulk API, used when `api` is bulk.
    pub bulk: BulkSettings,
    /// Base state location; this sync's state lives under `<state>/<name>/`.
    pub state: Location,
    /// Age in seconds after which a lock is taken over.
    pub lock_stale_secs: u64,
    /// Request, memory, retry and checkpoint limits.
    pub limits: Limits,
    /// Warning and guard percentages.
    pub thresholds: Thresholds,
    /// Object-store options by URL prefix (`s3://bucket`, `gs://bucket/path`...).
    pub storage: Vec<(String, Vec<(String, String)>)>,
    /// Non-fatal findings, shown by `check`.
    pub notes: Vec<String>,
    /// Set by `--shard i/n`: this worker's rows only, with their own state and lock.
    pub shard: Option<Shard>,
    /// `[datafusion]` session options, full names (`datafusion.` prefixed), checked.
    pub datafusion: Vec<(String, String)>,
    /// Where the model and the change detection run.
    pub engine: Engine,
}

impl Settings {
    /// The options of the longest `[storage]` prefix matching `url`.
    pub fn storage_options(&self, url: &url::Url) -> &[(String, String)] {
        let u = url.as_str().trim_end_matches('/');
        self.storage
            .iter()
            .filter(|(prefix, _)| {
                let p = prefix.trim_end_matches('/');
                u == p || u.starts_with(&format!("{p}/"))
            })
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(&[], |(_, o)| o.as_slice())
    }
}

/// The validated `[destination]`: the Voyado tenant and how contacts are created there.
#[derive(Debug, Clone)]
pub struct DestinationSettings {
    /// The tenant's base URL.
    pub url: url::Url,
    /// Where the API key is read from.
    pub api_key: ApiKeySource,
    /// Voyado contact type of the synced contacts (default `Member`).
    pub contact_type: String,
    /// `source` query parameter sent when creating a contact, if any.
    pub source: Option<String>,
    /// `storeExternalId` query parameter sent when creating a contact, if any.
    pub store_external_id: Option<String>,
}

/// Where the API key comes from. The key itself is read only when needed, never stored here.
#[derive(Debug, Clone)]
pub enum ApiKeySource {
    /// Read from the environment variable of this name.
    Env(String),
    /// Read from the file at this path.
    File(PathBuf),
}

impl ApiKeySource {
    /// Confirms the key can be read, without ever returning or printing it.
    pub fn check_available(&self) -> std::result::Result<(), String> {
        match self {
            ApiKeySource::Env(var) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(()),
                Ok(_) => Err(format!(
                    "[destination] api_key_env: environment variable {var} is empty"
                )),
                Err(_) => Err(format!(
                    "[destination] api_key_env: environment variable {var} is not set"
                )),
            },
            ApiKeySource::File(path) => match std::fs::read_to_string(path) {
                Ok(v) if !v.trim().is_empty() => Ok(()),
                Ok(_) => Err(format!(
                    "[destination] api_key_file: {} is empty",
                    path.display()
                )),
                Err(e) => Err(format!(
                    "[destination] api_key_file: cannot read {}: {}",
                    path.display(),
                    e.kind()
                )),
            },
        }
    }
}

/// One model column sent as one Voyado contact attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeMapping {
    /// Column of the model's output.
    pub column: String,
    /// Voyado contact attribute it is written to.
    pub attribute: String,
    /// Listed under `[custom_attributes]` (rather than `[fields]`).
    pub custom: bool,
}

/// What a sync does about contacts Voyado does not have yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Create missing contacts and update existing ones.
    Upsert,
    /// Update existing contacts only; none are created.
    Update,
}

impl Mode {
    /// The mode as written in `[sync] mode`: `upsert` or `update`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Upsert => "upsert",
            Mode::Update => "update",
        }
    }
}

/// Which Voyado endpoints carry the rows: one request per contact, or bulk batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// One request per contact.
    Single,
    /// Voyado's bulk endpoints, in batches of up to `bulk_batch_size` items.
    Bulk,
}

/// Validated bulk API settings from `[sync]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkSettings {
    /// Items per bulk request (1 to 4000).
    pub batch_size: usize,
    /// How long a batch may go unreported as finished before its rows are left unconfirmed.
    pub timeout: std::time::Duration,
    /// First wait before polling a batch's status; later waits double, up to 30 s.
    pub poll_interval: std::time::Duration,
}

/// How rows are matched to Voyado contacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// Voyado's own contact id.
    ContactId,
    /// The contact's email address.
    Email,
    /// The contact's mobile phone number.
    MobilePhone,
    /// The contact's social security number.
    SocialSecurityNumber,
    /// The contact's external id, looked up as Voyado's `customKey`.
    ExternalId,
    /// The contact's member number, looked up as Voyado's `customKey`.
    MemberNumber,
}

impl Key {
    /// Every key.
    pub const ALL: [Key; 6] = [
        Key::ContactId,
        Key::Email,
        Key::MobilePhone,
        Key::SocialSecurityNumber,
        Key::ExternalId,
        Key::MemberNumber,
    ];

    /// The key's Voyado name, as written in `[identifier] key` (e.g. `mobilePhone`).
    pub fn as_str(self) -> &'static str {
        match self {
            Key::ContactId => "contactId",
            Key::Email => "email",
            Key::MobilePhone => "mobilePhone",
            Key::SocialSecurityNumber => "socialSecurityNumber",
            Key::ExternalId => "externalId",
            Key::MemberNumber => "memberNumber",
        }
    }

    /// The key with this Voyado name (case-sensitive), or `None`.
    pub fn parse(s: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Validated `[limits]`, plus the checkpoint intervals from `[sync]`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Client-side rate limit in requests per second.
    pub requests_per_second: u32,
    /// Requests in flight at once.
    pub concurrency: u32,
    /// DataFusion's memory pool for the model and the diff, in MiB.
    pub memory_limit_mb: u64,
    /// Identifier buckets for the diff; 0 = chosen from the data size and the memory limit.
    pub diff_partitions: u32,
    /// Retries of one request.
    pub max_retries: u32,
    /// Timeout of each request, in seconds.
    pub request_timeout_secs: u64,
    /// Total time one request may spend retrying, in seconds.
    pub retry_budget_secs: u64,
    /// First retry backoff, in milliseconds; doubles per retry (with jitter), up to 60 s.
    pub retry_initial_backoff_ms: u64,
    /// Confirmed outcomes are appended to the state at least every this many rows.
    pub checkpoint_rows: u64,
    /// Confirmed outcomes are appended to the state at least this often, in seconds.
    pub checkpoint_secs: u64,
}

/// Thresholds: warnings make a committed run exit 3; guards refuse to start (exit 5).
#[derive(Debug, Clone)]
pub struct Thresholds {
    /// Warn when more than this percent of the rows attempted are rejected.
    pub max_rejected_percent: f64,
    /// Warn when more than this percent of the model's rows are invalid.
    pub max_invalid_percent: f64,
    /// Refuse to run when more than this percent of a non-empty snapshot would be deleted.
    pub max_deleted_percent: f64,
    /// Refuse to run when more than this percent of the snapshot changes; `None` = off.
    pub max_changed_percent: Option<f64>,
}

/// Where the model and the change detection run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engine {
    /// DataFusion in this process.
    Local,
    /// A Ballista cluster; `url` is its scheduler, `df://host:port`.
    Ballista {
        /// The scheduler's address, `df://host:port`.
        url: String,
    },
}

impl Engine {
    /// Whether the model and the change detection run on a Ballista cluster.
    pub fn is_ballista(&self) -> bool {
        matches!(self, Engine::Ballista { .. })
    }
}

/// The object-store schemes a location or a `[storage]` prefix may use.
pub(crate) const OBJECT_STORE_SCHEMES: &[&str] =
    &["s3", "s3a", "gs", "az", "abfs", "abfss", "azure"];

/// A local path (absolute) or an object-store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An absolute local filesystem path.
    Local(PathBuf),
    /// An object-store URL (`s3://`, `gs://`, `az://`, ...).
    Url(url::Url),
}

impl Location {
    /// Parses a user-written location; relative paths resolve against `base`.
    pub fn parse(raw: &str, base: &Path) -> std::result::Result<Location, String> {
        if let Some((scheme, _)) = raw.split_once("://") {
            let scheme = scheme.to_ascii_lowercase();
            if scheme == "file" {
                let url = url::Url::parse(raw).map_err(|e| format!("invalid URL: {e}"))?;
                let path = url
                    .to_file_path()
                    .map_err(|_| "invalid file:// URL".to_string())?;
                return Ok(Location::Local(path));
            }
            if !OBJECT_STORE_SCHEMES.contains(&scheme.as_str()) {
                return Err(format!(
                    "unsupported URL scheme {scheme}:// (use a local path, file://, s3://, gs:// or az://)"
                ));
            }
            let url = url::Url::parse(raw).map_err(|e| format!("invalid URL: {e}"))?;
            if url.host_str().unwrap_or("").is_empty() {
                return Err("URL names no bucket or container".to_string());
            }
            return Ok(Location::Url(url));
        }
        if raw.trim().is_empty() {
            return Err("empty path".to_string());
        }
        let p = Path::new(raw);
        Ok(Location::Local(if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }))
    }

    /// The form DataFusion's `ListingTableUrl::parse` and object_store accept.
    pub fn as_table_path(&self) -> String {
        match self {
            Location::Local(p) => p.to_string_lossy().into_owned(),
            Location::Url(u) => u.to_string(),
        }
    }

    /// This location with `segment` appended as a child path.
    pub fn join(&self, segment: &str) -> Location {
        match self {
            Location::Local(p) => Location::Local(p.join(segment)),
            Location::Url(u) => {
                let mut s = u.to_string();
                if !s.ends_with('/') {
                    s.push('/');
                }
                s.push_str(segment);
                Location::Url(url::Url::parse(&s).unwrap_or_else(|_| u.clone()))
            }
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Url(u) => write!(f, "{u}"),
        }
    }
}

/// How the model is split when it is larger than memory: it runs once per slice, each
/// slice reading the rows of the keyed tables whose key hashes to it.
#[derive(Debug, Clone, Default)]
pub struct Slices {
    /// 1 = the model runs once, on whole tables.
    pub count: u32,
    /// (table, key column); tables not listed are read whole by every slice.
    pub keys: Vec<(String, String)>,
}

/// One worker's part of a sharded sync (`--shard i/n`): the rows whose identifier's
/// [`crate::identity::shard`] is `index` among `count` shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This worker's shard, counted from 0.
    pub index: u32,
    /// How many shards the sync is split into (at most `MAX_SHARDS`).
    pub count: u32,
}

/// The most shards a sync may be split into.
pub const MAX_SHARDS: u32 = 1024;

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Shard, String> {
        let bad =
            || format!("--shard {s:?}: expected i/n with 0 <= i < n <= {MAX_SHARDS}, e.g. 0/3");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || count > MAX_SHARDS || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}
