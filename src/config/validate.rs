//! Static validation: everything that can be checked from the file alone. Checks that need
//! the model's output schema (columns exist, types supported) live in `model`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use super::Config;
use crate::error::{Error, Result};

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
    pub shard: Option<super::Shard>,
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

/// Voyado's documented maximum number of items in one bulk request.
pub const MAX_BULK_BATCH: u32 = 4000;

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
            if !matches!(
                scheme.as_str(),
                "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" | "azure"
            ) {
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

/// Voyado's documented standard contact attributes that integrations may write.
pub const STANDARD_ATTRIBUTES: &[&str] = &[
    "firstName",
    "lastName",
    "street",
    "zipCode",
    "city",
    "careOf",
    "email",
    "mobilePhone",
    "socialSecurityNumber",
    "externalId",
    "countryCode",
    "country",
    "birthDay",
    "gender",
    "createdInStore",
    "store",
];

/// Attributes Voyado computes or manages itself; writing them is refused.
const READ_ONLY_ATTRIBUTES: &[&str] = &[
    "id",
    "contactId",
    "contactType",
    "memberNumber",
    "age",
    "rfm",
    "nps",
];

fn valid_name(s: &str, allow_dash_dot: bool) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (allow_dash_dot && "-.".contains(c)))
}

fn valid_attribute(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// Validates a parsed [`Config`], collecting every problem rather than stopping at the first.
pub fn validate(config: Config, dir: &Path) -> Result<Settings> {
    let mut problems: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    if !valid_name(&config.name, true) {
        problems.push(format!(
            "name: {:?} must start with a letter and hold only letters, digits, '_', '-' and '.' (it names the state folder)",
            config.name
        ));
    }

    // [source]
    let mut tables = Vec::new();
    if config.source.tables.is_empty() {
        problems.push("[source] tables: no table configured".to_string());
    }
    for (table, raw) in &config.source.tables {
        if !valid_name(table, false) {
            problems.push(format!(
                "[source] tables.{table}: not a valid SQL table name (letters, digits and '_')"
            ));
        }
        match Location::parse(raw, dir) {
            Ok(loc) => tables.push((table.clone(), loc)),
            Err(e) => problems.push(format!("[source] tables.{table}: {e}: {raw}")),
        }
    }

    // [model]
    let (model_sql, model_origin) = match (&config.model.query, &config.model.sql) {
        (Some(_), Some(_)) => {
            problems.push("[model]: set either query or sql, not both".to_string());
            (String::new(), String::new())
        }
        (None, None) => {
            problems.push("[model]: set query (a .sql file) or sql (inline SQL)".to_string());
            (String::new(), String::new())
        }
        (Some(q), None) => {
            let path = dir.join(q);
            match std::fs::read_to_string(&path) {
                Ok(sql) if !sql.trim().is_empty() => (sql, path.display().to_string()),
                Ok(_) => {
                    problems.push(format!("[model] query: {} is empty", path.display()));
                    (String::new(), String::new())
                }
                Err(e) => {
                    problems.push(format!(
                        "[model] query: cannot read {}: {}",
                        path.display(),
                        e.kind()
                    ));
                    (String::new(), String::new())
                }
            }
        }
        (None, Some(sql)) => {
            if sql.trim().is_empty() {
                problems.push("[model] sql: is empty".to_string());
            }
            (sql.clone(), "[model] sql".to_string())
        }
    };

    // [destination]
    let dest = &config.destination;
    let url = match url::Url::parse(&dest.url) {
        Ok(u) => {
            match (u.scheme(), u.host()) {
                (_, None) => problems.push(format!("[destination] url: {} has no host", dest.url)),
                ("https", Some(_)) => {}
                ("http", Some(h)) if is_loopback(&h) => {}
                ("http", Some(_)) => problems.push(format!(
                    "[destination] url: {} must use https (plain http is allowed only for loopback hosts)",
                    dest.url
                )),
                (s, _) => problems.push(format!(
                    "[destination] url: unsupported scheme {s}:// (use https)"
                )),
            }
            if !matches!(u.path(), "" | "/") || u.query().is_some() {
                problems.push(format!(
                    "[destination] url: {} must be the tenant's base URL, without a path or query",
                    dest.url
                ));
            }
            Some(u)
        }
        Err(e) => {
            problems.push(format!(
                "[destination] url: invalid URL {:?}: {e}",
                dest.url
            ));
            None
        }
    };
    let api_key = match (&dest.api_key_env, &dest.api_key_file) {
        (Some(_), Some(_)) => {
            problems.push(
                "[destination]: set either api_key_env or api_key_file, not both".to_string(),
            );
            None
        }
        (None, None) => {
            problems.push(
                "[destination]: set api_key_env (a variable name) or api_key_file (a path)"
                    .to_string(),
            );
            None
        }
        (Some(var), None) => {
            if var.trim().is_empty() {
                problems.push("[destination] api_key_env: is empty".to_string());
            }
            Some(ApiKeySource::Env(var.clone()))
        }
        (None, Some(f)) => Some(ApiKeySource::File(dir.join(f))),
    };
    if dest.contact_type.trim().is_empty() {
        problems.push("[destination] contact_type: is empty".to_string());
    }

    // [sync]
    let mode = match config.sync.mode.as_str() {
        "upsert" => Some(Mode::Upsert),
        "update" => Some(Mode::Update),
        other => {
            problems.push(format!(
                "[sync] mode: {other:?} is not one of \"upsert\", \"update\""
            ));
            None
        }
    };
    let api = match config.sync.api.as_str() {
        "single" => Some(Api::Single),
        "bulk" => Some(Api::Bulk),
        other => {
            problems.push(format!(
                "[sync] api: {other:?} is not one of \"single\", \"bulk\""
            ));
            None
        }
    };
    if !(1..=MAX_BULK_BATCH).contains(&config.sync.bulk_batch_size) {
        problems.push(format!(
            "[sync] bulk_batch_size: {} is not between 1 and {MAX_BULK_BATCH} (Voyado's maximum per bulk request)",
            config.sync.bulk_batch_size
        ));
    }
    if config.sync.bulk_timeout_secs == 0 {
        problems.push("[sync] bulk_timeout_secs: must be at least 1".to_string());
    }
    if config.sync.bulk_poll_interval_ms == 0 {
        problems.push("[sync] bulk_poll_interval_ms: must be at least 1".to_string());
    }
    let state = match Location::parse(&config.sync.state, dir) {
        Ok(l) => Some(l),
        Err(e) => {
            problems.push(format!("[sync] state: {e}: {}", config.sync.state));
            None
        }
    };

    // [identifier]
    let key = Key::parse(&config.identifier.key);
    match key {
        None => problems.push(format!(
            "[identifier] key: {:?} is not one of {}",
            config.identifier.key,
            Key::ALL.map(Key::as_str).join(", ")
        )),
        Some(k @ (Key::ContactId | Key::MemberNumber)) if mode == Some(Mode::Upsert) => {
            problems.push(format!(
                "[identifier] key: {} cannot be used with mode \"upsert\": Voyado assigns it, so a contact cannot be created from it (use mode \"update\")",
                k.as_str()
            ))
        }
        _ => {}
    }
    if let (Some(k @ (Key::ContactId | Key::MemberNumber)), Some(Api::Bulk)) = (key, api) {
        problems.push(format!(
            "[sync] api: \"bulk\" cannot be used with [identifier] key {}: bulk items are matched by the contact type's key attribute (email, mobilePhone, externalId or socialSecurityNumber); use api \"single\"",
            k.as_str()
        ));
    }
    if config.identifier.column.trim().is_empty() {
        problems.push("[identifier] column: is empty".to_string());
    }

    // [fields] and [custom_attributes]
    let mut attributes: Vec<AttributeMapping> = Vec::new();
    let mut seen_columns: BTreeSet<&str> = BTreeSet::new();
    let mut seen_attrs: BTreeMap<String, String> = BTreeMap::new();
    let id_col = config.identifier.column.as_str();
    let custom_set: BTreeSet<&str> = config
        .custom_attributes
        .columns
        .iter()
        .map(String::as_str)
        .collect();
    let entries = config
        .fields
        .iter()
        .map(|(c, a)| (c.as_str(), a.as_str(), false))
        .chain(
            config
                .custom_attributes
                .columns
                .iter()
                .map(|c| (c.as_str(), c.as_str(), true)),
        );
    for (column, attribute, custom) in entries {
        let place = if custom {
            format!("[custom_attributes] columns: {column:?}")
        } else {
            format!("[fields] {column}")
        };
        if column == id_col {
            problems.push(format!(
                "{place}: column {column} is the identifier column; it is sent as the key attribute, do not map it again"
            ));
            continue;
        }
        if !seen_columns.insert(column) {
            problems.push(format!("{place}: column {column} is mapped twice"));
            continue;
        }
        if !valid_attribute(attribute) {
            problems.push(format!(
                "{place}: {attribute:?} is not a valid attribute name (letters, digits and '_', starting with a letter)"
            ));
            continue;
        }
        if READ_ONLY_ATTRIBUTES.contains(&attribute) {
            problems.push(format!(
                "{place}: attribute {attribute} is managed by Voyado and cannot be written"
            ));
            continue;
        }
        if let Some(k) = key
            && k.as_str() == attribute
        {
            problems.push(format!(
                "{place}: attribute {attribute} is the identifier key; its value comes from [identifier] column"
            ));
            continue;
        }
        if let Some(other) = seen_attrs.insert(attribute.to_string(), column.to_string()) {
            problems.push(format!(
                "{place}: columns {other} and {column} both map to attribute {attribute}"
            ));
            continue;
        }
        if !custom && !STANDARD_ATTRIBUTES.contains(&attribute) && !custom_set.contains(attribute) {
            notes.push(format!(
                "[fields] {column} = {attribute:?}: not a standard Voyado attribute; it must exist as a custom attribute on the tenant, because Voyado silently ignores unknown attributes"
            ));
        }
        attributes.push(AttributeMapping {
            column: column.to_string(),
            attribute: attribute.to_string(),
            custom,
        });
    }
    attributes.sort_by(|a, b| a.attribute.cmp(&b.attribute));
    if config.fields.is_empty() && config.custom_attributes.columns.is_empty() {
        problems.push(
            "[fields]: no column is mapped; map at least one under [fields] or [custom_attributes]"
                .to_string(),
        );
    }
    if matches!(key, Some(Key::ExternalId | Key::MemberNumber)) {
        notes.push(format!(
            "[identifier] key {}: looked up as Voyado's customKey, which works only where the tenant uses this attribute as its custom key",
            config.identifier.key
        ));
    }

    // [limits]
    let l = &config.limits;
    if l.requests_per_second == 0 {
        problems.push("[limits] requests_per_second: must be at least 1".to_string());
    }
    if l.concurrency == 0 {
        problems.push("[limits] concurrency: must be at least 1".to_string());
    }
    if l.memory_limit_mb < 64 {
        problems.push("[limits] memory_limit_mb: must be at least 64".to_string());
    }
    if l.request_timeout_secs == 0 {
        problems.push("[limits] request_timeout_secs: must be at least 1".to_string());
    }
    if config.sync.checkpoint_rows == 0 {
        problems.push("[sync] checkpoint_rows: must be at least 1".to_string());
    }
    if config.sync.checkpoint_secs == 0 {
        problems.push("[sync] checkpoint_secs: must be at least 1".to_string());
    }
    let pct = |name: &str, v: f64, problems: &mut Vec<String>| {
        if !(0.0..=100.0).contains(&v) {
            problems.push(format!("{name}: {v} is not a percentage between 0 and 100"));
        }
    };
    pct(
        "[warnings] max_rejected_percent",
        config.warnings.max_rejected_percent,
        &mut problems,
    );
    pct(
        "[warnings] max_invalid_percent",
        config.warnings.max_invalid_percent,
        &mut problems,
    );
    pct(
        "[guards] max_deleted_percent",
        config.guards.max_deleted_percent,
        &mut problems,
    );
    if let Some(v) = config.guards.max_changed_percent {
        pct("[guards] max_changed_percent", v, &mut problems);
    }
    if let Some(c) = &config.identifier.contact_id_column {
        if c == id_col {
            problems.push("[identifier] contact_id_column: must differ from column".to_string());
        }
        if seen_columns.contains(c.as_str()) {
            problems.push(format!(
                "[identifier] contact_id_column: column {c} is also mapped as an attribute"
            ));
        }
    }
    if config.sync.lock_stale_secs == 0 {
        problems.push("[sync] lock_stale_secs: must be at least 1".to_string());
    }

    let mut storage = Vec::new();
    for (prefix, options) in &config.storage {
        let scheme = prefix
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(
            scheme.as_deref(),
            Some("s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" | "azure")
        ) {
            problems.push(format!(
                "[storage.\"{prefix}\"]: not an object-store URL (s3://, gs://, az://)"
            ));
            continue;
        }
        let mut opts = Vec::new();
        for (key, value) in options {
            let Some(text) = option_text(value) else {
                problems.push(format!(
                    "[storage.\"{prefix}\"] {key}: must be a string, number or boolean"
                ));
                continue;
            };
            opts.push((key.clone(), text));
        }
        storage.push((prefix.clone(), opts));
    }

    let mut datafusion = Vec::new();
    let mut probe = datafusion::config::ConfigOptions::new();
    for (key, value) in &config.datafusion {
        let name = if key.starts_with("datafusion.") {
            key.clone()
        } else {
            format!("datafusion.{key}")
        };
        let Some(text) = option_text(value) else {
            problems.push(format!(
                "[datafusion] {key}: must be a string, number or boolean"
            ));
            continue;
        };
        // Statistics make DataFusion 55 read a column as a constant when its min equals
        // its max, and NaN is left out of both: wrong values would be sent.
        if name == "datafusion.execution.collect_statistics" {
            problems.push(format!(
                "[datafusion] {key}: cannot be set: with file statistics DataFusion 55 reads a NaN among equal values as that value"
            ));
            continue;
        }
        match probe.set(&name, &text) {
            Ok(()) => datafusion.push((name, text)),
            Err(e) => problems.push(format!(
                "[datafusion] {key}: {}",
                crate::error::one_line(&e)
            )),
        }
    }
    let engine = validate_engine(&config.engine, &mut problems);
    let slices = validate_slices(&config.model, &tables, &engine, &mut problems);

    if !problems.is_empty() {
        return Err(Error::Config(problems));
    }
    let (Some(url), Some(api_key), Some(mode), Some(state), Some(key), Some(api)) =
        (url, api_key, mode, state, key, api)
    else {
        return Err(Error::Internal(
            "config validation passed without all values".into(),
        ));
    };
    Ok(Settings {
        name: config.name,
        config_dir: dir.to_path_buf(),
        tables,
        model_sql,
        model_origin,
        slices,
        destination: DestinationSettings {
            url,
            api_key,
            contact_type: config.destination.contact_type,
            source: config.destination.source,
            store_external_id: config.destination.store_external_id,
        },
        identifier_column: config.identifier.column,
        contact_id_column: config.identifier.contact_id_column,
        key,
        attributes,
        mode,
        api,
        bulk: BulkSettings {
            batch_size: config.sync.bulk_batch_size as usize,
            timeout: std::time::Duration::from_secs(config.sync.bulk_timeout_secs),
            poll_interval: std::time::Duration::from_millis(config.sync.bulk_poll_interval_ms),
        },
        state,
        lock_stale_secs: config.sync.lock_stale_secs,
        limits: Limits {
            requests_per_second: l.requests_per_second,
            concurrency: l.concurrency,
            memory_limit_mb: l.memory_limit_mb,
            diff_partitions: l.diff_partitions,
            max_retries: l.max_retries,
            request_timeout_secs: l.request_timeout_secs,
            retry_budget_secs: l.retry_budget_secs,
            retry_initial_backoff_ms: l.retry_initial_backoff_ms,
            checkpoint_rows: config.sync.checkpoint_rows,
            checkpoint_secs: config.sync.checkpoint_secs,
        },
        thresholds: Thresholds {
            max_rejected_percent: config.warnings.max_rejected_percent,
            max_invalid_percent: config.warnings.max_invalid_percent,
            max_deleted_percent: config.guards.max_deleted_percent,
            max_changed_percent: config.guards.max_changed_percent,
        },
        storage,
        notes,
        shard: None,
        datafusion,
        engine,
    })
}

/// An option value as the text its consumer parses (object_store and DataFusion options
/// are strings); tables and arrays are not options.
fn option_text(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

/// Model slices: see [`Slices`].
#[derive(Debug, Clone, Default)]
pub struct Slices {
    /// 1 = the model runs once, on whole tables.
    pub count: u32,
    /// (table, key column); tables not listed are read whole by every slice.
    pub keys: Vec<(String, String)>,
}

/// Each slice is a file per partition while sources are split.
pub const MAX_SLICES: u32 = 256;

fn validate_slices(
    model: &super::ModelConfig,
    tables: &[(String, Location)],
    engine: &Engine,
    problems: &mut Vec<String>,
) -> Slices {
    let count = model.partitions.unwrap_or(1);
    if count == 0 || count > MAX_SLICES {
        problems.push(format!(
            "[model] partitions: {count} is out of range (1 to {MAX_SLICES})"
        ));
        return Slices::default();
    }
    if count > 1 && model.partition_keys.is_empty() {
        problems.push(
            "[model] partition_keys: required with partitions > 1: the key column of each large table, e.g. { customers = \"customer_id\", orders = \"customer_id\" }"
                .to_string(),
        );
    }
    if count == 1 && !model.partition_keys.is_empty() {
        problems.push(
            "[model] partition_keys: only used with partitions > 1; set partitions or remove them"
                .to_string(),
        );
    }
    if count > 1 && engine.is_ballista() {
        problems.push(
            "[model] partitions: applies to the local engine; a Ballista cluster runs the model in its executors' memory"
                .to_string(),
        );
    }
    for (table, column) in &model.partition_keys {
        if !tables.iter().any(|(t, _)| t == table) {
            problems.push(format!(
                "[model] partition_keys.{table}: no such table in [source] tables"
            ));
        }
        if column.trim().is_empty() {
            problems.push(format!(
                "[model] partition_keys.{table}: the key column is empty"
            ));
        }
    }
    Slices {
        count,
        keys: model
            .partition_keys
            .iter()
            .map(|(t, c)| (t.clone(), c.clone()))
            .collect(),
    }
}

fn validate_engine(config: &super::EngineConfig, problems: &mut Vec<String>) -> Engine {
    match config.kind.as_deref().unwrap_or("local") {
        "local" => {
            if config.url.is_some() {
                problems.push(
                    "[engine] url: only used with kind = \"ballista\"; remove it or set kind"
                        .to_string(),
                );
            }
            Engine::Local
        }
        "ballista" => {
            if !cfg!(feature = "ballista") {
                problems.push(
                    "[engine] kind = \"ballista\": this voyado-sync was built without the `ballista` feature (build it with --features ballista)"
                        .to_string(),
                );
            }
            let Some(raw) = &config.url else {
                problems.push(
                    "[engine] url: required with kind = \"ballista\" (the scheduler, e.g. df://127.0.0.1:50050)"
                        .to_string(),
                );
                return Engine::Local;
            };
            match url::Url::parse(raw) {
                Ok(u) if u.scheme() == "df" && u.host_str().is_some_and(|h| !h.is_empty()) => {}
                _ => problems.push(format!(
                    "[engine] url: {raw:?} is not a Ballista scheduler URL (df://host:port)"
                )),
            }
            Engine::Ballista { url: raw.clone() }
        }
        other => {
            problems.push(format!(
                "[engine] kind: {other:?} is not \"local\" or \"ballista\""
            ));
            Engine::Local
        }
    }
}
