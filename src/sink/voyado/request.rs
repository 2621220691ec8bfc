//! The request builder: staged change-set rows, decoded into one encoded row per new or
//! changed row (with the values to send), in chunks no larger than the sink wants at once.

use datafusion::arrow::array::{Array, AsArray, RecordBatch, StringArray};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;

use super::encode::ColumnEncoder;
use super::outcome::Outcome;
use crate::columns::{
    self, CHANGED_ATTRIBUTES, ChangeKind, KNOWN_CONTACT_ID, PREV_STATUS, string_column,
};
use crate::error::{Error, Result};
use crate::state::{self, SnapshotStatus};
use crate::strings::Strings;

/// One staged row, encoded.
#[derive(Debug, Clone)]
pub struct EncodedRow {
    /// Normalised identifier (the key attribute's value).
    pub identifier: String,
    /// New to the snapshot, or previously not_found / rejected: sends every value.
    pub as_new: bool,
    /// A contactId already known (from the snapshot or the model).
    pub contact_id: Option<String>,
    /// Every non-empty mapped value, as (attribute, JSON text).
    pub full: Vec<(String, String)>,
    /// Changed, non-empty values (changed rows only).
    pub changed: Vec<(String, String)>,
}

fn opt(a: &StringArray, i: usize) -> Option<String> {
    a.is_valid(i).then(|| a.value(i).to_string())
}

/// The rows of one staged chunk as encoded rows: (row, encoded row) for new and changed
/// rows, and the outcomes known without a request (deleted rows: no Voyado call).
#[allow(clippy::type_complexity)]
pub fn encode_rows(
    batch: &RecordBatch,
    attrs: &[String],
) -> Result<(Vec<(usize, Outcome)>, Vec<(usize, EncodedRow)>)> {
    let kinds = columns::kinds(batch)?;
    let ids = string_column(batch, state::IDENTIFIER)?;
    let prev_status = string_column(batch, PREV_STATUS)?;
    let contact_ids = string_column(batch, state::CONTACT_ID)?;
    let known_ids = string_column(batch, KNOWN_CONTACT_ID)?;
    let changed_lists = batch
        .column_by_name(CHANGED_ATTRIBUTES)
        .and_then(|c| c.as_list_opt::<i32>())
        .ok_or_else(|| {
            Error::Internal(format!(
                "staged change set has no list column {CHANGED_ATTRIBUTES}"
            ))
        })?;
    let changed_names = Strings::new(changed_lists.values())
        .map_err(|e| Error::Internal(format!("staged column {CHANGED_ATTRIBUTES}: {e}")))?;
    let offsets = changed_lists.value_offsets();
    let encoders = attrs
        .iter()
        .map(|a| {
            let col = batch
                .column_by_name(a)
                .ok_or_else(|| Error::Internal(format!("staged change set has no column {a}")))?;
            ColumnEncoder::new(col).map(|e| (a.clone(), e))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut known = Vec::new();
    let mut rows = Vec::new();
    for (i, &kind) in kinds.iter().enumerate() {
        match kind {
            ChangeKind::Deleted => {
                known.push((i, Outcome::Deleted));
                continue;
            }
            ChangeKind::New | ChangeKind::Changed => {}
            ChangeKind::Unchanged | ChangeKind::Invalid => continue,
        }
        let prev = prev_status
            .is_valid(i)
            .then(|| prev_status.value(i))
            .and_then(SnapshotStatus::parse);
        let as_new = kind == ChangeKind::New
            || matches!(
                prev,
                Some(SnapshotStatus::NotFound | SnapshotStatus::Rejected)
            );
        let full: Vec<(String, String)> = encoders
            .iter()
            .filter_map(|(a, e)| e.json(i).map(|v| (a.clone(), v)))
            .collect();
        let changed = if as_new || changed_lists.is_null(i) {
            Vec::new()
        } else {
            let names = offsets[i] as usize..offsets[i + 1] as usize;
            full.iter()
                .filter(|(a, _)| names.clone().any(|j| changed_names.get(j) == Some(a)))
                .cloned()
                .collect()
        };
        rows.push((
            i,
            EncodedRow {
                identifier: ids.value(i).to_string(),
                as_new,
                contact_id: opt(&known_ids, i).or_else(|| opt(&contact_ids, i)),
                full,
                changed,
            },
        ));
    }
    Ok((known, rows))
}

/// Staged batches cut into chunks of a fixed number of rows, so a checkpoint never waits
/// for a whole, possibly huge, staged batch.
pub struct Rechunker {
    schema: SchemaRef,
    chunk: usize,
    buffered: Vec<RecordBatch>,
    buffered_rows: usize,
}

impl Rechunker {
    /// A rechunker cutting batches of `schema` into chunks of `chunk` rows.
    pub fn new(schema: SchemaRef, chunk: usize) -> Rechunker {
        Rechunker {
            schema,
            chunk,
            buffered: Vec::new(),
            buffered_rows: 0,
        }
    }

    /// Buffers a staged batch for the chunks to come.
    pub fn push(&mut self, batch: RecordBatch) {
        self.buffered_rows += batch.num_rows();
        self.buffered.push(batch);
    }

    /// The next full chunk, or once the input has `ended`, what is left; None when more
    /// input is needed (or nothing is left).
    pub fn next_chunk(&mut self, ended: bool) -> Result<Option<RecordBatch>> {
        if self.buffered_rows < self.chunk && !(ended && self.buffered_rows > 0) {
            return Ok(None);
        }
        let all = concat_batches(&self.schema, &self.buffered)
            .map_err(|e| Error::arrow("staged rows", e))?;
        let len = self.chunk.min(all.num_rows());
        let batch = all.slice(0, len);
        let rest = all.slice(len, all.num_rows() - len);
        self.buffered_rows = rest.num_rows();
        self.buffered = if self.buffered_rows > 0 {
            vec![rest]
        } else {
            Vec::new()
        };
        Ok(Some(batch))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::builder::{ListBuilder, StringBuilder};
    use datafusion::arrow::array::{ArrayRef, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::columns::KIND;

    /// One staged row: kind, identifier, previous status, contactId, changed attributes
    /// (comma-separated here, a list in the batch), and the attributes `a` (text) and `n`
    /// (number).
    type Row<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        Option<i64>,
    );

    fn staged(rows: &[Row<'_>]) -> RecordBatch {
        let col = |f: fn(&Row<'_>) -> Option<String>| -> ArrayRef {
            Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
        };
        let mut changed = ListBuilder::new(StringBuilder::new());
        for r in rows {
            match r.4 {
                Some(names) => {
                    changed.append_value(names.split(',').map(Some));
                }
                None => changed.append_null(),
            }
        }
        let changed = changed.finish();
        let names = [
            KIND,
            state::IDENTIFIER,
            PREV_STATUS,
            state::CONTACT_ID,
            KNOWN_CONTACT_ID,
            CHANGED_ATTRIBUTES,
            "a",
            "n",
        ];
        let fields: Vec<Field> = names
            .iter()
            .map(|n| {
                let t = match *n {
                    "n" => DataType::Int64,
                    CHANGED_ATTRIBUTES => changed.data_type().clone(),
                    _ => DataType::Utf8,
                };
                Field::new(*n, t, true)
            })
            .collect();
        let columns = vec![
            col(|r| Some(r.0.to_string())),
            col(|r| Some(r.1.to_string())),
            col(|r| r.2.map(String::from)),
            col(|r| r.3.map(String::from)),
            col(|_| None),
            Arc::new(changed.clone()) as ArrayRef,
            col(|r| r.5.map(String::from)),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.6).collect::<Vec<_>>(),
            )) as ArrayRef,
        ];
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn staged_rows_become_encoded_rows_with_only_their_changed_values() {
        let batch = staged(&[
            ("new", "n@x.se", None, None, None, Some("Ann"), Some(1)),
            (
                "changed",
                "c@x.se",
                Some("delivered"),
                Some("c-1"),
                Some("n"),
                Some("Bo"),
                Some(2),
            ),
            (
                "deleted",
                "d@x.se",
                Some("delivered"),
                Some("c-2"),
                None,
                None,
                None,
            ),
            (
                "changed",
                "r@x.se",
                Some("rejected"),
                Some("c-3"),
                Some("a"),
                Some("Cy"),
                None,
            ),
            (
                "unchanged",
                "u@x.se",
                Some("delivered"),
                Some("c-4"),
                None,
                Some("Di"),
                Some(4),
            ),
            (
                "changed",
                "e@x.se",
                Some("delivered"),
                Some("c-5"),
                Some("a"),
                None,
                Some(5),
            ),
        ]);
        let attrs = vec!["a".to_string(), "n".to_string()];
        let (known, rows) = encode_rows(&batch, &attrs).unwrap();
        assert_eq!(known, vec![(2, Outcome::Deleted)]);
        let got: Vec<_> = rows
            .iter()
            .map(|(i, r)| {
                (
                    *i,
                    r.identifier.as_str(),
                    r.as_new,
                    r.contact_id.as_deref(),
                    r.full.clone(),
                    r.changed.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    0,
                    "n@x.se",
                    true,
                    None,
                    pairs(&[("a", "\"Ann\""), ("n", "1")]),
                    vec![]
                ),
                // Changed: only the changed attribute is sent.
                (
                    1,
                    "c@x.se",
                    false,
                    Some("c-1"),
                    pairs(&[("a", "\"Bo\""), ("n", "2")]),
                    pairs(&[("n", "2")])
                ),
                // Rejected last time: sent as new, every value.
                (
                    3,
                    "r@x.se",
                    true,
                    Some("c-3"),
                    pairs(&[("a", "\"Cy\"")]),
                    vec![]
                ),
                // The changed value is empty now: nothing of it is sent.
                (
                    5,
                    "e@x.se",
                    false,
                    Some("c-5"),
                    pairs(&[("n", "5")]),
                    vec![]
                ),
            ]
        );
    }

    #[test]
    fn chunks_hold_a_fixed_number_of_rows_and_the_rest_at_the_end() {
        let batch = staged(&[("new", "a", None, None, None, None, None); 5]);
        let mut r = Rechunker::new(batch.schema(), 3);
        r.push(batch.slice(0, 2));
        assert!(r.next_chunk(false).unwrap().is_none());
        r.push(batch.slice(2, 3));
        assert_eq!(r.next_chunk(false).unwrap().map(|b| b.num_rows()), Some(3));
        assert!(r.next_chunk(false).unwrap().is_none());
        assert_eq!(r.next_chunk(true).unwrap().map(|b| b.num_rows()), Some(2));
        assert!(r.next_chunk(true).unwrap().is_none());
    }
}
