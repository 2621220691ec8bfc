//! Arrow batch -> Voyado JSON payload values, column by column, with empty values removed.
//!
//! Voyado overwrites an attribute with whatever it receives, `""` and `null` included, so
//! an empty value must never be sent: null, empty or whitespace-only strings, NaN and
//! infinities are dropped here, once, for every payload.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::*;

use crate::error::{Error, Result};

/// One column's values as JSON text (a string literal, number or boolean).
pub struct ColumnEncoder {
    array: ArrayRef,
    kind: Kind,
}

enum Kind {
    Str(StringArray),
    Int,
    Float,
    Decimal(StringArray),
    Bool,
    Date32,
    Date64,
    Timestamp(TimeUnit),
    Null,
}

impl ColumnEncoder {
    pub fn new(array: &ArrayRef) -> Result<ColumnEncoder> {
        use DataType::*;
        let text = |a: &ArrayRef| -> Result<StringArray> {
            cast(a, &Utf8)
                .map(|c| c.as_string::<i32>().clone())
                .map_err(|e| Error::Internal(format!("encoding a column: {e}")))
        };
        let kind = match array.data_type() {
            Utf8 | LargeUtf8 | Utf8View => Kind::Str(text(array)?),
            Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => Kind::Int,
            Float16 | Float32 | Float64 => Kind::Float,
            Decimal32(_, _) | Decimal64(_, _) | Decimal128(_, _) | Decimal256(_, _) => {
                Kind::Decimal(text(array)?)
            }
            Boolean => Kind::Bool,
            Date32 => Kind::Date32,
            Date64 => Kind::Date64,
            Timestamp(unit, _) => Kind::Timestamp(*unit),
            Null => Kind::Null,
            other => {
                return Err(Error::Input(format!(
                    "cannot encode a column of type {other} for Voyado"
                )));
            }
        };
        Ok(ColumnEncoder {
            array: array.clone(),
            kind,
        })
    }

    /// The JSON text of row `i`, or None when the value is empty and must not be sent.
    pub fn json(&self, i: usize) -> Option<String> {
        if self.array.is_null(i) {
            return None;
        }
        let a = self.array.as_ref();
        match &self.kind {
            Kind::Str(s) => {
                let v = s.value(i);
                if v.trim_matches(char::is_whitespace).is_empty() {
                    None
                } else {
                    serde_json::to_string(v).ok()
                }
            }
            Kind::Int => Some(int_text(a, i)),
            Kind::Float => {
                let v = match a.data_type() {
                    DataType::Float16 => {
                        f64::from(a.as_primitive::<Float16Type>().value(i).to_f32())
                    }
                    DataType::Float32 => f64::from(a.as_primitive::<Float32Type>().value(i)),
                    _ => a.as_primitive::<Float64Type>().value(i),
                };
                // Display gives the shortest text that round-trips, never exponent notation.
                v.is_finite()
                    .then(|| format!("{}", if v == 0.0 { 0.0 } else { v }))
            }
            Kind::Decimal(s) => Some(s.value(i).to_string()),
            Kind::Bool => Some(a.as_boolean().value(i).to_string()),
            Kind::Date32 => date_text(i64::from(a.as_primitive::<Date32Type>().value(i))),
            Kind::Date64 => date_text(
                a.as_primitive::<Date64Type>()
                    .value(i)
                    .div_euclid(86_400_000),
            ),
            Kind::Timestamp(unit) => timestamp_text(a, *unit, i),
            Kind::Null => None,
        }
    }
}

fn int_text(a: &dyn Array, i: usize) -> String {
    match a.data_type() {
        DataType::Int8 => a.as_primitive::<Int8Type>().value(i).to_string(),
        DataType::Int16 => a.as_primitive::<Int16Type>().value(i).to_string(),
        DataType::Int32 => a.as_primitive::<Int32Type>().value(i).to_string(),
        DataType::Int64 => a.as_primitive::<Int64Type>().value(i).to_string(),
        DataType::UInt8 => a.as_primitive::<UInt8Type>().value(i).to_string(),
        DataType::UInt16 => a.as_primitive::<UInt16Type>().value(i).to_string(),
        DataType::UInt32 => a.as_primitive::<UInt32Type>().value(i).to_string(),
        _ => a.as_primitive::<UInt64Type>().value(i).to_string(),
    }
}

fn date_text(days: i64) -> Option<String> {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    let d = epoch.checked_add_signed(chrono::TimeDelta::try_days(days)?)?;
    Some(format!("\"{}\"", d.format("%Y-%m-%d")))
}

/// RFC 3339 in UTC with `Z`; fractional seconds only when non-zero. A timestamp without a
/// zone is taken as UTC (Arrow stores every timestamp as an offset from the UTC epoch).
fn timestamp_text(a: &dyn Array, unit: TimeUnit, i: usize) -> Option<String> {
    let (secs, nanos) = match unit {
        TimeUnit::Second => (a.as_primitive::<TimestampSecondType>().value(i), 0),
        TimeUnit::Millisecond => {
            let v = a.as_primitive::<TimestampMillisecondType>().value(i);
            (v.div_euclid(1000), v.rem_euclid(1000) * 1_000_000)
        }
        TimeUnit::Microsecond => {
            let v = a.as_primitive::<TimestampMicrosecondType>().value(i);
            (v.div_euclid(1_000_000), v.rem_euclid(1_000_000) * 1000)
        }
        TimeUnit::Nanosecond => {
            let v = a.as_primitive::<TimestampNanosecondType>().value(i);
            (v.div_euclid(1_000_000_000), v.rem_euclid(1_000_000_000))
        }
    };
    let t = chrono::DateTime::from_timestamp(secs, nanos as u32)?;
    Some(format!(
        "\"{}\"",
        t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    ))
}

/// A flat JSON object from (attribute, JSON text) pairs.
pub fn object(pairs: &[(&str, String)]) -> String {
    let mut out = String::from("{");
    for (k, (name, value)) in pairs.iter().enumerate() {
        if k > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(name).unwrap_or_default());
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::*;
    use std::sync::Arc;

    fn enc(a: ArrayRef) -> Vec<Option<String>> {
        let e = ColumnEncoder::new(&a).unwrap();
        (0..a.len()).map(|i| e.json(i)).collect()
    }

    #[test]
    fn strings_are_sent_as_they_are_and_empty_ones_not_at_all() {
        let a: ArrayRef = Arc::new(StringArray::from(vec![
            Some(" Ada "),
            Some(""),
            Some(" \t\u{00A0}"),
            None,
            Some("quote \" and \\ and å"),
        ]));
        assert_eq!(
            enc(a),
            vec![
                Some("\" Ada \"".into()),
                None,
                None,
                None,
                Some("\"quote \\\" and \\\\ and å\"".into())
            ]
        );
    }

    #[test]
    fn numbers_are_exact() {
        let a: ArrayRef = Arc::new(Int64Array::from(vec![Some(i64::MIN), None, Some(42)]));
        assert_eq!(
            enc(a),
            vec![Some("-9223372036854775808".into()), None, Some("42".into())]
        );
        let a: ArrayRef = Arc::new(UInt64Array::from(vec![u64::MAX]));
        assert_eq!(enc(a), vec![Some("18446744073709551615".into())]);
        let a: ArrayRef = Arc::new(Float64Array::from(vec![
            1.5,
            f64::NAN,
            f64::INFINITY,
            -0.0,
            1e21,
            0.1,
        ]));
        assert_eq!(
            enc(a),
            vec![
                Some("1.5".into()),
                None,
                None,
                Some("0".into()),
                Some("1000000000000000000000".into()),
                Some("0.1".into())
            ]
        );
        let a: ArrayRef = Arc::new(
            Decimal128Array::from(vec![Some(1250), Some(-5), Some(123456789012345678)])
                .with_precision_and_scale(20, 2)
                .unwrap(),
        );
        assert_eq!(
            enc(a),
            vec![
                Some("12.50".into()),
                Some("-0.05".into()),
                Some("1234567890123456.78".into())
            ]
        );
    }

    #[test]
    fn booleans_dates_and_timestamps() {
        let a: ArrayRef = Arc::new(BooleanArray::from(vec![Some(true), Some(false), None]));
        assert_eq!(
            enc(a),
            vec![Some("true".into()), Some("false".into()), None]
        );
        let a: ArrayRef = Arc::new(Date32Array::from(vec![0, 19000, -1]));
        assert_eq!(
            enc(a),
            vec![
                Some("\"1970-01-01\"".into()),
                Some("\"2022-01-08\"".into()),
                Some("\"1969-12-31\"".into())
            ]
        );
        let a: ArrayRef = Arc::new(
            TimestampMicrosecondArray::from(vec![1_700_000_000_000_000, 1_700_000_000_123_000, -1])
                .with_timezone("Europe/Stockholm"),
        );
        assert_eq!(
            enc(a),
            vec![
                Some("\"2023-11-14T22:13:20Z\"".into()),
                Some("\"2023-11-14T22:13:20.123Z\"".into()),
                Some("\"1969-12-31T23:59:59.999999Z\"".into())
            ]
        );
        // no zone: taken as UTC
        let a: ArrayRef = Arc::new(TimestampSecondArray::from(vec![86_400]));
        assert_eq!(enc(a), vec![Some("\"1970-01-02T00:00:00Z\"".into())]);
    }

    #[test]
    fn objects_are_flat_json() {
        let body = object(&[("firstName", "\"Ada\"".into()), ("score", "1.5".into())]);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v, serde_json::json!({"firstName": "Ada", "score": 1.5}));
        assert_eq!(object(&[]), "{}");
    }
}
