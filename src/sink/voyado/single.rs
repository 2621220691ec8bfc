//! The single-contact path: per row, which lookups, creates and updates it needs in each
//! sync mode.
//!
//! Voyado's own advice shapes this: look a contact up before creating it, treat a 409 on
//! create as "it exists" (look up, then update), never resend a create whose outcome is
//! unknown without looking first, and send an update only the attributes that changed.

use futures::StreamExt;

use super::calls::{Create, Lookup, Update};
use super::client::Client;
use super::encode::object;
use super::outcome::Outcome;
use super::request::EncodedRow;
use crate::config::{Key, Mode};

/// Sends rows one contact at a time, with the lookups, creates and updates each needs.
pub struct SinglePlanner<'a> {
    /// The transport the calls go through.
    pub client: &'a Client,
    /// The sync mode: whether contacts unknown to Voyado are created (UPSERT) or end
    /// not_found (UPDATE).
    pub mode: Mode,
    /// The identifier attribute contacts are looked up by.
    pub key: Key,
    /// The contact type new contacts are created with.
    pub contact_type: &'a str,
}

fn body(pairs: &[(String, String)]) -> String {
    let refs: Vec<(&str, String)> = pairs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    object(&refs)
}

/// How many times a create may be re-attempted after 409s or unknown outcomes.
const CREATE_ATTEMPTS: usize = 3;

impl SinglePlanner<'_> {
    /// Sends each row through the single-contact API, `concurrency` rows at a time:
    /// (row index, identifier, outcome), in the order the answers come.
    pub async fn process_all(
        &self,
        rows: Vec<(usize, EncodedRow)>,
        concurrency: usize,
    ) -> Vec<(usize, String, Outcome)> {
        futures::stream::iter(rows)
            .map(|(i, row)| async move {
                let o = self.process(&row).await;
                (i, row.identifier, o)
            })
            .buffer_unordered(concurrency)
            .collect()
            .await
    }

    /// The outcome of one row, after the calls it needs.
    pub async fn process(&self, job: &EncodedRow) -> Outcome {
        let payload = if job.as_new { &job.full } else { &job.changed };
        if self.key == Key::ContactId {
            if payload.is_empty() {
                return Outcome::Skipped(Some(job.identifier.clone()));
            }
            return match self.client.update(&job.identifier, &body(payload)).await {
                Update::Updated => Outcome::Updated(Some(job.identifier.clone())),
                Update::NotFound => Outcome::NotFound,
                Update::Rejected(r) => Outcome::Rejected(r),
                Update::Failed(r) => Outcome::Failed(r),
            };
        }
        if !job.as_new && payload.is_empty() {
            return Outcome::Skipped(job.contact_id.clone());
        }
        let id = match &job.contact_id {
            Some(id) => id.clone(),
            None => match self.client.lookup(&job.identifier).await {
                Lookup::Found(id) => id,
                Lookup::NotFound => return self.create_or_not_found(job).await,
                Lookup::Rejected(r) => return Outcome::Rejected(r),
                Lookup::Failed(r) => return Outcome::Failed(r),
            },
        };
        if payload.is_empty() {
            return Outcome::Skipped(Some(id));
        }
        match self.client.update(&id, &body(payload)).await {
            Update::Updated => Outcome::Updated(Some(id)),
            Update::Rejected(r) => Outcome::Rejected(r),
            Update::Failed(r) => Outcome::Failed(r),
            // Deleted in Voyado since we learnt its id: find it again, or recreate it.
            Update::NotFound => match self.client.lookup(&job.identifier).await {
                Lookup::Found(other) if other != id => self.update_full(job, other).await,
                Lookup::Found(_) | Lookup::NotFound => self.create_or_not_found(job).await,
                Lookup::Rejected(r) => Outcome::Rejected(r),
                Lookup::Failed(r) => Outcome::Failed(r),
            },
        }
    }

    async fn update_full(&self, job: &EncodedRow, id: String) -> Outcome {
        if job.full.is_empty() {
            return Outcome::Skipped(Some(id));
        }
        match self.client.update(&id, &body(&job.full)).await {
            Update::Updated => Outcome::Updated(Some(id)),
            Update::NotFound => {
                Outcome::Failed(format!("contact {id} disappeared while being updated"))
            }
            Update::Rejected(r) => Outcome::Rejected(r),
            Update::Failed(r) => Outcome::Failed(r),
        }
    }

    async fn create_or_not_found(&self, job: &EncodedRow) -> Outcome {
        if self.mode == Mode::Update || matches!(self.key, Key::ContactId | Key::MemberNumber) {
            return Outcome::NotFound;
        }
        let mut pairs = vec![
            (
                self.key.as_str().to_string(),
                serde_json::to_string(&job.identifier).unwrap_or_default(),
            ),
            (
                "contactType".to_string(),
                serde_json::to_string(self.contact_type).unwrap_or_default(),
            ),
        ];
        pairs.extend(job.full.iter().cloned());
        let create_body = body(&pairs);
        let mut last = String::new();
        for _ in 0..CREATE_ATTEMPTS {
            match self.client.create(&create_body).await {
                Create::Created(Some(id)) => return Outcome::Created(Some(id)),
                Create::Rejected(r) => return Outcome::Rejected(r),
                Create::Failed(r) => return Outcome::Failed(r),
                // Exists (another writer, or our own earlier create whose answer was lost):
                // take it over with every value.
                Create::Exists => match self.client.lookup(&job.identifier).await {
                    Lookup::Found(id) => return self.update_full(job, id).await,
                    // Being created by someone else right now: try again.
                    Lookup::NotFound => last = "409 on create, then not found".to_string(),
                    Lookup::Rejected(r) => return Outcome::Rejected(r),
                    Lookup::Failed(r) => return Outcome::Failed(r),
                },
                // The create may have been applied: look before trying again.
                // Created, but the answer carries no id: find it, never create again.
                Create::Created(None) => {
                    return match self.client.lookup(&job.identifier).await {
                        Lookup::Found(id) => Outcome::Created(Some(id)),
                        Lookup::NotFound => Outcome::Failed(
                            "create answered 2xx without an id, and a lookup cannot find the contact".to_string(),
                        ),
                        Lookup::Rejected(r) => Outcome::Rejected(r),
                        Lookup::Failed(r) => Outcome::Failed(r),
                    };
                }
                // The create may have been applied: look before trying again.
                Create::Unknown(why) => match self.client.lookup(&job.identifier).await {
                    Lookup::Found(id) => {
                        return match self.update_full(job, id).await {
                            Outcome::Updated(id) | Outcome::Skipped(id) => Outcome::Created(id),
                            other => other,
                        };
                    }
                    Lookup::NotFound => last = format!("create outcome unknown ({why})"),
                    Lookup::Rejected(r) => return Outcome::Rejected(r),
                    Lookup::Failed(r) => return Outcome::Failed(r),
                },
            }
        }
        Outcome::Failed(format!("could not create the contact: {last}"))
    }
}
