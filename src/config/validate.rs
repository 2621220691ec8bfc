//! Static validation: everything that can be checked from the file alone, one function per
//! TOML section. Each returns its part of [`Settings`] and adds what it finds to one
//! [`Findings`], so `check` reports every problem at once. Checks that need the model's
//! output schema (columns exist, types supported) live in `model`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use super::file::{
    Config, CustomAttributesConfig, DestinationConfig, EngineConfig, GuardsConfig,
    IdentifierConfig, LimitsConfig, ModelConfig, SourceConfig, SyncConfig, WarningsConfig,
};
use super::settings::{
    Api, ApiKeySource, AttributeMapping, BulkSettings, DestinationSettings, Engine, Key, Limits,
    Location, Mode, OBJECT_STORE_SCHEMES, Settings, Slices, Thresholds,
};
use crate::error::{Error, Result};

/// Voyado's documented maximum number of items in one bulk request.
const MAX_BULK_BATCH: u32 = 4000;

/// Each slice is a file per partition while sources are split.
const MAX_SLICES: u32 = 256;

/// Voyado's documented standard contact attributes that integrations may write.
const STANDARD_ATTRIBUTES: &[&str] = &[
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

/// What validation found: problems refuse the config (one line each), notes are shown by
/// `check` and do not.
#[derive(Debug, Default)]
struct Findings {
    problems: Vec<String>,
    notes: Vec<String>,
}

impl Findings {
    fn problem(&mut self, message: impl Into<String>) {
        self.problems.push(message.into());
    }

    fn note(&mut self, message: impl Into<String>) {
        self.notes.push(message.into());
    }
}

/// Validates a parsed [`Config`], collecting every problem rather than stopping at the first.
///
/// The calls run in the order `check` lists problems in, which users and their scripts have
/// come to read: that is why `[sync]`'s checkpoint and lock keys and `[identifier]`'s
/// `contact_id_column` are checked after `[fields]` rather than with their sections.
pub(super) fn validate(config: Config, dir: &Path) -> Result<Settings> {
    let Config {
        name,
        source,
        model,
        destination,
        identifier,
        fields,
        custom_attributes,
        sync,
        limits,
        warnings,
        guards,
        storage,
        datafusion,
        engine,
    } = config;
    let mut found = Findings::default();

    check_name(&name, &mut found);
    let tables = check_source(&source, dir, &mut found);
    let (model_sql, model_origin) = check_model_sql(&model, dir, &mut found);
    let destination = check_destination(destination, dir, &mut found);
    let delivery = check_sync(&sync, dir, &mut found);
    let key = check_identifier(&identifier, delivery.mode, delivery.api, &mut found);
    let attributes = check_fields(&fields, &custom_attributes, &identifier, key, &mut found);
    note_custom_key(&identifier, key, &mut found);
    let limits = check_limits(&limits, &sync, &mut found);
    let thresholds = check_thresholds(&warnings, &guards, &mut found);
    check_contact_id_column(&identifier, &fields, &custom_attributes, &mut found);
    let lock_stale_secs = check_lock(&sync, &mut found);
    let storage = check_storage(&storage, &mut found);
    let datafusion = check_datafusion(&datafusion, &mut found);
    let engine = check_engine(&engine, &mut found);
    let slices = check_slices(&model, &tables, &engine, &mut found);

    if !found.problems.is_empty() {
        return Err(Error::Config(found.problems));
    }
    let (Some(destination), Some(mode), Some(api), Some(state), Some(key)) = (
        destination,
        delivery.mode,
        delivery.api,
        delivery.state,
        key,
    ) else {
        return Err(Error::Internal(
            "config validation passed without all values".into(),
        ));
    };
    Ok(Settings {
        name,
        config_dir: dir.to_path_buf(),
        tables,
        model_sql,
        model_origin,
        slices,
        destination,
        identifier_column: identifier.column,
        contact_id_column: identifier.contact_id_column,
        key,
        attributes,
        mode,
        api,
        bulk: delivery.bulk,
        state,
        lock_stale_secs,
        limits,
        thresholds,
        storage,
        notes: found.notes,
        shard: None,
        datafusion,
        engine,
    })
}

/// Top-level `name`: it names the state folder, so it must be a safe path segment.
fn check_name(name: &str, found: &mut Findings) {
    if !valid_name(name, true) {
        found.problem(format!(
            "name: {name:?} must start with a letter and hold only letters, digits, '_', '-' and '.' (it names the state folder)"
        ));
    }
}

/// `[source]`: each table's SQL name and location, relative paths resolved against `dir`.
fn check_source(
    source: &SourceConfig,
    dir: &Path,
    found: &mut Findings,
) -> Vec<(String, Location)> {
    if source.tables.is_empty() {
        found.problem("[source] tables: no table configured");
    }
    let mut tables = Vec::new();
    for (table, raw) in &source.tables {
        if !valid_name(table, false) {
            found.problem(format!(
                "[source] tables.{table}: not a valid SQL table name (letters, digits and '_')"
            ));
        }
        match Location::parse(raw, dir) {
            Ok(loc) => tables.push((table.clone(), loc)),
            Err(e) => found.problem(format!("[source] tables.{table}: {e}: {raw}")),
        }
    }
    tables
}

/// `[model]` `query` or `sql`: the model's SQL and where it came from, for error messages.
/// Empty strings stand in when a problem was found, since the config is refused anyway.
fn check_model_sql(model: &ModelConfig, dir: &Path, found: &mut Findings) -> (String, String) {
    match (&model.query, &model.sql) {
        (Some(_), Some(_)) => found.problem("[model]: set either query or sql, not both"),
        (None, None) => found.problem("[model]: set query (a .sql file) or sql (inline SQL)"),
        (Some(q), None) => {
            let path = dir.join(q);
            match std::fs::read_to_string(&path) {
                Ok(sql) if !sql.trim().is_empty() => return (sql, path.display().to_string()),
                Ok(_) => found.problem(format!("[model] query: {} is empty", path.display())),
                Err(e) => found.problem(format!(
                    "[model] query: cannot read {}: {}",
                    path.display(),
                    e.kind()
                )),
            }
        }
        (None, Some(sql)) => {
            if sql.trim().is_empty() {
                found.problem("[model] sql: is empty");
            }
            return (sql.clone(), "[model] sql".to_string());
        }
    }
    (String::new(), String::new())
}

/// `[model]` `partitions` and `partition_keys`: how many slices the model runs in. Checked
/// last because it needs the `[source]` tables and the `[engine]`.
fn check_slices(
    model: &ModelConfig,
    tables: &[(String, Location)],
    engine: &Engine,
    found: &mut Findings,
) -> Slices {
    let count = model.partitions.unwrap_or(1);
    if count == 0 || count > MAX_SLICES {
        found.problem(format!(
            "[model] partitions: {count} is out of range (1 to {MAX_SLICES})"
        ));
        return Slices::default();
    }
    if count > 1 && model.partition_keys.is_empty() {
        found.problem(
            "[model] partition_keys: required with partitions > 1: the key column of each large table, e.g. { customers = \"customer_id\", orders = \"customer_id\" }",
        );
    }
    if count == 1 && !model.partition_keys.is_empty() {
        found.problem(
            "[model] partition_keys: only used with partitions > 1; set partitions or remove them",
        );
    }
    if count > 1 && engine.is_ballista() {
        found.problem(
            "[model] partitions: applies to the local engine; a Ballista cluster runs the model in its executors' memory",
        );
    }
    for (table, column) in &model.partition_keys {
        if !tables.iter().any(|(t, _)| t == table) {
            found.problem(format!(
                "[model] partition_keys.{table}: no such table in [source] tables"
            ));
        }
        if column.trim().is_empty() {
            found.problem(format!(
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

/// `[destination]`: the tenant's URL and where its API key is read from (never the key).
fn check_destination(
    dest: DestinationConfig,
    dir: &Path,
    found: &mut Findings,
) -> Option<DestinationSettings> {
    let url = check_destination_url(&dest.url, found);
    let api_key = match (&dest.api_key_env, &dest.api_key_file) {
        (Some(_), Some(_)) => {
            found.problem("[destination]: set either api_key_env or api_key_file, not both");
            None
        }
        (None, None) => {
            found.problem(
                "[destination]: set api_key_env (a variable name) or api_key_file (a path)",
            );
            None
        }
        (Some(var), None) => {
            if var.trim().is_empty() {
                found.problem("[destination] api_key_env: is empty");
            }
            Some(ApiKeySource::Env(var.clone()))
        }
        (None, Some(f)) => Some(ApiKeySource::File(dir.join(f))),
    };
    if dest.contact_type.trim().is_empty() {
        found.problem("[destination] contact_type: is empty");
    }
    Some(DestinationSettings {
        url: url?,
        api_key: api_key?,
        contact_type: dest.contact_type,
        source: dest.source,
        store_external_id: dest.store_external_id,
    })
}

/// `[destination] url`: the tenant's base URL, https unless the host is loopback (the
/// emulator and tests), so the API key never travels in the clear.
fn check_destination_url(raw: &str, found: &mut Findings) -> Option<url::Url> {
    let u = match url::Url::parse(raw) {
        Ok(u) => u,
        Err(e) => {
            found.problem(format!("[destination] url: invalid URL {raw:?}: {e}"));
            return None;
        }
    };
    match (u.scheme(), u.host()) {
        (_, None) => found.problem(format!("[destination] url: {raw} has no host")),
        ("https", Some(_)) => {}
        ("http", Some(h)) if is_loopback(&h) => {}
        ("http", Some(_)) => found.problem(format!(
            "[destination] url: {raw} must use https (plain http is allowed only for loopback hosts)"
        )),
        (s, _) => found.problem(format!(
            "[destination] url: unsupported scheme {s}:// (use https)"
        )),
    }
    if !matches!(u.path(), "" | "/") || u.query().is_some() {
        found.problem(format!(
            "[destination] url: {raw} must be the tenant's base URL, without a path or query"
        ));
    }
    Some(u)
}

/// What `[sync]` decides about delivery: `None` where the key was refused.
struct Delivery {
    mode: Option<Mode>,
    api: Option<Api>,
    bulk: BulkSettings,
    state: Option<Location>,
}

/// `[sync]` `mode`, `api`, the bulk keys and `state`.
fn check_sync(sync: &SyncConfig, dir: &Path, found: &mut Findings) -> Delivery {
    let mode = match sync.mode.as_str() {
        "upsert" => Some(Mode::Upsert),
        "update" => Some(Mode::Update),
        other => {
            found.problem(format!(
                "[sync] mode: {other:?} is not one of \"upsert\", \"update\""
            ));
            None
        }
    };
    let api = match sync.api.as_str() {
        "single" => Some(Api::Single),
        "bulk" => Some(Api::Bulk),
        other => {
            found.problem(format!(
                "[sync] api: {other:?} is not one of \"single\", \"bulk\""
            ));
            None
        }
    };
    if !(1..=MAX_BULK_BATCH).contains(&sync.bulk_batch_size) {
        found.problem(format!(
            "[sync] bulk_batch_size: {} is not between 1 and {MAX_BULK_BATCH} (Voyado's maximum per bulk request)",
            sync.bulk_batch_size
        ));
    }
    at_least_one("[sync] bulk_timeout_secs", sync.bulk_timeout_secs, found);
    at_least_one(
        "[sync] bulk_poll_interval_ms",
        sync.bulk_poll_interval_ms,
        found,
    );
    let state = match Location::parse(&sync.state, dir) {
        Ok(l) => Some(l),
        Err(e) => {
            found.problem(format!("[sync] state: {e}: {}", sync.state));
            None
        }
    };
    Delivery {
        mode,
        api,
        bulk: BulkSettings {
            batch_size: sync.bulk_batch_size as usize,
            timeout: Duration::from_secs(sync.bulk_timeout_secs),
            poll_interval: Duration::from_millis(sync.bulk_poll_interval_ms),
        },
        state,
    }
}

/// `[sync] lock_stale_secs`: how old a lock must be before another run may take it over.
fn check_lock(sync: &SyncConfig, found: &mut Findings) -> u64 {
    at_least_one("[sync] lock_stale_secs", sync.lock_stale_secs, found);
    sync.lock_stale_secs
}

/// `[identifier]` `key` and `column`: the key must suit the `[sync]` mode and api.
fn check_identifier(
    identifier: &IdentifierConfig,
    mode: Option<Mode>,
    api: Option<Api>,
    found: &mut Findings,
) -> Option<Key> {
    let key = Key::parse(&identifier.key);
    match key {
        None => found.problem(format!(
            "[identifier] key: {:?} is not one of {}",
            identifier.key,
            Key::ALL.map(Key::as_str).join(", ")
        )),
        Some(k @ (Key::ContactId | Key::MemberNumber)) if mode == Some(Mode::Upsert) => {
            found.problem(format!(
                "[identifier] key: {} cannot be used with mode \"upsert\": Voyado assigns it, so a contact cannot be created from it (use mode \"update\")",
                k.as_str()
            ))
        }
        _ => {}
    }
    if let (Some(k @ (Key::ContactId | Key::MemberNumber)), Some(Api::Bulk)) = (key, api) {
        found.problem(format!(
            "[sync] api: \"bulk\" cannot be used with [identifier] key {}: bulk items are matched by the contact type's key attribute (email, mobilePhone, externalId or socialSecurityNumber); use api \"single\"",
            k.as_str()
        ));
    }
    if identifier.column.trim().is_empty() {
        found.problem("[identifier] column: is empty");
    }
    key
}

/// `[identifier]` keys looked up as Voyado's customKey work only on tenants set up for it.
fn note_custom_key(identifier: &IdentifierConfig, key: Option<Key>, found: &mut Findings) {
    if matches!(key, Some(Key::ExternalId | Key::MemberNumber)) {
        found.note(format!(
            "[identifier] key {}: looked up as Voyado's customKey, which works only where the tenant uses this attribute as its custom key",
            identifier.key
        ));
    }
}

/// `[identifier] contact_id_column`: a column of its own, neither the identifier nor mapped.
fn check_contact_id_column(
    identifier: &IdentifierConfig,
    fields: &BTreeMap<String, String>,
    custom: &CustomAttributesConfig,
    found: &mut Findings,
) {
    let Some(c) = &identifier.contact_id_column else {
        return;
    };
    if *c == identifier.column {
        found.problem("[identifier] contact_id_column: must differ from column");
    } else if fields.contains_key(c) || custom.columns.contains(c) {
        found.problem(format!(
            "[identifier] contact_id_column: column {c} is also mapped as an attribute"
        ));
    }
}

/// `[fields]` and `[custom_attributes]`: the mapped columns, sorted by attribute name (the
/// order the row hash uses). A column refused for one reason is not checked for the next.
fn check_fields(
    fields: &BTreeMap<String, String>,
    custom: &CustomAttributesConfig,
    identifier: &IdentifierConfig,
    key: Option<Key>,
    found: &mut Findings,
) -> Vec<AttributeMapping> {
    let id_col = identifier.column.as_str();
    let custom_set: BTreeSet<&str> = custom.columns.iter().map(String::as_str).collect();
    let entries = fields
        .iter()
        .map(|(c, a)| (c.as_str(), a.as_str(), false))
        .chain(
            custom
                .columns
                .iter()
                .map(|c| (c.as_str(), c.as_str(), true)),
        );
    let mut attributes: Vec<AttributeMapping> = Vec::new();
    let mut seen_columns: BTreeSet<&str> = BTreeSet::new();
    let mut seen_attrs: BTreeMap<&str, &str> = BTreeMap::new();
    for (column, attribute, is_custom) in entries {
        let place = if is_custom {
            format!("[custom_attributes] columns: {column:?}")
        } else {
            format!("[fields] {column}")
        };
        let refusal = if column == id_col {
            Some(format!(
                "column {column} is the identifier column; it is sent as the key attribute, do not map it again"
            ))
        } else if !seen_columns.insert(column) {
            Some(format!("column {column} is mapped twice"))
        } else if !valid_attribute(attribute) {
            Some(format!(
                "{attribute:?} is not a valid attribute name (letters, digits and '_', starting with a letter)"
            ))
        } else if READ_ONLY_ATTRIBUTES.contains(&attribute) {
            Some(format!(
                "attribute {attribute} is managed by Voyado and cannot be written"
            ))
        } else if key.is_some_and(|k| k.as_str() == attribute) {
            Some(format!(
                "attribute {attribute} is the identifier key; its value comes from [identifier] column"
            ))
        } else {
            seen_attrs.insert(attribute, column).map(|other| {
                format!("columns {other} and {column} both map to attribute {attribute}")
            })
        };
        if let Some(refusal) = refusal {
            found.problem(format!("{place}: {refusal}"));
            continue;
        }
        if !is_custom
            && !STANDARD_ATTRIBUTES.contains(&attribute)
            && !custom_set.contains(attribute)
        {
            found.note(format!(
                "[fields] {column} = {attribute:?}: not a standard Voyado attribute; it must exist as a custom attribute on the tenant, because Voyado silently ignores unknown attributes"
            ));
        }
        attributes.push(AttributeMapping {
            column: column.to_string(),
            attribute: attribute.to_string(),
            custom: is_custom,
        });
    }
    attributes.sort_by(|a, b| a.attribute.cmp(&b.attribute));
    if fields.is_empty() && custom.columns.is_empty() {
        found.problem(
            "[fields]: no column is mapped; map at least one under [fields] or [custom_attributes]",
        );
    }
    attributes
}

/// `[limits]`, with `[sync]`'s checkpoint keys: together they pace a run.
fn check_limits(limits: &LimitsConfig, sync: &SyncConfig, found: &mut Findings) -> Limits {
    at_least_one(
        "[limits] requests_per_second",
        limits.requests_per_second.into(),
        found,
    );
    at_least_one("[limits] concurrency", limits.concurrency.into(), found);
    if limits.memory_limit_mb < 64 {
        found.problem("[limits] memory_limit_mb: must be at least 64");
    }
    at_least_one(
        "[limits] request_timeout_secs",
        limits.request_timeout_secs,
        found,
    );
    at_least_one("[sync] checkpoint_rows", sync.checkpoint_rows, found);
    at_least_one("[sync] checkpoint_secs", sync.checkpoint_secs, found);
    Limits {
        requests_per_second: limits.requests_per_second,
        concurrency: limits.concurrency,
        memory_limit_mb: limits.memory_limit_mb,
        diff_partitions: limits.diff_partitions,
        max_retries: limits.max_retries,
        request_timeout_secs: limits.request_timeout_secs,
        retry_budget_secs: limits.retry_budget_secs,
        retry_initial_backoff_ms: limits.retry_initial_backoff_ms,
        checkpoint_rows: sync.checkpoint_rows,
        checkpoint_secs: sync.checkpoint_secs,
    }
}

/// `[warnings]` and `[guards]`: percentages, so between 0 and 100.
fn check_thresholds(
    warnings: &WarningsConfig,
    guards: &GuardsConfig,
    found: &mut Findings,
) -> Thresholds {
    let mut percent = |name: &str, v: f64| {
        if !(0.0..=100.0).contains(&v) {
            found.problem(format!("{name}: {v} is not a percentage between 0 and 100"));
        }
    };
    percent(
        "[warnings] max_rejected_percent",
        warnings.max_rejected_percent,
    );
    percent(
        "[warnings] max_invalid_percent",
        warnings.max_invalid_percent,
    );
    percent("[guards] max_deleted_percent", guards.max_deleted_percent);
    if let Some(v) = guards.max_changed_percent {
        percent("[guards] max_changed_percent", v);
    }
    Thresholds {
        max_rejected_percent: warnings.max_rejected_percent,
        max_invalid_percent: warnings.max_invalid_percent,
        max_deleted_percent: guards.max_deleted_percent,
        max_changed_percent: guards.max_changed_percent,
    }
}

/// `[storage."<prefix>"]`: object-store options by URL prefix, as text.
fn check_storage(
    storage: &BTreeMap<String, BTreeMap<String, toml::Value>>,
    found: &mut Findings,
) -> Vec<(String, Vec<(String, String)>)> {
    let mut checked = Vec::new();
    for (prefix, options) in storage {
        let scheme = prefix
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase());
        if !scheme.is_some_and(|s| OBJECT_STORE_SCHEMES.contains(&s.as_str())) {
            found.problem(format!(
                "[storage.\"{prefix}\"]: not an object-store URL (s3://, gs://, az://)"
            ));
            continue;
        }
        let mut opts = Vec::new();
        for (key, value) in options {
            match option_text(value) {
                Some(text) => opts.push((key.clone(), text)),
                None => found.problem(format!(
                    "[storage.\"{prefix}\"] {key}: must be a string, number or boolean"
                )),
            }
        }
        checked.push((prefix.clone(), opts));
    }
    checked
}

/// `[datafusion]`: session options by full name (`datafusion.` prefixed), each tried on a
/// default session's options so a misspelt name or bad value is refused here.
fn check_datafusion(
    options: &BTreeMap<String, toml::Value>,
    found: &mut Findings,
) -> Vec<(String, String)> {
    let mut checked = Vec::new();
    let mut probe = datafusion::config::ConfigOptions::new();
    for (key, value) in options {
        let name = if key.starts_with("datafusion.") {
            key.clone()
        } else {
            format!("datafusion.{key}")
        };
        let Some(text) = option_text(value) else {
            found.problem(format!(
                "[datafusion] {key}: must be a string, number or boolean"
            ));
            continue;
        };
        // Statistics make DataFusion 55 read a column as a constant when its min equals
        // its max, and NaN is left out of both: wrong values would be sent.
        if name == "datafusion.execution.collect_statistics" {
            found.problem(format!(
                "[datafusion] {key}: cannot be set: with file statistics DataFusion 55 reads a NaN among equal values as that value"
            ));
            continue;
        }
        match probe.set(&name, &text) {
            Ok(()) => checked.push((name, text)),
            Err(e) => found.problem(format!(
                "[datafusion] {key}: {}",
                crate::error::one_line(&e)
            )),
        }
    }
    checked
}

/// `[engine]`: local DataFusion, or a Ballista scheduler this build can reach.
fn check_engine(config: &EngineConfig, found: &mut Findings) -> Engine {
    match config.kind.as_deref().unwrap_or("local") {
        "local" => {
            if config.url.is_some() {
                found.problem(
                    "[engine] url: only used with kind = \"ballista\"; remove it or set kind",
                );
            }
            Engine::Local
        }
        "ballista" => {
            if !cfg!(feature = "ballista") {
                found.problem(
                    "[engine] kind = \"ballista\": this voyado-sync was built without the `ballista` feature (build it with --features ballista)",
                );
            }
            let Some(raw) = &config.url else {
                found.problem(
                    "[engine] url: required with kind = \"ballista\" (the scheduler, e.g. df://127.0.0.1:50050)",
                );
                return Engine::Local;
            };
            match url::Url::parse(raw) {
                Ok(u) if u.scheme() == "df" && u.host_str().is_some_and(|h| !h.is_empty()) => {}
                _ => found.problem(format!(
                    "[engine] url: {raw:?} is not a Ballista scheduler URL (df://host:port)"
                )),
            }
            Engine::Ballista { url: raw.clone() }
        }
        other => {
            found.problem(format!(
                "[engine] kind: {other:?} is not \"local\" or \"ballista\""
            ));
            Engine::Local
        }
    }
}

fn at_least_one(name: &str, value: u64, found: &mut Findings) {
    if value == 0 {
        found.problem(format!("{name}: must be at least 1"));
    }
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

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    const VALID: &str = r#"
name = "shop"

[source]
tables = { customers = "data/customers.parquet" }

[model]
sql = "SELECT * FROM customers"

[destination]
url = "https://tenant.voyado.com"
api_key_env = "VOYADO_API_KEY"

[identifier]
column = "email"
key = "email"

[fields]
first_name = "firstName"
last_name = "lastName"

[sync]
mode = "upsert"
"#;

    fn dir() -> PathBuf {
        PathBuf::from("/srv/sync")
    }

    fn parse(text: &str) -> Result<Config> {
        crate::config::parse(text, Path::new("sync.toml"))
    }

    fn settings(text: &str) -> Result<Settings> {
        validate(parse(text)?, &dir())
    }

    /// The problems `text` is refused with, one line each.
    fn problems(text: &str) -> Vec<String> {
        match settings(text) {
            Err(Error::Config(problems)) => problems,
            other => panic!("expected config problems, got {other:?}"),
        }
    }

    /// `VALID` with `section`'s first line followed by `lines`.
    fn with(section: &str, lines: &str) -> String {
        let text = if VALID.contains(&format!("\n{section}\n")) {
            VALID.to_string()
        } else {
            format!("{VALID}\n{section}\n")
        };
        text.replacen(
            &format!("\n{section}\n"),
            &format!("\n{section}\n{lines}\n"),
            1,
        )
    }

    #[test]
    fn a_valid_file_gets_the_documented_defaults() {
        let s = settings(VALID).unwrap();
        assert_eq!(s.name, "shop");
        assert_eq!(
            s.tables,
            vec![(
                "customers".to_string(),
                Location::Local(dir().join("data/customers.parquet"))
            )]
        );
        assert_eq!(s.model_origin, "[model] sql");
        assert_eq!((s.slices.count, s.slices.keys.len()), (1, 0));
        assert_eq!(s.destination.contact_type, "Member");
        assert!(matches!(&s.destination.api_key, ApiKeySource::Env(v) if v == "VOYADO_API_KEY"));
        assert_eq!(
            (s.key, s.mode, s.api),
            (Key::Email, Mode::Upsert, Api::Single)
        );
        assert_eq!(s.state, Location::Local(dir().join(".voyado-sync")));
        assert_eq!(s.lock_stale_secs, 3600);
        assert_eq!(
            s.bulk,
            BulkSettings {
                batch_size: 4000,
                timeout: Duration::from_secs(1800),
                poll_interval: Duration::from_millis(1000),
            }
        );
        let l = &s.limits;
        assert_eq!(
            (
                l.requests_per_second,
                l.concurrency,
                l.memory_limit_mb,
                l.diff_partitions
            ),
            (40, 8, 2048, 0)
        );
        assert_eq!(
            (l.max_retries, l.request_timeout_secs, l.retry_budget_secs),
            (8, 30, 300)
        );
        assert_eq!(l.retry_initial_backoff_ms, 500);
        assert_eq!((l.checkpoint_rows, l.checkpoint_secs), (5000, 30));
        let t = &s.thresholds;
        assert_eq!(
            (
                t.max_rejected_percent,
                t.max_invalid_percent,
                t.max_deleted_percent
            ),
            (5.0, 5.0, 20.0)
        );
        assert_eq!(t.max_changed_percent, None);
        assert_eq!(s.engine, Engine::Local);
        assert!(s.storage.is_empty() && s.datafusion.is_empty() && s.notes.is_empty());
        assert!(s.shard.is_none());
    }

    #[test]
    fn attributes_are_sorted_by_attribute_name() {
        let s = settings(&with("[custom_attributes]", "columns = [\"aaLoyalty\"]")).unwrap();
        let pairs: Vec<(&str, &str, bool)> = s
            .attributes
            .iter()
            .map(|a| (a.column.as_str(), a.attribute.as_str(), a.custom))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("aaLoyalty", "aaLoyalty", true),
                ("first_name", "firstName", false),
                ("last_name", "lastName", false),
            ]
        );
    }

    // Two tables of cases, a line or so per message, so every section's refusals read
    // together; split, each part would only repeat the loop below.
    #[test]
    fn each_section_names_the_key_at_fault() {
        // (text in `VALID`, its replacement, the start of the problem expected)
        let replaced: &[(&str, &str, &str)] = &[
            ("\"shop\"", "\"9shop\"", "name: \"9shop\" must start"),
            (
                "{ customers = ",
                "{ \"bad table\" = ",
                "[source] tables.bad table: not a valid SQL table name",
            ),
            (
                "\"data/customers.parquet\"",
                "\"ftp://host/x\"",
                "[source] tables.customers: unsupported URL scheme ftp://",
            ),
            (
                "sql = \"SELECT * FROM customers\"",
                "query = \"missing.sql\"",
                "[model] query: cannot read /srv/sync/missing.sql",
            ),
            (
                "https://tenant",
                "http://tenant",
                "[destination] url: http://tenant.voyado.com must use https",
            ),
            (
                "voyado.com\"",
                "voyado.com/api\"",
                "[destination] url: https://tenant.voyado.com/api must be the tenant's base URL",
            ),
            (
                "key = \"email\"",
                "key = \"phone\"",
                "[identifier] key: \"phone\" is not one of contactId, email",
            ),
            (
                "key = \"email\"",
                "key = \"contactId\"",
                "[identifier] key: contactId cannot be used with mode \"upsert\"",
            ),
        ];
        // (section, lines added to it, the start of the problem expected)
        let added: &[(&str, &str, &str)] = &[
            (
                "[model]",
                "query = \"q.sql\"",
                "[model]: set either query or sql, not both",
            ),
            (
                "[destination]",
                "api_key_file = \"key.txt\"",
                "[destination]: set either api_key_env or api_key_file, not both",
            ),
            (
                "[destination]",
                "contact_type = \" \"",
                "[destination] contact_type: is empty",
            ),
            (
                "[identifier]",
                "contact_id_column = \"first_name\"",
                "[identifier] contact_id_column: column first_name is also mapped as an attribute",
            ),
            (
                "[identifier]",
                "contact_id_column = \"email\"",
                "[identifier] contact_id_column: must differ from column",
            ),
            (
                "[fields]",
                "email = \"email\"",
                "[fields] email: column email is the identifier column",
            ),
            (
                "[fields]",
                "points = \"contactType\"",
                "[fields] points: attribute contactType is managed by Voyado",
            ),
            (
                "[fields]",
                "nick = \"firstName\"",
                "[fields] nick: columns first_name and nick both map to attribute firstName",
            ),
            (
                "[custom_attributes]",
                "columns = [\"first_name\"]",
                "[custom_attributes] columns: \"first_name\": column first_name is mapped twice",
            ),
            (
                "[sync]",
                "api = \"batch\"",
                "[sync] api: \"batch\" is not one of \"single\", \"bulk\"",
            ),
            (
                "[sync]",
                "bulk_batch_size = 0",
                "[sync] bulk_batch_size: 0 is not between 1 and 4000",
            ),
            (
                "[sync]",
                "checkpoint_secs = 0",
                "[sync] checkpoint_secs: must be at least 1",
            ),
            (
                "[sync]",
                "lock_stale_secs = 0",
                "[sync] lock_stale_secs: must be at least 1",
            ),
            (
                "[sync]",
                "state = \"ftp://host/state\"",
                "[sync] state: unsupported URL scheme ftp://",
            ),
            (
                "[limits]",
                "concurrency = 0",
                "[limits] concurrency: must be at least 1",
            ),
            (
                "[limits]",
                "memory_limit_mb = 63",
                "[limits] memory_limit_mb: must be at least 64",
            ),
            (
                "[warnings]",
                "max_rejected_percent = 101",
                "[warnings] max_rejected_percent: 101 is not a percentage between 0 and 100",
            ),
            (
                "[guards]",
                "max_changed_percent = -1",
                "[guards] max_changed_percent: -1 is not a percentage",
            ),
            (
                "[storage.\"https://host\"]",
                "region = \"eu\"",
                "[storage.\"https://host\"]: not an object-store URL",
            ),
            (
                "[storage.\"s3://bucket\"]",
                "region = [\"eu\"]",
                "[storage.\"s3://bucket\"] region: must be a string, number or boolean",
            ),
            (
                "[datafusion]",
                "\"execution.collect_statistics\" = true",
                "[datafusion] execution.collect_statistics: cannot be set",
            ),
            (
                "[datafusion]",
                "\"execution.no_such_option\" = 1",
                "[datafusion] execution.no_such_option: ",
            ),
            (
                "[engine]",
                "url = \"df://127.0.0.1:50050\"",
                "[engine] url: only used with kind = \"ballista\"",
            ),
            (
                "[engine]",
                "kind = \"spark\"",
                "[engine] kind: \"spark\" is not",
            ),
            (
                "[model]",
                "partitions = 0",
                "[model] partitions: 0 is out of range (1 to 256)",
            ),
            (
                "[model]",
                "partitions = 2\npartition_keys = { orders = \"id\" }",
                "[model] partition_keys.orders: no such table in [source] tables",
            ),
        ];
        let texts = replaced
            .iter()
            .map(|(from, to, expected)| (VALID.replace(from, to), *expected))
            .chain(
                added
                    .iter()
                    .map(|(section, lines, expected)| (with(section, lines), *expected)),
            );
        for (text, expected) in texts {
            let problems = problems(&text);
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "expected {expected:?} among {problems:?}"
            );
        }
    }

    #[test]
    fn every_problem_is_reported_at_once_in_section_order() {
        let text = VALID
            .replace("\"shop\"", "\"\"")
            .replace(
                "mode = \"upsert\"",
                "mode = \"sideways\"\nlock_stale_secs = 0",
            )
            .replace("key = \"email\"", "key = \"phone\"")
            .replace("[fields]\n", "[fields]\nemail = \"email\"\n")
            + "\n[limits]\nconcurrency = 0\n\n[guards]\nmax_deleted_percent = 200\n\n[engine]\nkind = \"spark\"\n";
        let problems = problems(&text);
        let keys: Vec<&str> = problems
            .iter()
            .map(|p| p.split(':').next().unwrap_or(""))
            .collect();
        assert_eq!(
            keys,
            vec![
                "name",
                "[sync] mode",
                "[identifier] key",
                "[fields] email",
                "[limits] concurrency",
                "[guards] max_deleted_percent",
                "[sync] lock_stale_secs",
                "[engine] kind",
            ],
            "{problems:?}"
        );
    }

    #[test]
    fn missing_choices_are_problems_not_defaults() {
        let text = VALID
            .replace("sql = \"SELECT * FROM customers\"\n", "")
            .replace("api_key_env = \"VOYADO_API_KEY\"\n", "")
            .replace("first_name = \"firstName\"\nlast_name = \"lastName\"\n", "");
        assert_eq!(
            problems(&text),
            vec![
                "[model]: set query (a .sql file) or sql (inline SQL)",
                "[destination]: set api_key_env (a variable name) or api_key_file (a path)",
                "[fields]: no column is mapped; map at least one under [fields] or [custom_attributes]",
            ]
        );
    }

    #[test]
    fn notes_name_what_the_tenant_must_provide() {
        let text = with("[fields]", "points = \"loyaltyPoints\"")
            .replace("key = \"email\"", "key = \"externalId\"");
        let s = settings(&text).unwrap();
        assert_eq!(s.notes.len(), 2, "{:?}", s.notes);
        assert!(s.notes[0].starts_with("[fields] points = \"loyaltyPoints\": not a standard"));
        assert!(
            s.notes[1].starts_with("[identifier] key externalId: looked up as Voyado's customKey")
        );
    }

    #[test]
    fn bulk_needs_a_key_the_bulk_endpoints_match_by() {
        let text = with("[sync]", "api = \"bulk\"")
            .replace("key = \"email\"", "key = \"memberNumber\"")
            .replace("mode = \"upsert\"", "mode = \"update\"");
        let problems = problems(&text);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with(
                "[sync] api: \"bulk\" cannot be used with [identifier] key memberNumber"
            )
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line_and_section() {
        let Err(Error::Config(problems)) = parse(&with("[limits]", "concurency = 1")) else {
            panic!("an unknown key was accepted");
        };
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("sync.toml:") && problems[0].contains("in [limits]"),
            "{problems:?}"
        );
        assert!(problems[0].contains("concurency"), "{problems:?}");
    }
}
