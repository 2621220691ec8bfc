//! The row hash (version 2) and the canonical value encoding it is built from.
//!
//! Each non-empty (attribute, value) pair is encoded as
//! `u32-LE len(name) | name | type tag | u32-LE len(value) | value bytes`, pairs in attribute
//! name order; the hash is XXH3-128 over the concatenation, as its canonical big-endian
//! 16-byte digest (version 1 was the first 16 bytes of BLAKE3: a stored hash is a change
//! detector, not a security boundary, and XXH3 costs a fraction for short rows). Empty values
//! (null, empty or whitespace-only strings, NaN, infinities) are left out, so mapping a new
//! column does not change the hash of rows where it is empty. Values are encoded by type
//! class, so widening a column (int32 -> int64) does not change its hash, while changing its
//! class (integer -> string) does:
//!
//! | class | tag | bytes |
//! |---|---|---|
//! | string | `s` | UTF-8, as is |
//! | integer | `i` | i128 little-endian |
//! | float | `f` | f64 bits little-endian (-0.0 as 0.0) |
//! | decimal | `d` | decimal text at the column's scale (`12.50`) |
//! | boolean | `b` | one byte, 0 or 1 |
//! | date | `D` | i32 days since 1970-01-01, little-endian |
//! | timestamp | `t` | i128 nanoseconds since the epoch (UTC), little-endian |

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryBuilder, FixedSizeBinaryBuilder};
use datafusion::arrow::datatypes::*;
use datafusion::common::{Result, ScalarValue, exec_err};

use crate::strings::Strings;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// Recorded in the manifest; a different stored version makes the diff recompute hashes
/// from the stored values instead of trusting them.
pub const HASH_VERSION: u32 = 2;
pub const HASH_BYTES: i32 = 16;

pub const ROW_HASH: &str = "voyado_row_hash";
pub const VALUE_KEY: &str = "voyado_value_key";

/// SQL calling the row hash over (attribute, column expression) pairs, given in attribute
/// order; with no pairs, the hash of no values. (Attribute names are validated to letters,
/// digits and `_`, so they need no escaping as literals.)
pub fn sql_call<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> String {
    let args: Vec<String> = pairs
        .into_iter()
        .map(|(attribute, expr)| format!("'{attribute}', {expr}"))
        .collect();
    if args.is_empty() {
        format!("{ROW_HASH}('', CAST(NULL AS VARCHAR))")
    } else {
        format!("{ROW_HASH}({})", args.join(", "))
    }
}

/// Whether a column type can be mapped (and so encoded, hashed and sent).
pub fn supported_type(t: &DataType) -> bool {
    type_class(t).is_some()
}

/// The type class of a column, as recorded in the manifest and used in the encoding.
pub fn type_class(t: &DataType) -> Option<&'static str> {
    use DataType::*;
    Some(match t {
        Utf8 | LargeUtf8 | Utf8View => "string",
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => "integer",
        Float16 | Float32 | Float64 => "float",
        Decimal32(_, _) | Decimal64(_, _) | Decimal128(_, _) | Decimal256(_, _) => "decimal",
        Boolean => "boolean",
        Date32 | Date64 => "date",
        Timestamp(_, _) => "timestamp",
        Null => "null",
        _ => return None,
    })
}

/// Appends row `i`'s value as text.
type WriteText<'a> = Box<dyn Fn(usize, &mut Vec<u8>) + 'a>;

/// Writes one column's values in the canonical encoding. Built once per batch and column so
/// the per-row work is a typed array access, not a type dispatch.
pub enum ValueEncoder<'a> {
    Str(Strings),
    Int(Box<dyn Fn(usize) -> i128 + 'a>, &'a dyn Array),
    Float(Box<dyn Fn(usize) -> f64 + 'a>, &'a dyn Array),
    /// Writes the decimal text at the column's scale, as Arrow's cast to string does.
    Decimal(WriteText<'a>, &'a dyn Array),
    Bool(&'a datafusion::arrow::array::BooleanArray),
    Date(Box<dyn Fn(usize) -> i32 + 'a>, &'a dyn Array),
    Timestamp(Box<dyn Fn(usize) -> i128 + 'a>, &'a dyn Array),
    Null,
}

impl<'a> ValueEncoder<'a> {
    pub fn new(array: &'a ArrayRef) -> Result<Self> {
        use DataType::*;
        let a = array.as_ref();
        Ok(match array.data_type() {
            Utf8 | LargeUtf8 | Utf8View => ValueEncoder::Str(Strings::new(array)?),
            Int8 => int(a.as_primitive::<Int8Type>(), a),
            Int16 => int(a.as_primitive::<Int16Type>(), a),
            Int32 => int(a.as_primitive::<Int32Type>(), a),
            Int64 => int(a.as_primitive::<Int64Type>(), a),
            UInt8 => int(a.as_primitive::<UInt8Type>(), a),
            UInt16 => int(a.as_primitive::<UInt16Type>(), a),
            UInt32 => int(a.as_primitive::<UInt32Type>(), a),
            UInt64 => int(a.as_primitive::<UInt64Type>(), a),
            Float16 => {
                let p = a.as_primitive::<Float16Type>();
                ValueEncoder::Float(Box::new(move |i| f64::from(p.value(i).to_f32())), a)
            }
            Float32 => {
                let p = a.as_primitive::<Float32Type>();
                ValueEncoder::Float(Box::new(move |i| f64::from(p.value(i))), a)
            }
            Float64 => {
                let p = a.as_primitive::<Float64Type>();
                ValueEncoder::Float(Box::new(move |i| p.value(i)), a)
            }
            Decimal32(p, s) => decimal(a.as_primitive::<Decimal32Type>(), *p, *s, a),
            Decimal64(p, s) => decimal(a.as_primitive::<Decimal64Type>(), *p, *s, a),
            Decimal128(p, s) => decimal(a.as_primitive::<Decimal128Type>(), *p, *s, a),
            Decimal256(p, s) => {
                let (p, s, d) = (*p, *s, a.as_primitive::<Decimal256Type>());
                ValueEncoder::Decimal(
                    Box::new(move |i, out| {
                        let text = Decimal256Type::format_decimal(d.value(i), p, s);
                        out.extend_from_slice(text.as_bytes());
                    }),
                    a,
                )
            }
            Boolean => ValueEncoder::Bool(a.as_boolean()),
            Date32 => {
                let p = a.as_primitive::<Date32Type>();
                ValueEncoder::Date(Box::new(move |i| p.value(i)), a)
            }
            Date64 => {
                let p = a.as_primitive::<Date64Type>();
                ValueEncoder::Date(
                    Box::new(move |i| p.value(i).div_euclid(86_400_000) as i32),
                    a,
                )
            }
            Timestamp(unit, _) => {
                let mult: i128 = match unit {
                    TimeUnit::Second => 1_000_000_000,
                    TimeUnit::Millisecond => 1_000_000,
                    TimeUnit::Microsecond => 1_000,
                    TimeUnit::Nanosecond => 1,
                };
                let values: Box<dyn Fn(usize) -> i128 + 'a> = match unit {
                    TimeUnit::Second => {
                        let p = a.as_primitive::<TimestampSecondType>();
                        Box::new(move |i| i128::from(p.value(i)) * mult)
                    }
                    TimeUnit::Millisecond => {
                        let p = a.as_primitive::<TimestampMillisecondType>();
                        Box::new(move |i| i128::from(p.value(i)) * mult)
                    }
                    TimeUnit::Microsecond => {
                        let p = a.as_primitive::<TimestampMicrosecondType>();
                        Box::new(move |i| i128::from(p.value(i)) * mult)
                    }
                    TimeUnit::Nanosecond => {
                        let p = a.as_primitive::<TimestampNanosecondType>();
                        Box::new(move |i| i128::from(p.value(i)))
                    }
                };
                ValueEncoder::Timestamp(values, a)
            }
            Null => ValueEncoder::Null,
            other => return exec_err!("unsupported column type {other} for a mapped attribute"),
        })
    }

    /// Appends `tag | u32 len | bytes` for row `i`; returns false (writing nothing) when the
    /// value is empty.
    pub fn write(&self, i: usize, out: &mut Vec<u8>) -> bool {
        fn put(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) -> bool {
            out.push(tag);
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
            true
        }
        fn put_str(out: &mut Vec<u8>, v: &str) -> bool {
            // Most values start with a letter or digit: skip the Unicode trim for them.
            let starts_solid = v.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric);
            if !starts_solid && v.trim_matches(char::is_whitespace).is_empty() {
                return false;
            }
            put(out, b's', v.as_bytes())
        }
        match self {
            ValueEncoder::Str(s) => s.get(i).is_some_and(|v| put_str(out, v)),
            ValueEncoder::Int(f, a) => !a.is_null(i) && put(out, b'i', &f(i).to_le_bytes()),
            ValueEncoder::Float(f, a) => {
                if a.is_null(i) {
                    return false;
                }
                let v = f(i);
                if !v.is_finite() {
                    return false;
                }
                let v = if v == 0.0 { 0.0f64 } else { v };
                put(out, b'f', &v.to_bits().to_le_bytes())
            }
            ValueEncoder::Decimal(f, a) => {
                if a.is_null(i) {
                    return false;
                }
                out.push(b'd');
                let at = out.len();
                out.extend_from_slice(&[0; 4]);
                f(i, out);
                let len = (out.len() - at - 4) as u32;
                out[at..at + 4].copy_from_slice(&len.to_le_bytes());
                true
            }
            ValueEncoder::Bool(b) => !b.is_null(i) && put(out, b'b', &[u8::from(b.value(i))]),
            ValueEncoder::Date(f, a) => !a.is_null(i) && put(out, b'D', &f(i).to_le_bytes()),
            ValueEncoder::Timestamp(f, a) => !a.is_null(i) && put(out, b't', &f(i).to_le_bytes()),
            ValueEncoder::Null => false,
        }
    }
}

fn int<'a, T>(
    p: &'a datafusion::arrow::array::PrimitiveArray<T>,
    a: &'a dyn Array,
) -> ValueEncoder<'a>
where
    T: ArrowPrimitiveType,
    T::Native: Into<i128>,
{
    ValueEncoder::Int(Box::new(move |i| p.value(i).into()), a)
}

fn decimal<'a, T>(
    d: &'a datafusion::arrow::array::PrimitiveArray<T>,
    precision: u8,
    scale: i8,
    a: &'a dyn Array,
) -> ValueEncoder<'a>
where
    T: DecimalType,
    T::Native: Into<i128>,
{
    ValueEncoder::Decimal(
        Box::new(move |i, out| {
            let v = d.value(i);
            if !decimal_text(v.into(), precision, scale, out) {
                out.extend_from_slice(T::format_decimal(v, precision, scale).as_bytes());
            }
        }),
        a,
    )
}

/// Appends `v` as decimal text at `scale` ("12.50", "-0.05"), the text Arrow's cast to
/// string gives, without its per-value String. Returns false, writing nothing, for the
/// cases left to Arrow: negative scales and values beyond the precision.
pub fn decimal_text(v: i128, precision: u8, scale: i8, out: &mut Vec<u8>) -> bool {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(v.unsigned_abs()).as_bytes();
    if scale < 0 || digits.len() > usize::from(precision) {
        return false;
    }
    if v < 0 {
        out.push(b'-');
    }
    let scale = scale as usize;
    if scale == 0 {
        out.extend_from_slice(digits);
    } else if digits.len() > scale {
        let (whole, fraction) = digits.split_at(digits.len() - scale);
        out.extend_from_slice(whole);
        out.push(b'.');
        out.extend_from_slice(fraction);
    } else {
        out.extend_from_slice(b"0.");
        out.resize(out.len() + scale - digits.len(), b'0');
        out.extend_from_slice(digits);
    }
    true
}

/// `voyado_row_hash('attr1', col1, 'attr2', col2, ...)` -> FixedSizeBinary(16); callers pass
/// pairs sorted by attribute name. `voyado_value_key(col)` -> Binary: one value's canonical
/// encoding (tag and bytes), null when empty; used to compare values null- and empty-safely
/// across type changes.
#[derive(Debug, PartialEq, Eq, Hash)]
struct HashUdf {
    name: &'static str,
    signature: Signature,
}

pub fn all() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::from(HashUdf {
            name: ROW_HASH,
            signature: Signature::variadic_any(Volatility::Immutable),
        }),
        ScalarUDF::from(HashUdf {
            name: VALUE_KEY,
            signature: Signature::any(1, Volatility::Immutable),
        }),
    ]
}

impl ScalarUDFImpl for HashUdf {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(if self.name == ROW_HASH {
            DataType::FixedSizeBinary(HASH_BYTES)
        } else {
            DataType::Binary
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        if self.name == VALUE_KEY {
            let array = args.args[0].clone().into_array(rows)?;
            let enc = ValueEncoder::new(&array)?;
            let mut b = BinaryBuilder::with_capacity(rows, rows * 8);
            let mut buf = Vec::with_capacity(64);
            for i in 0..rows {
                buf.clear();
                if enc.write(i, &mut buf) {
                    b.append_value(&buf);
                } else {
                    b.append_null();
                }
            }
            return Ok(ColumnarValue::Array(Arc::new(b.finish())));
        }
        if !args.args.len().is_multiple_of(2) {
            return exec_err!("{ROW_HASH} takes (name, value) pairs");
        }
        let mut names = Vec::new();
        let mut arrays = Vec::new();
        for pair in args.args.chunks(2) {
            let name = match &pair[0] {
                ColumnarValue::Scalar(
                    ScalarValue::Utf8(Some(s))
                    | ScalarValue::Utf8View(Some(s))
                    | ScalarValue::LargeUtf8(Some(s)),
                ) => s.clone(),
                _ => return exec_err!("{ROW_HASH}: attribute names must be string literals"),
            };
            names.push(name);
            arrays.push(pair[1].clone().into_array(rows)?);
        }
        let encoders = arrays
            .iter()
            .map(ValueEncoder::new)
            .collect::<Result<Vec<_>>>()?;
        // `u32-LE len(name) | name`, the same for every row.
        let prefixes: Vec<Vec<u8>> = names
            .iter()
            .map(|n| [&(n.len() as u32).to_le_bytes()[..], n.as_bytes()].concat())
            .collect();
        let mut b = FixedSizeBinaryBuilder::with_capacity(rows, HASH_BYTES);
        let mut buf = Vec::with_capacity(256);
        for i in 0..rows {
            buf.clear();
            for (prefix, enc) in prefixes.iter().zip(&encoders) {
                let mark = buf.len();
                buf.extend_from_slice(prefix);
                if !enc.write(i, &mut buf) {
                    buf.truncate(mark);
                }
            }
            b.append_value(xxhash_rust::xxh3::xxh3_128(&buf).to_be_bytes())?;
        }
        Ok(ColumnarValue::Array(Arc::new(b.finish())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};

    fn hash(city: Option<&str>, n: Option<i64>) -> String {
        hash_of(Arc::new(StringArray::from(vec![city])), n)
    }

    fn hash_of(city: ArrayRef, n: Option<i64>) -> String {
        let n: ArrayRef = Arc::new(Int64Array::from(vec![n]));
        let udf = ScalarUDF::from(HashUdf {
            name: ROW_HASH,
            signature: Signature::variadic_any(Volatility::Immutable),
        });
        let args = vec![
            ColumnarValue::Scalar(ScalarValue::Utf8(Some("city".into()))),
            ColumnarValue::Array(city),
            ColumnarValue::Scalar(ScalarValue::Utf8(Some("n".into()))),
            ColumnarValue::Array(n),
        ];
        let out = crate::catalog::call_udf(udf, args, 1);
        let bytes = out.as_fixed_size_binary().value(0).to_vec();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn version_2_matches_its_documented_encoding() {
        // Computed independently from the encoding in the module docs, with Python's
        // xxhash package (xxh3_128_digest).
        assert_eq!(
            hash(Some("Lund"), Some(7)),
            "1076249e51e50893b8f8d466e78e6087"
        );
        assert_eq!(hash(Some("Lund"), None), "a10cd1dd319e226c1663e20062d55b64");
        // empty values are left out, like nulls
        assert_eq!(hash(Some("Lund"), None), hash(Some("Lund"), None));
        assert_eq!(hash(Some("  "), Some(7)), hash(None, Some(7)));
        assert_ne!(hash(Some("Lund "), Some(7)), hash(Some("Lund"), Some(7)));
    }

    #[test]
    fn string_views_and_large_strings_hash_like_plain_strings() {
        use datafusion::arrow::array::{LargeStringArray, StringViewArray};
        for city in [
            Some("Lund"),
            Some("a city name longer than twelve bytes"),
            Some(" "),
            None,
        ] {
            let want = hash(city, Some(7));
            assert_eq!(
                hash_of(Arc::new(StringViewArray::from(vec![city])), Some(7)),
                want
            );
            assert_eq!(
                hash_of(Arc::new(LargeStringArray::from(vec![city])), Some(7)),
                want
            );
        }
    }

    #[test]
    fn decimal_text_is_arrows_cast_to_string() {
        use datafusion::arrow::array::Decimal128Array;
        let values: Vec<i128> = [
            0i128,
            1,
            -1,
            5,
            -5,
            9,
            10,
            -10,
            99,
            100,
            1250,
            -1250,
            123_456_789,
        ]
        .into_iter()
        .chain((0..200).map(|k| (k * 7_919_i128).pow(3) % 10_i128.pow(12) - 4 * k))
        .collect();
        for (precision, scale) in [(1, 0), (3, 1), (5, 2), (10, 2), (12, 4), (38, 10), (15, 15)] {
            let array = Decimal128Array::from(values.clone())
                .with_precision_and_scale(precision, scale)
                .unwrap();
            let text = datafusion::arrow::compute::cast(&array, &DataType::Utf8).unwrap();
            let text = text.as_string::<i32>();
            for (i, v) in values.iter().enumerate() {
                let mut out = Vec::new();
                if decimal_text(*v, precision, scale, &mut out) {
                    assert_eq!(
                        std::str::from_utf8(&out).unwrap(),
                        text.value(i),
                        "{v} at ({precision}, {scale})"
                    );
                } else {
                    assert!(v.unsigned_abs().to_string().len() > usize::from(precision));
                }
            }
        }
    }

    #[test]
    fn supported_types_are_the_encodable_ones() {
        assert!(supported_type(&DataType::Decimal128(10, 2)));
        assert!(supported_type(&DataType::Timestamp(
            TimeUnit::Millisecond,
            None
        )));
        assert!(!supported_type(&DataType::Binary));
        assert!(!supported_type(&DataType::new_list(DataType::Int32, true)));
    }
}
