//! Under Ballista: one SQL plan per bucket over filtered inputs, so that each bucket's
//! query recomputes the model on the cluster and no file is written on this machine.

use super::fail;
use super::strategy::{Frames, Inputs};
use crate::error::Result;
use crate::identity;

/// The change set as one SQL frame per bucket over `__vs_model_src` (registered by
/// `strategy::whole_model`); `slice_files` stay alive with it.
pub(super) async fn run(i: &Inputs<'_>, slice_files: Option<tempfile::TempDir>) -> Result<Frames> {
    let (ctx, rules, buckets) = (i.ctx, &i.rules, i.buckets);
    let projected = ctx
        .sql(&rules.projection("__vs_model_src", true, ""))
        .await
        .map_err(fail("model"))?;
    ctx.register_table("__vs_model", projected.into_view())
        .map_err(fail("model"))?;
    ctx.register_table(
        "__vs_snap",
        ctx.sql(&i.compact)
            .await
            .map_err(fail("state"))?
            .into_view(),
    )
    .map_err(fail("state"))?;
    let valid = rules.checked("__vs_model");
    let mut frames = Vec::new();
    for b in 0..buckets {
        let (sf, mf) = if buckets > 1 {
            (
                format!("WHERE {}(__s_id, {buckets}) = {b}", identity::udf::BUCKET),
                format!(
                    "WHERE {}({}, {buckets}) = {b}",
                    identity::udf::BUCKET,
                    rules.routing_id()
                ),
            )
        } else {
            (String::new(), String::new())
        };
        let sql = rules.compare(
            &format!("SELECT * FROM __vs_snap {sf}"),
            &format!("SELECT * FROM ({valid}) {mf}"),
            &i.values,
        );
        frames.push(ctx.sql(&sql).await.map_err(fail("change detection"))?);
    }
    Ok(Frames {
        buckets: frames,
        at_once: 1,
        spill: slice_files.into_iter().collect(),
    })
}
