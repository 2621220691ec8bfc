//! The Voyado Engage v3 contacts client: lookup, create, update and the key probe, each
//! paced, timed out, retried where safe, and counted by endpoint and status.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION, RETRY_AFTER};
use serde::Serialize;

use super::bulk_api::{self, BatchState, StatusError};
use super::rate::Pacer;
use super::retry::{Backoff, RetryAction, classify_status, classify_transport, parse_retry_after};
use crate::config::{Key, Settings};
use crate::error::{Error, Result};

/// Everything but unreserved characters is percent-encoded: `+`, `/`, `&`, `#`, `%`, spaces
/// and non-ASCII alike.
const URL_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A fixed address on a reserved domain: looking it up proves the key without touching data.
pub const PROBE_EMAIL: &str = "voyado-sync-probe@example.com";

const MAX_REASON: usize = 300;

/// The API key. Never printed: `Debug` is redacted and the header is marked sensitive.
#[derive(Clone)]
pub struct ApiKey(String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl ApiKey {
    pub fn read(settings: &Settings) -> Result<ApiKey> {
        settings
            .destination
            .api_key
            .check_available()
            .map_err(Error::config)?;
        let raw = match &settings.destination.api_key {
            crate::config::ApiKeySource::Env(v) => std::env::var(v).unwrap_or_default(),
            crate::config::ApiKeySource::File(p) => std::fs::read_to_string(p).unwrap_or_default(),
        };
        Ok(ApiKey(raw.trim().to_string()))
    }

    pub fn from_value(v: &str) -> ApiKey {
        ApiKey(v.trim().to_string())
    }
}

/// Requests by endpoint and answer (`"200"`, `"404"`, `"timeout"`, `"connection"`...).
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct RequestCounts {
    pub lookup: BTreeMap<String, u64>,
    pub create: BTreeMap<String, u64>,
    pub update: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub bulk_create: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub bulk_update: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub bulk_status: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Lookup,
    Create,
    Update,
    BulkCreate,
    BulkUpdate,
    BulkStatus,
}

/// An HTTP answer worth interpreting.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

#[derive(Debug)]
enum Sent {
    Answer(Answer),
    /// A write may or may not have been applied.
    Unknown(String),
    /// Gave up (retries or budget exhausted, a redirect, an unusable answer).
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(String),
    NotFound,
    Rejected(String),
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Create {
    /// Created; the id is None when the answer did not carry one.
    Created(Option<String>),
    /// 409: a contact with this key exists (or is being created).
    Exists,
    Rejected(String),
    Unknown(String),
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    Updated,
    NotFound,
    Rejected(String),
    Failed(String),
}

/// The answer to a bulk write: accepted (with its batch id) or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submit {
    Accepted(String),
    /// Refused as a whole (4xx): the reason applies to every item.
    Rejected(String),
    Failed(String),
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    contact_type: String,
    create_query: String,
    key: Key,
    pacer: Pacer,
    max_retries: u32,
    budget: Duration,
    timeout: Duration,
    backoff_base: Duration,
    seed: AtomicU64,
    counts: Mutex<RequestCounts>,
    retries: AtomicU64,
}

pub(super) fn truncate(s: &str) -> String {
    let s = s.trim().replace(['\n', '\r'], " ");
    if s.chars().count() > MAX_REASON {
        let cut: String = s.chars().take(MAX_REASON).collect();
        format!("{cut}...")
    } else {
        s
    }
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

pub fn encode(v: &str) -> String {
    utf8_percent_encode(v, URL_VALUE).to_string()
}

/// A contactId from a lookup answer: a JSON string, or the bare id.
fn parse_id(body: &str) -> Option<String> {
    parse_token(body, &["id", "contactId"], 100, &['-'])
}

/// An id from an answer that carries one: a JSON string, an object with one of `fields`
/// (names matched ignoring case), or the bare text (some clients see ids unquoted).
/// Anything else that is not JSON (a truncated string, an HTML page) is not an id, nor is
/// an id longer than `max_len` or holding characters other than ASCII letters, digits and
/// `extra`.
pub(super) fn parse_token(
    body: &str,
    fields: &[&str],
    max_len: usize,
    extra: &[char],
) -> Option<String> {
    let t = body.trim();
    let id = match serde_json::from_str::<serde_json::Value>(t) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Object(o)) => fields
            .iter()
            .find_map(|f| {
                o.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(f))
                    .map(|(_, v)| v)
            })
            .and_then(|v| v.as_str())?
            .to_string(),
        Ok(_) => return None,
        Err(_) if !t.contains(['"', '<', '{', '[', ' ']) => t.to_string(),
        Err(_) => return None,
    };
    let id = id.trim().to_string();
    let plausible = !id.is_empty()
        && id.len() <= max_len
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c));
    plausible.then_some(id)
}

impl Client {
    pub fn new(settings: &Settings, api_key: &ApiKey) -> Result<Client> {
        let mut headers = HeaderMap::new();
        let mut key = HeaderValue::from_str(&api_key.0).map_err(|_| {
            Error::config(
                "[destination] the API key holds characters not allowed in an HTTP header",
            )
        })?;
        key.set_sensitive(true);
        headers.insert("apikey", key);
        let timeout = Duration::from_secs(settings.limits.request_timeout_secs);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("voyado-sync/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .build()
            .map_err(|e| Error::Internal(format!("HTTP client: {e}")))?;
        let d = &settings.destination;
        let mut q = Vec::new();
        if let Some(s) = &d.source {
            q.push(format!("source={}", encode(s)));
        }
        if let Some(s) = &d.store_external_id {
            q.push(format!("storeExternalId={}", encode(s)));
        }
        Ok(Client {
            http,
            base: d.url.as_str().trim_end_matches('/').to_string(),
            contact_type: d.contact_type.clone(),
            create_query: if q.is_empty() {
                String::new()
            } else {
                format!("?{}", q.join("&"))
            },
            key: settings.key,
            pacer: Pacer::new(settings.limits.requests_per_second),
            max_retries: settings.limits.max_retries,
            budget: Duration::from_secs(settings.limits.retry_budget_secs),
            timeout,
            backoff_base: Duration::from_millis(settings.limits.retry_initial_backoff_ms.max(1)),
            seed: AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64),
            ),
            counts: Mutex::new(RequestCounts::default()),
            retries: AtomicU64::new(0),
        })
    }

    /// Shortens backoff waits (tests use it to keep fault runs fast).
    pub fn with_backoff_base(mut self, base: Duration) -> Client {
        self.backoff_base = base;
        self
    }

    pub fn counts(&self) -> RequestCounts {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    fn record(&self, ep: Endpoint, what: &str) {
        if let Ok(mut c) = self.counts.lock() {
            let m = match ep {
                Endpoint::Lookup => &mut c.lookup,
                Endpoint::Create => &mut c.create,
                Endpoint::Update => &mut c.update,
                Endpoint::BulkCreate => &mut c.bulk_create,
                Endpoint::BulkUpdate => &mut c.bulk_update,
                Endpoint::BulkStatus => &mut c.bulk_status,
            };
            *m.entry(what.to_string()).or_default() += 1;
        }
    }

    async fn send(
        &self,
        ep: Endpoint,
        idempotent: bool,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Sent {
        let started = Instant::now();
        let seed = self.seed.fetch_add(0x9E37_79B9, Ordering::Relaxed);
        let mut backoff = Backoff::new(self.backoff_base, Duration::from_secs(60), seed);
        let mut attempt = 0u32;
        loop {
            self.pacer.wait().await;
            attempt += 1;
            let (action, retry_after, why) = match build().timeout(self.timeout).send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let location = resp
                        .headers()
                        .get(LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let retry_after = parse_retry_after(
                        resp.headers()
                            .get(RETRY_AFTER)
                            .and_then(|v| v.to_str().ok()),
                    );
                    match resp.text().await {
                        Err(e) => {
                            self.record(ep, "connection");
                            let why =
                                format!("answer cut off after HTTP {status}: {}", short_error(&e));
                            (classify_transport(false, idempotent), None, why)
                        }
                        Ok(body) => {
                            self.record(ep, &status.to_string());
                            if (300..400).contains(&status) {
                                return Sent::Failed(format!(
                                    "HTTP {status} redirect to {} (redirects are not followed)",
                                    location.as_deref().unwrap_or("an unnamed location")
                                ));
                            }
                            let action = classify_status(status, idempotent);
                            if matches!(action, RetryAction::Success | RetryAction::DontRetry) {
                                return Sent::Answer(Answer { status, body });
                            }
                            (action, retry_after, format!("HTTP {status}"))
                        }
                    }
                }
                Err(e) => {
                    let what = if e.is_timeout() {
                        "timeout"
                    } else {
                        "connection"
                    };
                    self.record(ep, what);
                    // A certificate the host cannot prove will not get better on retry.
                    if is_certificate_error(&e) {
                        return Sent::Failed(format!(
                            "TLS certificate rejected: {} (verification is never disabled)",
                            short_error(&e)
                        ));
                    }
                    (
                        classify_transport(e.is_connect(), idempotent),
                        None,
                        short_error(&e),
                    )
                }
            };
            match action {
                RetryAction::Unknown => return Sent::Unknown(why),
                RetryAction::Retry => {
                    let delay = backoff.next_delay(retry_after);
                    if attempt > self.max_retries || started.elapsed() + delay > self.budget {
                        return Sent::Failed(format!("{why} (gave up after {attempt} attempts)"));
                    }
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(attempt, delay_ms = delay.as_millis() as u64, reason = %why, "retrying");
                    // A server-stated wait applies to every request on this key, not just
                    // this one; plain backoff stays per request.
                    if let Some(ra) = retry_after {
                        self.pacer.pause(ra).await;
                    }
                    tokio::time::sleep(delay).await;
                }
                RetryAction::Success | RetryAction::DontRetry => {
                    return Sent::Failed(why);
                }
            }
        }
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
            Sent::Answer(a) if matches!(a.status, 200 | 404) => Ok(()),
            Sent::Answer(a) if matches!(a.status, 401 | 403) => {
                Err(Error::config(format!("API key rejected ({})", a.status)))
            }
            Sent::Answer(a) => Err(Error::Destination(format!(
                "Voyado answered the key probe with {}",
                reason(&a)
            ))),
            Sent::Unknown(r) | Sent::Failed(r) => Err(Error::Destination(format!(
                "Voyado cannot be used at {}: {r}",
                self.base
            ))),
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
            Sent::Answer(a) if a.status == 200 => match parse_id(&a.body) {
                Some(id) => Lookup::Found(id),
                None => Lookup::Failed(format!(
                    "lookup answered 200 without a contactId: {}",
                    truncate(&a.body)
                )),
            },
            Sent::Answer(a) if a.status == 404 => Lookup::NotFound,
            Sent::Answer(a) if a.status == 409 => Lookup::Rejected(format!(
                "MultipleMatches: several contacts share this {}: {}",
                self.key.as_str(),
                truncate(&a.body)
            )),
            Sent::Answer(a) if matches!(a.status, 401 | 403) => Lookup::Failed(reason(&a)),
            Sent::Answer(a) => Lookup::Rejected(reason(&a)),
            Sent::Unknown(r) | Sent::Failed(r) => Lookup::Failed(r),
        }
    }

    /// Creates a contact from a flat JSON object (which must hold the key attribute).
    pub async fn create(&self, body: &str) -> Create {
        let url = format!("{}/api/v3/contacts{}", self.base, self.create_query);
        let sent = self
            .send(Endpoint::Create, false, || {
                self.http
                    .post(&url)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.to_string())
            })
            .await;
        match sent {
            Sent::Answer(a) if (200..300).contains(&a.status) => Create::Created(parse_id(&a.body)),
            Sent::Answer(a) if a.status == 409 => Create::Exists,
            Sent::Answer(a) if matches!(a.status, 401 | 403) => Create::Failed(reason(&a)),
            Sent::Answer(a) => Create::Rejected(reason(&a)),
            Sent::Unknown(r) => Create::Unknown(r),
            Sent::Failed(r) => Create::Failed(r),
        }
    }

    /// Partially updates a contact (PATCH: only the attributes in `body` change).
    pub async fn update(&self, contact_id: &str, body: &str) -> Update {
        let url = format!("{}/api/v3/contacts/{}", self.base, encode(contact_id));
        let sent = self
            .send(Endpoint::Update, true, || {
                self.http
                    .patch(&url)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.to_string())
            })
            .await;
        match sent {
            Sent::Answer(a) if (200..300).contains(&a.status) => Update::Updated,
            Sent::Answer(a) if a.status == 404 => Update::NotFound,
            Sent::Answer(a) if matches!(a.status, 401 | 403) => Update::Failed(reason(&a)),
            Sent::Answer(a) => Update::Rejected(reason(&a)),
            Sent::Unknown(r) | Sent::Failed(r) => Update::Failed(r),
        }
    }
}

impl Client {
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
        let sent = self
            .send(ep, true, || {
                self.http
                    .request(method.clone(), &url)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.to_string())
            })
            .await;
        match sent {
            Sent::Answer(a) if (200..300).contains(&a.status) => {
                match bulk_api::parse_batch_id(&a.body) {
                    Some(id) => Submit::Accepted(id),
                    None => Submit::Failed(format!(
                        "bulk call answered {} without a batch id: {}",
                        a.status,
                        truncate(&a.body)
                    )),
                }
            }
            Sent::Answer(a) if matches!(a.status, 401 | 403) => Submit::Failed(reason(&a)),
            Sent::Answer(a) => Submit::Rejected(reason(&a)),
            Sent::Unknown(r) | Sent::Failed(r) => Submit::Failed(r),
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
            Sent::Answer(a) if a.status == 200 => {
                bulk_api::parse_status(&a.body).map_err(StatusError::Batch)
            }
            // The path itself is not served (an unknown batch is a 404 naming the batch).
            Sent::Answer(a)
                if a.status == 405
                    || (a.status == 404 && !a.body.to_ascii_lowercase().contains("batch")) =>
            {
                Err(StatusError::NoEndpoint(reason(&a)))
            }
            Sent::Answer(a) => Err(StatusError::Batch(format!(
                "status of batch {batch_id}: {}",
                reason(&a)
            ))),
            Sent::Unknown(r) | Sent::Failed(r) => Err(StatusError::Batch(format!(
                "status of batch {batch_id}: {r}"
            ))),
        }
    }
}

fn is_certificate_error(e: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string().to_ascii_lowercase();
        if text.contains("certificate") || text.contains("unknownissuer") {
            return true;
        }
        source = s.source();
    }
    false
}

/// A transport error in one line, without the URL (which carries identifiers).
fn short_error(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "answer unreadable"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {}", truncate(&detail))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_values_are_fully_percent_encoded() {
        assert_eq!(encode("+46 70/1&2#3%"), "%2B46%2070%2F1%262%233%25");
        assert_eq!(encode("åsa@x.se"), "%C3%A5sa%40x.se");
        assert_eq!(encode("a-b_c.d~e"), "a-b_c.d~e");
    }

    #[test]
    fn ids_are_read_quoted_or_bare() {
        assert_eq!(parse_id("\"2e40b702-aa\""), Some("2e40b702-aa".into()));
        assert_eq!(parse_id("2e40b702-aa\n"), Some("2e40b702-aa".into()));
        assert_eq!(parse_id("{\"id\": \"abc\"}"), Some("abc".into()));
        assert_eq!(parse_id("<html>oops</html>"), None);
        assert_eq!(parse_id(""), None);
        assert_eq!(parse_id("{\"name\": 1}"), None);
        assert_eq!(parse_id("\"2e40b7"), None, "truncated JSON is not an id");
        assert_eq!(parse_id("{\"id\": \"2e40"), None);
    }

    #[test]
    fn the_key_is_never_printed() {
        let k = ApiKey::from_value("super-secret");
        assert!(!format!("{k:?}").contains("super-secret"));
    }
}
