//! How many identifier buckets a diff runs in: from the snapshot's rows (or, on a first
//! run, the sources' size), the memory pool, the slices and whether rows carry values.

use datafusion::prelude::SessionContext;

use crate::config::Settings;

/// Bytes held per snapshot identifier by a bucket's classification (its compact state row,
/// its model row's identifiers and hash, both partition entries: about 270 charged to the
/// pool at 1 M and 10 M rows), for choosing the number of buckets.
pub(super) const BYTES_PER_STATE_ROW: u64 = 320;
/// Parquet source bytes per model row assumed when there is no snapshot to count rows in:
/// the benchmark's extracts (a customer and two orders each) take 43; a model that
/// aggregates more source rows into one has fewer rows than estimated, which costs buckets,
/// not memory.
const SOURCE_BYTES_PER_ROW: u64 = 40;
/// Buckets per model slice when the rows carry their values: a slice's rows with their
/// values must fit a bucket's share of the pool.
const BUCKETS_PER_SLICE: u32 = 4;

/// Bytes a narrow row (counting only) takes in a bucket's files: its identifier, row hash
/// prefix and the state's (about 75 with the benchmark's emails), with room for longer ones.
const NARROW_FILE_BYTES: u64 = 128;

/// Each bucket is a file per partition while the model's rows are routed: beyond this,
/// open files and write buffers cost more than smaller buckets save.
const MAX_AUTO_BUCKETS: u32 = 256;

/// Chooses the buckets [`super::change_set`] classifies in against a snapshot of `snapshot_rows` (None on
/// a first run) and, when that is one (so the model runs in one piece: buckets are at
/// least the slices), sizes the session's partitions to the model's sources. The sources
/// are listed only when that can change something: on a first run, or for one bucket.
pub(crate) async fn size_session(
    ctx: &SessionContext,
    settings: &Settings,
    snapshot_rows: Option<u64>,
    wide: bool,
) -> u32 {
    // Under Ballista each bucket's query recomputes the model on the cluster, and the
    // cluster's memory is not this pool: a first run there is not bucketed by estimate,
    // and its buckets have no files.
    let ballista = settings.engine.is_ballista();
    let buckets = |rows| {
        bucket_count(
            settings.limits.diff_partitions,
            settings.limits.memory_limit_mb,
            settings.slices.count,
            rows,
            wide,
            !ballista,
        )
    };
    if ballista {
        return buckets(snapshot_rows.unwrap_or(0));
    }
    let sources = match snapshot_rows {
        Some(rows) if buckets(rows) > 1 => None,
        _ => crate::catalog::source_bytes(ctx, settings).await,
    };
    let chosen = buckets(rows_to_bucket(snapshot_rows, sources));
    if chosen == 1
        && let Some(bytes) = sources
    {
        crate::catalog::size_partitions(ctx, settings, bytes);
    }
    chosen
}

/// The rows to choose buckets for: the snapshot's (`state_rows`), or on a first run, which
/// has none, an estimate from the size of the model's sources (`source_bytes`, None when
/// they could not be listed), so that a large first `baseline` is bucketed like the runs
/// after it instead of failing for memory.
fn rows_to_bucket(state_rows: Option<u64>, source_bytes: Option<u64>) -> u64 {
    state_rows.unwrap_or_else(|| source_bytes.map_or(0, |b| b / SOURCE_BYTES_PER_ROW))
}

/// Identifier buckets: `diff_partitions` when set; else 1 unless the state's identifiers
/// would not fit half the memory pool (the model runs beside an unbucketed classification
/// and takes the other half), or a quarter when the classification also holds the rows'
/// values (staging, `wide`, which this estimate does not count). Once a narrow plan is
/// bucketed into `files` (not under Ballista), each bucket also holds its files' rows
/// ([`NARROW_FILE_BYTES`]): counted here as the bucketed strategy's held check counts them, so that no
/// bucket falls back to the SQL join. A
/// sliced model (too large for memory by the user's own account) gets at least a bucket per
/// slice, `BUCKETS_PER_SLICE` when the rows carry their values.
fn bucket_count(
    diff_partitions: u32,
    memory_limit_mb: u64,
    slices: u32,
    state_rows: u64,
    wide: bool,
    files: bool,
) -> u32 {
    let pool = memory_limit_mb * 1024 * 1024;
    let buckets = |per_row: u64, budget: u64| {
        ((state_rows * per_row).div_ceil(budget.max(1)) as u32).min(MAX_AUTO_BUCKETS)
    };
    let chosen = if diff_partitions > 0 {
        diff_partitions
    } else if wide {
        buckets(BYTES_PER_STATE_ROW, pool / 4)
    } else {
        match buckets(BYTES_PER_STATE_ROW, pool / 2) {
            0 | 1 => 1,
            n if !files => n,
            _ => buckets(BYTES_PER_STATE_ROW + NARROW_FILE_BYTES, pool / 2),
        }
    };
    let per_slice = if wide { BUCKETS_PER_SLICE } else { 1 };
    let sliced = if slices > 1 {
        (slices * per_slice).min(MAX_AUTO_BUCKETS.max(slices))
    } else {
        1
    };
    chosen.max(sliced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_run_buckets_by_its_sources_later_runs_by_their_snapshot() {
        // A snapshot's rows win, even an empty one's.
        assert_eq!(rows_to_bucket(Some(5), Some(1 << 30)), 5);
        assert_eq!(rows_to_bucket(Some(0), Some(1 << 30)), 0);
        // No snapshot: rows estimated from the sources' bytes; none when they are unknown.
        assert_eq!(rows_to_bucket(None, Some(40 * 1000)), 1000);
        assert_eq!(rows_to_bucket(None, None), 0);
    }

    #[test]
    fn buckets_follow_the_snapshot_the_pool_and_the_slices() {
        // 1 M identifiers at 320 bytes: 305 MiB.
        let rows = 1_000_000;
        // A plan (narrow) may use half of the pool, staging (wide) a quarter.
        assert_eq!(bucket_count(0, 1024, 1, rows, false, true), 1);
        assert_eq!(bucket_count(0, 1024, 1, rows, true, true), 2);
        assert_eq!(bucket_count(0, 512, 1, rows, false, true), 2);
        assert_eq!(bucket_count(0, 512, 1, rows, true, true), 3);
        // No snapshot, no buckets; never more than MAX_AUTO_BUCKETS of our own choosing.
        assert_eq!(bucket_count(0, 64, 1, 0, true, true), 1);
        assert_eq!(
            bucket_count(0, 64, 1, 1 << 40, true, true),
            MAX_AUTO_BUCKETS
        );
        // Bucketed, a plan's rows also count their files: 10 M identifiers under 2048 MB
        // take 5 buckets of 2 M (each holding 854 MiB against 1 GiB), not 3 of 3.3 M
        // (1.4 GiB), which would each fall back to the SQL join.
        assert_eq!(bucket_count(0, 2048, 1, 10 * rows, false, true), 5);
        // Under Ballista buckets have no files (and each recomputes the model).
        assert_eq!(bucket_count(0, 2048, 1, 10 * rows, false, false), 3);
        // The user's number wins, but slices still get a bucket each, four with values.
        assert_eq!(bucket_count(7, 64, 1, rows, true, true), 7);
        assert_eq!(bucket_count(7, 64, 8, rows, true, true), 32);
        assert_eq!(bucket_count(7, 64, 8, rows, false, true), 8);
        assert_eq!(bucket_count(0, 12000, 8, rows, false, true), 8);
        assert_eq!(bucket_count(0, 12000, 300, 0, false, true), 300);
        assert_eq!(bucket_count(0, 512, 8, 10 * rows, false, true), 17);
    }
}
