//! Row outcomes, and how they become state deltas: only what Voyado confirmed is recorded.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{Field, Schema};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::state;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Created; the contactId when the answer carried one (bulk answers do not).
    Created(Option<String>),
    Updated(Option<String>),
    /// Nothing to send; the snapshot takes the row's current values.
    Skipped(Option<String>),
    NotFound,
    /// A permanent refusal, with Voyado's message.
    Rejected(String),
    /// A transient failure that outlived its retries: not recorded, sent again next run.
    Failed(String),
    /// Deleted from the model: removed from the snapshot, no Voyado call.
    Deleted,
}

#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct OutcomeCounts {
    pub created: u64,
    pub updated: u64,
    pub skipped: u64,
    pub not_found: u64,
    pub rejected: u64,
    pub failed: u64,
}

impl OutcomeCounts {
    pub fn add(&mut self, o: &Outcome) {
        match o {
            Outcome::Created(_) => self.created += 1,
            Outcome::Updated(_) => self.updated += 1,
            Outcome::Skipped(_) => self.skipped += 1,
            Outcome::NotFound => self.not_found += 1,
            Outcome::Rejected(_) => self.rejected += 1,
            Outcome::Failed(_) => self.failed += 1,
            Outcome::Deleted => {}
        }
    }

    pub fn total(&self) -> u64 {
        self.created + self.updated + self.skipped + self.not_found + self.rejected + self.failed
    }
}

/// Builds the delta rows for `outcomes` (row index in `staged`, outcome): the snapshot
/// columns for each recorded row plus `_op`. Failed rows are left out.
pub fn delta_batch(
    staged: &RecordBatch,
    outcomes: &[(usize, Outcome)],
    attributes: &[String],
) -> Result<Option<RecordBatch>> {
    let recorded: Vec<&(usize, Outcome)> = outcomes
        .iter()
        .filter(|(_, o)| !matches!(o, Outcome::Failed(_)))
        .collect();
    if recorded.is_empty() {
        return Ok(None);
    }
    let err =
        |e: datafusion::arrow::error::ArrowError| Error::Internal(format!("building a delta: {e}"));
    let col = |name: &str| -> Result<&ArrayRef> {
        staged
            .column_by_name(name)
            .ok_or_else(|| Error::Internal(format!("staged change set has no column {name}")))
    };
    let indices = UInt32Array::from_iter_values(recorded.iter().map(|(i, _)| *i as u32));
    let prev_ids = crate::diff::string_column(staged, state::CONTACT_ID)?;
    let mut ids = Vec::with_capacity(recorded.len());
    let mut statuses = Vec::with_capacity(recorded.len());
    let mut ops = Vec::with_capacity(recorded.len());
    for (i, o) in &recorded {
        let prev = prev_ids
            .is_valid(*i)
            .then(|| prev_ids.value(*i).to_string());
        let (id, status, op) = match o {
            // A new contact: an id it had before belonged to a contact since deleted.
            Outcome::Created(id) => (id.clone(), state::DELIVERED, "upsert"),
            Outcome::Updated(id) | Outcome::Skipped(id) => {
                (id.clone().or(prev), state::DELIVERED, "upsert")
            }
            Outcome::NotFound => (None, state::NOT_FOUND, "upsert"),
            Outcome::Rejected(_) => (prev, state::REJECTED, "upsert"),
            Outcome::Deleted => (prev, state::DELIVERED, "delete"),
            Outcome::Failed(_) => continue,
        };
        ids.push(id);
        statuses.push(Some(status));
        ops.push(Some(op));
    }
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    let mut push = |name: &str, a: ArrayRef| {
        fields.push(Field::new(name, a.data_type().clone(), true));
        columns.push(a);
    };
    push(
        state::IDENTIFIER,
        take(col(state::IDENTIFIER)?.as_ref(), &indices, None).map_err(err)?,
    );
    push(state::CONTACT_ID, Arc::new(StringArray::from(ids)));
    push(state::STATUS, Arc::new(StringArray::from(statuses)));
    push(
        state::ROW_HASH,
        take(col(state::ROW_HASH)?.as_ref(), &indices, None).map_err(err)?,
    );
    for a in attributes {
        push(a, take(col(a)?.as_ref(), &indices, None).map_err(err)?);
    }
    push(state::OP, Arc::new(StringArray::from(ops)));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map(Some)
        .map_err(err)
}
