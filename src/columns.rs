//! The change set's vocabulary: its column names, the kind of each row, and how its
//! string columns are read. Change detection writes it; staging, the sink and the state's
//! commit read it. It stands below all of them, so none reaches into another for a name.

use std::fmt;

use datafusion::arrow::array::builder::make_view;
use datafusion::arrow::array::{Array, AsArray, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};
use crate::strings::Strings;

/// Column names of the classified change set, beside the snapshot's fixed columns
/// (attribute columns follow, by attribute name).
pub(crate) const KIND: &str = "_kind";
pub(crate) const RAW_IDENTIFIER: &str = "_raw_identifier";
pub(crate) const REASON: &str = "_reason";
pub(crate) const PREV_STATUS: &str = "_prev_status";
/// The model's own contactId column (`[identifier] contact_id_column`), when configured.
pub(crate) const KNOWN_CONTACT_ID: &str = "_known_contact_id";
/// Staged only: the attributes a changed row changed, as a list of attribute names.
pub(crate) const CHANGED_ATTRIBUTES: &str = "_changed";

/// What change detection found of one row. Stored in `_kind` as [`ChangeKind::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum ChangeKind {
    New,
    Changed,
    Unchanged,
    Deleted,
    Invalid,
}

impl ChangeKind {
    /// Every kind, the most frequent first (decoding tries them in this order).
    pub(crate) const ALL: [ChangeKind; 5] = [
        ChangeKind::Unchanged,
        ChangeKind::Changed,
        ChangeKind::New,
        ChangeKind::Deleted,
        ChangeKind::Invalid,
    ];

    /// The kind as written in `_kind`, in SQL literals and as a sample key in reports.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            ChangeKind::New => "new",
            ChangeKind::Changed => "changed",
            ChangeKind::Unchanged => "unchanged",
            ChangeKind::Deleted => "deleted",
            ChangeKind::Invalid => "invalid",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<ChangeKind> {
        ChangeKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `_kind` column of a change-set batch, decoded once. Views (what DataFusion reads
/// Parquet strings as) are told by their 16 bytes alone: every kind is short enough to be
/// stored inline, so no string is read.
pub(crate) fn kinds(batch: &RecordBatch) -> Result<Vec<ChangeKind>> {
    let column = batch
        .column_by_name(KIND)
        .ok_or_else(|| Error::Internal(format!("change set has no column {KIND}")))?;
    let strings = Strings::new(column)
        .map_err(|e| Error::Internal(format!("change set column {KIND}: {e}")))?;
    let unknown =
        |s: Option<&str>| Error::Internal(format!("unknown change kind {}", s.unwrap_or("")));
    match &strings {
        Strings::View(a) => {
            let known = ChangeKind::ALL.map(|k| make_view(k.as_str().as_bytes(), 0, 0));
            a.views()
                .iter()
                .enumerate()
                .map(|(i, view)| match known.iter().position(|k| k == view) {
                    Some(p) if a.is_valid(i) => Ok(ChangeKind::ALL[p]),
                    _ => Err(unknown(a.is_valid(i).then(|| a.value(i)))),
                })
                .collect()
        }
        _ => strings
            .iter()
            .map(|s| s.and_then(ChangeKind::parse).ok_or_else(|| unknown(s)))
            .collect(),
    }
}

/// A change-set column as plain strings (identifiers, kinds, reasons arrive as Utf8,
/// Utf8View or null-typed columns depending on the plan).
pub(crate) fn string_column(batch: &RecordBatch, name: &str) -> Result<StringArray> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| Error::Internal(format!("change set has no column {name}")))?;
    let c = cast(c, &DataType::Utf8)
        .map_err(|e| Error::arrow(format!("change set column {name}"), e))?;
    Ok(c.as_string::<i32>().clone())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, StringViewArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;

    fn batch(a: ArrayRef) -> RecordBatch {
        let schema = Schema::new(vec![Field::new(KIND, a.data_type().clone(), true)]);
        RecordBatch::try_new(Arc::new(schema), vec![a]).unwrap()
    }

    #[test]
    fn kinds_keep_their_stored_names() {
        let names: Vec<&str> = ChangeKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names, ["unchanged", "changed", "new", "deleted", "invalid"]);
        for k in ChangeKind::ALL {
            assert_eq!(ChangeKind::parse(k.as_str()), Some(k));
            assert_eq!(k.to_string(), k.as_str());
        }
        assert_eq!(ChangeKind::parse("New"), None);
    }

    #[test]
    fn kinds_decode_alike_from_views_and_plain_strings() {
        let names = ["new", "unchanged", "deleted", "changed", "invalid"];
        let want = [
            ChangeKind::New,
            ChangeKind::Unchanged,
            ChangeKind::Deleted,
            ChangeKind::Changed,
            ChangeKind::Invalid,
        ];
        let views: ArrayRef = Arc::new(StringViewArray::from(names.to_vec()));
        let plain: ArrayRef = Arc::new(StringArray::from(names.to_vec()));
        assert_eq!(kinds(&batch(views)).unwrap(), want);
        assert_eq!(kinds(&batch(plain)).unwrap(), want);
        for bad in [vec![Some("moved")], vec![None]] {
            let views: ArrayRef = Arc::new(StringViewArray::from(bad.clone()));
            let plain: ArrayRef = Arc::new(StringArray::from(bad));
            assert!(kinds(&batch(views)).is_err());
            assert!(kinds(&batch(plain)).is_err());
        }
    }
}
