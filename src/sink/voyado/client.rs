//! The transport every Voyado call goes through: requests paced, timed out, retried where
//! safe (bounded by attempts and total time), and counted by endpoint and answer.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue, LOCATION, RETRY_AFTER};
use serde::Serialize;

use super::rate::Pacer;
use super::retry::{Backoff, RetryAction, classify_status, classify_transport, parse_retry_after};
use super::wire::{encode, truncate};
use crate::config::{Key, Settings};
use crate::error::{Error, Result};

/// The API key. Never printed: `Debug` is redacted and the header is marked sensitive.
#[derive(Clone)]
pub struct ApiKey(String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl ApiKey {
    /// Reads the key from the environment variable or file `[destination]` names.
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

    /// A key given as text (surrounding whitespace trimmed).
    pub fn from_value(v: &str) -> ApiKey {
        ApiKey(v.trim().to_string())
    }
}

/// Requests by endpoint and answer (`"200"`, `"404"`, `"timeout"`, `"connection"`...).
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct RequestCounts {
    /// Contact lookups by key.
    pub lookup: BTreeMap<String, u64>,
    /// Single-contact creates.
    pub create: BTreeMap<String, u64>,
    /// Single-contact updates.
    pub update: BTreeMap<String, u64>,
    /// Bulk create submissions.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub bulk_create: BTreeMap<String, u64>,
    /// Bulk update submissions.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub bulk_update: BTreeMap<String, u64>,
    /// Bulk batch status polls.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub bulk_status: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Endpoint {
    Lookup,
    Create,
    Update,
    BulkCreate,
    BulkUpdate,
    BulkStatus,
}

/// An HTTP answer worth interpreting.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: String,
}

/// What one request came to, after its retries.
#[derive(Debug)]
pub(super) enum Reply {
    Answer(Answer),
    /// A write may or may not have been applied.
    Unknown(String),
    /// Gave up (retries or budget exhausted, a redirect, an unusable answer).
    Failed(String),
}

/// The HTTP client for the configured Voyado tenant: every call is paced, timed out,
/// retried where safe and counted.
pub struct Client {
    pub(super) http: reqwest::Client,
    pub(super) base: String,
    pub(super) contact_type: String,
    pub(super) create_query: String,
    pub(super) key: Key,
    pacer: Pacer,
    max_retries: u32,
    budget: Duration,
    timeout: Duration,
    backoff_base: Duration,
    seed: AtomicU64,
    counts: Mutex<RequestCounts>,
    retries: AtomicU64,
}

impl Client {
    /// A client for the configured destination and limits, sending `api_key` with every
    /// request.
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

    /// The requests made so far, by endpoint and answer.
    pub fn counts(&self) -> RequestCounts {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// How many times requests have been retried so far, over all endpoints.
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

    pub(super) async fn send(
        &self,
        ep: Endpoint,
        idempotent: bool,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Reply {
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
                                return Reply::Failed(format!(
                                    "HTTP {status} redirect to {} (redirects are not followed)",
                                    location.as_deref().unwrap_or("an unnamed location")
                                ));
                            }
                            let action = classify_status(status, idempotent);
                            if matches!(action, RetryAction::Success | RetryAction::DontRetry) {
                                return Reply::Answer(Answer { status, body });
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
                        return Reply::Failed(format!(
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
                RetryAction::Unknown => return Reply::Unknown(why),
                RetryAction::Retry => {
                    let delay = backoff.next_delay(retry_after);
                    if attempt > self.max_retries || started.elapsed() + delay > self.budget {
                        return Reply::Failed(format!("{why} (gave up after {attempt} attempts)"));
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
                    return Reply::Failed(why);
                }
            }
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
    fn the_key_is_never_printed() {
        let k = ApiKey::from_value("super-secret");
        assert!(!format!("{k:?}").contains("super-secret"));
    }
}
