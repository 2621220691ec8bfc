//! What the bulk path assumes about Voyado's wire format, in one place.
//!
//! Documented: `POST`/`PATCH /api/v3/contacts/bulk` take a JSON array of at most 4000 flat
//! contact objects and answer a batch id string (v2 spec); processing is asynchronous.
//! Not documented for v3, and therefore assumed here and only here:
//! - the status path: v2's `GET /api/v2/contacts/bulk/status?batchId=` moved to v3 as
//!   [`STATUS_PATH`];
//! - the status answer: an object with a `status` string and a list of failed items, each
//!   naming its position in the submitted array (or its key) and an error code.
//!
//! Parsing is defensive: field names are matched case-insensitively among a few plausible
//! spellings, and a status it cannot read is never taken as success.

use serde_json::{Map, Value};

/// The bulk write endpoint (create with POST, update with PATCH).
pub const BULK_PATH: &str = "/api/v3/contacts/bulk";
/// Assumed: v2's status endpoint under v3.
pub const STATUS_PATH: &str = "/api/v3/contacts/bulk/status";

/// Why a status could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusError {
    /// The tenant does not serve the (assumed) status path at all: no batch can be
    /// confirmed, so sending more is pointless.
    NoEndpoint(String),
    /// This batch's status could not be read (transport, unknown batch, unreadable answer).
    Batch(String),
}

impl std::fmt::Display for StatusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusError::NoEndpoint(why) => write!(
                f,
                "the tenant does not serve the bulk status path {STATUS_PATH}: {why}"
            ),
            StatusError::Batch(why) => f.write_str(why),
        }
    }
}

/// Where a batch is, as far as the status answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchState {
    /// Accepted, not finished: poll again later.
    Pending,
    /// Finished: every item not listed in `errors` was applied. The counts, when the
    /// answer gives them, let the caller check the batch it meant was the one reported.
    Completed {
        /// The items the batch could not apply.
        errors: Vec<ItemError>,
        /// Items in the batch, when the answer says.
        total: Option<usize>,
        /// Items applied, when the answer says.
        succeeded: Option<usize>,
    },
    /// The batch as a whole failed: nothing of it may be taken as applied.
    Failed(String),
}

/// One item the batch could not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemError {
    /// Position in the submitted array, when the answer gives it.
    pub index: Option<usize>,
    /// The item's key value, when the answer gives it.
    pub key: Option<String>,
    /// Voyado's error code for the item, such as `ContactNotFound`.
    pub code: String,
    /// Voyado's message for the item; may be empty.
    pub message: String,
}

impl ItemError {
    /// The contact exists already (a create of a known key): `ContactAlreadyExists`,
    /// `ApprovedContactWithKeyExists`. Exact codes only: `StoreDoesNotExist` is no such case.
    pub fn exists(&self) -> bool {
        let c = self.code.to_ascii_lowercase();
        c.ends_with("alreadyexists") || c.ends_with("withkeyexists")
    }

    /// No contact has this key (an update of an unknown key).
    pub fn not_found(&self) -> bool {
        matches!(
            self.code.to_ascii_lowercase().as_str(),
            "contactnotfound" | "contactdoesnotexist"
        )
    }

    /// A refusal that may not hold on a later run (`ContactWithKeyIsBeingCreated`: a
    /// parallel create of the key, possibly our own earlier batch): left unconfirmed.
    pub fn transient(&self) -> bool {
        let c = self.code.to_ascii_lowercase();
        c.contains("beingcreated") || c.contains("locked") || c.contains("timeout")
    }

    /// `ContactNotFound: no contact with this email`, kept as the row's reason.
    pub fn reason(&self) -> String {
        if self.message.is_empty() {
            self.code.clone()
        } else {
            format!("{}: {}", self.code, self.message)
        }
    }
}

/// The batch id from a bulk call's answer: a JSON string (documented), the bare id, or an
/// object carrying `batchId`/`id`.
pub fn parse_batch_id(body: &str) -> Option<String> {
    super::wire::parse_token(
        body,
        &["batchId", "id", "batch"],
        200,
        &['-', '_', '.', ':'],
    )
}

/// Reads a status answer. An answer without a recognisable status is an error, so an
/// unexpected shape can only leave rows unconfirmed, never confirm them.
pub fn parse_status(body: &str) -> Result<BatchState, String> {
    let v: Value =
        serde_json::from_str(body.trim()).map_err(|e| format!("status answer is not JSON: {e}"))?;
    let o = v
        .as_object()
        .ok_or_else(|| "status answer is not a JSON object".to_string())?;
    let status = field(o, &["status", "state", "batchStatus"])
        .and_then(Value::as_str)
        .ok_or_else(|| "status answer has no status field".to_string())?;
    match status.to_ascii_lowercase().as_str() {
        "queued" | "pending" | "processing" | "inprogress" | "in_progress" | "running"
        | "started" | "accepted" | "new" => Ok(BatchState::Pending),
        "completed"
        | "complete"
        | "done"
        | "finished"
        | "succeeded"
        | "success"
        | "completedwitherrors"
        | "partiallycompleted" => {
            let list = ["errors", "failures", "itemErrors", "failedItems"]
                .iter()
                .find_map(|n| match field(o, &[n]) {
                    Some(Value::Array(items)) => Some(items),
                    _ => None,
                });
            let errors: Vec<ItemError> = list
                .map(|items| items.iter().map(item_error).collect())
                .unwrap_or_default();
            let count =
                |names: &[&str]| field(o, names).and_then(Value::as_u64).map(|n| n as usize);
            let failed = count(&["failedItems", "failedCount", "failed", "errorCount"]);
            // A failure count the list does not account for: which items failed is unknown.
            if let Some(n) = failed
                && n != errors.len()
            {
                return Err(format!(
                    "status answer counts {n} failed items but lists {}",
                    errors.len()
                ));
            }
            if failed.is_none() && list.is_none() && !status.eq_ignore_ascii_case("completed") {
                return Err(format!(
                    "status answer {status:?} does not list which items failed"
                ));
            }
            Ok(BatchState::Completed {
                errors,
                total: count(&["totalItems", "total", "itemCount"]),
                succeeded: count(&["succeededItems", "succeeded", "successCount"]),
            })
        }
        "failed" | "error" | "aborted" | "cancelled" | "canceled" => {
            let message = field(o, &["message", "error", "reason"])
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            Ok(BatchState::Failed(format!(
                "batch {status}: {}",
                super::wire::truncate(message)
            )))
        }
        other => Err(format!("status answer has an unknown status {other:?}")),
    }
}

fn field<'a>(o: &'a Map<String, Value>, names: &[&str]) -> Option<&'a Value> {
    names.iter().find_map(|n| {
        o.get(*n).or_else(|| {
            o.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v)
        })
    })
}

fn item_error(v: &Value) -> ItemError {
    let Some(o) = v.as_object() else {
        return ItemError {
            index: None,
            key: None,
            code: "ItemFailed".into(),
            message: super::wire::truncate(&v.to_string()),
        };
    };
    // Server text goes into logs and reports: one line, bounded.
    let text = |names: &[&str]| {
        field(o, names).and_then(|v| match v {
            Value::String(s) => Some(super::wire::truncate(s)),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    ItemError {
        index: field(o, &["index", "position", "row", "itemIndex"]).and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .map(|n| n as usize)
        }),
        key: text(&["key", "keyValue", "identifier"]),
        code: text(&["errorCode", "code", "error"]).unwrap_or_else(|| "ItemFailed".into()),
        message: text(&["message", "description", "reason"]).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_id_in_the_documented_and_tolerated_forms() {
        assert_eq!(parse_batch_id("\"b-1\"").as_deref(), Some("b-1"));
        assert_eq!(parse_batch_id("b-1\n").as_deref(), Some("b-1"));
        assert_eq!(
            parse_batch_id(r#"{"BatchId":"b-1"}"#).as_deref(),
            Some("b-1")
        );
        assert_eq!(parse_batch_id("<html>oops</html>"), None);
        assert_eq!(parse_batch_id("\"\""), None);
        assert_eq!(parse_batch_id("[1]"), None);
    }

    #[test]
    fn status_forms() {
        assert_eq!(
            parse_status(r#"{"status":"Processing"}"#),
            Ok(BatchState::Pending)
        );
        let done = parse_status(
            r#"{"Status":"Completed","errors":[{"index":2,"key":"a@b.se","errorCode":"ContactNotFound","message":"no such contact"}]}"#,
        )
        .unwrap();
        let BatchState::Completed { errors, .. } = done else {
            panic!("{done:?}")
        };
        assert_eq!(errors[0].index, Some(2));
        assert!(errors[0].not_found());
        assert_eq!(errors[0].reason(), "ContactNotFound: no such contact");
        assert!(matches!(
            parse_status(r#"{"status":"Failed","message":"disk full"}"#),
            Ok(BatchState::Failed(m)) if m.contains("disk full")
        ));
    }

    #[test]
    fn item_codes_are_matched_exactly() {
        let e = |code: &str| ItemError {
            index: None,
            key: None,
            code: code.into(),
            message: String::new(),
        };
        assert!(e("ContactAlreadyExists").exists());
        assert!(e("ApprovedContactWithKeyExists").exists());
        assert!(!e("StoreDoesNotExist").exists());
        assert!(e("ContactDoesNotExist").not_found());
        assert!(!e("StoreNotFound").not_found());
        assert!(e("ContactWithKeyIsBeingCreated").transient());
    }

    #[test]
    fn unreadable_status_is_never_success() {
        assert!(parse_status("{}").is_err());
        assert!(parse_status(r#"{"status":"Weird"}"#).is_err());
        // A failure count the list does not account for, or no list where one is implied.
        assert!(
            parse_status(r#"{"status":"CompletedWithErrors","errors":null,"failedItems":12}"#)
                .is_err()
        );
        assert!(parse_status(r#"{"status":"CompletedWithErrors"}"#).is_err());
        assert!(parse_status(r#"{"status":"Completed","errors":[],"failedItems":1}"#).is_err());
        assert!(parse_status("not json").is_err());
    }
}
