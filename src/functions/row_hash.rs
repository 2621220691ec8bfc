//! The row hash (version 3) and the canonical value encoding.
//!
//! A row's hash is a constant XORed with one 128-bit hash per non-empty (attribute, value)
//! pair: XXH3-128 of the value's canonical bytes, seeded with XXH3-64 of
//! `name | 0x00 | type tag` (for decimals the tag is followed by the scale as one byte).
//! The digest is the canonical big-endian 16 bytes. Each column is hashed in one typed loop
//! over the batch, so no row is assembled into a buffer first: version 2 encoded every row
//! into one and hashed that, at several times the cost (a stored hash is a change detector,
//! not a security boundary). The XOR makes the hash independent of attribute order; the
//! attribute in the seed keeps equal values of two attributes apart.
//!
//! Empty values (null, empty or whitespace-only strings, NaN, infinities) are left out, so
//! mapping a new column does not change the hash of rows where it is empty. Values are
//! hashed by type class, so widening a column (int32 -> int64) does not change its hash,
//! while changing its class (integer -> string) does:
//!
//! | class | tag | bytes |
//! |---|---|---|
//! | string | `s` | UTF-8, as is |
//! | integer | `i` | i128 little-endian |
//! | float | `f` | f64 bits little-endian (-0.0 as 0.0) |
//! | decimal | `d` + scale | unscaled value, i128 little-endian (i256 when it does not fit) |
//! | boolean | `b` | one byte, 0 or 1 |
//! | date | `D` | i32 days since 1970-01-01, little-endian |
//! | timestamp | `t` | i128 nanoseconds since the epoch (UTC), little-endian |
//!
//! `voyado_value_key` writes one value as `tag | u32-LE len | bytes` (decimals as their text
//! at the column's scale) for comparing old and new values at staging.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, FixedSizeBinaryArray, PrimitiveArray,
};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::*;
use datafusion::common::{Result, ScalarValue, exec_err};
use xxhash_rust::xxh3::{xxh3_64, xxh3_128_with_seed};

use crate::strings::Strings;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// Recorded in the manifest; a different stored version makes the diff recompute hashes
/// from the stored values instead of trusting them.
pub(crate) const HASH_VERSION: u32 = 3;
pub(crate) const HASH_BYTES: i32 = 16;

pub(crate) const ROW_HASH: &str = "voyado_row_hash";
pub(crate) const VALUE_KEY: &str = "voyado_value_key";
/// `voyado_hash_prefix(hash)` -> FixedSizeBinary(8): a row hash's first [`PREFIX_BYTES`], all
/// that change detection compares (see `classify`); half the bytes in a count's bucket files.
pub(crate) const HASH_PREFIX: &str = "voyado_hash_prefix";
pub(crate) const PREFIX_BYTES: i32 = 8;

/// SQL calling the row hash over (attribute, column expression) pairs, given in attribute
/// order; with no pairs, the hash of no values. (Attribute names are validated to letters,
/// digits and `_`, so they need no escaping as literals.)
pub(crate) fn sql_call<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> String {
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
pub(crate) fn supported_type(t: &DataType) -> bool {
    type_class(t).is_some()
}

/// The type class of a column, as recorded in the manifest and used in the encoding.
pub(crate) fn type_class(t: &DataType) -> Option<&'static str> {
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
pub(crate) enum ValueEncoder<'a> {
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
    pub(crate) fn new(array: &'a ArrayRef) -> Result<Self> {
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
    pub(crate) fn write(&self, i: usize, out: &mut Vec<u8>) -> bool {
        fn put(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) -> bool {
            out.push(tag);
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
            true
        }
        fn put_str(out: &mut Vec<u8>, v: &str) -> bool {
            !blank(v) && put(out, b's', v.as_bytes())
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
pub(crate) fn decimal_text(v: i128, precision: u8, scale: i8, out: &mut Vec<u8>) -> bool {
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
/// across type changes. `voyado_hash_prefix(hash)`: see [`HASH_PREFIX`].
#[derive(Debug, PartialEq, Eq, Hash)]
struct HashUdf {
    name: &'static str,
    signature: Signature,
}

pub(crate) fn all() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::from(HashUdf {
            name: ROW_HASH,
            signature: Signature::variadic_any(Volatility::Immutable),
        }),
        ScalarUDF::from(HashUdf {
            name: VALUE_KEY,
            signature: Signature::any(1, Volatility::Immutable),
        }),
        ScalarUDF::from(HashUdf {
            name: HASH_PREFIX,
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
        Ok(match self.name {
            ROW_HASH => DataType::FixedSizeBinary(HASH_BYTES),
            HASH_PREFIX => DataType::FixedSizeBinary(PREFIX_BYTES),
            _ => DataType::Binary,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        if self.name == HASH_PREFIX {
            let array = args.args[0].clone().into_array(rows)?;
            let Some(hashes) = array.as_any().downcast_ref::<FixedSizeBinaryArray>() else {
                return exec_err!("{HASH_PREFIX} takes a row hash, not {}", array.data_type());
            };
            if hashes.value_length() < PREFIX_BYTES {
                return exec_err!(
                    "{HASH_PREFIX}: a row hash of {} bytes",
                    hashes.value_length()
                );
            }
            // Each value's first bytes, over the (sliced) values buffer at once.
            let width = hashes.value_length() as usize;
            let prefixes = hashes
                .value_data()
                .chunks_exact(width)
                .flat_map(|v| &v[..PREFIX_BYTES as usize]);
            let prefixes = FixedSizeBinaryArray::try_new(
                PREFIX_BYTES,
                Buffer::from_iter(prefixes.copied()),
                hashes.nulls().cloned(),
            )?;
            return Ok(ColumnarValue::Array(Arc::new(prefixes)));
        }
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
        let mut acc = vec![ROW_INIT; rows];
        for (name, array) in names.iter().zip(&arrays) {
            xor_column(name, array, &mut acc)?;
        }
        let mut bytes = Vec::with_capacity(rows * HASH_BYTES as usize);
        for h in acc {
            bytes.extend_from_slice(&h.to_be_bytes());
        }
        let hashes = FixedSizeBinaryArray::try_new(HASH_BYTES, Buffer::from_vec(bytes), None)?;
        Ok(ColumnarValue::Array(Arc::new(hashes)))
    }
}

/// Whether a string is empty or whitespace only (an empty value, left out of hashes and
/// value keys alike). Most values start with a letter or digit: they skip the Unicode trim.
#[inline]
fn blank(v: &str) -> bool {
    !v.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && v.trim_matches(char::is_whitespace).is_empty()
}

/// What a row's hash starts from: the hash of a row with no values.
const ROW_INIT: u128 = 0x5d8f_16a2_9c3e_47b1_b0e4_7a19_c2d6_3f85;

/// The seed of an attribute's value hashes: XXH3-64 of `name | 0x00 | tag`.
fn seed(name: &str, tag: &[u8]) -> u64 {
    let mut bytes = Vec::with_capacity(name.len() + 1 + tag.len());
    bytes.extend_from_slice(name.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(tag);
    xxh3_64(&bytes)
}

/// XORs into `acc[i]` the hash of row `i`'s non-empty value of attribute `name`, one typed
/// loop per column.
fn xor_column(name: &str, array: &ArrayRef, acc: &mut [u128]) -> Result<()> {
    use DataType::*;
    let a = array.as_ref();
    match a.data_type() {
        Utf8 | LargeUtf8 | Utf8View => {
            let s = seed(name, b"s");
            let strings = Strings::new(array)?;
            for (i, h) in acc.iter_mut().enumerate() {
                if let Some(v) = strings.get(i).filter(|v| !blank(v)) {
                    *h ^= xxh3_128_with_seed(v.as_bytes(), s);
                }
            }
        }
        Int8 => ints(a.as_primitive::<Int8Type>(), seed(name, b"i"), acc),
        Int16 => ints(a.as_primitive::<Int16Type>(), seed(name, b"i"), acc),
        Int32 => ints(a.as_primitive::<Int32Type>(), seed(name, b"i"), acc),
        Int64 => ints(a.as_primitive::<Int64Type>(), seed(name, b"i"), acc),
        UInt8 => ints(a.as_primitive::<UInt8Type>(), seed(name, b"i"), acc),
        UInt16 => ints(a.as_primitive::<UInt16Type>(), seed(name, b"i"), acc),
        UInt32 => ints(a.as_primitive::<UInt32Type>(), seed(name, b"i"), acc),
        UInt64 => ints(a.as_primitive::<UInt64Type>(), seed(name, b"i"), acc),
        Float16 => {
            let p = a.as_primitive::<Float16Type>();
            floats(a, |i| f64::from(p.value(i).to_f32()), seed(name, b"f"), acc)
        }
        Float32 => {
            let p = a.as_primitive::<Float32Type>();
            floats(a, |i| f64::from(p.value(i)), seed(name, b"f"), acc)
        }
        Float64 => {
            let p = a.as_primitive::<Float64Type>();
            floats(a, |i| p.value(i), seed(name, b"f"), acc)
        }
        Decimal32(_, scale) => decimals(a.as_primitive::<Decimal32Type>(), name, *scale, acc),
        Decimal64(_, scale) => decimals(a.as_primitive::<Decimal64Type>(), name, *scale, acc),
        Decimal128(_, scale) => decimals(a.as_primitive::<Decimal128Type>(), name, *scale, acc),
        Decimal256(_, scale) => {
            let d = a.as_primitive::<Decimal256Type>();
            let s = seed(name, &[b'd', *scale as u8]);
            each_valid(a, |i| {
                let v = d.value(i);
                acc[i] ^= match v.to_i128() {
                    Some(small) => xxh3_128_with_seed(&small.to_le_bytes(), s),
                    None => xxh3_128_with_seed(&v.to_le_bytes(), s),
                };
            });
        }
        Boolean => {
            let (b, s) = (a.as_boolean(), seed(name, b"b"));
            each_valid(a, |i| {
                acc[i] ^= xxh3_128_with_seed(&[u8::from(b.value(i))], s)
            });
        }
        Date32 => {
            let (p, s) = (a.as_primitive::<Date32Type>(), seed(name, b"D"));
            each_valid(a, |i| {
                acc[i] ^= xxh3_128_with_seed(&p.value(i).to_le_bytes(), s)
            });
        }
        Date64 => {
            let (p, s) = (a.as_primitive::<Date64Type>(), seed(name, b"D"));
            each_valid(a, |i| {
                let days = p.value(i).div_euclid(86_400_000) as i32;
                acc[i] ^= xxh3_128_with_seed(&days.to_le_bytes(), s);
            });
        }
        Timestamp(unit, _) => {
            let s = seed(name, b"t");
            match unit {
                TimeUnit::Second => nanos(
                    a.as_primitive::<TimestampSecondType>(),
                    1_000_000_000,
                    s,
                    acc,
                ),
                TimeUnit::Millisecond => nanos(
                    a.as_primitive::<TimestampMillisecondType>(),
                    1_000_000,
                    s,
                    acc,
                ),
                TimeUnit::Microsecond => {
                    nanos(a.as_primitive::<TimestampMicrosecondType>(), 1_000, s, acc)
                }
                TimeUnit::Nanosecond => {
                    nanos(a.as_primitive::<TimestampNanosecondType>(), 1, s, acc)
                }
            }
        }
        Null => {}
        other => return exec_err!("unsupported column type {other} for a mapped attribute"),
    }
    Ok(())
}

/// Calls `f` with each row of `a` that is not null.
#[inline]
fn each_valid(a: &dyn Array, f: impl FnMut(usize)) {
    match a.logical_nulls() {
        None => (0..a.len()).for_each(f),
        Some(nulls) => nulls.valid_indices().for_each(f),
    }
}

fn ints<T>(p: &PrimitiveArray<T>, s: u64, acc: &mut [u128])
where
    T: ArrowPrimitiveType,
    T::Native: Into<i128>,
{
    each_valid(p, |i| {
        let v: i128 = p.value(i).into();
        acc[i] ^= xxh3_128_with_seed(&v.to_le_bytes(), s);
    });
}

fn floats(a: &dyn Array, value: impl Fn(usize) -> f64, s: u64, acc: &mut [u128]) {
    each_valid(a, |i| {
        let v = value(i);
        if v.is_finite() {
            let v = if v == 0.0 { 0.0f64 } else { v };
            acc[i] ^= xxh3_128_with_seed(&v.to_bits().to_le_bytes(), s);
        }
    });
}

fn decimals<T>(d: &PrimitiveArray<T>, name: &str, scale: i8, acc: &mut [u128])
where
    T: DecimalType,
    T::Native: Into<i128>,
{
    let s = seed(name, &[b'd', scale as u8]);
    each_valid(d, |i| {
        let v: i128 = d.value(i).into();
        acc[i] ^= xxh3_128_with_seed(&v.to_le_bytes(), s);
    });
}

fn nanos<T>(p: &PrimitiveArray<T>, per_unit: i128, s: u64, acc: &mut [u128])
where
    T: ArrowPrimitiveType<Native = i64>,
{
    each_valid(p, |i| {
        let v = i128::from(p.value(i)) * per_unit;
        acc[i] ^= xxh3_128_with_seed(&v.to_le_bytes(), s);
    });
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
        let out = crate::functions::call_udf(udf, args, 1);
        let bytes = out.as_fixed_size_binary().value(0).to_vec();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn version_3_matches_its_documented_encoding() {
        // Computed independently from the module docs with Python's xxhash package:
        // 0x5d8f...3f85 ^ xxh3_128(value bytes, seed=xxh3_64(name | 0 | tag)).
        assert_eq!(
            hash(Some("Lund"), Some(7)),
            "3d0d428f1beca061a09beb45725ea041"
        );
        assert_eq!(hash(Some("Lund"), None), "4dd7839937d0bfaab743466a265d8180");
        // a row of empty values hashes as a row of none
        assert_eq!(hash(None, None), "5d8f16a29c3e47b1b0e47a19c2d63f85");
        // empty values are left out, like nulls
        assert_eq!(hash(Some("  "), Some(7)), hash(None, Some(7)));
        assert_ne!(hash(Some("Lund "), Some(7)), hash(Some("Lund"), Some(7)));
    }

    #[test]
    fn a_prefix_is_the_hash_bytes_compared_with_its_nulls() {
        use datafusion::arrow::array::FixedSizeBinaryArray;
        let hashes = FixedSizeBinaryArray::try_from_sparse_iter_with_size(
            [
                Some([7u8; 16]),
                None,
                Some(core::array::from_fn(|i| i as u8)),
            ]
            .into_iter(),
            16,
        )
        .unwrap()
        .slice(1, 2);
        let udf = ScalarUDF::from(HashUdf {
            name: HASH_PREFIX,
            signature: Signature::any(1, Volatility::Immutable),
        });
        let out = crate::functions::call_udf(udf, vec![ColumnarValue::Array(Arc::new(hashes))], 2);
        let out = out.as_fixed_size_binary();
        assert_eq!(out.value_length(), 8);
        assert!(out.is_null(0));
        assert_eq!(out.value(1), [0, 1, 2, 3, 4, 5, 6, 7]);
    }

    /// The hash of one row of (attribute, column) pairs.
    fn row(pairs: Vec<(&str, ArrayRef)>) -> String {
        let udf = ScalarUDF::from(HashUdf {
            name: ROW_HASH,
            signature: Signature::variadic_any(Volatility::Immutable),
        });
        let args = pairs
            .into_iter()
            .flat_map(|(name, a)| {
                [
                    ColumnarValue::Scalar(ScalarValue::Utf8(Some(name.into()))),
                    ColumnarValue::Array(a),
                ]
            })
            .collect();
        let out = crate::functions::call_udf(udf, args, 1);
        let bytes = out.as_fixed_size_binary().value(0).to_vec();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn every_type_class_hashes_as_documented_and_widening_keeps_the_hash() {
        use datafusion::arrow::array::{
            BooleanArray, Date32Array, Decimal128Array, Decimal256Array, Float32Array,
            Float64Array, TimestampMillisecondArray, TimestampSecondArray,
        };
        use datafusion::arrow::datatypes::i256;
        let dec128: ArrayRef = Arc::new(
            Decimal128Array::from(vec![1250])
                .with_precision_and_scale(10, 2)
                .unwrap(),
        );
        let dec256: ArrayRef = Arc::new(
            Decimal256Array::from(vec![i256::from_i128(1250)])
                .with_precision_and_scale(40, 2)
                .unwrap(),
        );
        let millis: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![1_700_000_000_000]));
        let seconds: ArrayRef = Arc::new(TimestampSecondArray::from(vec![1_700_000_000]));
        let cols = |dec: ArrayRef, ts: ArrayRef, f: ArrayRef| -> Vec<(&str, ArrayRef)> {
            vec![
                ("b", Arc::new(BooleanArray::from(vec![true])) as ArrayRef),
                ("d", dec),
                ("dt", Arc::new(Date32Array::from(vec![19_000])) as ArrayRef),
                ("f", f),
                ("t", ts),
            ]
        };
        // Python: the same pairs, -0.0 hashed as 0.0, milliseconds as nanoseconds.
        let want = "4856b3fa35c6cc43c22704de759b09c0";
        let zero: ArrayRef = Arc::new(Float64Array::from(vec![-0.0]));
        assert_eq!(
            row(cols(dec128.clone(), millis.clone(), zero.clone())),
            want
        );
        // Wider decimals, coarser timestamps, narrower floats: the same values, same hash.
        let zero32: ArrayRef = Arc::new(Float32Array::from(vec![0.0f32]));
        assert_eq!(row(cols(dec256, seconds, zero32)), want);
        // NaN is empty: as if the attribute were not there.
        let nan: ArrayRef = Arc::new(Float64Array::from(vec![f64::NAN]));
        let mut without_f = cols(dec128.clone(), millis.clone(), zero.clone());
        without_f.retain(|(n, _)| *n != "f");
        assert_eq!(
            row(cols(dec128.clone(), millis.clone(), nan)),
            row(without_f)
        );
        // Another scale is another value; the same value under another attribute differs.
        let rescaled: ArrayRef = Arc::new(
            Decimal128Array::from(vec![1250])
                .with_precision_and_scale(10, 3)
                .unwrap(),
        );
        assert_ne!(row(cols(rescaled, millis.clone(), zero.clone())), want);
        let n: ArrayRef = Arc::new(Int64Array::from(vec![7]));
        assert_ne!(row(vec![("a", n.clone())]), row(vec![("b", n)]));
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
