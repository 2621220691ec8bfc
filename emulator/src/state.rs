//! The in-memory tenant: contacts with indexes by key attribute, bulk batches, the request
//! log, the violations and the fault state, all behind one lock held only for short, await-free
//! sections.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::attributes::normalize_key;
use super::bulk::{BatchInfo, Batches};
use super::config::{ContactTypeConfig, EmulatorConfig};
use super::faults::{FaultState, InjectedFaults, SplitMix64};
use super::violations::Violations;

/// Who created a contact, so a test can tell a racing writer's contact from its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CreatedBy {
    /// Present at start (seed contacts) or added with `Emulator::insert_contact`.
    Seed,
    /// Created through the API by the client under test (single or bulk create).
    Client,
    /// The race-create fault: another integration created it after a lookup missed.
    OtherWriter,
}

/// One contact as stored. `attributes` holds exactly what was written (including `""` and
/// `null` from updates) plus the generated `memberNumber`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Contact {
    /// The contact's id, generated unless given by a seed.
    pub id: String,
    /// The contact type it belongs to, e.g. `Member`.
    pub contact_type: String,
    /// False when created with `createAsUnapproved=true`.
    pub approved: bool,
    /// Who created the contact.
    pub created_by: CreatedBy,
    /// The `source` query parameter of the create, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The `storeExternalId` query parameter of the create, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_external_id: Option<String>,
    /// The attributes as written, plus the generated `memberNumber`.
    pub attributes: Map<String, Value>,
}

impl Contact {
    /// The attribute's stored value, `None` when absent.
    pub fn get(&self, attribute: &str) -> Option<&Value> {
        self.attributes.get(attribute)
    }

    /// The attribute as a string, `None` when absent, null or not a string.
    pub fn str(&self, attribute: &str) -> Option<&str> {
        self.attributes.get(attribute).and_then(Value::as_str)
    }

    /// The flat object the API answers with: `id`, `contactType`, then the attributes.
    pub fn to_api(&self) -> Value {
        let mut out = Map::new();
        out.insert("id".into(), Value::String(self.id.clone()));
        out.insert(
            "contactType".into(),
            Value::String(self.contact_type.clone()),
        );
        for (k, v) in &self.attributes {
            out.insert(k.clone(), v.clone());
        }
        Value::Object(out)
    }
}

/// The API endpoints requests are counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Endpoint {
    /// `GET /api/v3/contacts/id`: a lookup by key attribute.
    #[serde(rename = "GET /api/v3/contacts/id")]
    Lookup,
    /// `POST /api/v3/contacts`: a single create.
    #[serde(rename = "POST /api/v3/contacts")]
    Create,
    /// `PATCH /api/v3/contacts/{contactId}`: a single update.
    #[serde(rename = "PATCH /api/v3/contacts/{contactId}")]
    Update,
    /// `GET /api/v3/contacts/{contactId}`: a read by id.
    #[serde(rename = "GET /api/v3/contacts/{contactId}")]
    Get,
    /// `POST /api/v3/contacts/bulk`: a bulk create.
    #[serde(rename = "POST /api/v3/contacts/bulk")]
    BulkCreate,
    /// `PATCH /api/v3/contacts/bulk`: a bulk update.
    #[serde(rename = "PATCH /api/v3/contacts/bulk")]
    BulkUpdate,
    /// `GET /api/v3/contacts/bulk/status`: a bulk batch status poll.
    #[serde(rename = "GET /api/v3/contacts/bulk/status")]
    BulkStatus,
    /// Any `/api/v2/` path.
    #[serde(rename = "v2")]
    V2,
    /// Anything else, including wrong methods.
    #[serde(rename = "unknown")]
    Unknown,
}

/// Requests by endpoint and HTTP status (0 for a lost answer, which has no status).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestCounts(pub BTreeMap<Endpoint, BTreeMap<u16, u64>>);

impl RequestCounts {
    /// Counts one request to `endpoint` answered with `status`.
    pub fn record(&mut self, endpoint: Endpoint, status: u16) {
        *self
            .0
            .entry(endpoint)
            .or_default()
            .entry(status)
            .or_default() += 1;
    }

    /// Requests to `endpoint` answered with `status`.
    pub fn count(&self, endpoint: Endpoint, status: u16) -> u64 {
        self.0
            .get(&endpoint)
            .and_then(|m| m.get(&status))
            .copied()
            .unwrap_or(0)
    }

    /// All requests to one endpoint, whatever their status.
    pub fn endpoint(&self, endpoint: Endpoint) -> u64 {
        self.0.get(&endpoint).map_or(0, |m| m.values().sum())
    }

    /// All requests, whatever their endpoint and status.
    pub fn total(&self) -> u64 {
        self.0.values().flat_map(|m| m.values()).sum()
    }
}

/// Everything the emulator knows, as served by `GET /_emulator/dump` and written on exit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dump {
    /// All contacts in creation order.
    pub contacts: Vec<Contact>,
    /// All requests counted in `requests`, together.
    pub request_total: u64,
    /// Requests by endpoint and status.
    pub requests: RequestCounts,
    /// How many violations were recorded, of all kinds together.
    pub violation_total: u64,
    /// Violations by kind.
    pub violations: Violations,
    /// Counts of the faults injected so far.
    pub faults: InjectedFaults,
    /// Bulk batches in acceptance order. Defaulted so older dumps still read back.
    #[serde(default)]
    pub batches: Vec<BatchInfo>,
}

/// Static tenant configuration used while answering.
#[derive(Debug)]
pub(crate) struct TenantSettings {
    pub contact_types: Vec<ContactTypeConfig>,
    pub custom_attributes: HashSet<String>,
    pub mandatory: Vec<String>,
    pub custom_key: String,
    pub bulk_delay: Duration,
}

impl TenantSettings {
    pub(crate) fn contact_type(&self, name: &str) -> Option<&ContactTypeConfig> {
        self.contact_types.iter().find(|t| t.name == name)
    }
}

type IndexKey = (&'static str, String);

/// The tenant. Contacts are kept in creation order (`seq`), indexed by key attribute.
#[derive(Debug)]
pub(crate) struct Tenant {
    pub settings: TenantSettings,
    contacts: BTreeMap<u64, Contact>,
    by_id: HashMap<String, u64>,
    by_key: HashMap<IndexKey, BTreeSet<u64>>,
    next_seq: u64,
    next_member_number: u64,
    /// Contact ids come from the seed too, so a replayed test sees the same ids.
    id_stream: SplitMix64,
    /// Batch ids have their own stream, so sending a batch does not change contact ids.
    batch_id_stream: SplitMix64,
    pub batches: Batches,
    pub requests: RequestCounts,
    pub violations: Violations,
    pub faults: FaultState,
    /// Keys whose last lookup answered 404: a create for them is not the client's mistake.
    pub missed_lookups: HashSet<(String, String)>,
}

/// Attributes indexed for lookups and key checks.
const INDEXED: [&str; 5] = [
    "email",
    "mobilePhone",
    "socialSecurityNumber",
    "externalId",
    "memberNumber",
];

impl Tenant {
    pub(crate) fn new(config: &EmulatorConfig) -> Self {
        Tenant {
            settings: TenantSettings {
                contact_types: config.contact_types.clone(),
                custom_attributes: config.custom_attributes.iter().cloned().collect(),
                mandatory: config.mandatory.clone(),
                custom_key: config.custom_key.clone(),
                bulk_delay: config.bulk_delay,
            },
            contacts: BTreeMap::new(),
            by_id: HashMap::new(),
            by_key: HashMap::new(),
            next_seq: 0,
            next_member_number: 1_000_001,
            id_stream: SplitMix64::new(config.faults.seed ^ 0x1D5),
            batch_id_stream: SplitMix64::new(config.faults.seed ^ 0xBA7C),
            batches: Batches::default(),
            requests: RequestCounts::default(),
            violations: Violations::default(),
            faults: FaultState::new(config.faults.clone()),
            missed_lookups: HashSet::new(),
        }
    }

    fn index_keys(contact: &Contact) -> Vec<IndexKey> {
        INDEXED
            .iter()
            .filter_map(|attr| {
                let v = contact.str(attr)?;
                (!v.trim().is_empty()).then(|| (*attr, normalize_key(attr, v)))
            })
            .collect()
    }

    /// A fresh contact id: a version 4 UUID drawn from the seeded stream.
    pub(crate) fn new_id(&mut self) -> String {
        uuid_from(&mut self.id_stream)
    }

    /// A fresh bulk batch id, a UUID like contact ids.
    pub(crate) fn new_batch_id(&mut self) -> String {
        uuid_from(&mut self.batch_id_stream)
    }

    /// Stores a new contact, giving it the next memberNumber unless it has one (a seed
    /// restored from a dump keeps its own).
    pub(crate) fn insert(&mut self, mut contact: Contact) -> String {
        let given = contact
            .str("memberNumber")
            .and_then(|n| n.parse::<u64>().ok());
        match given {
            Some(n) => self.next_member_number = self.next_member_number.max(n + 1),
            None => {
                contact.attributes.insert(
                    "memberNumber".into(),
                    Value::String(self.next_member_number.to_string()),
                );
                self.next_member_number += 1;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        for key in Self::index_keys(&contact) {
            self.by_key.entry(key).or_default().insert(seq);
        }
        let id = contact.id.clone();
        self.by_id.insert(id.clone(), seq);
        self.contacts.insert(seq, contact);
        id
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Contact> {
        self.by_id.get(id).and_then(|seq| self.contacts.get(seq))
    }

    /// Applies `change` to a contact, keeping the indexes right.
    pub(crate) fn modify(
        &mut self,
        id: &str,
        change: impl FnOnce(&mut Contact),
    ) -> Option<&Contact> {
        let seq = *self.by_id.get(id)?;
        let contact = self.contacts.get_mut(&seq)?;
        let before = Self::index_keys(contact);
        change(contact);
        let after = Self::index_keys(contact);
        for key in before {
            if let Some(set) = self.by_key.get_mut(&key) {
                set.remove(&seq);
            }
        }
        for key in after {
            self.by_key.entry(key).or_default().insert(seq);
        }
        self.contacts.get(&seq)
    }

    pub(crate) fn remove(&mut self, id: &str) -> Option<Contact> {
        let seq = self.by_id.remove(id)?;
        let contact = self.contacts.remove(&seq)?;
        for key in Self::index_keys(&contact) {
            if let Some(set) = self.by_key.get_mut(&key) {
                set.remove(&seq);
            }
        }
        Some(contact)
    }

    /// Contacts whose `attribute` equals `value` (compared normalised), in creation order.
    pub(crate) fn find(&self, attribute: &str, value: &str) -> Vec<&Contact> {
        let Some(attr) = INDEXED.iter().find(|a| **a == attribute) else {
            return Vec::new();
        };
        self.by_key
            .get(&(*attr, normalize_key(attr, value)))
            .into_iter()
            .flatten()
            .filter_map(|seq| self.contacts.get(seq))
            .collect()
    }

    pub(crate) fn contacts(&self) -> impl Iterator<Item = &Contact> {
        self.contacts.values()
    }

    pub(crate) fn ids(&self) -> Vec<String> {
        self.contacts.values().map(|c| c.id.clone()).collect()
    }

    pub(crate) fn dump(&self) -> Dump {
        Dump {
            contacts: self.contacts.values().cloned().collect(),
            request_total: self.requests.total(),
            requests: self.requests.clone(),
            violation_total: self.violations.total(),
            violations: self.violations.clone(),
            faults: self.faults.injected,
            batches: self.batches.infos(tokio::time::Instant::now()),
        }
    }
}

/// A version 4 UUID from a seeded stream.
fn uuid_from(stream: &mut SplitMix64) -> String {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&stream.next_u64().to_le_bytes());
    bytes[8..].copy_from_slice(&stream.next_u64().to_le_bytes());
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn contact(id: &str, email: &str) -> Contact {
        let mut attributes = Map::new();
        attributes.insert("email".into(), json!(email));
        Contact {
            id: id.into(),
            contact_type: "Member".into(),
            approved: true,
            created_by: CreatedBy::Client,
            source: None,
            store_external_id: None,
            attributes,
        }
    }

    #[test]
    fn indexes_follow_changes() {
        let mut t = Tenant::new(&EmulatorConfig::new("k"));
        t.insert(contact("a", "Ann@Example.com"));
        assert_eq!(t.find("email", "ann@example.COM").len(), 1);
        t.modify("a", |c| {
            c.attributes
                .insert("email".into(), json!("bob@example.com"));
        });
        assert!(t.find("email", "ann@example.com").is_empty());
        assert_eq!(t.find("email", "bob@example.com").len(), 1);
        assert!(t.remove("a").is_some());
        assert!(t.find("email", "bob@example.com").is_empty());
        assert!(t.get("a").is_none());
    }

    #[test]
    fn dump_round_trips_through_json() {
        let mut t = Tenant::new(&EmulatorConfig::new("k"));
        t.insert(contact("a", "a@example.com"));
        t.requests.record(Endpoint::Create, 201);
        let dump = t.dump();
        let text = serde_json::to_string(&dump).unwrap();
        assert!(
            text.contains("\"POST /api/v3/contacts\":{\"201\":1}"),
            "{text}"
        );
        let back: Dump = serde_json::from_str(&text).unwrap();
        assert_eq!(back, dump);
    }
}
