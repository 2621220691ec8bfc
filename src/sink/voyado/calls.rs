//! The Voyado Engage v3 calls: the key probe, contact lookup, create and update, and the
//! bulk submit and status, each turning the transport's reply into what it means for a row.

use reqwest::header::CONTENT_TYPE;

use super::bulk_api::{self, BatchState, StatusError};
use super::client::{Answer, Client, Endpoint, Reply};
use super::wire::{encode, parse_id, truncate};
use crate::config::Key;
use crate::error::{ErrorKind, Result};

/// A fixed address on a reserved domain: looking it up proves the key without touching data.
pub const PROBE_EMAIL: &str = "voyado-sync-probe@example.com";

/// Why Voyado cannot be used for this run at all (a row's own failure is an outcome).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VoyadoError {
    /// The credentials are wrong: fixing them is the user's part.
    #[error("API key rejected ({status})")]
    KeyRejected {
        /// The HTTP status of the refusal (401 or 403).
        status: u16,
    },
    /// The key probe got an answer that is neither yes nor no.
    #[error("Voyado answered the key probe with {reason}")]
    Probe {
        /// The HTTP status and body that came back.
        reason: String,
    },
    /// Nothing usable answered at the destination URL.
    #[error("Voyado cannot be used at {base}: {reason}")]
    Unreachable {
        /// The destination URL.
        base: String,
        /// Why nothing usable answered.
        reason: String,
    },
}

impl VoyadoError {
    /// The error kind this maps to: a rejected key is a configuration error, the rest
    /// destination errors.
    pub fn kind(&self) -> ErrorKind {
        match self {
            VoyadoError::KeyRejected { .. } => ErrorKind::Config,
            VoyadoError::Probe { .. } | VoyadoError::Unreachable { .. } => ErrorKind::Destination,
        }
    }
}

/// What looking a contact up by key came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Found: the contact's id.
    Found(String),
    /// No contact has this key.
    NotFound,
    /// Refused for this row (such as several contacts sharing the key): the reason.
    Rejected(String),
    /// No usable answer (transport, 401/403, no id in the answer): the row is sent again
    /// next run.
    Failed(String),
}

/// What creating a contact came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Create {
    /// Created; the id is None when the answer did not carry one.
    Created(Option<String>),
    /// 409: a contact with this key exists (or is being created).
    Exists,
    /// Refused for this row: the reason.
    Rejected(String),
    /// The create may or may not have been applied: look the contact up before trying
    /// again.
    Unknown(String),
    /// Not applied (transport, 401/403, retries exhausted): the reason; the row is sent
    /// again next run.
    Failed(String),
}

/// What partially updating a contact came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Updated.
    Updated,
    /// No contact has this id (any more).
    NotFound,
    /// Refused for this row: the reason.
    Rejected(String),
    /// No usable answer (transport, 401/403, retries exhausted): the row is sent again
    /// next run.
    Failed(String),
}

/// The answer to a bulk write: accepted (with its batch id) or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submit {
    /// Accepted: the batch id to poll.
    Accepted(String),
    /// Refused as a whole (4xx): the reason applies to every item.
    Rejected(String),
    /// Not accepted or not confirmed (transport, 401/403, no batch id): the items are
    /// sent again next run.
    Failed(String),
}

/// `HTTP 422: {"message": ...}` style reason kept with a rejected row.
fn reason(a: &Answer) -> String {
    let body = truncate(&a.body);
    if body.is_empty() {
        format!("HTTP {}", a.status)
    } else {
        format!("HTTP {}: {body}", a.status)
    }
}

impl Client {
    /// Sends `body` as JSON.
    async fn send_json(
        &self,
        ep: Endpoint,
        idempotent: bool,
        method: reqwest::Method,
        url: &str,
        body: &str,
    ) -> Reply {
        self.send(ep, idempotent, || {
            self.http
                .request(method.clone(), url)
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_string())
        })
        .await
    }

    fn lookup_url(&self, param: &str, value: &str) -> String {
        format!(
            "{}/api/v3/contacts/id?{param}={}&contactType={}",
            self.base,
            encode(value),
            encode(&self.contact_type)
        )
    }

    /// Proves the key works before anything is sent: 401/403 stop the run (exit 2).
    pub async fn probe(&self) -> Result<()> {
        let url = format!(
            "{}/api/v3/contacts/id?email={}",
            self.base,
            encode(PROBE_EMAIL)
        );
        match self
            .send(Endpoint::Lookup, true, || self.http.get(&url))
            .await
        {
            Reply::Answer(a) if matches!(a.status, 200 | 404) => Ok(()),
            Reply::Answer(a) if matches!(a.status, 401 | 403) => {
                Err(VoyadoError::KeyRejected { status: a.status }.into())
            }
            Reply::Answer(a) => Err(VoyadoError::Probe { reason: reason(&a) }.into()),
            Reply::Unknown(r) | Reply::Failed(r) => Err(VoyadoError::Unreachable {
                base: self.base.clone(),
                reason: r,
            }
            .into()),
        }
    }

    /// Finds a contact's id by the configured key.
    pub async fn lookup(&self, value: &str) -> Lookup {
        let param = match self.key {
            Key::Email => "email",
            Key::MobilePhone => "mobilePhone",
            Key::SocialSecurityNumber => "socialSecurityNumber",
            Key::ExternalId | Key::MemberNumber => "customKey",
            Key::ContactId => return Lookup::Found(value.to_string()),
        };
        let url = self.lookup_url(param, value);
        match self
            .send(Endpoint::Lookup, true, || self.http.get(&url))
            .await
        {
            Reply::Answer(a) if a.status == 200 => match parse_id(&a.body) {
                Some(id) => Lookup::Found(id),
                None => Lookup::Failed(format!(
                    "lookup answered 200 without a contactId: {}",
                    truncate(&a.body)
                )),
            },
            Reply::Answer(a) if a.status == 404 => Lookup::NotFound,
            Reply::Answer(a) if a.status == 409 => Lookup::Rejected(format!(
                "MultipleMatches: several contacts share this {}: {}",
                self.key.as_str(),
                truncate(&a.body)
            )),
            Reply::Answer(a) if matches!(a.status, 401 | 403) => Lookup::Failed(reason(&a)),
            Reply::Answer(a) => Lookup::Rejected(reason(&a)),
            Reply::Unknown(r) | Reply::Failed(r) => Lookup::Failed(r),
        }
    }

    /// Creates a contact from a flat JSON object (which must hold the key attribute).
    pub async fn create(&self, body: &str) -> Create {
        let url = format!("{}/api/v3/contacts{}", self.base, self.create_query);
        let sent = self
            .send_json(Endpoint::Create, false, reqwest::Method::POST, &url, body)
            .await;
        match sent {
            Reply::Answer(a) if (200..300).contains(&a.status) => {
                Create::Created(parse_id(&a.body))
            }
            Reply::Answer(a) if a.status == 409 => Create::Exists,
            Reply::Answer(a) if matches!(a.status, 401 | 403) => Create::Failed(reason(&a)),
            Reply::Answer(a) => Create::Rejected(reason(&a)),
            Reply::Unknown(r) => Create::Unknown(r),
            Reply::Failed(r) => Create::Failed(r),
        }
    }

    /// Partially updates a contact (PATCH: only the attributes in `body` change).
    pub async fn update(&self, contact_id: &str, body: &str) -> Update {
        let url = format!("{}/api/v3/contacts/{}", self.base, encode(contact_id));
        let sent = self
            .send_json(Endpoint::Update, true, reqwest::Method::PATCH, &url, body)
            .await;
        match sent {
            Reply::Answer(a) if (200..300).contains(&a.status) => Update::Updated,
            Reply::Answer(a) if a.status == 404 => Update::NotFound,
            Reply::Answer(a) if matches!(a.status, 401 | 403) => Update::Failed(reason(&a)),
            Reply::Answer(a) => Update::Rejected(reason(&a)),
            Reply::Unknown(r) | Reply::Failed(r) => Update::Failed(r),
        }
    }

    /// Submits one bulk batch (`create`: POST, else PATCH) of flat objects as a JSON array.
    ///
    /// Items are matched by key, so repeating a batch whose answer was lost cannot create a
    /// contact twice: already-created items come back as existing. Bulk writes are
    /// therefore retried like updates.
    pub async fn bulk_submit(&self, create: bool, body: &str) -> Submit {
        let url = format!(
            "{}{}?contactType={}",
            self.base,
            bulk_api::BULK_PATH,
            encode(&self.contact_type)
        );
        let (ep, method) = if create {
            (Endpoint::BulkCreate, reqwest::Method::POST)
        } else {
            (Endpoint::BulkUpdate, reqwest::Method::PATCH)
        };
        let sent = self.send_json(ep, true, method, &url, body).await;
        match sent {
            Reply::Answer(a) if (200..300).contains(&a.status) => {
                match bulk_api::parse_batch_id(&a.body) {
                    Some(id) => Submit::Accepted(id),
                    None => Submit::Failed(format!(
                        "bulk call answered {} without a batch id: {}",
                        a.status,
                        truncate(&a.body)
                    )),
                }
            }
            Reply::Answer(a) if matches!(a.status, 401 | 403) => Submit::Failed(reason(&a)),
            Reply::Answer(a) => Submit::Rejected(reason(&a)),
            Reply::Unknown(r) | Reply::Failed(r) => Submit::Failed(r),
        }
    }

    /// Reads a bulk batch's status once. Errors (transport, an unknown batch, an answer
    /// that cannot be read) are reasons to leave the batch's rows unconfirmed.
    pub async fn bulk_status(
        &self,
        batch_id: &str,
    ) -> std::result::Result<BatchState, StatusError> {
        let url = format!(
            "{}{}?batchId={}",
            self.base,
            bulk_api::STATUS_PATH,
            encode(batch_id)
        );
        match self
            .send(Endpoint::BulkStatus, true, || self.http.get(&url))
            .await
        {
            Reply::Answer(a) if a.status == 200 => {
                bulk_api::parse_status(&a.body).map_err(StatusError::Batch)
            }
            // The path itself is not served (an unknown batch is a 404 naming the batch).
            Reply::Answer(a)
                if a.status == 405
                    || (a.status == 404 && !a.body.to_ascii_lowercase().contains("batch")) =>
            {
                Err(StatusError::NoEndpoint(reason(&a)))
            }
            Reply::Answer(a) => Err(StatusError::Batch(format!(
                "status of batch {batch_id}: {}",
                reason(&a)
            ))),
            Reply::Unknown(r) | Reply::Failed(r) => Err(StatusError::Batch(format!(
                "status of batch {batch_id}: {r}"
            ))),
        }
    }
}
