//! Change detection: which valid model rows are new, changed, unchanged or deleted since the
//! last successful sync, by joining the model's rows with the state on the normalised
//! identifier.
//!
//! The join compares a compact view of the state (identifier, row hash, contactId, status)
//! with the model's rows and their freshly computed row hash, so memory grows with the
//! number of identifiers, not with the width of the rows. On the local engine the duplicate
//! check and the join are one operator ([`classify`]); under Ballista, and for a bucket too
//! large to hold, they are SQL (a grouped count joined back, then a full outer join). When
//! the state is too large for the memory budget, or the model runs in slices, the model's
//! rows and the compact state are routed once into per-bucket temporary files by identifier
//! (`voyado_bucket`, see [`crate::spill`]) and each bucket is classified on its own files;
//! under Ballista each bucket is a filtered query instead.
//!
//! [`change_set`] reads top to bottom: `sizing` says how many buckets, the model runs
//! (in slices or whole), the state becomes its compact view (`sql`), and `strategy`
//! picks one of three ways to classify: `bucketed` files, `in_memory` in one operator,
//! or `ballista` queries per bucket. `tally` counts the result as it streams by.

mod ballista;
mod bucketed;
mod classify;
mod in_memory;
mod sizing;
mod sql;
mod strategy;
mod tally;

use std::collections::BTreeMap;

use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::{DataFrame, SessionContext};
use serde::Serialize;

pub(crate) use sizing::size_session;
use sql::Rules;
use strategy::{Inputs, Strategy};
pub(crate) use tally::{Tally, summarize};

use crate::config::Settings;
use crate::error::{Error, Result};
use crate::functions::row_hash;
use crate::state::{self, Manifest, quote};

#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub new: u64,
    pub changed: u64,
    pub unchanged: u64,
    pub deleted: u64,
    pub invalid: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.new += o.new;
        self.changed += o.changed;
        self.unchanged += o.unchanged;
        self.deleted += o.deleted;
        self.invalid += o.invalid;
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Sample {
    pub identifier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    pub counts: Counts,
    pub samples: BTreeMap<String, Vec<Sample>>,
}

/// The planned change set: one frame per identifier bucket, and the current mapping's
/// attribute type classes (recorded with the next snapshot).
pub(crate) struct ChangeSet {
    pub buckets: Vec<DataFrame>,
    /// The state the change set was computed against, with its stored values (staging
    /// reads them to tell which attributes changed).
    pub state: DataFrame,
    pub attributes: BTreeMap<String, String>,
    /// Buckets that may be classified at once (see `bucketed::BUCKETS_AT_ONCE`).
    pub at_once: usize,
    /// Keeps the spilled files the frames read alive.
    _spill: Vec<tempfile::TempDir>,
}

/// The change set of the model against the state: the model planned and checked against
/// the mapping, the identity rules and the comparison with the state.
/// `snapshot` is the loaded state and its manifest, or None for a first run.
/// With `wide` false the value columns are left out of the change set (counting needs
/// only kinds and identifiers); staging and baselines need them.
pub(crate) async fn change_set(
    ctx: &SessionContext,
    settings: &Settings,
    snapshot: Option<(DataFrame, &Manifest)>,
    wide: bool,
) -> Result<ChangeSet> {
    let snapshot_rows = snapshot.as_ref().map(|(_, m)| m.snapshot_rows);
    let state_rows = snapshot_rows.unwrap_or(0);
    let buckets = size_session(ctx, settings, snapshot_rows, wide).await;
    let (slices, slice_files) = crate::model::slices(ctx, settings).await?;
    let schema = slices[0].schema().as_arrow().clone();
    let problems = crate::model::check_output(&schema, settings);
    if !problems.is_empty() {
        return Err(Error::Config(problems));
    }
    let mut attributes = BTreeMap::new();
    for m in &settings.attributes {
        let t = schema
            .field_with_name(&m.column)
            .map(|f| f.data_type().clone())
            .unwrap_or(DataType::Null);
        let class = row_hash::type_class(&t).unwrap_or("null");
        attributes.insert(m.attribute.clone(), class.to_string());
    }
    let rules = Rules::new(settings);
    let (state_df, compact) = compact_state(ctx, settings, snapshot, &attributes)?;
    let inputs = Inputs {
        ctx,
        settings,
        values: rules.compared_values(wide),
        rules,
        compact,
        buckets,
        state_rows,
        wide,
    };
    let frames = match strategy::choose(buckets, settings.engine.is_ballista()) {
        Strategy::Bucketed => bucketed::run(&inputs, slices, slice_files).await?,
        Strategy::InMemory => {
            strategy::whole_model(ctx, slices)?;
            in_memory::run(&inputs, slice_files).await?
        }
        Strategy::Ballista => {
            strategy::whole_model(ctx, slices)?;
            ballista::run(&inputs, slice_files).await?
        }
    };
    Ok(ChangeSet {
        buckets: frames.buckets,
        state: state_df,
        attributes,
        at_once: frames.at_once,
        _spill: frames.spill,
    })
}

/// The state to compare with (an empty one on a first run), registered as `__vs_state`,
/// and the query of its compact view: its stored row hashes, or hashes recomputed from its
/// stored values when they cannot be trusted (another hash version, or attributes typed
/// otherwise than in `attributes`, the current mapping's type classes).
fn compact_state(
    ctx: &SessionContext,
    settings: &Settings,
    snapshot: Option<(DataFrame, &Manifest)>,
    attributes: &BTreeMap<String, String>,
) -> Result<(DataFrame, String)> {
    let key = settings.key.as_str();
    let (state_df, manifest) = match snapshot {
        Some((df, m)) => (df, Some(m)),
        None => (state::empty_snapshot(ctx).map_err(fail("state"))?, None),
    };
    if let Some(m) = manifest
        && m.identifier_key != key
    {
        return Err(Error::config(format!(
            "[identifier] key: the state was built with key {}, not {key}; run `voyado-sync reset` to start over with the new key",
            m.identifier_key
        )));
    }
    let stored_hash_ok = manifest.is_none_or(|m| {
        m.hash_version == row_hash::HASH_VERSION
            && m.attributes
                .iter()
                .all(|(a, class)| attributes.get(a) == Some(class))
    });
    let state_schema = state_df.schema().as_arrow().clone();
    let snap_hash = if stored_hash_ok {
        quote(state::ROW_HASH)
    } else {
        tracing::info!("stored row hashes do not cover the current mapping; comparing values");
        row_hash::sql_call(
            settings
                .attributes
                .iter()
                .map(|m| m.attribute.as_str())
                .filter(|a| state_schema.field_with_name(a).is_ok())
                .map(|a| (a, quote(a))),
        )
    };
    ctx.register_table("__vs_state", state_df.clone().into_view())
        .map_err(fail("state"))?;
    Ok((state_df, sql::compact(&snap_hash)))
}

fn fail(what: &str) -> impl Fn(datafusion::error::DataFusionError) -> Error {
    let what = what.to_string();
    move |e| Error::engine(&what, e)
}
