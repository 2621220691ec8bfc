//! The identity rules as DataFusion scalar functions, so plans apply exactly the Rust rules.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, StringBuilder, UInt32Builder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use super::{bucket, normalize_into, problem, shard};
use crate::config::Key;
use crate::strings::Strings;

pub const NORMALIZE: &str = "voyado_normalize_id";
pub const PROBLEM: &str = "voyado_id_problem";
pub const BUCKET: &str = "voyado_bucket";
pub const SHARD: &str = "voyado_shard";

/// All identity UDFs, for registration on a session.
pub fn all() -> Vec<ScalarUDF> {
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

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(if self.name == BUCKET || self.name == SHARD {
            DataType::UInt32
        } else {
            DataType::Utf8
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
            name => {
                let key_name = scalar_string(&args.args[1], "identifier key")?;
                let Some(key) = Key::parse(&key_name) else {
                    return exec_err!("unknown identifier key {key_name}");
                };
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

/// Calls `f` with each value of a string-like (or integer) array, read in place.
fn each_str(array: &ArrayRef, f: impl FnMut(Option<&str>)) -> Result<()> {
    Strings::new(array)?.iter().for_each(f);
    Ok(())
}
