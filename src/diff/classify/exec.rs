//! `ClassifyExec`: the operator over the model's and the state's plans, one partition,
//! emitting once both inputs have ended.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, internal_err};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream, execute_stream,
};
use futures::StreamExt;

use super::job::{ClassifyJob, Columns, Spec};
use super::{
    COL_IDENTIFIER, COL_KNOWN, COL_RAW, COL_ROW_HASH, FIXED_COLUMNS, S_CONTACT_ID, S_HASH, S_ID,
    S_STATUS, wanted_state,
};
use crate::columns::{KNOWN_CONTACT_ID, RAW_IDENTIFIER};
use crate::config::Key;
use crate::state;

#[derive(Debug, Clone)]
pub(super) struct ClassifyExec {
    model: Arc<dyn ExecutionPlan>,
    state: Arc<dyn ExecutionPlan>,
    pub(super) key: Key,
    pub(super) cols: Columns,
    pub(super) expected: usize,
    /// Every output column, and the ones this scan returns.
    pub(super) full: SchemaRef,
    pub(super) projection: Option<Vec<usize>>,
    props: Arc<PlanProperties>,
    pub(super) metrics: ExecutionPlanMetricsSet,
}

impl ClassifyExec {
    /// What each execution takes from the operator.
    pub(super) fn spec(&self) -> Spec<'_> {
        Spec {
            key: self.key,
            cols: &self.cols,
            expected: self.expected,
            full: &self.full,
            projection: &self.projection,
            metrics: &self.metrics,
        }
    }

    pub(super) fn try_new(
        model: Arc<dyn ExecutionPlan>,
        state: Arc<dyn ExecutionPlan>,
        key: Key,
        values: &[String],
        expected: usize,
        full: SchemaRef,
        projection: Option<Vec<usize>>,
    ) -> Result<Self> {
        let (m, s) = (model.schema(), state.schema());
        let wanted = |column: usize| projection.as_ref().is_none_or(|p| p.contains(&column));
        let mut cols = Columns {
            raw: m.index_of(RAW_IDENTIFIER)?,
            ident: m.index_of(state::IDENTIFIER)?,
            known: m.index_of(KNOWN_CONTACT_ID)?,
            hash: m.index_of(state::ROW_HASH)?,
            values: values.iter().map(|v| m.index_of(v).ok()).collect(),
            s_id: s.index_of(S_ID)?,
            s_hash: s.index_of(S_HASH)?,
            s_contact_id: s.index_of(S_CONTACT_ID).ok(),
            s_status: s.index_of(S_STATUS).ok(),
            held: Vec::new(),
        };
        let fixed = [
            (COL_IDENTIFIER, cols.ident),
            (COL_RAW, cols.raw),
            (COL_KNOWN, cols.known),
            (COL_ROW_HASH, cols.hash),
        ];
        let values = (cols.values.iter().enumerate())
            .filter_map(|(i, at)| Some((FIXED_COLUMNS + i, (*at)?)));
        cols.held = fixed
            .into_iter()
            .chain(values)
            // The identifier always: rows the state lacks are checked against the key's rules.
            .filter(|(column, _)| wanted(*column) || *column == COL_IDENTIFIER)
            .map(|(_, at)| at)
            .collect();
        cols.held.sort_unstable();
        cols.held.dedup();
        if wanted_state(projection.as_deref())
            && (cols.s_contact_id.is_none() || cols.s_status.is_none())
        {
            return internal_err!("ClassifyExec: the state's contactIds and statuses are missing");
        }
        let out = match &projection {
            Some(p) => Arc::new(full.project(p)?),
            None => Arc::clone(&full),
        };
        for (i, v) in cols.values.iter().enumerate() {
            let column = FIXED_COLUMNS + i;
            if v.is_none() && projection.as_ref().is_none_or(|p| p.contains(&column)) {
                return internal_err!("ClassifyExec: no model column for {}", full.field(column));
            }
        }
        let props = PlanProperties::new(
            EquivalenceProperties::new(out),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(ClassifyExec {
            model,
            state,
            key,
            cols,
            expected,
            full,
            projection,
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for ClassifyExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ClassifyExec: key={}", self.key.as_str())
    }
}

impl ExecutionPlan for ClassifyExec {
    fn name(&self) -> &str {
        "ClassifyExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.model, &self.state]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (Some(state), Some(model), true) =
            (children.pop(), children.pop(), children.is_empty())
        else {
            return internal_err!("ClassifyExec takes two children");
        };
        Ok(Arc::new(ClassifyExec {
            model,
            state,
            metrics: ExecutionPlanMetricsSet::new(),
            ..(*self).clone()
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("ClassifyExec has one partition, not {partition}");
        }
        let model = execute_stream(Arc::clone(&self.model), Arc::clone(&context))?;
        let state = execute_stream(Arc::clone(&self.state), Arc::clone(&context))?;
        let reservation =
            MemoryConsumer::new("voyado change detection").register(context.memory_pool());
        // One thread per partition of the session, but no more than the cores: these are
        // OS threads, and a session may have more partitions than cores.
        let threads = (context.session_config().target_partitions()).min(crate::catalog::cores());
        let job = ClassifyJob::new(self.spec(), partition, reservation, threads);
        let out = self.properties().eq_properties.schema().clone();
        let batches = futures::stream::once(job.collect(model, state))
            .map(|job| match job {
                Ok(job) => job.into_stream(),
                Err(e) => futures::stream::iter([Err(e)]).boxed(),
            })
            .flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(out, batches)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}
