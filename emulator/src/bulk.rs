//! Bulk contact writes (`POST`/`PATCH /api/v3/contacts/bulk`) and their status. A batch is
//! checked as a whole and accepted at once, then applied later, item by item, through the
//! same code as single creates and updates.
//!
//! Batches are applied lazily: whoever locks the tenant first after a batch's due time (a
//! request, a test's accessor, the dump) applies it. There is no timer task to race with,
//! so a test that has waited `bulk_delay` always sees the batch applied, polled or not.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::contacts::{
    CreateParams, Reply, Target, WriteError, create_contact, endpoint_name, error, type_key,
    update_contact,
};
use super::faults::BatchFate;
use super::state::{Endpoint, Tenant};
use super::violations::ViolationKind;

/// Voyado refuses bulk requests of more items than this (documented).
pub const MAX_ITEMS: usize = 4000;

/// Whether a batch creates (`POST`) or updates (`PATCH`) contacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BatchKind {
    /// A `POST` batch: every item creates a contact.
    Create,
    /// A `PATCH` batch: every item updates an existing contact.
    Update,
}

impl BatchKind {
    fn endpoint(self) -> Endpoint {
        match self {
            BatchKind::Create => Endpoint::BulkCreate,
            BatchKind::Update => Endpoint::BulkUpdate,
        }
    }
}

/// A batch's status as the status endpoint reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchStatus {
    /// Accepted, first half of the delay.
    Queued,
    /// Second half of the delay; forever for a stalled batch.
    Processing,
    /// Applied: every item was tried and the counts and errors are filled.
    Completed,
    /// The fail fault: nothing of the batch was applied.
    Failed,
}

/// One item that was not applied, by its position in the submitted array.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemError {
    /// Zero-based position of the item in the submitted array.
    pub index: usize,
    /// The item's key attribute as sent, null when absent.
    pub key: Value,
    /// Why the item was refused, e.g. `MissingKey` or `ContactAlreadyExists`.
    pub error_code: String,
    /// Human-readable explanation of the error.
    pub message: String,
}

/// A batch as a test or the dump sees it. `succeeded`, `failed` and `errors` are filled once
/// the batch is `Completed`; a `Failed` batch counts every item as failed and lists none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchInfo {
    /// The batch id that the status endpoint is polled with.
    pub id: String,
    /// Whether the batch creates or updates contacts.
    pub kind: BatchKind,
    /// The contact type all items of the batch belong to.
    pub contact_type: String,
    /// How many items were submitted.
    pub items: usize,
    /// The status as of when this was taken.
    pub status: BatchStatus,
    /// Items applied; 0 until the batch is `Completed`.
    pub succeeded: usize,
    /// Items not applied; every item for a `Failed` batch.
    pub failed: usize,
    /// The items that were refused, in submission order; empty unless `Completed`.
    pub errors: Vec<ItemError>,
}

/// How a processed batch ended.
#[derive(Debug, Clone)]
struct Outcome {
    status: BatchStatus,
    succeeded: usize,
    failed: usize,
    errors: Vec<ItemError>,
}

#[derive(Debug)]
struct Batch {
    id: String,
    kind: BatchKind,
    contact_type: String,
    /// The submitted items until the batch is processed, then empty.
    items: Vec<Map<String, Value>>,
    total: usize,
    accepted: Instant,
    due: Instant,
    fate: BatchFate,
    outcome: Option<Outcome>,
}

impl Batch {
    fn status(&self, now: Instant) -> BatchStatus {
        match &self.outcome {
            Some(outcome) => outcome.status,
            None if now < self.accepted + (self.due - self.accepted) / 2 => BatchStatus::Queued,
            None => BatchStatus::Processing,
        }
    }

    fn info(&self, now: Instant) -> BatchInfo {
        let (succeeded, failed, errors) = match &self.outcome {
            Some(o) => (o.succeeded, o.failed, o.errors.clone()),
            None => (0, 0, Vec::new()),
        };
        BatchInfo {
            id: self.id.clone(),
            kind: self.kind,
            contact_type: self.contact_type.clone(),
            items: self.total,
            status: self.status(now),
            succeeded,
            failed,
            errors,
        }
    }
}

/// Every accepted batch, and the ones still to process in due order.
#[derive(Debug, Default)]
pub(crate) struct Batches {
    list: Vec<Batch>,
    by_id: HashMap<String, usize>,
    /// Indexes into `list`. The delay is the same for all, so acceptance order is due
    /// order; stalled batches are never queued.
    queue: VecDeque<usize>,
}

impl Batches {
    fn push(&mut self, batch: Batch) {
        let index = self.list.len();
        if batch.fate != BatchFate::Stall {
            self.queue.push_back(index);
        }
        self.by_id.insert(batch.id.clone(), index);
        self.list.push(batch);
    }

    fn pop_due(&mut self, now: Instant) -> Option<usize> {
        let index = *self.queue.front()?;
        let due = self.list.get(index).is_none_or(|b| b.due <= now);
        due.then(|| self.queue.pop_front()).flatten()
    }

    /// All batches in acceptance order.
    pub(crate) fn infos(&self, now: Instant) -> Vec<BatchInfo> {
        self.list.iter().map(|b| b.info(now)).collect()
    }

    pub(crate) fn info(&self, id: &str, now: Instant) -> Option<BatchInfo> {
        let index = self.by_id.get(id)?;
        self.list.get(*index).map(|b| b.info(now))
    }
}

/// A query parameter by name, ignoring case as ASP.NET binds them.
fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `POST` (create) or `PATCH` (update) `/api/v3/contacts/bulk`: checks the request as a
/// whole and queues it. Items are checked when the batch is applied, as Engage reports
/// item errors only through the status. `avoidTriggeringExport` is accepted and has no
/// effect here.
pub(crate) fn submit(
    tenant: &mut Tenant,
    kind: BatchKind,
    params: &[(String, String)],
    body: Value,
    now: Instant,
) -> Reply {
    let Value::Array(items) = body else {
        return error(400, "NoData", "the body is not a JSON array of contacts");
    };
    if items.is_empty() {
        return error(400, "NoData", "the body is an empty array");
    }
    if items.len() > MAX_ITEMS {
        tenant.violations.record(
            ViolationKind::OversizedBatch,
            format!(
                "{}: {} items sent, at most {MAX_ITEMS} are accepted",
                endpoint_name(kind.endpoint()),
                items.len()
            ),
        );
        return error(
            400,
            "TooManyItems",
            format!("{} items; at most {MAX_ITEMS} per request", items.len()),
        );
    }
    let contact_type = param(params, "contactType").unwrap_or("Member").to_string();
    if let Err(e) = type_key(tenant, &contact_type) {
        return e.reply();
    }
    let mut objects = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        match item {
            Value::Object(map) => objects.push(map),
            _ => {
                return error(
                    400,
                    "InvalidBody",
                    format!("item {index} is not a JSON object"),
                );
            }
        }
    }
    let id = tenant.new_batch_id();
    let fate = tenant.faults.batch_fate();
    tenant.batches.push(Batch {
        id: id.clone(),
        kind,
        contact_type,
        total: objects.len(),
        items: objects,
        accepted: now,
        due: now + tenant.settings.bulk_delay,
        fate,
        outcome: None,
    });
    Reply {
        status: 202,
        body: Value::String(id),
    }
}

/// `GET /api/v3/contacts/bulk/status?batchId=...`. The path and the answer's shape are
/// assumed: Voyado documents only v2's path and no shape.
pub(crate) fn status(tenant: &Tenant, params: &[(String, String)], now: Instant) -> Reply {
    let Some(id) = param(params, "batchId").filter(|id| !id.trim().is_empty()) else {
        return error(
            400,
            "MissingBatchId",
            "the batchId query parameter is required",
        );
    };
    let Some(info) = tenant.batches.info(id, now) else {
        return error(404, "BatchNotFound", "no batch with this id");
    };
    let mut body = json!({
        "batchId": info.id,
        "status": info.status,
        "totalItems": info.items,
        "succeededItems": info.succeeded,
        "failedItems": info.failed,
        "errors": info.errors,
    });
    if info.status == BatchStatus::Failed
        && let Value::Object(map) = &mut body
    {
        map.insert(
            "message".into(),
            json!("The batch could not be processed; nothing of it was applied."),
        );
    }
    Reply { status: 200, body }
}

/// Applies every batch whose time has come, in acceptance order.
pub(crate) fn settle(tenant: &mut Tenant, now: Instant) {
    while let Some(index) = tenant.batches.pop_due(now) {
        process(tenant, index);
    }
}

/// Processes one batch under the tenant lock: all of it (item errors aside) or, for the
/// fail fault, none of it.
fn process(tenant: &mut Tenant, index: usize) {
    let Some(batch) = tenant.batches.list.get_mut(index) else {
        return;
    };
    let items = std::mem::take(&mut batch.items);
    let (kind, contact_type, fate, total) = (
        batch.kind,
        batch.contact_type.clone(),
        batch.fate,
        batch.total,
    );
    let outcome = match fate {
        BatchFate::Fail => Outcome {
            status: BatchStatus::Failed,
            succeeded: 0,
            failed: total,
            errors: Vec::new(),
        },
        _ => apply(tenant, kind, &contact_type, items),
    };
    if let Some(batch) = tenant.batches.list.get_mut(index) {
        batch.outcome = Some(outcome);
    }
}

/// Applies the items in array order, collecting the errors of those refused.
fn apply(
    tenant: &mut Tenant,
    kind: BatchKind,
    contact_type: &str,
    items: Vec<Map<String, Value>>,
) -> Outcome {
    // The type was checked on acceptance; tenant settings do not change.
    let key = type_key(tenant, contact_type).unwrap_or_default();
    let total = items.len();
    let mut errors = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let sent_key = item.get(&key).cloned().unwrap_or(Value::Null);
        if let Err(e) = apply_item(tenant, kind, contact_type, item) {
            let (code, message) = e.item_error();
            errors.push(ItemError {
                index,
                key: sent_key,
                error_code: code.into(),
                message,
            });
        }
    }
    Outcome {
        status: BatchStatus::Completed,
        succeeded: total - errors.len(),
        failed: errors.len(),
        errors,
    }
}

/// One item, as a single create or update of the batch's contact type. A create item may
/// repeat the batch's `contactType` but not name another; an update item's is ignored, as
/// on PATCH.
fn apply_item(
    tenant: &mut Tenant,
    kind: BatchKind,
    contact_type: &str,
    mut item: Map<String, Value>,
) -> Result<String, WriteError> {
    match kind {
        BatchKind::Create => {
            match item.remove("contactType") {
                None | Some(Value::Null) => {}
                Some(Value::String(t)) if t == contact_type => {}
                Some(other) => {
                    return Err(WriteError::InvalidContactType(format!(
                        "contactType {other} is not the batch's {contact_type}"
                    )));
                }
            }
            create_contact(
                tenant,
                Endpoint::BulkCreate,
                contact_type,
                &CreateParams::default(),
                item,
            )
        }
        BatchKind::Update => update_contact(
            tenant,
            Endpoint::BulkUpdate,
            Target::Key {
                type_name: contact_type,
            },
            item,
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::EmulatorConfig;

    fn tenant(delay_ms: u64) -> Tenant {
        let mut config = EmulatorConfig::new("k");
        config.bulk_delay = Duration::from_millis(delay_ms);
        Tenant::new(&config)
    }

    fn id(reply: &Reply) -> String {
        reply.body.as_str().unwrap_or_default().to_string()
    }

    #[test]
    fn a_batch_is_queued_then_processing_then_applied_when_due() {
        let mut t = tenant(1000);
        let t0 = Instant::now();
        let reply = submit(
            &mut t,
            BatchKind::Create,
            &[],
            json!([{"email": "a@b.se"}, {"firstName": "Nokey"}]),
            t0,
        );
        assert_eq!(reply.status, 202);
        let batch = id(&reply);
        let status = |t: &Tenant, at| t.batches.info(&batch, at).map(|i| i.status);
        assert_eq!(status(&t, t0), Some(BatchStatus::Queued));
        settle(&mut t, t0 + Duration::from_millis(600));
        assert_eq!(
            status(&t, t0 + Duration::from_millis(600)),
            Some(BatchStatus::Processing)
        );
        assert_eq!(t.contacts().count(), 0);
        settle(&mut t, t0 + Duration::from_millis(1000));
        let info = t.batches.info(&batch, t0).unwrap();
        assert_eq!(info.status, BatchStatus::Completed);
        assert_eq!((info.succeeded, info.failed), (1, 1));
        assert_eq!(info.errors[0].error_code, "MissingKey");
        assert_eq!(info.errors[0].index, 1);
        assert_eq!(t.contacts().count(), 1);
    }

    #[test]
    fn whole_request_checks() {
        let mut t = tenant(0);
        let now = Instant::now();
        let code = |r: Reply| (r.status, r.body["errorCode"].clone());
        let mut send = |body: Value, params: &[(String, String)]| {
            code(submit(&mut t, BatchKind::Update, params, body, now))
        };
        assert_eq!(send(json!({}), &[]), (400, json!("NoData")));
        assert_eq!(send(json!([]), &[]), (400, json!("NoData")));
        assert_eq!(send(json!([{}, 3]), &[]), (400, json!("InvalidBody")));
        let robot = [("contactType".to_string(), "Robot".to_string())];
        assert_eq!(
            send(json!([{}]), &robot),
            (400, json!("InvalidContactType"))
        );
        let many = Value::Array(vec![json!({}); MAX_ITEMS + 1]);
        assert_eq!(send(many, &[]), (400, json!("TooManyItems")));
        assert_eq!(t.violations.count(ViolationKind::OversizedBatch), 1);
        assert!(t.batches.infos(now).is_empty());
    }
}
