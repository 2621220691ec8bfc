//! String columns of any Arrow layout, read in place: casting views (what DataFusion reads
//! Parquet strings as) to plain strings copies every value.

use datafusion::arrow::array::builder::make_view;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringArray, StringViewArray};
use datafusion::arrow::compute::cast;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, FieldRef, SchemaRef};
use datafusion::arrow::error::Result as ArrowResult;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::Result;

/// A string column: plain strings and views as they are, a null column as its length, any
/// other type (large strings, integers) cast to plain strings.
pub(crate) enum Strings {
    Utf8(StringArray),
    View(StringViewArray),
    Null(usize),
}

impl Strings {
    pub(crate) fn new(a: &ArrayRef) -> Result<Self> {
        Ok(match a.data_type() {
            DataType::Utf8View => Strings::View(a.as_string_view().clone()),
            DataType::Null => Strings::Null(a.len()),
            DataType::Utf8 => Strings::Utf8(a.as_string::<i32>().clone()),
            _ => Strings::Utf8(cast(a, &DataType::Utf8)?.as_string::<i32>().clone()),
        })
    }

    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<&str> {
        match self {
            Strings::Utf8(a) => a.is_valid(i).then(|| a.value(i)),
            Strings::View(a) => a.is_valid(i).then(|| a.value(i)),
            Strings::Null(_) => None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Strings::Utf8(a) => a.len(),
            Strings::View(a) => a.len(),
            Strings::Null(n) => *n,
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = Option<&str>> {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// `t` with views as plain arrays and dictionaries as their values. Written to files so:
/// a view keeps its batch's whole buffers alive (a writer would copy them out every time,
/// a reader hold them per row), and an IPC file cannot change a dictionary between batches.
pub(crate) fn plain_type(t: &DataType) -> DataType {
    match t {
        DataType::Dictionary(_, v) => plain_type(v),
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        other => other.clone(),
    }
}

/// `fields` with [`plain_type`]s.
pub(crate) fn plain_fields<'a>(fields: impl IntoIterator<Item = &'a FieldRef>) -> Vec<Field> {
    (fields.into_iter())
        .map(|f| f.as_ref().clone().with_data_type(plain_type(f.data_type())))
        .collect()
}

/// `columns` as a batch of `schema`, each cast to its field's type where it differs.
pub(crate) fn cast_columns(columns: &[ArrayRef], schema: &SchemaRef) -> ArrowResult<RecordBatch> {
    let columns = (columns.iter().zip(schema.fields()))
        .map(|(c, f)| match c.data_type() == f.data_type() {
            true => Ok(Arc::clone(c)),
            false => cast(c, f.data_type()),
        })
        .collect::<ArrowResult<Vec<_>>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns)
}

/// The view of `s` in a view array whose buffer `block` is `bytes`: held inline when it is
/// 12 bytes or shorter, else appended to `bytes` and pointed at. (The caller keeps `bytes`
/// under 4 GiB.)
pub(crate) fn view_of(s: &str, block: u32, bytes: &mut Vec<u8>) -> u128 {
    let view = make_view(s.as_bytes(), block, bytes.len() as u32);
    if s.len() > 12 {
        bytes.extend_from_slice(s.as_bytes());
    }
    view
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use datafusion::arrow::array::{Int64Array, LargeStringArray, NullArray};

    #[test]
    fn every_layout_reads_the_same_values() {
        let values = vec![Some("a"), None, Some("a longer value than twelve bytes")];
        let plain: ArrayRef = Arc::new(StringArray::from(values.clone()));
        let view: ArrayRef = Arc::new(StringViewArray::from(values.clone()));
        let large: ArrayRef = Arc::new(LargeStringArray::from(values.clone()));
        for a in [plain, view, large] {
            let s = Strings::new(&a).unwrap();
            assert_eq!(s.iter().collect::<Vec<_>>(), values, "{}", a.data_type());
        }
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![Some(7), None]));
        let s = Strings::new(&ints).unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), [Some("7"), None]);
        let nulls: ArrayRef = Arc::new(NullArray::new(2));
        assert_eq!(
            Strings::new(&nulls).unwrap().iter().collect::<Vec<_>>(),
            [None, None]
        );
    }
}
