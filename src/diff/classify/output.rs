//! The output: each model batch classified from the matches (kinds, reasons, the state's
//! contactIds and statuses), the key's rules checked on identifiers the state lacks, then
//! the deletions; built on several threads and streamed in order.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, NullBufferBuilder, StringBuilder, StringViewArray, UInt32Array, new_null_array,
};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::{DataFusionError, Result, internal_err};
use futures::StreamExt;
use futures::stream::BoxStream;

use super::entry::{NONE, REASONS, Row, V_INVALID, V_NEW, invalid};
use super::job::{ClassifyJob, StateBatch};
use super::join::Matches;
use super::{
    COL_CONTACT_ID, COL_IDENTIFIER, COL_KNOWN, COL_PREV_STATUS, COL_RAW, COL_ROW_HASH,
    FIXED_COLUMNS, wanted_state,
};
use crate::columns::ChangeKind;
use crate::identity;
use crate::strings::{Strings, view_of};

/// Rows per output batch of deletions.
const DELETED_BATCH: usize = 8192;

/// The change kinds, by `kind_of`.
const KINDS: [&str; 5] = [
    ChangeKind::New.as_str(),
    ChangeKind::Changed.as_str(),
    ChangeKind::Unchanged.as_str(),
    ChangeKind::Invalid.as_str(),
    ChangeKind::Deleted.as_str(),
];
const KIND_DELETED: usize = 4;

fn kind_of(verdict: u8) -> usize {
    usize::from(verdict.min(V_INVALID))
}

/// A column holding one of a few strings (or null) per row, as views: the strings are
/// written once and each row's view points at one (short ones are held in the view
/// itself), so a row costs 16 bytes and no copy.
fn few_strings(strings: &[&str], rows: impl ExactSizeIterator<Item = Option<usize>>) -> ArrayRef {
    let mut bytes = Vec::new();
    let views: Vec<u128> = strings.iter().map(|s| view_of(s, 0, &mut bytes)).collect();
    let mut nulls = NullBufferBuilder::new(rows.len());
    let out: Vec<u128> = rows
        .map(|r| {
            nulls.append(r.is_some());
            r.map_or(0, |r| views[r])
        })
        .collect();
    // SAFETY: each view is 0 under a null or made by `make_view` from a `str` that, when
    // longer than a view holds, was written to the one buffer at that offset.
    let a = unsafe {
        StringViewArray::new_unchecked(out.into(), vec![Buffer::from_vec(bytes)], nulls.finish())
    };
    Arc::new(a)
}

impl ClassifyJob {
    /// Classifies model batch `b`: one output row per model row, or one per matching state
    /// row when the state holds an identifier more than once.
    fn classify(&self, b: usize, m: &Matches) -> Result<RecordBatch> {
        let time = self.phase[3].clone();
        let _timer = time.timer();
        let mb = &self.model[b];
        let rows = mb.num_rows();
        // A count needs no contactIds or statuses: they are read only when asked for.
        let with_state = wanted_state(self.projection.as_deref());
        let builder = || with_state.then(|| StringBuilder::with_capacity(rows, rows * 4));
        let (mut contact_ids, mut statuses) = (builder(), builder());
        let mut take_rows: Option<Vec<u32>> = None;
        let none = Vec::new();
        let start = self.model_starts[b];
        let (mut verdicts, states) = m.read_back(b, start, rows, with_state);
        self.check_rules(mb, &mut verdicts, &states)?;
        // Each output row's verdict, written out as kinds and reasons at the end. A count
        // against a state without repeated identifiers has one row each, as they are.
        let mut out = Vec::with_capacity(rows);
        let simple = !with_state && m.more.is_empty();
        if simple {
            out = verdicts;
        } else {
            for i in 0..rows {
                let first = (states[i], verdicts[i]);
                let more = match first.0 {
                    _ if m.more.is_empty() => &none,
                    NONE => &none,
                    _ => m.more.get(&(start + i as Row)).unwrap_or(&none),
                };
                for (n, &(at, v)) in std::iter::once(&first).chain(more).enumerate() {
                    out.push(v);
                    if let (Some(c), Some(s)) = (contact_ids.as_mut(), statuses.as_mut()) {
                        let row = self.locate(at);
                        c.append_option(row.and_then(|(sb, r)| sb.contact_ids.as_ref()?.get(r)));
                        s.append_option(row.and_then(|(sb, r)| sb.statuses.as_ref()?.get(r)));
                    }
                    if n > 0 {
                        // A repeated state identifier: one more output row for this model row,
                        // after the rows so far (this one's first output included).
                        take_rows.get_or_insert_with(|| (0..=i as u32).collect());
                    }
                    if let Some(t) = take_rows.as_mut() {
                        t.push(i as u32);
                    }
                }
            }
        }
        let take_rows = take_rows.map(UInt32Array::from);
        let kinds_len = out.len();
        let col = |c: usize| -> Result<ArrayRef> {
            let Ok(at) = self.cols.held.binary_search(&c) else {
                return internal_err!("ClassifyExec: model column {c} was not held");
            };
            let a = mb.column(at);
            Ok(match &take_rows {
                Some(t) => take(a.as_ref(), t, None)?,
                None => Arc::clone(a),
            })
        };
        let c = &self.cols;
        self.output(kinds_len, |i| {
            Ok(match i {
                0 => few_strings(&KINDS, out.iter().map(|&v| Some(kind_of(v)))),
                COL_IDENTIFIER => col(c.ident)?,
                COL_RAW => col(c.raw)?,
                3 => few_strings(
                    &REASONS,
                    out.iter()
                        .map(|&v| v.checked_sub(V_INVALID).map(usize::from)),
                ),
                COL_KNOWN => col(c.known)?,
                COL_CONTACT_ID => state_column(contact_ids.take(), kinds_len),
                COL_PREV_STATUS => state_column(statuses.take(), kinds_len),
                COL_ROW_HASH => col(c.hash)?,
                v => match c.values[v - FIXED_COLUMNS] {
                    Some(at) => col(at)?,
                    None => return internal_err!("ClassifyExec: value column {v} was left out"),
                },
            })
        })
    }

    /// Gives the rows the state lacks whose identifier breaks the key's rules that verdict
    /// instead (it goes before a duplicate's). Rows the state holds are not checked: the
    /// state holds only identifiers that passed those rules and reached Voyado. Done here,
    /// on the batch's identifiers in order, rather than when rows arrive, so that a plan
    /// checks only its new rows' identifiers.
    fn check_rules(&self, mb: &RecordBatch, verdicts: &mut [u8], states: &[Row]) -> Result<()> {
        let Ok(at) = self.cols.held.binary_search(&self.cols.ident) else {
            return internal_err!("ClassifyExec: the identifier column was not held");
        };
        let ids = Strings::new(mb.column(at))?;
        let dup = invalid(identity::REASON_DUPLICATE);
        for (i, v) in verdicts.iter_mut().enumerate() {
            if states[i] == NONE
                && (*v == V_NEW || *v == dup)
                && let Some(problem) = identity::problem(ids.get(i), self.key)
            {
                *v = invalid(problem);
            }
        }
        Ok(())
    }

    /// State rows `places` as deletions.
    fn deleted(&self, places: &[Row]) -> Result<RecordBatch> {
        let time = self.phase[3].clone();
        let _timer = time.timer();
        let n = places.len();
        let rows: Vec<_> = places.iter().map(|&at| self.locate(at)).collect();
        let strings = |f: &dyn Fn(&StateBatch) -> Option<&Strings>| {
            let mut b = StringBuilder::with_capacity(n, n * 16);
            for row in &rows {
                b.append_option(row.and_then(|(sb, r)| f(sb)?.get(r)));
            }
            Arc::new(b.finish()) as ArrayRef
        };
        self.output(n, |i| {
            let t = self.full.field(i).data_type();
            Ok(match i {
                0 => few_strings(&KINDS, (0..n).map(|_| Some(KIND_DELETED))),
                COL_IDENTIFIER => cast(&strings(&|s| Some(&s.ids)), t)?,
                COL_CONTACT_ID => strings(&|s| s.contact_ids.as_ref()),
                COL_PREV_STATUS => strings(&|s| s.statuses.as_ref()),
                _ => new_null_array(t, n),
            })
        })
    }

    /// State row `at`'s batch and row in it; None for NONE.
    fn locate(&self, at: Row) -> Option<(&StateBatch, usize)> {
        if at == NONE {
            return None;
        }
        let starts = &self.state.starts;
        let b = starts.partition_point(|&s| s <= at) - 1;
        Some((&self.state.batches[b], (at - starts[b]) as usize))
    }

    /// The output batch of the projected columns, each built by `column(index in the full
    /// schema)` (only those: the others are never built).
    fn output(
        &self,
        rows: usize,
        mut column: impl FnMut(usize) -> Result<ArrayRef>,
    ) -> Result<RecordBatch> {
        let batch = match &self.projection {
            Some(p) => {
                let columns = p.iter().map(|&i| column(i)).collect::<Result<Vec<_>>>()?;
                let schema = Arc::new(self.full.project(p)?);
                RecordBatch::try_new_with_options(
                    schema,
                    columns,
                    &RecordBatchOptions::new().with_row_count(Some(rows)),
                )?
            }
            None => {
                let columns = (0..self.full.fields().len()).map(&mut column);
                RecordBatch::try_new(Arc::clone(&self.full), columns.collect::<Result<_>>()?)?
            }
        };
        self.metrics.record_output(batch.num_rows());
        Ok(batch)
    }
}

/// Output batches: the model's, in arrival order, then the deletions.
impl Iterator for ClassifyJob {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let m = self.matches.take()?;
        let out = if self.next_batch < self.model.len() {
            self.next_batch += 1;
            Some(self.classify(self.next_batch - 1, &m))
        } else if self.next_deleted < m.deleted.len() {
            let places = deletions(&m, self.next_deleted);
            self.next_deleted += places.len();
            Some(self.deleted(places))
        } else {
            None
        };
        self.matches = Some(m);
        out
    }
}

impl ClassifyJob {
    /// The output batches in order, ending at the first error. With more than one thread
    /// they are built on that many: each takes every n-th model batch, reading its entries
    /// where they start in each partition, one batch ahead of the reader (a batch of a few
    /// hundred KB per thread, left out of the pool's count), so the output costs its share
    /// of the time the inputs took to end, not all of it on one thread.
    pub(super) fn into_stream(self) -> BoxStream<'static, Result<RecordBatch>> {
        let batches = self.model.len();
        let workers = self.threads.min(batches);
        if workers <= 1 {
            return futures::stream::iter(self).boxed();
        }
        let job = Arc::new(self);
        let mut built = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let job = Arc::clone(&job);
            let work = move || {
                let Some(m) = job.matches.as_ref() else {
                    return;
                };
                for b in (w..batches).step_by(workers) {
                    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        job.classify(b, m)
                    }))
                    .unwrap_or_else(|p| {
                        let why = (p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        internal_err!("change detection failed building its output: {why}")
                    });
                    let failed = out.is_err();
                    if tx.blocking_send(out).is_err() || failed {
                        return; // the reader stopped, or will at this error
                    }
                }
            };
            let named = std::thread::Builder::new().name(format!("voyado-classify-{w}"));
            if let Err(e) = named.spawn(work) {
                let e = DataFusionError::External(Box::new(e));
                return futures::stream::iter([Err(e)]).boxed();
            }
            built.push(rx);
        }
        let model = futures::stream::unfold((built, 0), move |(mut built, b)| async move {
            if b == batches {
                return None;
            }
            let out = match built[b % workers].recv().await {
                Some(out) => out,
                None => internal_err!("a change detection thread stopped"),
            };
            Some((out, (built, b + 1)))
        });
        let deleted = job.matches.as_ref().map_or(0, |m| m.deleted.len());
        let deletions = futures::stream::iter((0..deleted).step_by(DELETED_BATCH)).map(move |at| {
            let m = job.matches.as_ref().expect("joined");
            job.deleted(deletions(m, at))
        });
        until_first_error(model.chain(deletions)).boxed()
    }
}

/// `stream` up to and with its first error: a failed output thread's batches stop there.
fn until_first_error<T>(
    stream: impl futures::Stream<Item = Result<T>>,
) -> impl futures::Stream<Item = Result<T>> {
    let mut failed = false;
    stream.take_while(move |r| {
        let go = !failed;
        failed |= r.is_err();
        futures::future::ready(go)
    })
}

/// The deletions of the output batch from `at`.
fn deletions(m: &Matches, at: usize) -> &[Row] {
    &m.deleted[at..(at + DELETED_BATCH).min(m.deleted.len())]
}

/// A contactId or status column, or nulls when it was not asked for.
fn state_column(b: Option<StringBuilder>, rows: usize) -> ArrayRef {
    match b {
        Some(mut b) => Arc::new(b.finish()),
        None => new_null_array(&DataType::Utf8, rows),
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Array, StringArray};

    use super::super::entry::{V_CHANGED, V_UNCHANGED};
    use super::super::fixtures::*;
    use super::*;
    use crate::columns::{KIND, REASON};
    use crate::state;

    #[test]
    fn an_identifier_the_state_holds_twice_comes_out_once_per_state_row() {
        let mut job = job(None, 2);
        job.add_model(model_batch(
            &["new@x.se", "twice@x.se"],
            &[Some(1), Some(1)],
        ))
        .unwrap();
        let state = RecordBatch::try_new(
            state_schema(),
            vec![
                Arc::new(StringArray::from(vec!["twice@x.se", "twice@x.se"])),
                Arc::new(hashes(&[Some(1), Some(2)])),
                Arc::new(StringArray::from(vec!["c1", "c2"])),
                Arc::new(StringArray::from(vec!["delivered", "delivered"])),
            ],
        )
        .unwrap();
        job.state.add(state).unwrap();
        job.join().unwrap();
        let out: Vec<RecordBatch> = Iterator::collect::<Result<_>>(job).unwrap();
        let mut rows: Vec<String> = Vec::new();
        for b in &out {
            let col = |name: &str| crate::columns::string_column(b, name).unwrap();
            let (kinds, ids, values) = (col(KIND), col(state::IDENTIFIER), col("a"));
            let contact_ids = col(state::CONTACT_ID);
            for i in 0..b.num_rows() {
                let contact = contact_ids.is_valid(i).then(|| contact_ids.value(i));
                rows.push(format!(
                    "{} {} {} {contact:?}",
                    kinds.value(i),
                    ids.value(i),
                    values.value(i)
                ));
            }
        }
        rows.sort();
        assert_eq!(
            rows,
            [
                "changed twice@x.se a-twice@x.se Some(\"c2\")",
                "new new@x.se a-new@x.se None",
                "unchanged twice@x.se a-twice@x.se Some(\"c1\")",
            ]
        );
    }

    /// Each output row as "kind identifier reason".
    fn rows_of(job: ClassifyJob) -> Vec<String> {
        let out: Vec<RecordBatch> = Iterator::collect::<Result<_>>(job).unwrap();
        let mut rows: Vec<String> = Vec::new();
        for b in &out {
            let col = |name: &str| crate::columns::string_column(b, name).unwrap();
            let (kinds, ids, reasons) = (col(KIND), col(state::IDENTIFIER), col(REASON));
            for i in 0..b.num_rows() {
                let reason = reasons.is_valid(i).then(|| reasons.value(i));
                rows.push(format!("{} {} {reason:?}", kinds.value(i), ids.value(i)));
            }
        }
        rows.sort();
        rows
    }

    #[test]
    fn identifiers_the_state_lacks_are_checked_against_the_key_rules() {
        let mut job = job(None, 1);
        job.add_model(model_batch(
            &[
                "no-at-sign",
                "no-at-sign",
                "new@x.se",
                "held@x.se",
                "twice@x.se",
                "twice@x.se",
            ],
            &[Some(1); 6],
        ))
        .unwrap();
        let state = RecordBatch::try_new(
            state_schema(),
            vec![
                Arc::new(StringArray::from(vec!["held@x.se"])),
                Arc::new(hashes(&[Some(1)])),
                Arc::new(StringArray::from(vec!["c1"])),
                Arc::new(StringArray::from(vec!["delivered"])),
            ],
        )
        .unwrap();
        job.state.add(state).unwrap();
        job.join().unwrap();
        let (email, dup) = (identity::REASON_EMAIL, identity::REASON_DUPLICATE);
        assert_eq!(
            rows_of(job),
            [
                format!("invalid no-at-sign Some(\"{email}\")"),
                format!("invalid no-at-sign Some(\"{email}\")"),
                format!("invalid twice@x.se Some(\"{dup}\")"),
                format!("invalid twice@x.se Some(\"{dup}\")"),
                "new new@x.se None".to_string(),
                "unchanged held@x.se None".to_string(),
            ]
        );
    }

    #[tokio::test]
    async fn the_output_ends_at_its_first_error() {
        let items = [
            Ok(1),
            Ok(2),
            internal_err!("broken"),
            Ok(3),
            internal_err!("later"),
        ];
        let out: Vec<Result<i32>> = until_first_error(futures::stream::iter(items))
            .collect()
            .await;
        assert_eq!(out.len(), 3);
        assert_eq!(
            (out[0].as_ref().ok(), out[1].as_ref().ok()),
            (Some(&1), Some(&2))
        );
        assert!(out[2].as_ref().unwrap_err().to_string().contains("broken"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn output_built_on_several_threads_comes_in_order() {
        // Seven model batches of three rows, and an empty one among them, against a state
        // holding every other identifier (with another row hash every third) and some the
        // model lacks.
        let build = |threads: usize| {
            let mut job = job(None, 30);
            job.threads = threads;
            for b in 0..7 {
                let ids: Vec<String> = (0..3).map(|r| format!("u{}@x.se", b * 3 + r)).collect();
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                job.add_model(model_batch(&ids, &[Some(1); 3])).unwrap();
                if b == 3 {
                    job.add_model(model_batch(&[], &[])).unwrap();
                }
            }
            let ids: Vec<String> = (0..40).step_by(2).map(|i| format!("u{i}@x.se")).collect();
            let row_hashes: Vec<Option<u8>> =
                (0..20).map(|i| Some(1 + u8::from(i % 3 == 0))).collect();
            let n = ids.len();
            let state = RecordBatch::try_new(
                state_schema(),
                vec![
                    Arc::new(StringArray::from(ids)),
                    Arc::new(hashes(&row_hashes)),
                    Arc::new(StringArray::from_iter_values(
                        (0..n).map(|i| format!("c{i}")),
                    )),
                    Arc::new(StringArray::from(vec!["delivered"; n])),
                ],
            )
            .unwrap();
            job.state.add(state).unwrap();
            job.join().unwrap();
            job
        };
        let serial: Vec<RecordBatch> = Iterator::collect::<Result<_>>(build(1)).unwrap();
        assert_eq!(serial.len(), 8 + 1, "eight model batches and the deletions");
        // Model row k: odd ones are new; even ones are the state's row k / 2, changed where
        // that is a multiple of three. The state's u22 to u38 are deleted.
        let kinds: Vec<String> = serial
            .iter()
            .flat_map(|b| {
                Strings::new(b.column(0))
                    .unwrap()
                    .iter()
                    .map(|k| k.unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut want: Vec<&str> = (0..21)
            .map(|k| match k {
                _ if k % 2 == 1 => ChangeKind::New.as_str(),
                _ if (k / 2) % 3 == 0 => ChangeKind::Changed.as_str(),
                _ => ChangeKind::Unchanged.as_str(),
            })
            .collect();
        want.extend([ChangeKind::Deleted.as_str(); 9]);
        assert_eq!(kinds, want);
        for threads in [2, 3] {
            let out: Vec<Result<RecordBatch>> = build(threads).into_stream().collect().await;
            let out: Vec<RecordBatch> = out.into_iter().collect::<Result<_>>().unwrap();
            assert_eq!(out, serial, "{threads} threads");
        }
    }

    #[test]
    fn kinds_and_reasons_are_views_of_strings_written_once() {
        use datafusion::arrow::array::AsArray;
        let verdicts = [
            V_NEW,
            invalid(identity::REASON_DUPLICATE),
            V_UNCHANGED,
            V_CHANGED,
        ];
        let kinds = few_strings(&KINDS, verdicts.iter().map(|&v| Some(kind_of(v))));
        let reasons = few_strings(
            &REASONS,
            verdicts
                .iter()
                .map(|&v| v.checked_sub(V_INVALID).map(usize::from)),
        );
        let (kinds, reasons) = (kinds.as_string_view(), reasons.as_string_view());
        let kinds: Vec<&str> = kinds.iter().map(Option::unwrap).collect();
        assert_eq!(
            kinds,
            [
                ChangeKind::New.as_str(),
                ChangeKind::Invalid.as_str(),
                ChangeKind::Unchanged.as_str(),
                ChangeKind::Changed.as_str()
            ]
        );
        let reasons: Vec<Option<&str>> = reasons.iter().collect();
        assert_eq!(
            reasons,
            [None, Some(identity::REASON_DUPLICATE), None, None]
        );
        // Each long reason is written once, whatever the rows.
        let long: usize = REASONS.iter().map(|r| r.len()).filter(|&n| n > 12).sum();
        assert_eq!(reasons_bytes(&REASONS), long);
        let deleted = few_strings(&KINDS, (0..3).map(|_| Some(KIND_DELETED)));
        assert_eq!(
            deleted.as_string_view().value(2),
            ChangeKind::Deleted.as_str()
        );
    }

    fn reasons_bytes(strings: &[&str]) -> usize {
        use datafusion::arrow::array::AsArray;
        let a = few_strings(strings, (0..1000).map(|i| Some(i % strings.len())));
        a.as_string_view()
            .data_buffers()
            .iter()
            .map(|b| b.len())
            .sum()
    }
}
