//! Protocol mistakes a client makes that Voyado would not report, or would report only as a
//! silently wrong outcome. Tests of the sink assert that none were recorded.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One kind of protocol mistake. Names are stable: they appear in dumps and docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ViolationKind {
    /// An attribute sent as `null`, `""` or whitespace only: Voyado overwrites with it.
    EmptyValue,
    /// An attribute that is neither standard nor a configured custom one: silently dropped.
    UnknownAttribute,
    /// A computed or generated attribute (`memberNumber`, `age`, ...): silently dropped.
    ReadOnlyAttribute,
    /// No `User-Agent` header: Voyado requires one naming the integration.
    MissingUserAgent,
    /// A body without `Content-Type: application/json`: Voyado answers 500.
    MissingContentType,
    /// `contactType` in a PATCH body: it cannot be changed this way and is ignored.
    ContactTypeInPatch,
    /// `source`, `storeExternalId` or `createAsUnapproved` sent as a header: ignored in v3.
    ParameterAsHeader,
    /// A `/api/v2/` path: this integration is built for v3.
    V2Path,
    /// A path or method the API does not have.
    UnknownEndpoint,
    /// A create for a key that exists, without a lookup that answered 404 for it first.
    CreateForExistingKey,
    /// A bulk request of more than 4000 items: Voyado refuses the whole request.
    OversizedBatch,
}

impl ViolationKind {
    /// Every kind, in declaration order.
    pub const ALL: [ViolationKind; 11] = [
        ViolationKind::EmptyValue,
        ViolationKind::UnknownAttribute,
        ViolationKind::ReadOnlyAttribute,
        ViolationKind::MissingUserAgent,
        ViolationKind::MissingContentType,
        ViolationKind::ContactTypeInPatch,
        ViolationKind::ParameterAsHeader,
        ViolationKind::V2Path,
        ViolationKind::UnknownEndpoint,
        ViolationKind::CreateForExistingKey,
        ViolationKind::OversizedBatch,
    ];
}

/// How often a kind occurred, with the first occurrence as an example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViolationRecord {
    /// How many times the kind occurred.
    pub count: u64,
    /// A description of the first occurrence (method, path, attribute...).
    pub example: String,
}

/// All violations seen so far, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Violations(pub BTreeMap<ViolationKind, ViolationRecord>);

impl Violations {
    /// Counts one occurrence of `kind`, keeping `example` if it is the first.
    pub fn record(&mut self, kind: ViolationKind, example: impl Into<String>) {
        self.0
            .entry(kind)
            .and_modify(|r| r.count += 1)
            .or_insert_with(|| ViolationRecord {
                count: 1,
                example: example.into(),
            });
    }

    /// Occurrences of one kind (0 when never seen).
    pub fn count(&self, kind: ViolationKind) -> u64 {
        self.0.get(&kind).map_or(0, |r| r.count)
    }

    /// Occurrences of every kind together: what sink tests assert to be zero.
    pub fn total(&self) -> u64 {
        self.0.values().map(|r| r.count).sum()
    }

    /// The count and first example of `kind`, `None` when never seen.
    pub fn get(&self, kind: ViolationKind) -> Option<&ViolationRecord> {
        self.0.get(&kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_keeps_the_first_example() {
        let mut v = Violations::default();
        v.record(ViolationKind::EmptyValue, "first");
        v.record(ViolationKind::EmptyValue, "second");
        v.record(ViolationKind::V2Path, "v2");
        assert_eq!(v.count(ViolationKind::EmptyValue), 2);
        assert_eq!(
            v.get(ViolationKind::EmptyValue).map(|r| r.example.as_str()),
            Some("first")
        );
        assert_eq!(v.total(), 3);
        assert_eq!(v.count(ViolationKind::UnknownEndpoint), 0);
    }
}
