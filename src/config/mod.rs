//! The user-facing configuration contract: `XxxConfig` (`file.rs`) is what users write
//! (TOML, unknown keys refused), `Settings` (`settings.rs`) is the validated form every later
//! stage relies on, and `validate.rs` turns one into the other a TOML section at a time.

mod file;
mod settings;
mod validate;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub use file::{
    Config, CustomAttributesConfig, DestinationConfig, EngineConfig, GuardsConfig,
    IdentifierConfig, LimitsConfig, ModelConfig, SourceConfig, SyncConfig, WarningsConfig,
};
pub use settings::{
    Api, ApiKeySource, AttributeMapping, BulkSettings, DestinationSettings, Engine, Key, Limits,
    Location, MAX_SHARDS, Mode, Settings, Shard, Slices, Thresholds,
};

/// What a command works on: a config file and, for a sharded sync, the worker's shard.
#[derive(Debug, Clone)]
pub struct Target {
    /// Path of the sync's TOML config file.
    pub config: PathBuf,
    /// The shard this worker handles (`--shard i/n`); `None` for the whole sync.
    pub shard: Option<Shard>,
}

impl From<&Path> for Target {
    fn from(p: &Path) -> Target {
        Target {
            config: p.to_path_buf(),
            shard: None,
        }
    }
}

impl From<&PathBuf> for Target {
    fn from(p: &PathBuf) -> Target {
        Target::from(p.as_path())
    }
}

/// Loads the target's config and applies its shard.
pub fn load_target(target: &Target) -> Result<Settings> {
    let mut settings = load(&target.config)?;
    settings.shard = target.shard;
    Ok(settings)
}

/// Reads and validates a configuration file; every problem found is one line of the error.
pub fn load(path: &Path) -> Result<Settings> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::config(format!("cannot read config file {}: {e}", path.display())))?;
    let config = parse(&text, path)?;
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    validate::validate(config, &dir)
}

/// Parses TOML into [`Config`], turning serde's multi-line report into one line that names
/// the file, line, section and key.
pub fn parse(text: &str, path: &Path) -> Result<Config> {
    toml::from_str::<Config>(text).map_err(|e| {
        let mut msg = e.message().trim().replace('\n', " ");
        if let Some(span) = e.span() {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let section = before
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| l.starts_with('[') && l.ends_with(']'))
                .map(|l| format!(" in {l}"))
                .unwrap_or_default();
            msg = format!("{}:{line}{section}: {msg}", path.display());
        } else {
            msg = format!("{}: {msg}", path.display());
        }
        Error::config(msg)
    })
}
