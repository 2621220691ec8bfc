//! One bucket on the local engine: one operator over the whole model and state.

use super::fail;
use super::strategy::{Frames, Inputs, classified, narrow};
use crate::error::Result;

/// The change set as one frame over `__vs_model_src` (registered by
/// `strategy::whole_model`); `slice_files` stay alive with it.
pub(super) async fn run(i: &Inputs<'_>, slice_files: Option<tempfile::TempDir>) -> Result<Frames> {
    let (ctx, wide) = (i.ctx, i.wide);
    let model = ctx
        .sql(&i.rules.projection("__vs_model_src", wide, ""))
        .await
        .map_err(fail("model"))?;
    let snap = ctx.sql(&i.compact).await.map_err(fail("state"))?;
    // A count reads neither contactIds nor statuses: left unread (see `narrow`).
    let (model, snap) = if wide {
        (model, snap)
    } else {
        narrow(model, snap).map_err(fail("change detection"))?
    };
    Ok(Frames {
        buckets: vec![classified(
            ctx,
            model,
            snap,
            i.settings,
            wide,
            i.state_rows,
        )?],
        at_once: 1,
        spill: slice_files.into_iter().collect(),
    })
}
