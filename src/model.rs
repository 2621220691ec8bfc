//! The user's SQL model: planned on the registered sources, its output checked against the
//! mapping before any data moves.
//!
//! A model larger than memory can run in slices (`[model] partitions`): slice p sees the
//! rows of each keyed table whose key hashes to p, so every join and GROUP BY on that key
//! finds all its rows within one slice, and each slice needs a fraction of the memory.
//! DataFusion 55's hash join cannot spill, so this is how a model bigger than the memory
//! pool completes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::datatypes::*;
use datafusion::execution::FunctionRegistry;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{DataFrame, Expr, SessionContext, ident, lit};

use crate::config::Settings;
use crate::error::{Error, Result, one_line};
use crate::functions::row_hash;
use crate::functions::slice::{SLICE, slice_key_type};

/// Plans the model. Only queries are allowed: DDL, DML and statements (`SET`, ...) are
/// refused, so a model cannot write anywhere or change the session.
pub async fn dataframe(ctx: &SessionContext, settings: &Settings) -> Result<DataFrame> {
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    ctx.sql_with_options(&settings.model_sql, options)
        .await
        .map_err(|e| Error::engine(format!("model {}", settings.model_origin), e))
}

/// The model once per slice (one frame, on whole tables, without `[model] partitions`),
/// and the folder of the sources' slice files the frames read. Each keyed table is split
/// once into per-slice files (one read of the source, where reading it again per slice
/// would decode it `partitions` times); tables without a key are read whole by every slice.
pub async fn slices(
    ctx: &SessionContext,
    settings: &Settings,
) -> Result<(Vec<DataFrame>, Option<tempfile::TempDir>)> {
    let n = settings.slices.count;
    if n <= 1 {
        return Ok((vec![dataframe(ctx, settings).await?], None));
    }
    let fail = |e: datafusion::error::DataFusionError| Error::engine("slices", e);
    let dir = crate::spill::temp_dir()?;
    let slice = ctx.udf(SLICE).map_err(fail)?;
    if let Some(problems) = Some(check_slice_keys(ctx, settings).await).filter(|p| !p.is_empty()) {
        return Err(Error::Config(problems));
    }
    let read = read_columns(ctx, settings).await?;
    let mut split = Vec::new();
    for (table, key) in &settings.slices.keys {
        let source = |e| Error::engine(format!("[source] tables.{table}"), e);
        let provider = ctx.table_provider(table.as_str()).await.map_err(source)?;
        let kept = |name: &str| read.get(table).is_none_or(|cols| cols.contains(name));
        let df = ctx
            .read_table(Arc::clone(&provider))
            .and_then(|df| {
                let mut cols: Vec<_> = df
                    .schema()
                    .columns()
                    .into_iter()
                    .filter(|c| kept(&c.name))
                    .map(Expr::Column)
                    .collect();
                cols.push(
                    slice
                        .call(vec![ident(key), lit(n)])
                        .alias(crate::spill::BUCKET_COLUMN),
                );
                df.select(cols)
            })
            .map_err(source)?;
        // What the slices' files hold, as written (the routing column last).
        let fields = df.schema().fields();
        let columns = fields[..fields.len() - 1]
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(",");
        let (rows, paths) = crate::spill::split(
            df,
            dir.path(),
            &format!("slice-{}", split.len()),
            n,
            &format!("[source] tables.{table}"),
        )
        .await?;
        tracing::debug!(
            table = table.as_str(),
            rows,
            slices = n,
            columns,
            "source split into slices"
        );
        split.push((table.as_str(), provider, paths));
    }
    // The tables' own providers come back when planning ends, whether it succeeds or not.
    let _restore = Restore::new(ctx, split.iter().map(|(t, p, _)| (*t, p)));
    let mut frames = Vec::new();
    for p in 0..n as usize {
        for (table, _, paths) in &split {
            let part = crate::spill::read(ctx, &paths[p]).await.map_err(fail)?;
            replace_table(ctx, table, part.into_view()).map_err(fail)?;
        }
        frames.push(dataframe(ctx, settings).await?);
    }
    Ok((frames, Some(dir)))
}

/// The columns each keyed table is split with: those the model reads, as DataFusion's
/// optimizer prunes its scans when the model is planned on the whole tables (filters
/// pushed into a scan included), and the slice key. The benchmark's orders are split
/// without their `order_id`: 160 MB fewer at 10 M. The optimizer also drops columns the
/// SQL names but the result does not need (a CTE's unused column, an `EXISTS` subquery's
/// select list), which a slice's model, planned again from the SQL, would miss: the
/// narrowing is kept only if the model plans, to the same output, on empty tables with
/// just these columns. Tables missing from the result (not scanned, or not narrowed) are
/// split whole.
async fn read_columns(
    ctx: &SessionContext,
    settings: &Settings,
) -> Result<BTreeMap<String, BTreeSet<String>>> {
    use datafusion::common::TableReference;
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::logical_expr::LogicalPlan;
    let planned = dataframe(ctx, settings).await?;
    let output = planned.schema().as_arrow().clone();
    let Ok(optimized) = planned.into_optimized_plan() else {
        return Ok(BTreeMap::new());
    };
    let mut scanned: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let walked = optimized.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let cols = scanned
                .entry(scan.table_name.table().to_string())
                .or_default();
            let fields = scan.projected_schema.fields().iter();
            cols.extend(fields.map(|f| f.name().clone()));
            for filter in &scan.filters {
                cols.extend(filter.column_refs().into_iter().map(|c| c.name.clone()));
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if walked.is_err() {
        return Ok(BTreeMap::new());
    }
    // The keyed tables to narrow, by the name the config gives them (registered lowercased).
    let mut narrowed = Vec::new();
    for (table, key) in &settings.slices.keys {
        let name = TableReference::from(table.as_str());
        let Some(mut cols) = scanned.get(name.table()).cloned() else {
            continue;
        };
        cols.insert(key.clone());
        let Ok(provider) = ctx.table_provider(table.as_str()).await else {
            continue;
        };
        if cols.len() < provider.schema().fields().len() {
            narrowed.push((table.clone(), provider, cols));
        }
    }
    if narrowed.is_empty() {
        return Ok(BTreeMap::new());
    }
    let _restore = Restore::new(ctx, narrowed.iter().map(|(t, p, _)| (t.as_str(), p)));
    for (table, provider, cols) in &narrowed {
        let schema = provider.schema();
        let fields = schema.fields().iter().filter(|f| cols.contains(f.name()));
        let empty = Arc::new(Schema::new(fields.cloned().collect::<Vec<_>>()));
        let registered = datafusion::datasource::MemTable::try_new(empty, vec![vec![]])
            .and_then(|empty| replace_table(ctx, table, Arc::new(empty)));
        if registered.is_err() {
            return Ok(BTreeMap::new());
        }
    }
    match dataframe(ctx, settings).await {
        Ok(df) if *df.schema().as_arrow() == output => {
            Ok(narrowed.into_iter().map(|(t, _, cols)| (t, cols)).collect())
        }
        _ => {
            tracing::debug!("the model names columns it does not read: slices keep every column");
            Ok(BTreeMap::new())
        }
    }
}

/// Registers `provider` as `table` in place of what was registered under that name.
fn replace_table(
    ctx: &SessionContext,
    table: &str,
    provider: Arc<dyn datafusion::catalog::TableProvider>,
) -> datafusion::error::Result<()> {
    ctx.deregister_table(table)?;
    ctx.register_table(table, provider).map(|_| ())
}

/// Registers tables back under their names when dropped.
struct Restore<'a> {
    ctx: &'a SessionContext,
    tables: Vec<(String, Arc<dyn datafusion::catalog::TableProvider>)>,
}

impl<'a> Restore<'a> {
    /// Restores each (name, provider) of `tables` when dropped.
    fn new<'t>(
        ctx: &'a SessionContext,
        tables: impl Iterator<Item = (&'t str, &'t Arc<dyn datafusion::catalog::TableProvider>)>,
    ) -> Self {
        let tables = tables
            .map(|(t, p)| (t.to_string(), Arc::clone(p)))
            .collect();
        Restore { ctx, tables }
    }
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        for (table, provider) in self.tables.drain(..) {
            if let Err(e) = replace_table(self.ctx, &table, provider) {
                tracing::warn!(table, error = %e, "could not restore a source table after slicing");
            }
        }
    }
}

/// Checks each `[model] partition_keys` column against its registered table, and that
/// all keys hash alike: integers hash by value and strings by bytes, so an integer key and a
/// string key holding the same id would put matching rows in different slices.
pub async fn check_slice_keys(ctx: &SessionContext, settings: &Settings) -> Vec<String> {
    let mut problems = Vec::new();
    let mut families = std::collections::BTreeMap::new();
    for (table, key) in &settings.slices.keys {
        match ctx.table_provider(table.as_str()).await {
            Ok(p) => {
                let schema = p.schema();
                problems.extend(slice_key_problem(&schema, table, key));
                if let Ok(f) = schema.field_with_name(key) {
                    let family = match f.data_type() {
                        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string",
                        _ => "integer or date",
                    };
                    families.insert(family, format!("{table}.{key}"));
                }
            }
            Err(e) => problems.push(format!("[source] tables.{table}: {}", one_line(&e))),
        }
    }
    if families.len() > 1 {
        let named: Vec<String> = families
            .iter()
            .map(|(family, column)| format!("{column} is {family}"))
            .collect();
        problems.push(format!(
            "[model] partition_keys: keys must all be strings or all integers/dates, or matching ids land in different slices ({})",
            named.join(", ")
        ));
    }
    problems
}

fn slice_key_problem(schema: &Schema, table: &str, key: &str) -> Option<String> {
    match schema.field_with_name(key) {
        Ok(f) if slice_key_type(f.data_type()) => None,
        Ok(f) => Some(format!(
            "[model] partition_keys.{table}: column {key} has type {}; slice keys must be integers, strings or dates",
            f.data_type()
        )),
        Err(_) => Some(format!(
            "[model] partition_keys.{table}: the table has no column {key:?}"
        )),
    }
}

/// Checks the model's output schema against the configuration: the identifier and every
/// mapped column exist, and each has a type the pipeline can compare, hash and encode.
pub fn check_output(schema: &Schema, settings: &Settings) -> Vec<String> {
    let mut problems = Vec::new();
    let available = || {
        schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match schema.field_with_name(&settings.identifier_column) {
        Err(_) => problems.push(format!(
            "[identifier] column: the model has no column {:?} (it has: {})",
            settings.identifier_column,
            available()
        )),
        Ok(f) => {
            let ok = matches!(
                f.data_type(),
                DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Utf8View
                    | DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::UInt8
                    | DataType::UInt16
                    | DataType::UInt32
                    | DataType::UInt64
            );
            if !ok {
                problems.push(format!(
                    "[identifier] column: {} has type {}; identifiers must be strings or integers",
                    f.name(),
                    f.data_type()
                ));
            }
        }
    }
    if let Some(c) = &settings.contact_id_column
        && schema.field_with_name(c).is_err()
    {
        problems.push(format!(
            "[identifier] contact_id_column: the model has no column {c:?} (it has: {})",
            available()
        ));
    }
    for m in &settings.attributes {
        let place = if m.custom {
            "[custom_attributes] columns"
        } else {
            "[fields]"
        };
        match schema.field_with_name(&m.column) {
            Err(_) => problems.push(format!(
                "{place}: the model has no column {:?} (it has: {})",
                m.column,
                available()
            )),
            Ok(f) if !row_hash::supported_type(f.data_type()) => problems.push(format!(
                "{place}: column {} has type {}, which cannot be sent to Voyado (use strings, integers, floats, decimals, booleans, dates or timestamps)",
                m.column,
                f.data_type()
            )),
            Ok(_) => {}
        }
    }
    problems
}
