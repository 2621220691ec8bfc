//! The duplicate check and the comparison with the state as one hand-written operator.
//!
//! In SQL this is a grouped count of identifiers joined back to every row, then a full outer
//! join with the state: three hash tables, each input repartitioned by identifier, and each
//! stage waiting for the one below. Here both inputs are read side by side as they stream
//! in: each row's identifier goes, as its 128-bit hash with its row's number and row hash,
//! to one of 256 partitions by the top bits of that hash. Once both inputs end, the
//! partitions are joined on one thread per core (each partition's tables fit the CPU
//! caches): model rows are matched with state rows and counted per identifier, and each
//! model row gets its verdict; state rows that no model row claimed come out as deletions.
//! The output, built on the same threads, checks the identifiers the state lacks against
//! the key's rules: the state holds only identifiers that passed them (a baseline keeps
//! only valid rows, a run only rows Voyado confirmed), so a row it holds passes them too.
//! The SQL form checks every row; the two differ only on a state edited by hand.
//!
//! The model's rows are held until both inputs end, because the last row may turn the first
//! into a duplicate; they are charged to the session's memory pool. A bucketed diff runs
//! one operator per bucket. Under Ballista the SQL form in `Rules` runs instead.
//!
//! How the pieces fit, in the order a row meets them:
//! - `provider`: `Classified`, the table the diff reads; its scan leaves out what the
//!   query does not ask for and plans both inputs.
//! - `exec`: `ClassifyExec`, the operator over those two inputs; it finds where its
//!   columns are and starts one job per execution.
//! - `job`: `ClassifyJob`, one execution: it reads both inputs to their ends, holds the
//!   model's rows and charges them to the pool, then has them joined.
//! - `entry`: the partition entries each row's identifier becomes, and the verdicts they
//!   carry.
//! - `join`: the partitions joined pairwise, and what the join found (`Matches`).
//! - `output`: the classified batches built from the matches, the key's rules checked on
//!   the identifiers the state lacks, and the deletions.

mod entry;
mod exec;
#[cfg(test)]
mod fixtures;
mod job;
mod join;
mod output;
mod provider;

pub(super) use provider::Classified;

/// Compact state columns, as `sql::compact` in the diff names them.
const S_ID: &str = "__s_id";
const S_HASH: &str = "__s_hash";
const S_CONTACT_ID: &str = "__s_contact_id";
const S_STATUS: &str = "__s_status";
/// Output columns filled from the state's rows (by index in the full output schema).
const COL_IDENTIFIER: usize = 1;
const COL_CONTACT_ID: usize = 5;
const COL_PREV_STATUS: usize = 6;
/// Output columns taken from the model's rows.
const COL_RAW: usize = 2;
const COL_KNOWN: usize = 4;
const COL_ROW_HASH: usize = 7;
/// Output columns before the values.
const FIXED_COLUMNS: usize = 8;

/// Whether a projection asks for the state's contactIds or statuses.
fn wanted_state(projection: Option<&[usize]>) -> bool {
    projection.is_none_or(|p| p.contains(&COL_CONTACT_ID) || p.contains(&COL_PREV_STATUS))
}
