//! Inputs shared by the classification's unit tests.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, FixedSizeBinaryArray, FixedSizeBinaryBuilder, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::memory_pool::MemoryConsumer;

use super::entry::{PARTS, Part, Row, scatter};
use super::exec::ClassifyExec;
use super::job::ClassifyJob;
use super::provider::output_schema;
use super::{S_CONTACT_ID, S_HASH, S_ID, S_STATUS};
use crate::columns::{KNOWN_CONTACT_ID, RAW_IDENTIFIER};
use crate::config::Key;
use crate::state;
use crate::strings::Strings;

pub(super) fn hashes(values: &[Option<u8>]) -> FixedSizeBinaryArray {
    let mut b = FixedSizeBinaryBuilder::new(16);
    for v in values {
        match v {
            Some(v) => b.append_value([*v; 16]).expect("16 bytes"),
            None => b.append_null(),
        }
    }
    b.finish()
}

/// Partitions of `ids` and their row hashes, split into batches of `batch` rows, and
/// where each batch starts in each partition.
pub(super) fn parts(
    ids: &[Option<&str>],
    row_hashes: &[Option<u8>],
    batch: usize,
) -> (Vec<Part>, Vec<u32>) {
    let mut parts: Vec<Part> = (0..PARTS).map(|_| Part::default()).collect();
    let mut starts = Vec::new();
    for (b, (ids, row_hashes)) in ids.chunks(batch).zip(row_hashes.chunks(batch)).enumerate() {
        let ids: ArrayRef = Arc::new(StringArray::from(ids.to_vec()));
        let ids = Strings::new(&ids).expect("strings");
        starts.extend(parts.iter().map(|p| p.len() as u32));
        scatter(&ids, &hashes(row_hashes), (b * batch) as Row, 7, &mut parts);
    }
    (parts, starts)
}

pub(super) fn field(name: &str, t: DataType) -> Field {
    Field::new(name, t, true)
}

/// The model's columns: raw and normalised identifier, known contactId, row hash and
/// two values ("a", "b").
pub(super) fn model_schema() -> SchemaRef {
    let hash = DataType::FixedSizeBinary(16);
    Arc::new(Schema::new(vec![
        field(RAW_IDENTIFIER, DataType::Utf8),
        field(state::IDENTIFIER, DataType::Utf8),
        field(KNOWN_CONTACT_ID, DataType::Utf8),
        field(state::ROW_HASH, hash),
        field("a", DataType::Utf8),
        field("b", DataType::Utf8),
    ]))
}

/// The compact state's columns.
pub(super) fn state_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        field(S_ID, DataType::Utf8),
        field(S_HASH, DataType::FixedSizeBinary(16)),
        field(S_CONTACT_ID, DataType::Utf8),
        field(S_STATUS, DataType::Utf8),
    ]))
}

/// Model rows with these identifiers and row hashes.
pub(super) fn model_batch(ids: &[&str], row_hashes: &[Option<u8>]) -> RecordBatch {
    let text = |p: &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(
            ids.iter().map(|id| format!("{p}{id}")),
        ))
    };
    let columns = vec![
        text(""),
        text(""),
        text("known-"),
        Arc::new(hashes(row_hashes)) as ArrayRef,
        text("a-"),
        text("b-"),
    ];
    RecordBatch::try_new(model_schema(), columns).unwrap()
}

/// A classification of the model above against a compact state, with `projection`.
pub(super) fn job(projection: Option<Vec<usize>>, expected: usize) -> ClassifyJob {
    use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool};
    use datafusion::physical_plan::empty::EmptyExec;
    let values = ["a".to_string(), "b".to_string()];
    let full = output_schema(&model_schema(), &state_schema(), &values).unwrap();
    let exec = ClassifyExec::try_new(
        Arc::new(EmptyExec::new(model_schema())),
        Arc::new(EmptyExec::new(state_schema())),
        Key::Email,
        &values,
        expected,
        full,
        projection,
    )
    .unwrap();
    let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(1 << 30));
    let reservation = MemoryConsumer::new("test").register(&pool);
    ClassifyJob::new(exec.spec(), 0, reservation, 1)
}
