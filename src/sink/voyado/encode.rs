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
    /// An encoder for `array`; an error for a column type that cannot be sent to Voyado.
    pub fn new(array: &ArrayRef) -> Result<ColumnEncoder> {
        use DataType::*;
        let text = |a: &ArrayRef| -> Result<StringArray> {
            cast(a, &Utf8)
                .map(|c| c.as_string::<i32>().clone())
                .map_err(|e| Error::arrow("encoding a column", e))
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
        let mut out = String::new();
        self.append_json(i, &mut out).then_some(out)
    }

    /// Appends row `i`'s JSON text to `out` without allocating; returns false (appending
    /// nothing) when the value is empty.
    pub fn append_json(&self, i: usize, out: &mut String) -> bool {
        use std::fmt::Write;
        if self.array.is_null(i) {
            return false;
        }
        let a = self.array.as_ref();
        match &self.kind {
            Kind::Str(s) => {
                let v = s.value(i);
                if v.trim_matches(char::is_whitespace).is_empty() {
                    return false;
                }
                push_json_string(v, out);
            }
            Kind::Int => push_int(a, i, out),
            Kind::Float => {
                let v = match a.data_type() {
                    DataType::Float16 => {
                        f64::from(a.as_primitive::<Float16Type>().value(i).to_f32())
                    }
                    DataType::Float32 => f64::from(a.as_primitive::<Float32Type>().value(i)),
                    _ => a.as_primitive::<Float64Type>().value(i),
                };
                if !v.is_finite() {
                    return false;
                }
                // Display gives the shortest text that round-trips, never exponent notation.
                let _ = write!(out, "{}", if v == 0.0 { 0.0 } else { v });
            }
            Kind::Decimal(s) => out.push_str(s.value(i)),
            Kind::Bool => out.push_str(if a.as_boolean().value(i) {
                "true"
            } else {
                "false"
            }),
            Kind::Date32 => {
                return push_date(i64::from(a.as_primitive::<Date32Type>().value(i)), out);
            }
            Kind::Date64 => {
                return push_date(
                    a.as_primitive::<Date64Type>()
                        .value(i)
                        .div_euclid(86_400_000),
                    out,
                );
            }
            Kind::Timestamp(unit) => return push_timestamp(a, *unit, i, out),
            Kind::Null => return false,
        }
        true
    }
}

/// A JSON string literal: quotes, backslashes and control characters escaped.
fn push_json_string(v: &str, out: &mut String) {
    use std::fmt::Write;
    out.push('"');
    if !v.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(v);
        out.push('"');
        return;
    }
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_int(a: &dyn Array, i: usize, out: &mut String) {
    let mut b = itoa::Buffer::new();
    out.push_str(match a.data_type() {
        DataType::Int8 => b.format(a.as_primitive::<Int8Type>().value(i)),
        DataType::Int16 => b.format(a.as_primitive::<Int16Type>().value(i)),
        DataType::Int32 => b.format(a.as_primitive::<Int32Type>().value(i)),
        DataType::Int64 => b.format(a.as_primitive::<Int64Type>().value(i)),
        DataType::UInt8 => b.format(a.as_primitive::<UInt8Type>().value(i)),
        DataType::UInt16 => b.format(a.as_primitive::<UInt16Type>().value(i)),
        DataType::UInt32 => b.format(a.as_primitive::<UInt32Type>().value(i)),
        _ => b.format(a.as_primitive::<UInt64Type>().value(i)),
    });
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's civil_from_days):
/// formatting dates by hand is several times faster than through a formatter.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn push_digits(out: &mut String, v: u32, width: usize) {
    let mut buf = [b'0'; 10];
    let mut v = v;
    for k in (0..width).rev() {
        buf[k] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend(buf[..width].iter().map(|b| *b as char));
}

/// `YYYY-MM-DD` for years 0..=9999; other years through chrono (rare, and it handles them).
fn push_ymd(days: i64, out: &mut String) -> bool {
    let (y, m, d) = civil(days);
    if !(0..=9999).contains(&y) {
        use std::fmt::Write;
        let Some(date) = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)
            .and_then(|e| e.checked_add_signed(chrono::TimeDelta::try_days(days)?))
        else {
            return false;
        };
        let _ = write!(out, "{}", date.format("%Y-%m-%d"));
        return true;
    }
    push_digits(out, y as u32, 4);
    out.push('-');
    push_digits(out, m, 2);
    out.push('-');
    push_digits(out, d, 2);
    true
}

fn push_date(days: i64, out: &mut String) -> bool {
    let mark = out.len();
    out.push('"');
    if !push_ymd(days, out) {
        out.truncate(mark);
        return false;
    }
    out.push('"');
    true
}

/// RFC 3339 in UTC with `Z`; fractional seconds only when non-zero (3, 6 or 9 digits). A
/// timestamp without a zone is taken as UTC (Arrow stores every timestamp as an offset from
/// the UTC epoch).
fn push_timestamp(a: &dyn Array, unit: TimeUnit, i: usize, out: &mut String) -> bool {
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
    let mark = out.len();
    out.push('"');
    if !push_ymd(secs.div_euclid(86_400), out) {
        out.truncate(mark);
        return false;
    }
    let sod = secs.rem_euclid(86_400) as u32;
    out.push('T');
    push_digits(out, sod / 3600, 2);
    out.push(':');
    push_digits(out, sod / 60 % 60, 2);
    out.push(':');
    push_digits(out, sod % 60, 2);
    let nanos = nanos as u32;
    if nanos != 0 {
        out.push('.');
        if nanos.is_multiple_of(1_000_000) {
            push_digits(out, nanos / 1_000_000, 3);
        } else if nanos.is_multiple_of(1000) {
            push_digits(out, nanos / 1000, 6);
        } else {
            push_digits(out, nanos, 9);
        }
    }
    out.push_str("Z\"");
    true
}

/// Row `i` of `columns` as a flat JSON object of its non-empty values, built in one buffer.
pub fn row_object(columns: &[(&str, &ColumnEncoder)], i: usize, out: &mut String) {
    out.push('{');
    let mut first = true;
    for (name, enc) in columns {
        let mark = out.len();
        if !first {
            out.push(',');
        }
        push_json_string(name, out);
        out.push(':');
        if enc.append_json(i, out) {
            first = false;
        } else {
            out.truncate(mark);
        }
    }
    out.push('}');
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
    fn row_objects_are_valid_json_without_empty_values() {
        let s: ArrayRef = Arc::new(StringArray::from(vec![
            Some("tab\t nul\u{0} \"q\" \\ å 👍"),
            Some(" "),
        ]));
        let n: ArrayRef = Arc::new(Int64Array::from(vec![None, Some(7)]));
        let (es, en) = (
            ColumnEncoder::new(&s).unwrap(),
            ColumnEncoder::new(&n).unwrap(),
        );
        let cols = [("firstName", &es), ("score", &en)];
        let mut out = String::new();
        row_object(&cols, 0, &mut out);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"firstName": "tab\t nul\u{0} \"q\" \\ å 👍"})
        );
        out.clear();
        row_object(&cols, 1, &mut out);
        assert_eq!(out, "{\"score\":7}");
    }

    #[test]
    fn hand_formatted_dates_and_timestamps_match_chrono() {
        let days: Vec<i32> = (-800_000..3_000_000).step_by(997).collect();
        let a: ArrayRef = Arc::new(Date32Array::from(days.clone()));
        let e = ColumnEncoder::new(&a).unwrap();
        for (k, d) in days.iter().enumerate() {
            let want = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)
                .unwrap()
                .checked_add_signed(chrono::TimeDelta::try_days(i64::from(*d)).unwrap())
                .unwrap()
                .format("\"%Y-%m-%d\"")
                .to_string();
            assert_eq!(e.json(k).unwrap(), want, "day {d}");
        }
        let ts: Vec<i64> = (0..2000)
            .map(|k| -4_000_000_000_000_000_000 + k * 4_000_000_000_000_003)
            .collect();
        let a: ArrayRef = Arc::new(TimestampNanosecondArray::from(ts.clone()));
        let e = ColumnEncoder::new(&a).unwrap();
        for (k, t) in ts.iter().enumerate() {
            let want = chrono::DateTime::from_timestamp(
                t.div_euclid(1_000_000_000),
                t.rem_euclid(1_000_000_000) as u32,
            )
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
            assert_eq!(e.json(k).unwrap(), format!("\"{want}\""), "ts {t}");
        }
    }

    #[test]
    fn objects_are_flat_json() {
        let body = object(&[("firstName", "\"Ada\"".into()), ("score", "1.5".into())]);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v, serde_json::json!({"firstName": "Ada", "score": 1.5}));
        assert_eq!(object(&[]), "{}");
    }
}
