//! The identity rules as DataFusion scalar functions, so plans apply exactly the Rust rules.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, StringBuilder, StringViewArray, UInt32Builder,
};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use super::{bucket, is_normalized, normalize_into, problem, shard};
use crate::config::Key;
use crate::strings::{Strings, view_of};

pub(crate) const NORMALIZE: &str = "voyado_normalize_id";
pub(crate) const PROBLEM: &str = "voyado_id_problem";
pub(crate) const BUCKET: &str = "voyado_bucket";
pub(crate) const SHARD: &str = "voyado_shard";

/// All identity UDFs, for registration on a session.
pub(crate) fn all() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::from(IdUdf::new(NORMALIZE)),
        ScalarUDF::from(IdUdf::new(PROBLEM)),
        ScalarUDF::from(IdUdf::new(BUCKET)),
        ScalarUDF::from(IdUdf::new(SHARD)),
    ]
}

/// `voyado_normalize_id(value, 'key')`, `voyado_id_problem(normalized, 'key')` and
/// `voyado_bucket(normalized, n)` / `voyado_shard(normalized, n)`; one struct because they share argument handling.
#[derive(Debug, PartialEq, Eq, Hash)]
struct IdUdf {
    name: &'static str,
    signature: Signature,
}

impl IdUdf {
    fn new(name: &'static str) -> Self {
        IdUdf {
            name,
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

fn scalar_string(v: &ColumnarValue, what: &str) -> Result<String> {
    match v {
        ColumnarValue::Scalar(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::Utf8View(Some(s))
            | ScalarValue::LargeUtf8(Some(s)),
        ) => Ok(s.clone()),
        _ => exec_err!("{what} must be a string literal"),
    }
}

fn scalar_u32(v: &ColumnarValue) -> Result<u32> {
    match v {
        ColumnarValue::Scalar(s) => match s.cast_to(&DataType::UInt32)? {
            ScalarValue::UInt32(Some(n)) if n > 0 => Ok(n),
            _ => exec_err!("bucket count must be a positive integer literal"),
        },
        _ => exec_err!("bucket count must be a literal"),
    }
}

impl ScalarUDFImpl for IdUdf {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.name {
            BUCKET | SHARD => DataType::UInt32,
            // Views stay views: most identifiers are already normal and keep their bytes.
            NORMALIZE if arg_types.first() == Some(&DataType::Utf8View) => DataType::Utf8View,
            _ => DataType::Utf8,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let input = args.args[0].clone().into_array(rows)?;
        let out: ArrayRef = match self.name {
            BUCKET | SHARD => {
                let n = scalar_u32(&args.args[1])?;
                let f = if self.name == BUCKET { bucket } else { shard };
                let mut b = UInt32Builder::with_capacity(rows);
                each_str(&input, |v| b.append_value(v.map_or(0, |s| f(s, n))))?;
                Arc::new(b.finish())
            }
            NORMALIZE if input.data_type() == &DataType::Utf8View => {
                normalize_views(&input, key_arg(&args.args[1])?)?
            }
            name => {
                let key = key_arg(&args.args[1])?;
                let mut b = StringBuilder::with_capacity(rows, rows * 8);
                let mut buf = String::new();
                each_str(&input, |v| match v {
                    Some(s) if name == NORMALIZE => {
                        buf.clear();
                        normalize_into(s, key, &mut buf);
                        b.append_value(&buf);
                    }
                    None if name == NORMALIZE => b.append_null(),
                    v => b.append_option(problem(v, key)),
                })?;
                Arc::new(b.finish())
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}

fn key_arg(v: &ColumnarValue) -> Result<Key> {
    let key_name = scalar_string(v, "identifier key")?;
    match Key::parse(&key_name) {
        Some(key) => Ok(key),
        None => exec_err!("unknown identifier key {key_name}"),
    }
}

/// Normalises string views without copying the values that are already normal (nearly all
/// of them): their views are kept, pointing into the input's buffers, and only changed
/// values are written, into one more buffer. The input itself comes back when none change.
fn normalize_views(input: &ArrayRef, key: Key) -> Result<ArrayRef> {
    let a = input.as_string_view();
    let block = u32::try_from(a.data_buffers().len())
        .map_err(|_| DataFusionError::Execution("too many string buffers".into()))?;
    let mut views: Option<Vec<u128>> = None;
    let mut extra: Vec<u8> = Vec::new();
    let mut buf = String::new();
    for i in 0..a.len() {
        if a.is_null(i) {
            continue;
        }
        let v = a.value(i);
        if is_normalized(v, key) {
            continue;
        }
        buf.clear();
        normalize_into(v, key, &mut buf);
        if u32::try_from(extra.len() + buf.len()).is_err() {
            return exec_err!("identifiers over 4 GiB in one batch");
        }
        let view = view_of(&buf, block, &mut extra);
        views.get_or_insert_with(|| a.views().to_vec())[i] = view;
    }
    let Some(views) = views else {
        return Ok(Arc::clone(input));
    };
    let mut buffers = a.data_buffers().to_vec();
    if !extra.is_empty() {
        buffers.push(Buffer::from_vec(extra));
    }
    // SAFETY: every view is either the input's own (valid for its buffers, which are all
    // kept at their indices) or made by `view_of` from a `str` whose bytes, when longer
    // than a view holds inline, it appended to the buffer pushed last, at that offset.
    let out = unsafe { StringViewArray::new_unchecked(views.into(), buffers, a.nulls().cloned()) };
    Ok(Arc::new(out))
}

/// Calls `f` with each value of a string-like (or integer) array, read in place.
fn each_str(array: &ArrayRef, f: impl FnMut(Option<&str>)) -> Result<()> {
    Strings::new(array)?.iter().for_each(f);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::normalize;

    fn views(values: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringViewArray::from(values.to_vec()))
    }

    #[test]
    fn views_come_back_normalised_with_normal_values_kept_in_place() {
        let values = [
            Some("someone.long@example.com"),
            Some("  Someone.Else@Example.COM "),
            None,
            Some("A@B.SE"),
            Some(""),
            Some("Ärlig.Översten@exempel.se"),
            Some("x@y.se"),
        ];
        let input = views(&values);
        let out = normalize_views(&input, Key::Email).unwrap();
        let out = out.as_string_view();
        assert_eq!(out.len(), values.len());
        for (i, v) in values.iter().enumerate() {
            let expected = v.map(|v| normalize(v, Key::Email));
            assert_eq!(out.is_valid(i).then(|| out.value(i)), expected.as_deref());
        }
        // Only the three changed values were written; the long one is in the new buffer.
        assert_eq!(out.data_buffers().len(), 2);
        assert_eq!(
            out.data_buffers()[1].len(),
            "someone.else@example.com".len() + "ärlig.översten@exempel.se".len()
        );

        let normal = views(&[Some("someone.long@example.com"), None, Some("a@b.se")]);
        let same = normalize_views(&normal, Key::Email).unwrap();
        assert!(
            Arc::ptr_eq(&same, &normal),
            "an all-normal batch is passed through"
        );
        let phones = views(&[Some(" +46701234567"), Some("+46701234567")]);
        let out = normalize_views(&phones, Key::MobilePhone).unwrap();
        let out = out.as_string_view();
        assert_eq!(
            (out.value(0), out.value(1)),
            ("+46701234567", "+46701234567")
        );
    }
}
