//! Bucket files: the model's rows and the compact state, each routed once by identifier
//! into per-bucket files, and each bucket classified on its own files. Memory then holds
//! one bucket's identifiers at a time, whatever the size of the state.

use std::path::{Path, PathBuf};

use datafusion::prelude::DataFrame;

use super::sizing::BYTES_PER_STATE_ROW;
use super::strategy::{Frames, Inputs, classified, narrow};
use super::{fail, row_hash};
use crate::error::{Error, Result};
use crate::identity;
use crate::spill;

/// Bucket files are classified this many at a time once the model has run: one bucket
/// alone leaves a core idle while it reads its files. Two fit the pool: [`run`] sends to
/// `ClassifyExec` only buckets whose files plus [`BYTES_PER_STATE_ROW`] per row fit half
/// of it, and `ClassifyExec` charges about 270 bytes per row in all (the rows it reads
/// from the files included).
const BUCKETS_AT_ONCE: usize = 2;

/// Per bucket, the files of the model's rows and of the state's, and the model's rows.
struct Routed {
    model: Vec<Vec<PathBuf>>,
    state: Vec<Vec<PathBuf>>,
    model_rows: u64,
}

/// The change set as one frame per bucket: each bucket checks duplicates and joins on its
/// own rows only, by `ClassifyExec` when it fits half the pool, else by the streaming SQL
/// join. `slices` are the model's (one frame when it runs whole); `slice_files` are freed
/// once they are routed.
pub(super) async fn run(
    input: &Inputs<'_>,
    slices: Vec<DataFrame>,
    slice_files: Option<tempfile::TempDir>,
) -> Result<Frames> {
    let Inputs {
        ctx,
        settings,
        rules,
        buckets,
        state_rows,
        wide,
        ..
    } = input;
    let (ctx, buckets, state_rows, wide) = (*ctx, *buckets, *state_rows, *wide);
    let dir = spill::temp_dir()?;
    let routed = route(input, dir.path(), slices).await?;
    // The slices' source files are read: free their disk.
    drop(slice_files);
    tracing::debug!(buckets, "state routed to buckets");
    let pool = settings.limits.memory_limit_mb * 1024 * 1024;
    let mut at_once = BUCKETS_AT_ONCE;
    let mut frames = Vec::new();
    for (b, (m, s)) in routed.model.iter().zip(&routed.state).enumerate() {
        let mut model = spill::read(ctx, m).await.map_err(fail("model"))?;
        let mut snap = spill::read(ctx, s).await.map_err(fail("state"))?;
        if !wide {
            (model, snap) = narrow(model, snap).map_err(fail("change detection"))?;
        }
        // Per bucket, the larger side's rows: on a first run the snapshot has none.
        let rows = state_rows.max(routed.model_rows) / u64::from(buckets);
        // ClassifyExec holds the bucket's model rows; when they would not fit half the
        // pool (wide rows, few buckets), the SQL join streams them instead.
        let held = spill::bytes(m) + spill::bytes(s) + rows * BYTES_PER_STATE_ROW;
        if held <= pool / 2 {
            frames.push(classified(ctx, model, snap, settings, wide, rows)?);
            continue;
        }
        tracing::debug!(
            bucket = b,
            held,
            "bucket classified by the streaming SQL join"
        );
        // A hash join's table is not bounded by the held check: one bucket at a time.
        at_once = 1;
        let (mv, sv) = (format!("__vs_model_{b}"), format!("__vs_snap_{b}"));
        ctx.register_table(mv.as_str(), model.into_view())
            .map_err(fail("model"))?;
        ctx.register_table(sv.as_str(), snap.into_view())
            .map_err(fail("state"))?;
        let valid = rules.checked(&mv);
        frames.push(
            ctx.sql(&rules.compare(&format!("SELECT * FROM {sv}"), &valid, &input.values))
                .await
                .map_err(fail("change detection"))?,
        );
    }
    tracing::debug!(buckets, at_once, "bucket files classified at once");
    Ok(Frames {
        buckets: frames,
        at_once,
        spill: vec![dir],
    })
}

/// Routes the model's rows (slice by slice) and the compact state into per-bucket files
/// under `dir`, side by side.
async fn route(input: &Inputs<'_>, dir: &Path, slices: Vec<DataFrame>) -> Result<Routed> {
    let (ctx, rules, buckets, wide) = (input.ctx, &input.rules, input.buckets, input.wide);
    let route = |ident: &str| {
        format!(
            ", {}({ident}, {buckets}) AS {}",
            identity::udf::BUCKET,
            spill::BUCKET_COLUMN
        )
    };
    // A count needs only the state's identifiers and hash prefixes (see `narrow`).
    let snap_cols = if wide {
        "*".to_string()
    } else {
        format!("__s_id, {}(__s_hash) AS __s_hash", row_hash::HASH_PREFIX)
    };
    let snap = ctx
        .sql(&format!(
            "SELECT {snap_cols}{} FROM ({})",
            route("__s_id"),
            input.compact
        ))
        .await
        .map_err(fail("state"))?;
    // The state is routed beside the model: it streams, and takes the core the model
    // leaves idle while its joins build their tables on one thread.
    let state_routed = spill::split(snap, dir, "state", buckets, "reading the state");
    let model_routed = async {
        let mut router = spill::Router::new(dir, "model", buckets);
        let mut model_rows = 0;
        for (i, slice) in slices.into_iter().enumerate() {
            let src = format!("__vs_model_src_{i}");
            ctx.register_table(src.as_str(), slice.into_view())
                .map_err(fail("model"))?;
            let sql = rules.routed(&src, wide, &route(&rules.routing_id()));
            let df = ctx.sql(&sql).await.map_err(fail("model"))?;
            let rows = router.route(df, "running the model").await?;
            model_rows += rows;
            tracing::debug!(slice = i, rows, "model rows routed to buckets");
        }
        Ok::<_, Error>((router.finish()?, model_rows))
    };
    let (model, state) = tokio::join!(model_routed, state_routed);
    let ((model, model_rows), (_, state)) = (model?, state?);
    Ok(Routed {
        model,
        state,
        model_rows,
    })
}
