//! What a test or the command line configures: the tenant (key, attributes, contact types,
//! seed contacts) and the faults to inject.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{Map, Value};

/// The API key the emulator accepts. Debug output never shows it, so it cannot leak through
/// logs, panics or `{:?}` of a config.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// An API key from its text.
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    pub(crate) fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes() == presented
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl FromStr for ApiKey {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(ApiKey(s.to_string()))
    }
}

/// A contact type of the tenant and the attribute that identifies its contacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactTypeConfig {
    /// The contact type's name, e.g. `Member`.
    pub name: String,
    /// One of `email`, `mobilePhone`, `externalId`, `socialSecurityNumber`.
    pub key: String,
}

impl FromStr for ContactTypeConfig {
    type Err = String;
    /// `Name=keyAttribute`, e.g. `Member=email`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, key) = s
            .split_once('=')
            .ok_or_else(|| format!("contact type `{s}`: expected NAME=KEY, e.g. Member=email"))?;
        let (name, key) = (name.trim(), key.trim());
        if name.is_empty() || !super::attributes::KEY_ATTRIBUTES.contains(&key) {
            return Err(format!(
                "contact type `{s}`: the key must be one of {}",
                super::attributes::KEY_ATTRIBUTES.join(", ")
            ));
        }
        Ok(ContactTypeConfig {
            name: name.to_string(),
            key: key.to_string(),
        })
    }
}

/// A request-rate cap: more than `requests` within any `window` are answered 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Most requests allowed within one `window`.
    pub requests: u32,
    /// One second for Voyado's own cap; tests use a long window to stay timing-free.
    pub window: Duration,
    /// Sent as `Retry-After` on 429 when set; Voyado documents none.
    pub retry_after_secs: Option<u64>,
}

/// Faults injected on demand. Every random choice comes from `seed`, one stream per fault,
/// so the same seed and the same request order replay the same faults.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Seed of the random streams that decide which requests get faults.
    pub seed: u64,
    /// Request-rate cap answering 429 beyond it; `None` for no cap.
    pub rate_limit: Option<RateLimit>,
    /// Share (0..=1) of API requests answered 500, 502 or 503 before anything is applied.
    pub error_rate: f64,
    /// Added to every API request before it is handled.
    pub latency: Duration,
    /// Share of successful writes (create, update, accepted bulk batch) applied or queued
    /// but whose connection is cut before the answer is sent.
    pub lost_answer_rate: f64,
    /// Share of lookups answering 404 after which "another writer" creates the contact.
    pub race_create_rate: f64,
    /// Share of the seed contacts deleted at start: contacts removed between two runs
    /// (restart with the previous run's dump as seed). Tests can also call
    /// `Emulator::delete_contacts` at any time.
    pub delete_on_start: f64,
    /// Share of accepted bulk batches that never finish: their status stays `Processing`
    /// and nothing of them is applied, as when Engage's queue is stuck.
    pub bulk_stall_rate: f64,
    /// Share of accepted bulk batches that end `Failed` with nothing of them applied.
    pub bulk_fail_rate: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            seed: 0,
            rate_limit: None,
            error_rate: 0.0,
            latency: Duration::ZERO,
            lost_answer_rate: 0.0,
            race_create_rate: 0.0,
            delete_on_start: 0.0,
            bulk_stall_rate: 0.0,
            bulk_fail_rate: 0.0,
        }
    }
}

/// Everything needed to start an emulator. `EmulatorConfig::new(key)` gives a tenant with
/// one contact type, Member keyed by email, on 127.0.0.1 with an OS-chosen port.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The only API key requests are accepted with.
    pub api_key: ApiKey,
    /// Contact types; a create without `contactType` uses `Member`.
    pub contact_types: Vec<ContactTypeConfig>,
    /// Custom attribute ids configured on the tenant, accepted besides the standard ones.
    pub custom_attributes: Vec<String>,
    /// Attributes the tenant marks mandatory on create (besides the key).
    pub mandatory: Vec<String>,
    /// What `customKey=` lookups match: `externalId` or `memberNumber`.
    pub custom_key: String,
    /// Contacts present at start: flat objects, optionally with `id` and `contactType`.
    pub seed_contacts: Vec<Map<String, Value>>,
    /// Faults to inject; none by default.
    pub faults: Faults,
    /// How long after acceptance a bulk batch is applied: Engage processes batches
    /// asynchronously, so a client must poll their status rather than assume them done.
    pub bulk_delay: Duration,
    /// Written as JSON when the emulator is shut down.
    pub dump_on_exit: Option<PathBuf>,
}

impl EmulatorConfig {
    /// A config for this key with the defaults described on `EmulatorConfig`, no faults.
    pub fn new(api_key: impl Into<String>) -> Self {
        EmulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_key: ApiKey::new(api_key),
            contact_types: vec![ContactTypeConfig {
                name: "Member".into(),
                key: "email".into(),
            }],
            custom_attributes: Vec::new(),
            mandatory: Vec::new(),
            custom_key: "externalId".into(),
            seed_contacts: Vec::new(),
            faults: Faults::default(),
            bulk_delay: Duration::from_millis(100),
            dump_on_exit: None,
        }
    }

    /// Checks what the command line or a test could get wrong, one message per problem.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let shares = [
            ("error rate", self.faults.error_rate),
            ("lost answer rate", self.faults.lost_answer_rate),
            ("race create rate", self.faults.race_create_rate),
            ("delete on start share", self.faults.delete_on_start),
            ("bulk stall rate", self.faults.bulk_stall_rate),
            ("bulk fail rate", self.faults.bulk_fail_rate),
        ];
        for (name, share) in shares {
            if !(0.0..=1.0).contains(&share) {
                return Err(format!("{name} must be between 0 and 1, got {share}"));
            }
        }
        if let Some(limit) = self.faults.rate_limit
            && (limit.requests == 0 || limit.window.is_zero())
        {
            return Err("rate limit must allow at least one request per window".into());
        }
        if self.contact_types.is_empty() {
            return Err("at least one contact type is needed".into());
        }
        if !matches!(self.custom_key.as_str(), "externalId" | "memberNumber") {
            return Err(format!(
                "custom key must be externalId or memberNumber, got {}",
                self.custom_key
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_is_redacted_in_debug() {
        let config = EmulatorConfig::new("s3cret-key");
        assert!(!format!("{config:?}").contains("s3cret-key"));
    }

    #[test]
    fn contact_type_parses_and_rejects() {
        let t: ContactTypeConfig = "Lead=mobilePhone".parse().unwrap();
        assert_eq!((t.name.as_str(), t.key.as_str()), ("Lead", "mobilePhone"));
        assert!("Lead=firstName".parse::<ContactTypeConfig>().is_err());
        assert!("Lead".parse::<ContactTypeConfig>().is_err());
    }

    #[test]
    fn validate_rejects_shares_out_of_range() {
        let mut config = EmulatorConfig::new("k");
        config.faults.error_rate = 1.5;
        assert!(config.validate().is_err());
        for share in [-0.1, 1.01] {
            let mut stall = EmulatorConfig::new("k");
            stall.faults.bulk_stall_rate = share;
            assert!(stall.validate().is_err());
            let mut fail = EmulatorConfig::new("k");
            fail.faults.bulk_fail_rate = share;
            assert!(fail.validate().is_err());
        }
        assert!(EmulatorConfig::new("k").validate().is_ok());
    }
}
