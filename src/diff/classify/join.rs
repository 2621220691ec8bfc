//! The join: model and state partitions matched pairwise on identifier hashes, each model
//! row's verdict written into its entry, and what the output reads back.

use std::collections::HashMap;

use datafusion::common::{DataFusionError, Result};
use datafusion::physical_plan::metrics::Time;
use hashbrown::HashTable;

use super::entry::{NO_MATCH, NONE, PARTS, Part, Row, V_CHANGED, V_NEW, V_UNCHANGED, invalid, low};
use crate::identity;

/// What joining some partitions found besides each model row's first match and verdict.
#[derive(Default)]
struct Found {
    /// (model row, state row, verdict) of further state rows with a model row's identifier.
    more: Vec<(Row, Row, u8)>,
    /// State rows whose identifier no model row has.
    deleted: Vec<Row>,
}

/// Joins model and state partitions pairwise: finds each model row's state rows, counts
/// each model identifier and writes each model row's verdict and first state row into its
/// entry. Most model identifiers are in the state, so they are counted on their state row;
/// only the others go through a table of their own. (Whether an identifier the state lacks
/// breaks the key's rules is left to the output, which reads the batch's identifiers.)
fn join_parts(model_parts: &mut [Part], state_parts: &[Part]) -> Found {
    /// Marks an `of_row` entry as an index into `new_counts` rather than a state row.
    const NEW_ID: u32 = 1 << 31;
    let mut found = Found::default();
    // State rows by identifier (index into the partition); identifiers the state does not
    // hold (index into `new_counts`: their first model row, their count).
    let mut states: HashTable<u32> = HashTable::new();
    let mut news: HashTable<u32> = HashTable::new();
    let mut new_counts: Vec<(u32, u32)> = Vec::new();
    // Model rows per state row (on an identifier's first state row), and whether any model
    // row has each state row's identifier.
    let mut state_counts: Vec<u32> = Vec::new();
    let mut claimed: Vec<bool> = Vec::new();
    // Each model row's first state row, or NEW_ID | its new identifier; then (model row,
    // state row) of further state rows with the same identifier, in model row order.
    let mut of_row: Vec<u32> = Vec::new();
    let mut extra: Vec<(u32, u32)> = Vec::new();
    for (mp, sp) in model_parts.iter_mut().zip(state_parts) {
        states.clear();
        for (j, e) in sp.iter().enumerate() {
            states.insert_unique(low(e.id), j as u32, |&j| low(sp[j as usize].id));
        }
        news.clear();
        new_counts.clear();
        state_counts.clear();
        state_counts.resize(sp.len(), 0);
        claimed.clear();
        claimed.resize(sp.len(), false);
        of_row.clear();
        extra.clear();
        for (i, e) in mp.iter().enumerate() {
            let mut first = None;
            for &j in states.iter_hash(low(e.id)) {
                if sp[j as usize].ident() == e.ident() {
                    claimed[j as usize] = true;
                    match first {
                        None => first = Some(j),
                        Some(_) => extra.push((i as u32, j)),
                    }
                }
            }
            if let Some(j) = first {
                state_counts[j as usize] += 1;
                of_row.push(j);
                continue;
            }
            let same = |&n: &u32| mp[new_counts[n as usize].0 as usize].ident() == e.ident();
            let n = match news.find(low(e.id), same) {
                Some(&n) => n,
                None => {
                    new_counts.push((i as u32, 0));
                    let n = new_counts.len() as u32 - 1;
                    news.insert_unique(low(e.id), n, |&n| {
                        low(mp[new_counts[n as usize].0 as usize].id)
                    });
                    n
                }
            };
            new_counts[n as usize].1 += 1;
            of_row.push(NEW_ID | n);
        }
        let dup = invalid(identity::REASON_DUPLICATE);
        let mut next_extra = extra.iter().peekable();
        for (i, e) in mp.iter_mut().enumerate() {
            let o = of_row[i];
            let (count, first) = if o & NEW_ID != 0 {
                (new_counts[(o & !NEW_ID) as usize].1, None)
            } else {
                (state_counts[o as usize], Some(o as usize))
            };
            let seen = *e;
            let verdict = |j: Option<usize>| match j {
                _ if count > 1 => dup,
                None => V_NEW,
                Some(j) if seen.same_values(&sp[j]) => V_UNCHANGED,
                Some(_) => V_CHANGED,
            };
            e.set_verdict(verdict(first));
            e.matched = first.map_or(NO_MATCH, |j| j as u32);
            while let Some(&(_, j)) = next_extra.next_if(|(row, _)| *row as usize == i) {
                let j = j as usize;
                found.more.push((seen.row, sp[j].row, verdict(Some(j))));
            }
        }
        found.deleted.extend(
            sp.iter()
                .zip(&claimed)
                .filter(|(_, c)| !**c)
                .map(|(e, _)| e.row),
        );
    }
    found
}

/// What the join found. Each model row's verdict and first state row stay in its partition
/// entry (written in partition order, so the join writes memory in sequence); the output
/// reads them back batch by batch, since each partition holds its rows in arrival order.
pub(super) struct Matches {
    pub(super) model_parts: Vec<Part>,
    pub(super) state_parts: Vec<Part>,
    /// Where each model batch's entries start in each partition (`PARTS` per batch).
    pub(super) batch_starts: Vec<u32>,
    /// Further (state row, verdict) of identifiers the state holds more than once (a state
    /// should have none), by model row.
    pub(super) more: HashMap<Row, Vec<(Row, u8)>>,
    /// State rows no model row claimed.
    pub(super) deleted: Vec<Row>,
}

impl Matches {
    /// The verdicts and first state rows (NONE for none) of model batch `b`, its `rows`
    /// rows from row `start`, read from each partition where the batch's entries start
    /// (entries are in row order), so any thread can read any batch. Rows without an
    /// identifier are in no partition: their verdict stays "empty". State rows are looked
    /// up only when `resolve`: else 0 stands for any (a count needs no state columns, and
    /// each lookup is a random read).
    pub(super) fn read_back(
        &self,
        b: usize,
        start: Row,
        rows: usize,
        resolve: bool,
    ) -> (Vec<u8>, Vec<Row>) {
        let mut verdicts = vec![invalid(identity::REASON_EMPTY); rows];
        let mut states = vec![NONE; rows];
        let starts = &self.batch_starts[b * PARTS..][..PARTS];
        for ((part, &from), sp) in self.model_parts.iter().zip(starts).zip(&self.state_parts) {
            for e in part[from as usize..].iter() {
                let r = (e.row - start) as usize;
                if r >= rows {
                    break;
                }
                verdicts[r] = e.verdict();
                if e.matched != NO_MATCH {
                    states[r] = match resolve {
                        true => sp[e.matched as usize].row,
                        false => 0,
                    };
                }
            }
        }
        (verdicts, states)
    }
}

/// Partition by partition: counts each model identifier and finds its state rows, on up
/// to `threads` threads. `times` are the join's and the matches' CPU time.
pub(super) fn join(
    mut model_parts: Vec<Part>,
    state_parts: Vec<Part>,
    batch_starts: Vec<u32>,
    threads: usize,
    times: [&Time; 2],
) -> Result<Matches> {
    let timer = times[0].timer();
    // Partitions are independent: split them over the session's threads. (Scoped OS
    // threads: this runs once both inputs have ended, so the runtime has nothing else
    // of this plan to run meanwhile.)
    let per = PARTS.div_ceil(threads.clamp(1, PARTS));
    let found: Vec<Found> = std::thread::scope(|scope| {
        let running: Vec<_> = model_parts
            .chunks_mut(per)
            .zip(state_parts.chunks(per))
            .map(|(mp, sp)| scope.spawn(|| join_parts(mp, sp)))
            .collect();
        running
            .into_iter()
            .map(|t| t.join())
            .collect::<std::result::Result<_, _>>()
    })
    .map_err(|_| DataFusionError::Internal("a change detection thread panicked".into()))?;
    timer.done();
    let _timer = times[1].timer();
    let mut m = Matches {
        model_parts,
        state_parts,
        batch_starts,
        more: HashMap::new(),
        deleted: Vec::new(),
    };
    for f in found {
        for (at, sat, v) in f.more {
            m.more.entry(at).or_default().push((sat, v));
        }
        m.deleted.extend(f.deleted);
    }
    // In the state's order, whatever the partitions (their seed varies by run).
    m.deleted.sort_unstable();
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn the_join_gives_every_model_row_one_verdict() {
        // Model rows in two batches (rows 0-4, then 5-8), to read back batch by batch.
        let (model, batch_starts) = parts(
            &[
                Some("same@x.se"),
                Some("changed@x.se"),
                Some("new@x.se"),
                Some("twice@x.se"),
                Some("twice@x.se"),
                Some("no-at-sign"),
                None,
                Some("null-hash@x.se"),
                Some("repeated@x.se"),
            ],
            &[
                Some(1),
                Some(2),
                Some(3),
                Some(4),
                Some(4),
                Some(5),
                Some(6),
                None,
                Some(7),
            ],
            5,
        );
        let (state, _) = parts(
            &[
                Some("same@x.se"),
                Some("changed@x.se"),
                Some("twice@x.se"),
                Some("gone@x.se"),
                Some("null-hash@x.se"),
                Some("repeated@x.se"),
                Some("repeated@x.se"),
            ],
            &[Some(1), Some(9), Some(4), Some(1), None, Some(7), Some(8)],
            8,
        );
        // One thread, then the partitions split over three: the same answer.
        for threads in [1, 3] {
            let per = PARTS.div_ceil(threads);
            let mut model_parts = model.clone();
            let found: Vec<Found> = model_parts
                .chunks_mut(per)
                .zip(state.chunks(per))
                .map(|(mp, sp)| join_parts(mp, sp))
                .collect();
            let m = Matches {
                model_parts,
                state_parts: state.clone(),
                batch_starts: batch_starts.clone(),
                more: HashMap::new(),
                deleted: Vec::new(),
            };
            // The second batch reads the same before and after the first.
            let second = m.read_back(1, 5, 4, true);
            let (mut verdicts, mut states) = m.read_back(0, 0, 5, true);
            let (v1, s1) = m.read_back(1, 5, 4, true);
            assert_eq!((v1.clone(), s1.clone()), second);
            verdicts.extend(v1);
            states.extend(s1);
            let dup = invalid(identity::REASON_DUPLICATE);
            let empty = invalid(identity::REASON_EMPTY);
            // "repeated" matches two state rows, hashes 7 (unchanged) and 8 (changed).
            let (first, second) = if states[8] == 5 {
                (V_UNCHANGED, (6, V_CHANGED))
            } else {
                (V_CHANGED, (5, V_UNCHANGED))
            };
            assert_eq!(
                verdicts,
                [
                    V_UNCHANGED,
                    V_CHANGED,
                    V_NEW,
                    dup,
                    dup,
                    // Not yet checked against the key's rules: the output does that.
                    V_NEW,
                    empty,
                    V_CHANGED,
                    first
                ]
            );
            assert_eq!(&states[..3], &[0, 1, NONE]);
            // Both duplicates keep the state row, so it is not deleted.
            assert_eq!(states[3], 2);
            assert_eq!(states[4], 2);
            let more: Vec<(Row, Row, u8)> = found.iter().flat_map(|f| f.more.clone()).collect();
            let deleted: Vec<Row> = found.iter().flat_map(|f| f.deleted.clone()).collect();
            // The state holds "repeated" twice: the second row comes out too.
            assert_eq!(more, [(8, second.0, second.1)]);
            assert_eq!(deleted, [3]);
        }
    }
}
