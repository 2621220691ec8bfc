//! The change set of a model frame against a compact state frame as a table: its schema,
//! and a scan that plans both inputs without what the query leaves out.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Column, Result, internal_err};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::DataFrame;

use super::exec::ClassifyExec;
use super::{FIXED_COLUMNS, S_HASH, S_ID, wanted_state};
use crate::columns::{KIND, KNOWN_CONTACT_ID, PREV_STATUS, RAW_IDENTIFIER, REASON};
use crate::config::Key;
use crate::state;

/// The change set of one model frame against one compact state frame, as a table.
#[derive(Debug)]
pub(crate) struct Classified {
    pub(super) model: LogicalPlan,
    pub(super) state: LogicalPlan,
    pub(super) key: Key,
    /// Model columns carried through after the fixed ones (attribute values).
    pub(super) values: Vec<String>,
    /// Identifiers expected (the state's rows), to size the table once.
    pub(super) expected: usize,
    pub(super) schema: SchemaRef,
}

impl Classified {
    /// `model` holds `_raw_identifier`, `_identifier`, `_known_contact_id`, `_row_hash` and
    /// the `values` columns (others are ignored); `state` holds the compact view
    /// (`__s_id`, `__s_hash`, `__s_contact_id`, `__s_status`) of about `expected` rows.
    pub(crate) fn new(
        model: DataFrame,
        state: DataFrame,
        key: Key,
        values: Vec<String>,
        expected: usize,
    ) -> Result<Self> {
        let schema = output_schema(
            model.schema().as_arrow(),
            state.schema().as_arrow(),
            &values,
        )?;
        Ok(Classified {
            model: model.logical_plan().clone(),
            state: state.logical_plan().clone(),
            key,
            values,
            expected,
            schema,
        })
    }
}

/// The change set's columns: the fixed ones, typed after the model's (`state` must hold
/// the compact view, its row hash typed as the model's), then the `values`.
pub(super) fn output_schema(m: &Schema, s: &Schema, values: &[String]) -> Result<SchemaRef> {
    let field = |schema: &Schema, name: &str| -> Result<DataType> {
        Ok(schema.field_with_name(name)?.data_type().clone())
    };
    field(s, S_ID)?;
    if field(s, S_HASH)? != field(m, state::ROW_HASH)? {
        return internal_err!("the state's and the model's row hashes differ in type");
    }
    let mut fields = vec![
        Field::new(KIND, DataType::Utf8View, true),
        Field::new(state::IDENTIFIER, field(m, state::IDENTIFIER)?, true),
        Field::new(RAW_IDENTIFIER, field(m, RAW_IDENTIFIER)?, true),
        Field::new(REASON, DataType::Utf8View, true),
        Field::new(KNOWN_CONTACT_ID, field(m, KNOWN_CONTACT_ID)?, true),
        Field::new(state::CONTACT_ID, DataType::Utf8, true),
        Field::new(PREV_STATUS, DataType::Utf8, true),
        Field::new(state::ROW_HASH, field(m, state::ROW_HASH)?, true),
    ];
    for v in values {
        fields.push(Field::new(v, field(m, v)?, true));
    }
    Ok(Arc::new(Schema::new(fields)))
}

#[async_trait]
impl TableProvider for Classified {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        session: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // Values not asked for (a count, a plan) are left out of the model's plan, so they
        // are neither carried nor held: the row hash still reads them below.
        let wanted = |i: usize| projection.is_none_or(|p| p.contains(&(FIXED_COLUMNS + i)));
        let model = if (0..self.values.len()).all(wanted) {
            self.model.clone()
        } else {
            let kept = [
                RAW_IDENTIFIER,
                state::IDENTIFIER,
                KNOWN_CONTACT_ID,
                state::ROW_HASH,
            ]
            .into_iter()
            .chain(
                self.values
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| wanted(*i))
                    .map(|(_, v)| v.as_str()),
            )
            .map(|c| Expr::Column(Column::from_name(c)));
            LogicalPlanBuilder::from(self.model.clone())
                .project(kept)?
                .build()?
        };
        // A count needs no contactIds or statuses: the snapshot's columns are not even read.
        let state = if wanted_state(projection.map(Vec::as_slice)) {
            self.state.clone()
        } else {
            LogicalPlanBuilder::from(self.state.clone())
                .project([S_ID, S_HASH].map(|c| Expr::Column(Column::from_name(c))))?
                .build()?
        };
        let model = session.create_physical_plan(&model).await?;
        let state = session.create_physical_plan(&state).await?;
        ClassifyExec::try_new(
            model,
            state,
            self.key,
            &self.values,
            self.expected,
            Arc::clone(&self.schema),
            projection.cloned(),
        )
        .map(|e| Arc::new(e) as Arc<dyn ExecutionPlan>)
    }
}
