//! The bulk path: rows go out as bulk batches of flat items matched by key, each batch is
//! polled until Voyado reports it finished, and only then do its rows get outcomes.
//!
//! Per row the decisions mirror the single path ([`super::single`]): new rows are created
//! (UPSERT) or updated with every value (UPDATE), changed rows are updated with their
//! changed values only. Items a create batch reports as existing are updated with every
//! value; items an update batch reports as unknown are created (UPSERT) or end not_found
//! (UPDATE). A batch that fails, cannot be read, or does not finish in time leaves its rows
//! failed (unconfirmed), so the next run sends them again: resending is harmless because
//! items are keyed.

use std::time::{Duration, Instant};

use futures::StreamExt;

use super::bulk_api::{BatchState, ItemError, StatusError};
use super::calls::Submit;
use super::client::Client;
use super::encode::object;
use super::outcome::Outcome;
use super::request::EncodedRow;
use crate::config::{BulkSettings, Key, Mode};
use crate::identity::normalize;

/// Batches in flight at once. Each holds up to 4000 encoded items, so this bounds memory
/// as much as it bounds load on the tenant.
pub const IN_FLIGHT: usize = 4;
/// The longest wait between two status polls of one batch.
const MAX_POLL_WAIT: Duration = Duration::from_secs(30);

/// Sends rows through Voyado's bulk API and gives them outcomes once their batches finish.
pub struct BulkPlanner<'a> {
    /// The transport the batches go through.
    pub client: &'a Client,
    /// The sync mode: whether rows unknown to Voyado are created (UPSERT) or end
    /// not_found (UPDATE).
    pub mode: Mode,
    /// The identifier attribute bulk items are matched by.
    pub key: Key,
    /// Batch size, status poll interval and batch timeout.
    pub settings: BulkSettings,
    /// Set when the status endpoint itself is missing (the assumed v3 path answers 404
    /// or 405): no later batch is submitted, since none could ever be confirmed.
    pub stopped: std::sync::Mutex<Option<String>>,
}

/// Which bulk call an item goes through, and what success means for its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// A row new to the snapshot, created (UPSERT).
    Create,
    /// A row updated with the values it carries.
    Update,
    /// Second round: a create that found the contact existing, now updated with every value.
    UpdateExisting,
    /// Second round: an update of a contact Voyado no longer has, now created (UPSERT).
    Recreate,
}

impl Call {
    fn create(self) -> bool {
        matches!(self, Call::Create | Call::Recreate)
    }
}

/// What one item of a finished (or failed) batch came to.
#[derive(Debug)]
enum ItemResult {
    Applied,
    Error(ItemError),
    /// The whole batch: not confirmed, sent again next run.
    Failed(String),
}

impl BulkPlanner<'_> {
    /// Outcomes for `jobs` (row index, job): (row index, identifier, outcome).
    pub async fn process(&self, jobs: Vec<(usize, EncodedRow)>) -> Vec<(usize, String, Outcome)> {
        let mut done = Vec::with_capacity(jobs.len());
        let mut first: Vec<(usize, Call)> = Vec::new();
        for (n, (_, job)) in jobs.iter().enumerate() {
            if !job.as_new && job.changed.is_empty() {
                done.push((n, Outcome::Skipped(job.contact_id.clone())));
            } else if job.as_new && self.mode == Mode::Upsert {
                first.push((n, Call::Create));
            } else {
                first.push((n, Call::Update));
            }
        }
        let mut second: Vec<(usize, Call)> = Vec::new();
        for (n, call, result) in self.round(&jobs, first).await {
            let job = &jobs[n].1;
            let outcome = match (call, result) {
                (_, ItemResult::Applied) => Some(applied(call, job)),
                (_, ItemResult::Error(e)) if e.transient() => Some(Outcome::Failed(e.reason())),
                (Call::Create, ItemResult::Error(e)) if e.exists() => {
                    second.push((n, Call::UpdateExisting));
                    None
                }
                (Call::Update, ItemResult::Error(e)) if e.not_found() => {
                    if self.mode == Mode::Upsert {
                        second.push((n, Call::Recreate));
                        None
                    } else {
                        Some(Outcome::NotFound)
                    }
                }
                (_, other) => Some(failure(other)),
            };
            if let Some(o) = outcome {
                done.push((n, o));
            }
        }
        for (n, call, result) in self.round(&jobs, second).await {
            let job = &jobs[n].1;
            let outcome = match result {
                ItemResult::Applied => applied(call, job),
                // Created or deleted by someone else between the two rounds: try next run.
                ItemResult::Error(e) if e.transient() => Outcome::Failed(e.reason()),
                ItemResult::Error(e) if e.exists() || e.not_found() => Outcome::Failed(format!(
                    "contact changed in Voyado while being written ({})",
                    e.reason()
                )),
                other => failure(other),
            };
            done.push((n, outcome));
        }
        done.into_iter()
            .map(|(n, o)| {
                let (row, job) = &jobs[n];
                (*row, job.identifier.clone(), o)
            })
            .collect()
    }

    /// Sends `items` (job position, call) in batches of at most `batch_size` per call kind,
    /// a few batches at a time, and returns one result per item.
    async fn round(
        &self,
        jobs: &[(usize, EncodedRow)],
        items: Vec<(usize, Call)>,
    ) -> Vec<(usize, Call, ItemResult)> {
        let mut batches = Vec::new();
        for call in [
            Call::Create,
            Call::Update,
            Call::UpdateExisting,
            Call::Recreate,
        ] {
            let positions: Vec<usize> = items
                .iter()
                .filter(|(_, c)| *c == call)
                .map(|(n, _)| *n)
                .collect();
            for chunk in positions.chunks(self.settings.batch_size) {
                batches.push((call, chunk.to_vec()));
            }
        }
        futures::stream::iter(batches)
            .map(|(call, positions)| async move {
                let results = self.batch(jobs, call, &positions).await;
                positions
                    .into_iter()
                    .zip(results)
                    .map(|(n, r)| (n, call, r))
                    .collect::<Vec<_>>()
            })
            .buffer_unordered(IN_FLIGHT)
            .flat_map(futures::stream::iter)
            .collect()
            .await
    }

    /// One bulk call and its polling: a result for each of `positions`, in order.
    async fn batch(
        &self,
        jobs: &[(usize, EncodedRow)],
        call: Call,
        positions: &[usize],
    ) -> Vec<ItemResult> {
        let items: Vec<String> = positions
            .iter()
            .map(|n| self.item(&jobs[*n].1, call))
            .collect();
        let all = |r: &dyn Fn() -> ItemResult| positions.iter().map(|_| r()).collect();
        if let Some(why) = self.stopped.lock().ok().and_then(|s| s.clone()) {
            return all(&|| ItemResult::Failed(format!("not sent: {why}")));
        }
        let body = format!("[{}]", items.join(","));
        drop(items);
        let batch_id = match self.client.bulk_submit(call.create(), &body).await {
            Submit::Accepted(id) => id,
            // A refusal of the whole batch says nothing about any one row (a body too large,
            // a path the tenant does not serve): no row is confirmed, none written off.
            Submit::Rejected(r) => {
                let r = format!("bulk call refused: {r}");
                return all(&|| ItemResult::Failed(r.clone()));
            }
            Submit::Failed(r) => return all(&|| ItemResult::Failed(r.clone())),
        };
        drop(body);
        tracing::debug!(batch = %batch_id, items = positions.len(), create = call.create(), "bulk batch accepted");
        let (errors, total, succeeded) = match self.wait(&batch_id).await {
            Ok(BatchState::Completed {
                errors,
                total,
                succeeded,
            }) => (errors, total, succeeded),
            Ok(_) => return all(&|| ItemResult::Failed("internal: unfinished batch".into())),
            Err(r) => return all(&|| ItemResult::Failed(r.clone())),
        };
        // Counts that do not add up to what was sent: the report is not about this batch,
        // or not whole; nothing in it can be confirmed.
        let n = positions.len();
        if total.is_some_and(|t| t != n) || succeeded.is_some_and(|s| s + errors.len() != n) {
            let r = format!(
                "batch {batch_id}: status counts {} items ({} succeeded, {} failed) for {n} sent",
                total.map_or("?".into(), |t| t.to_string()),
                succeeded.map_or("?".into(), |s| s.to_string()),
                errors.len()
            );
            return all(&|| ItemResult::Failed(r.clone()));
        }
        let mut results: Vec<ItemResult> = positions.iter().map(|_| ItemResult::Applied).collect();
        for e in errors {
            let by_key = |key: &str| {
                let key = normalize(key.trim(), self.key);
                positions.iter().position(|p| jobs[*p].1.identifier == key)
            };
            let at = match (e.index.filter(|i| *i < n), e.key.as_deref()) {
                // Both given: they must name the same row, or the report cannot be trusted.
                (Some(i), Some(key)) => by_key(key).filter(|k| *k == i),
                (Some(i), None) => Some(i),
                (None, Some(key)) => by_key(key),
                (None, None) => None,
            };
            match at {
                Some(i) => results[i] = ItemResult::Error(e),
                // An error the batch cannot tie to an item: no item can be confirmed.
                None => {
                    let r = format!(
                        "batch {batch_id} reported an error for no identifiable item ({})",
                        e.reason()
                    );
                    return all(&|| ItemResult::Failed(r.clone()));
                }
            }
        }
        results
    }

    /// The flat item: the key attribute plus every value (new rows, second rounds) or the
    /// changed values (changed rows), empty values already left out by the encoder.
    fn item(&self, job: &EncodedRow, call: Call) -> String {
        let values = if job.as_new || call != Call::Update {
            &job.full
        } else {
            &job.changed
        };
        let mut pairs: Vec<(&str, String)> = Vec::with_capacity(values.len() + 1);
        pairs.push((
            self.key.as_str(),
            serde_json::to_string(&job.identifier).unwrap_or_default(),
        ));
        pairs.extend(values.iter().map(|(k, v)| (k.as_str(), v.clone())));
        object(&pairs)
    }

    /// Polls a batch with growing waits until it finishes, fails, or runs out of time.
    async fn wait(&self, batch_id: &str) -> Result<BatchState, String> {
        let started = Instant::now();
        let mut wait = self.settings.poll_interval;
        loop {
            let left = self.settings.timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(format!(
                    "batch {batch_id} did not finish within {} s (bulk_timeout_secs)",
                    self.settings.timeout.as_secs()
                ));
            }
            tokio::time::sleep(wait.min(left)).await;
            let status = match self.client.bulk_status(batch_id).await {
                Ok(status) => status,
                Err(e) => {
                    let why = e.to_string();
                    if matches!(e, StatusError::NoEndpoint(_))
                        && let Ok(mut s) = self.stopped.lock()
                    {
                        s.get_or_insert_with(|| why.clone());
                    }
                    return Err(why);
                }
            };
            match status {
                BatchState::Pending => {}
                done @ BatchState::Completed { .. } => return Ok(done),
                BatchState::Failed(why) => return Err(format!("batch {batch_id}: {why}")),
            }
            wait = (wait * 2).min(MAX_POLL_WAIT);
        }
    }
}

fn applied(call: Call, job: &EncodedRow) -> Outcome {
    match call {
        Call::Create | Call::Recreate => Outcome::Created(None),
        Call::Update | Call::UpdateExisting => Outcome::Updated(job.contact_id.clone()),
    }
}

fn failure(r: ItemResult) -> Outcome {
    match r {
        ItemResult::Applied => Outcome::Failed("internal: applied item taken as failed".into()),
        ItemResult::Error(e) => Outcome::Rejected(e.reason()),
        ItemResult::Failed(r) => Outcome::Failed(r),
    }
}
