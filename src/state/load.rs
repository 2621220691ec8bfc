//! Reading the state: the snapshot with every delta the manifest names applied, as one
//! frame the diff joins against.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::ScalarValue;
use datafusion::prelude::{DataFrame, Expr, ParquetReadOptions, SessionContext, ident, lit};

use super::StateError;
use super::{
    CONTACT_ID, DeltaOp, FIXED_COLUMNS, IDENTIFIER, Manifest, OP, ROW_HASH, STATUS, State, quote,
};
use crate::catalog::temp_view;
use crate::error::{Error, Result};

/// The delta column ordering deltas while they are applied.
const SEQ: &str = "_seq";

impl State {
    /// The current state as one frame: the snapshot with every named delta applied (the
    /// latest delta row per identifier wins; `_op = 'delete'` removes it).
    pub async fn load(&self, ctx: &SessionContext, m: &Manifest) -> Result<DataFrame> {
        let mut frames = Vec::new();
        for rel in &m.snapshot {
            frames.push((rel.clone(), self.read(ctx, rel).await?, None));
        }
        for (seq, rel) in m.deltas.iter().enumerate() {
            frames.push((rel.clone(), self.read(ctx, rel).await?, Some(seq as i64)));
        }
        // Target schema: fixed columns, then every attribute column; a column's type is the
        // one in the newest file holding it.
        let mut attrs: BTreeMap<String, DataType> = BTreeMap::new();
        let mut fixed: BTreeMap<String, DataType> = BTreeMap::new();
        for (_, df, _) in &frames {
            for f in df.schema().fields() {
                let name = f.name();
                if FIXED_COLUMNS.contains(&name.as_str()) {
                    fixed.insert(name.clone(), f.data_type().clone());
                } else if name != OP {
                    attrs.insert(name.clone(), f.data_type().clone());
                }
            }
        }
        let mut target: Vec<Field> = Vec::new();
        for name in FIXED_COLUMNS {
            let t = fixed.get(name).cloned().unwrap_or(DataType::Utf8);
            target.push(Field::new(name, t, true));
        }
        for (name, t) in &attrs {
            target.push(Field::new(name, t.clone(), true));
        }
        let names: Vec<String> = target.iter().map(|f| f.name().clone()).collect();

        let mut base: Option<DataFrame> = None;
        let mut deltas: Option<DataFrame> = None;
        for (rel, df, seq) in frames {
            let ctxmsg = |e: datafusion::error::DataFusionError| {
                Error::from(StateError::files(format!("state: {rel}"), e))
            };
            match seq {
                None => {
                    let df = align(df, &target, &[]).map_err(ctxmsg)?;
                    base = Some(match base {
                        None => df,
                        Some(b) => b.union(df).map_err(ctxmsg)?,
                    });
                }
                Some(seq) => {
                    let extra = [(OP.to_string(), None), (SEQ.to_string(), Some(lit(seq)))];
                    let df = align(df, &target, &extra).map_err(ctxmsg)?;
                    deltas = Some(match deltas {
                        None => df,
                        Some(d) => d.union(df).map_err(ctxmsg)?,
                    });
                }
            }
        }
        let fail = |e: datafusion::error::DataFusionError| {
            Error::from(StateError::files("state: applying deltas", e))
        };
        let base = match base {
            Some(b) => b,
            None => empty_frame(ctx, &target).map_err(fail)?,
        };
        let Some(deltas) = deltas else {
            return Ok(base);
        };
        let base_name = temp_view(ctx, "state_base", base).map_err(fail)?;
        let delta_name = temp_view(ctx, "state_deltas", deltas).map_err(fail)?;
        let cols = names
            .iter()
            .map(|n| quote(n))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {cols} FROM {base_name} \
               WHERE {id} NOT IN (SELECT {id} FROM {delta_name}) \
             UNION ALL \
             SELECT {cols} FROM ( \
               SELECT *, row_number() OVER (PARTITION BY {id} ORDER BY {seq} DESC) AS __rn \
               FROM {delta_name}) \
             WHERE __rn = 1 AND {op} = '{upsert}'",
            id = quote(IDENTIFIER),
            seq = quote(SEQ),
            op = quote(OP),
            upsert = DeltaOp::Upsert,
        );
        ctx.sql(&sql).await.map_err(fail)
    }

    async fn read(&self, ctx: &SessionContext, rel: &str) -> Result<DataFrame> {
        ctx.read_parquet(self.url(rel), ParquetReadOptions::default())
            .await
            .map_err(|e| Error::from(StateError::files(format!("state: cannot read {rel}"), e)))
    }
}

/// Projects `df` onto `target`: missing columns become typed nulls, columns of another type
/// are converted with `try_cast` (a value that cannot be converted becomes null, so its row
/// compares as changed), and `extra` columns are appended (None = keep the frame's column).
fn align(
    df: DataFrame,
    target: &[Field],
    extra: &[(String, Option<Expr>)],
) -> datafusion::error::Result<DataFrame> {
    let schema = df.schema().clone();
    let mut exprs = Vec::new();
    for f in target {
        let name = f.name();
        let e = match schema.field_with_unqualified_name(name) {
            Ok(have) if have.data_type() == f.data_type() => ident(name),
            Ok(_) => datafusion::prelude::try_cast(ident(name), f.data_type().clone()).alias(name),
            Err(_) => lit(ScalarValue::try_from(f.data_type())?).alias(name),
        };
        exprs.push(e);
    }
    for (name, e) in extra {
        exprs.push(match e {
            Some(e) => e.clone().alias(name),
            None => ident(name),
        });
    }
    df.select(exprs)
}

/// A frame with no rows. An empty table rather than an in-memory batch: a plan holding
/// batches cannot be sent to a Ballista scheduler.
fn empty_frame(ctx: &SessionContext, target: &[Field]) -> datafusion::error::Result<DataFrame> {
    let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(target.to_vec()));
    ctx.read_table(Arc::new(datafusion::datasource::empty::EmptyTable::new(
        schema,
    )))
}

/// A state with no rows, for a first run.
pub fn empty_snapshot(ctx: &SessionContext) -> datafusion::error::Result<DataFrame> {
    let target = vec![
        Field::new(IDENTIFIER, DataType::Utf8, true),
        Field::new(CONTACT_ID, DataType::Utf8, true),
        Field::new(STATUS, DataType::Utf8, true),
        Field::new(
            ROW_HASH,
            DataType::FixedSizeBinary(crate::functions::row_hash::HASH_BYTES),
            true,
        ),
    ];
    empty_frame(ctx, &target)
}
