//! Row outcomes: one per staged row, and what the state records of each (only what
//! Voyado confirmed).

use serde::Serialize;

use crate::state::{Recorded, Recording};

/// What became of one staged row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Created; the contactId when the answer carried one (bulk answers do not).
    Created(Option<String>),
    /// Updated; the contactId when known.
    Updated(Option<String>),
    /// Nothing to send; the snapshot takes the row's current values.
    Skipped(Option<String>),
    /// No such contact in Voyado, and the sync mode or key does not create one.
    NotFound,
    /// A permanent refusal, with Voyado's message.
    Rejected(String),
    /// A transient failure that outlived its retries: not recorded, sent again next run.
    Failed(String),
    /// Deleted from the model: removed from the snapshot, no Voyado call.
    Deleted,
}

impl Outcome {
    /// The outcome's name in reports: the key of its count in [`OutcomeCounts`] and of its
    /// samples.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Outcome::Created(_) => "created",
            Outcome::Updated(_) => "updated",
            Outcome::Skipped(_) => "skipped",
            Outcome::NotFound => "not_found",
            Outcome::Rejected(_) => "rejected",
            Outcome::Failed(_) => "failed",
            Outcome::Deleted => "deleted",
        }
    }
}

/// Serialised field by field into reports, each field named as [`Outcome::as_str`].
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct OutcomeCounts {
    /// Rows created.
    pub created: u64,
    /// Rows updated.
    pub updated: u64,
    /// Rows with nothing to send.
    pub skipped: u64,
    /// Rows whose contact Voyado does not have.
    pub not_found: u64,
    /// Rows Voyado refused permanently.
    pub rejected: u64,
    /// Rows that failed transiently, sent again next run.
    pub failed: u64,
}

impl OutcomeCounts {
    /// Counts one outcome (deleted rows are not counted).
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

    /// All rows counted.
    pub fn total(&self) -> u64 {
        self.created + self.updated + self.skipped + self.not_found + self.rejected + self.failed
    }
}

impl Recorded for Outcome {
    fn recording(&self) -> Option<Recording<'_>> {
        Some(match self {
            Outcome::Created(id) => Recording::Created(id.as_deref()),
            Outcome::Updated(id) | Outcome::Skipped(id) => Recording::Delivered(id.as_deref()),
            Outcome::NotFound => Recording::NotFound,
            Outcome::Rejected(_) => Recording::Rejected,
            Outcome::Deleted => Recording::Deleted,
            Outcome::Failed(_) => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_counted_outcome_is_reported_under_its_name() {
        let all = [
            Outcome::Created(None),
            Outcome::Updated(None),
            Outcome::Skipped(None),
            Outcome::NotFound,
            Outcome::Rejected(String::new()),
            Outcome::Failed(String::new()),
        ];
        for o in &all {
            let mut counts = OutcomeCounts::default();
            counts.add(o);
            let json = serde_json::to_value(counts).unwrap();
            assert_eq!(json[o.as_str()], 1, "{o:?}");
        }
        let keys = serde_json::to_value(OutcomeCounts::default()).unwrap();
        assert_eq!(keys.as_object().unwrap().len(), all.len());
    }
}
