//! `check`: everything that can be validated without sending data.

use crate::config::{self, Settings, Target};
use crate::error::{Error, Result};
use crate::state::State;

/// What `check` found: non-fatal notes (fatal problems are returned together as
/// `Error::Problems`, which exits with the code of the most fundamental one).
#[derive(Debug)]
pub struct CheckOutcome {
    /// The settings the config resolved to.
    pub settings: Settings,
    /// The model's output columns, each as `name type`.
    pub columns: Vec<String>,
    /// Non-fatal notes on the config, one line each.
    pub notes: Vec<String>,
}

/// Validates everything that can be validated without sending data.
pub async fn check(target: impl Into<Target>) -> Result<CheckOutcome> {
    let settings = config::load_target(&target.into())?;
    let mut problems = Vec::new();
    if let Err(p) = settings.destination.api_key.check_available() {
        problems.push(Error::config(p));
    }
    let ctx = crate::catalog::session(&settings)?;
    let mut columns = Vec::new();
    match crate::catalog::register_sources(&ctx, &settings).await {
        Err(e) => problems.push(e),
        Ok(()) => match crate::model::dataframe(&ctx, &settings).await {
            Err(e) => problems.push(e),
            Ok(df) => {
                let schema = df.schema().as_arrow().clone();
                columns = schema
                    .fields()
                    .iter()
                    .map(|f| format!("{} {}", f.name(), f.data_type()))
                    .collect();
                let found = crate::model::check_output(&schema, &settings).into_iter();
                let found = found.chain(crate::model::check_slice_keys(&ctx, &settings).await);
                problems.extend(found.map(Error::config));
            }
        },
    }
    match State::open(&ctx, &settings, false) {
        Err(e) => problems.push(e),
        Ok(state) => match state.manifest().await {
            Err(e) => problems.push(e),
            Ok(Some(m)) if m.identifier_key != settings.key.as_str() => problems.push(Error::config(format!(
                "[identifier] key: the state was built with key {}, not {}; run `voyado-sync reset` to start over with the new key",
                m.identifier_key,
                settings.key.as_str()
            ))),
            Ok(_) => {}
        },
    }
    if !problems.is_empty() {
        return Err(Error::Problems(problems));
    }
    let notes = settings.notes.clone();
    Ok(CheckOutcome {
        settings,
        columns,
        notes,
    })
}
