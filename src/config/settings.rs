//! The validated configuration every later stage relies on. Built only by
//! `validate`, so a value of these types has passed every static check.

use std::fmt;
use std::path::{Path, PathBuf};

/// A validated, ready-to-use configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub name: String,
    pub config_dir: PathBuf,
    /// SQL table name -> where its Parquet data lives.
    pub tables: Vec<(String, Location)>,
    pub model_sql: String,
    /// Where the SQL came from, for error messages.
    pub model_origin: String,
    /// How many slices the model runs in, and by which key column of which table.
    pub slices: Slices,
    pub destination: DestinationSettings,
    pub identifier_column: String,
    pub key: Key,
    /// Optional model column with known contactIds.
    pub contact_id_column: Option<String>,
    /// Mapped columns, sorted by attribute name (the order the row hash uses).
    pub attributes: Vec<AttributeMapping>,
    pub mode: Mode,
    /// Which Voyado endpoints carry the rows.
    pub api: Api,
    pub bulk: BulkSettings,
    /// Base state location; this sync's state lives under `<state>/<name>/`.
    pub state: Location,
    pub lock_stale_secs: u64,
    pub limits: Limits,
    pub thresholds: Thresholds,
    /// Object-store options by URL prefix (`s3://bucket`, `gs://bucket/path`...).
    pub storage: Vec<(String, Vec<(String, String)>)>,
    /// Non-fatal findings, shown by `check`.
    pub notes: Vec<String>,
    /// Set by `--shard i/n`: this worker's rows only, with their own state and lock.
    pub shard: Option<Shard>,
    /// `[datafusion]` session options, full names (`datafusion.` prefixed), checked.
    pub datafusion: Vec<(String, String)>,
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

#[derive(Debug, Clone)]
pub struct DestinationSettings {
    pub url: url::Url,
    pub api_key: ApiKeySource,
    pub contact_type: String,
    pub source: Option<String>,
    pub store_external_id: Option<String>,
}

/// Where the API key comes from. The key itself is read only when needed, never stored here.
#[derive(Debug, Clone)]
pub enum ApiKeySource {
    Env(String),
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeMapping {
    /// Column of the model's output.
    pub column: String,
    /// Voyado contact attribute it is written to.
    pub attribute: String,
    /// Listed under `[custom_attributes]` (rather than `[fields]`).
    pub custom: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Upsert,
    Update,
}

impl Mode {
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
    Single,
    Bulk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkSettings {
    pub batch_size: usize,
    pub timeout: std::time::Duration,
    pub poll_interval: std::time::Duration,
}

/// How rows are matched to Voyado contacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    ContactId,
    Email,
    MobilePhone,
    SocialSecurityNumber,
    ExternalId,
    MemberNumber,
}

impl Key {
    pub const ALL: [Key; 6] = [
        Key::ContactId,
        Key::Email,
        Key::MobilePhone,
        Key::SocialSecurityNumber,
        Key::ExternalId,
        Key::MemberNumber,
    ];

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

    pub fn parse(s: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub requests_per_second: u32,
    pub concurrency: u32,
    pub memory_limit_mb: u64,
    pub diff_partitions: u32,
    pub max_retries: u32,
    pub request_timeout_secs: u64,
    pub retry_budget_secs: u64,
    pub retry_initial_backoff_ms: u64,
    pub checkpoint_rows: u64,
    pub checkpoint_secs: u64,
}

/// Thresholds: warnings make a committed run exit 3; guards refuse to start (exit 5).
#[derive(Debug, Clone)]
pub struct Thresholds {
    pub max_rejected_percent: f64,
    pub max_invalid_percent: f64,
    pub max_deleted_percent: f64,
    pub max_changed_percent: Option<f64>,
}

/// Where the model and the change detection run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engine {
    /// DataFusion in this process.
    Local,
    /// A Ballista cluster; `url` is its scheduler, `df://host:port`.
    Ballista { url: String },
}

impl Engine {
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
    Local(PathBuf),
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
    pub index: u32,
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
