//! The crate's scalar functions, registered on every session and on Ballista executors:
//! the identity rules, the row hash and value key ([`row_hash`]), and the model's slice
//! key ([`slice`]). They live below every stage that names them in SQL, so the catalog,
//! the model, the diff and the state all import them and none imports another for them.

pub(crate) mod row_hash;
pub(crate) mod slice;

use datafusion::logical_expr::ScalarUDF;

/// Every scalar function of the crate.
pub(crate) fn all() -> Vec<ScalarUDF> {
    crate::identity::udf::all()
        .into_iter()
        .chain(row_hash::all())
        .chain(slice::all())
        .collect()
}

/// Registers every scalar function of the crate on `ctx`.
pub(crate) fn register(ctx: &datafusion::prelude::SessionContext) {
    for udf in all() {
        ctx.register_udf(udf);
    }
}

/// Calls a scalar function directly on arrays, as a plan would (for unit tests).
#[cfg(test)]
pub(crate) fn call_udf(
    udf: ScalarUDF,
    args: Vec<datafusion::logical_expr::ColumnarValue>,
    rows: usize,
) -> datafusion::arrow::array::ArrayRef {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::Field;
    let types: Vec<_> = args.iter().map(|a| a.data_type()).collect();
    let returns = udf.return_type(&types).unwrap();
    udf.invoke_with_args(datafusion::logical_expr::ScalarFunctionArgs {
        arg_fields: types
            .into_iter()
            .map(|t| Arc::new(Field::new("x", t, true)))
            .collect(),
        args,
        number_rows: rows,
        return_field: Arc::new(Field::new("out", returns, true)),
        config_options: Arc::new(Default::default()),
    })
    .unwrap()
    .into_array(rows)
    .unwrap()
}
