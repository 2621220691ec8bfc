//! Encoder throughput: Arrow batches of the benchmark's column mix -> Voyado JSON payloads,
//! empty values removed. Prints rows per second on one core.
//!
//!     cargo bench --bench encode

#![allow(clippy::unwrap_used)] // a failed setup step should stop the run where it failed

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::*;
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use voyado_sync::sink::voyado::encode::{ColumnEncoder, row_object};

fn batch(rows: usize, offset: usize) -> RecordBatch {
    let n = |i: usize| i + offset;
    let schema = Arc::new(Schema::new(vec![
        Field::new("firstName", DataType::Utf8, true),
        Field::new("lastName", DataType::Utf8, true),
        Field::new("city", DataType::Utf8, true),
        Field::new("countryCode", DataType::Utf8, true),
        Field::new("birthDay", DataType::Date32, true),
        Field::new("newsletter", DataType::Boolean, true),
        Field::new(
            "signed_up_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("churn_score", DataType::Float64, true),
        Field::new("segment", DataType::Utf8, true),
        Field::new("order_count", DataType::Int64, true),
        Field::new("total_spent", DataType::Decimal128(12, 2), true),
        Field::new(
            "last_order_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("loyalty_tier", DataType::Utf8, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter(
            (0..rows).map(|i| Some(["Ada", "Björn", "Clara"][n(i) % 3])),
        )),
        Arc::new(StringArray::from_iter(
            (0..rows).map(|i| Some(["Berg", "Dahl"][n(i) % 2])),
        )),
        Arc::new(StringArray::from_iter(
            (0..rows).map(|i| (n(i) % 10 != 0).then_some("Stockholm")),
        )),
        Arc::new(StringArray::from_iter((0..rows).map(|_| Some("SE")))),
        Arc::new(Date32Array::from_iter(
            (0..rows).map(|i| Some((n(i) % 20000) as i32)),
        )),
        Arc::new(BooleanArray::from_iter(
            (0..rows).map(|i| (n(i) % 7 != 0).then_some(n(i) % 2 == 0)),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter(
                (0..rows).map(|i| Some(1_600_000_000_000_000 + n(i) as i64 * 1_000_003)),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(Float64Array::from_iter((0..rows).map(|i| {
            (n(i) % 20 != 0).then_some((n(i) % 10000) as f64 / 10000.0)
        }))),
        Arc::new(StringArray::from_iter((0..rows).map(|i| {
            (n(i) % 4 != 0).then(|| format!("segment-{}", n(i) % 12))
        }))),
        Arc::new(Int64Array::from_iter(
            (0..rows).map(|i| Some((n(i) % 9) as i64)),
        )),
        Arc::new(
            Decimal128Array::from_iter((0..rows).map(|i| Some((n(i) % 500000) as i128)))
                .with_precision_and_scale(12, 2)
                .unwrap(),
        ),
        Arc::new(
            TimestampMicrosecondArray::from_iter(
                (0..rows).map(|i| (n(i) % 3 != 0).then_some(1_700_000_000_000_000 + n(i) as i64)),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter(
            (0..rows).map(|i| Some(["gold", "silver", "bronze"][n(i) % 3])),
        )),
    ];
    RecordBatch::try_new(schema, cols).unwrap()
}

fn main() {
    let batches: Vec<RecordBatch> = (0..20).map(|k| batch(8192, k * 8192)).collect();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut bytes = 0usize;
    let started = Instant::now();
    for _ in 0..5 {
        for b in &batches {
            let names: Vec<String> = b
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            let encoders: Vec<ColumnEncoder> = b
                .columns()
                .iter()
                .map(|c| ColumnEncoder::new(c).unwrap())
                .collect();
            let columns: Vec<(&str, &ColumnEncoder)> =
                names.iter().map(String::as_str).zip(&encoders).collect();
            let mut body = String::with_capacity(512);
            for i in 0..b.num_rows() {
                body.clear();
                row_object(&columns, i, &mut body);
                bytes += body.len();
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let total = rows * 5;
    println!(
        "encode: {total} rows x 13 columns in {secs:.2} s = {:.2} M rows/s on one core ({:.0} MB of JSON)",
        total as f64 / secs / 1e6,
        bytes as f64 / 1e6
    );
}
