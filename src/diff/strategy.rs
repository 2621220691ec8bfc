//! Which way a change set is classified, what each way is given, and the steps two of them
//! share. The choice follows the sizing: several buckets on the local engine go through
//! bucket files; one bucket is classified in memory; under Ballista every bucket is a query.

use std::sync::Arc;

use datafusion::prelude::{DataFrame, SessionContext};

use super::sql::Rules;
use super::{classify, fail};
use crate::columns::KNOWN_CONTACT_ID;
use crate::config::Settings;
use crate::error::{Error, Result};

/// The three ways to classify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Strategy {
    /// Model rows and the compact state routed once into per-bucket files, each bucket
    /// classified on its own files (see [`super::bucketed`]).
    Bucketed,
    /// One operator over the whole model and state (see [`super::in_memory`]).
    InMemory,
    /// One SQL plan per bucket over filtered inputs (see [`super::ballista`]).
    Ballista,
}

/// The strategy for `buckets` identifier buckets. Under Ballista bucket files would be
/// written on this machine, which executors may not see: each bucket's query recomputes
/// the model there instead. (A sliced model has buckets >= slices > 1, so it takes the
/// files: slices are refused under Ballista.)
pub(super) fn choose(buckets: u32, ballista: bool) -> Strategy {
    match (ballista, buckets > 1) {
        (true, _) => Strategy::Ballista,
        (false, true) => Strategy::Bucketed,
        (false, false) => Strategy::InMemory,
    }
}

/// What every strategy is given.
pub(super) struct Inputs<'a> {
    pub ctx: &'a SessionContext,
    pub settings: &'a Settings,
    pub rules: Rules,
    /// The query of the compact state view (over `__vs_state`).
    pub compact: String,
    /// The model's value columns the SQL comparison carries (see `Rules::compared_values`).
    pub values: String,
    pub buckets: u32,
    /// The snapshot's rows, 0 on a first run.
    pub state_rows: u64,
    pub wide: bool,
}

/// What a strategy hands back for the change set.
pub(super) struct Frames {
    /// One frame per identifier bucket.
    pub buckets: Vec<DataFrame>,
    /// Buckets that may be classified at once.
    pub at_once: usize,
    /// The spilled files the frames read.
    pub spill: Vec<tempfile::TempDir>,
}

/// Registers the model, run in one piece, as `__vs_model_src` for the strategies that take
/// it whole.
pub(super) fn whole_model(ctx: &SessionContext, slices: Vec<DataFrame>) -> Result<()> {
    let [model] = <[DataFrame; 1]>::try_from(slices)
        .map_err(|_| Error::Internal("a sliced model outside bucket files".into()))?;
    ctx.register_table("__vs_model_src", model.into_view())
        .map_err(fail("model"))?;
    Ok(())
}

/// A counting bucket's frames with the columns the classification expects: what
/// `Rules::routed` and the state's routing left out comes back as nulls, read by nothing a
/// count reports ([`super::Tally`] takes an invalid row's raw identifier as its normalised
/// one when the raw one was left out for being equal).
pub(super) fn narrow(
    model: DataFrame,
    snap: DataFrame,
) -> datafusion::error::Result<(DataFrame, DataFrame)> {
    use datafusion::prelude::lit;
    let null = || lit(datafusion::scalar::ScalarValue::Utf8(None));
    Ok((
        model.with_column(KNOWN_CONTACT_ID, null())?,
        snap.with_column("__s_contact_id", null())?
            .with_column("__s_status", null())?,
    ))
}

/// The change set of `model` (the projection's columns) against the compact `state`, as
/// classified by [`classify`].
pub(super) fn classified(
    ctx: &SessionContext,
    model: DataFrame,
    state: DataFrame,
    settings: &Settings,
    wide: bool,
    expected: u64,
) -> Result<DataFrame> {
    let values = if wide {
        settings
            .attributes
            .iter()
            .map(|m| m.attribute.clone())
            .collect()
    } else {
        Vec::new()
    };
    let table = classify::Classified::new(
        model,
        state,
        settings.key,
        values,
        expected.min(1 << 28) as usize,
    )
    .map_err(|e| Error::engine("change detection", e))?;
    ctx.read_table(Arc::new(table))
        .map_err(|e| Error::engine("change detection", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_buckets_take_files_unless_under_ballista() {
        assert_eq!(choose(1, false), Strategy::InMemory);
        assert_eq!(choose(4, false), Strategy::Bucketed);
        assert_eq!(choose(1, true), Strategy::Ballista);
        assert_eq!(choose(4, true), Strategy::Ballista);
    }
}
