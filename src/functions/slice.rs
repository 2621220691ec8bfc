//! `voyado_slice`: the slice of a model row, for models run in slices.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, UInt32Builder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::*;
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

pub(crate) const SLICE: &str = "voyado_slice";

/// Key types a model can be sliced by.
pub(crate) fn slice_key_type(t: &DataType) -> bool {
    use DataType::*;
    matches!(
        t,
        Int8 | Int16
            | Int32
            | Int64
            | UInt8
            | UInt16
            | UInt32
            | UInt64
            | Utf8
            | LargeUtf8
            | Utf8View
            | Date32
    )
}

/// `voyado_slice(key, n)` -> UInt32 in 0..n: the slice of a row. Integers hash by value
/// (an Int32 key in one table meets the same Int64 key in another), strings by their bytes
/// (XXH3); nulls go to slice 0.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SliceUdf {
    signature: Signature,
}

pub(crate) fn all() -> Vec<ScalarUDF> {
    vec![ScalarUDF::from(SliceUdf {
        signature: Signature::any(2, Volatility::Immutable),
    })]
}

/// splitmix64's finaliser: consecutive ids spread evenly over the slices.
fn mix(v: u64) -> u64 {
    let mut z = v.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Slice of each row of `a`: 0 for nulls, else `hash(i) % n`.
fn slices_of(a: &dyn Array, n: u64, hash: impl Fn(usize) -> u64) -> ArrayRef {
    let mut b = UInt32Builder::with_capacity(a.len());
    for i in 0..a.len() {
        b.append_value(if a.is_null(i) {
            0
        } else {
            (hash(i) % n) as u32
        });
    }
    Arc::new(b.finish())
}

/// Integers (and dates, as day numbers) by value, whatever their width.
fn int_hash(v: i128) -> u64 {
    mix(v as u64 ^ ((v >> 64) as u64))
}

impl ScalarUDFImpl for SliceUdf {
    fn name(&self) -> &str {
        SLICE
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::UInt32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = match &args.args[1] {
            ColumnarValue::Scalar(s) => match s.cast_to(&DataType::UInt32)? {
                ScalarValue::UInt32(Some(n)) if n > 0 => u64::from(n),
                _ => return exec_err!("{SLICE}: the slice count must be a positive integer"),
            },
            _ => return exec_err!("{SLICE}: the slice count must be a literal"),
        };
        let a = args.args[0].clone().into_array(args.number_rows)?;
        // Narrower integers and dates widen to Int64 and string types narrow to Utf8
        // without changing a value, so one loop per kind serves them all.
        let out = match a.data_type() {
            DataType::UInt64 => {
                let p = a.as_primitive::<UInt64Type>();
                slices_of(&a, n, |i| int_hash(i128::from(p.value(i))))
            }
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                let s = cast(&a, &DataType::Utf8)?;
                let s = s.as_string::<i32>();
                slices_of(&a, n, |i| xxhash_rust::xxh3::xxh3_64(s.value(i).as_bytes()))
            }
            t if slice_key_type(t) => {
                let p = cast(&a, &DataType::Int64)?;
                let p = p.as_primitive::<Int64Type>();
                slices_of(&a, n, |i| int_hash(i128::from(p.value(i))))
            }
            other => return exec_err!("{SLICE}: cannot slice by a {other} column"),
        };
        Ok(ColumnarValue::Array(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        Date32Array, Int32Array, Int64Array, LargeStringArray, StringArray, StringViewArray,
        UInt64Array,
    };

    fn slices(a: ArrayRef, n: u32) -> Vec<u32> {
        let udf = ScalarUDF::from(SliceUdf {
            signature: Signature::any(2, Volatility::Immutable),
        });
        let rows = a.len();
        let args = vec![
            ColumnarValue::Array(a),
            ColumnarValue::Scalar(ScalarValue::UInt32(Some(n))),
        ];
        let out = crate::functions::call_udf(udf, args, rows);
        out.as_primitive::<UInt32Type>().values().to_vec()
    }

    /// The same key meets itself in one slice whatever its column's width or string type,
    /// so tables keyed by an INT and a BIGINT column (or Utf8 and Utf8View) slice alike.
    #[test]
    fn a_key_has_one_slice_whatever_its_type() {
        let ids = [0i64, 1, 2, 42, 1_000_003, -7];
        let want = slices(Arc::new(Int64Array::from(ids.to_vec())), 16);
        let narrow: Vec<i32> = ids.iter().map(|&v| v as i32).collect();
        assert_eq!(slices(Arc::new(Int32Array::from(narrow.clone())), 16), want);
        assert_eq!(slices(Arc::new(Date32Array::from(narrow)), 16), want);
        let unsigned: Vec<u64> = ids.iter().filter(|&&v| v >= 0).map(|&v| v as u64).collect();
        assert_eq!(slices(Arc::new(UInt64Array::from(unsigned)), 16), want[..5]);
        // consecutive ids spread over the slices
        assert!(
            want[..5]
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                > 1
        );

        let keys = ["c-1", "c-2", "c-3", "c-42"];
        let want = slices(Arc::new(StringArray::from(keys.to_vec())), 16);
        assert_eq!(
            slices(Arc::new(LargeStringArray::from(keys.to_vec())), 16),
            want
        );
        assert_eq!(
            slices(Arc::new(StringViewArray::from(keys.to_vec())), 16),
            want
        );
        // nulls go to slice 0
        assert_eq!(
            slices(Arc::new(Int64Array::from(vec![None, Some(5)])), 16)[0],
            0
        );
    }
}
