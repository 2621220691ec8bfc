//! The contacts API as Voyado documents it, over the in-memory tenant. Pure request ->
//! reply functions: HTTP details (headers, faults, lost answers) live in `routes`.

use serde_json::{Map, Value, json};

use super::attributes::{
    READ_ONLY, WRITABLE, is_empty_value, normalize_key, valid_email, valid_phone, valid_ssn,
    value_problem,
};
use super::state::{Contact, CreatedBy, Endpoint, Tenant};
use super::violations::ViolationKind;

/// An answer before it becomes HTTP.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    fn ok(status: u16, body: Value) -> Self {
        Reply { status, body }
    }
}

/// Voyado-style error body: `{"status", "errorCode", "message"}` plus details.
pub(crate) fn error(status: u16, code: &str, message: impl Into<String>) -> Reply {
    Reply {
        status,
        body: json!({"status": status, "errorCode": code, "message": message.into()}),
    }
}

fn with(mut reply: Reply, key: &str, value: Value) -> Reply {
    if let Value::Object(map) = &mut reply.body {
        map.insert(key.into(), value);
    }
    reply
}

fn validation_error(attribute: &str, message: impl Into<String>) -> Reply {
    with(
        error(422, "ValidationError", message),
        "attribute",
        json!(attribute),
    )
}

const LOOKUP_KEYS: [&str; 5] = [
    "email",
    "mobilePhone",
    "socialSecurityNumber",
    "customKey",
    "any",
];

/// `GET /api/v3/contacts/id?...`
pub(crate) fn lookup(tenant: &mut Tenant, params: &[(String, String)]) -> Reply {
    let keys: Vec<&(String, String)> = params
        .iter()
        .filter(|(k, _)| LOOKUP_KEYS.contains(&k.as_str()))
        .collect();
    let [(param, value)] = keys.as_slice() else {
        return error(
            400,
            "InvalidSearchQuery",
            "exactly one of email, mobilePhone, socialSecurityNumber, customKey, any is required",
        );
    };
    let contact_type = match params.iter().find(|(k, _)| k == "contactType") {
        Some((_, t)) if tenant.settings.contact_type(t).is_none() => {
            return error(
                400,
                "InvalidContactType",
                format!("unknown contact type `{t}`"),
            );
        }
        Some((_, t)) => Some(t.clone()),
        None => None,
    };
    let invalid = match param.as_str() {
        "email" if !valid_email(value) => Some("InvalidEmailAddress"),
        "mobilePhone" if !valid_phone(value) => Some("InvalidPhoneNumber"),
        "socialSecurityNumber" if !valid_ssn(value) => Some("InvalidSocialSecurityNumber"),
        _ if value.trim().is_empty() => Some("InvalidSearchQuery"),
        _ => None,
    };
    if let Some(code) = invalid {
        return error(400, code, format!("invalid value for `{param}`"));
    }
    let custom_key = tenant.settings.custom_key.clone();
    let attributes: Vec<&str> = match param.as_str() {
        "customKey" => vec![custom_key.as_str()],
        "any" => vec![
            "email",
            "mobilePhone",
            "socialSecurityNumber",
            custom_key.as_str(),
        ],
        other => vec![other],
    };
    let mut ids: Vec<String> = Vec::new();
    for attr in &attributes {
        for c in tenant.find(attr, value) {
            if contact_type.as_ref().is_none_or(|t| *t == c.contact_type) && !ids.contains(&c.id) {
                ids.push(c.id.clone());
            }
        }
    }
    let missed_key = (
        attributes[0].to_string(),
        normalize_key(attributes[0], value),
    );
    match ids.as_slice() {
        [] => {
            if param != "any" {
                tenant.missed_lookups.insert(missed_key);
                race_create(tenant, attributes[0], value, contact_type.as_deref());
            }
            error(404, "ContactNotFound", "no contact matches")
        }
        [id] => {
            tenant.missed_lookups.remove(&missed_key);
            Reply::ok(200, Value::String(id.clone()))
        }
        _ => with(
            error(409, "MultipleMatches", "several contacts match"),
            "contactIds",
            json!(ids),
        ),
    }
}

/// The race-create fault: another writer creates the contact just after the 404. Only when
/// the looked-up attribute is the key of the contact type a create would use.
fn race_create(tenant: &mut Tenant, attribute: &str, value: &str, contact_type: Option<&str>) {
    let type_name = contact_type.unwrap_or("Member");
    let Some(t) = tenant.settings.contact_type(type_name) else {
        return;
    };
    if t.key != attribute || !tenant.faults.race_create() {
        return;
    }
    let mut attributes = Map::new();
    attributes.insert(attribute.into(), Value::String(value.into()));
    let contact = Contact {
        id: tenant.new_id(),
        contact_type: type_name.into(),
        approved: true,
        created_by: CreatedBy::OtherWriter,
        source: None,
        store_external_id: None,
        attributes,
    };
    tenant.insert(contact);
}

/// Why a write of one contact was refused. Single writes answer it as HTTP ([`Self::reply`]);
/// bulk items report it as an item error ([`Self::item_error`]), so both share one path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WriteError {
    /// The contact type is unknown (or, in a batch item, not the batch's type).
    InvalidContactType(String),
    /// The contact type's key attribute is absent, null or empty where it is required.
    MissingKey {
        key: String,
        type_name: String,
    },
    /// The key attribute holds a value Engage refuses.
    InvalidKey {
        key: String,
        message: String,
    },
    /// An update sets the key attribute to an empty value.
    KeyCleared {
        key: String,
    },
    /// Any other refused value, or a mandatory attribute missing.
    Invalid {
        attribute: String,
        message: String,
    },
    /// Another approved contact of the type has this key.
    KeyTaken {
        key: String,
    },
    NotFound,
}

impl WriteError {
    /// The answer of a single create or update.
    pub(crate) fn reply(&self) -> Reply {
        match self {
            WriteError::InvalidContactType(message) => error(400, "InvalidContactType", message),
            WriteError::MissingKey { key, type_name } => validation_error(
                key,
                format!("{key} is required for contact type {type_name}"),
            ),
            WriteError::InvalidKey { key, message } => validation_error(key, message),
            WriteError::KeyCleared { key } => validation_error(
                key,
                format!("{key} identifies the contact and cannot be cleared"),
            ),
            WriteError::Invalid { attribute, message } => validation_error(attribute, message),
            WriteError::KeyTaken { key } => error(
                409,
                "ApprovedContactWithKeyExists",
                format!("an approved contact with this {key} exists"),
            ),
            WriteError::NotFound => error(404, "ContactNotFound", "no contact with this id"),
        }
    }

    /// The error code and message of a bulk item: an invalid key is named by its kind, as
    /// lookups name it.
    pub(crate) fn item_error(&self) -> (&'static str, String) {
        match self {
            WriteError::InvalidContactType(message) => ("InvalidContactType", message.clone()),
            WriteError::MissingKey { key, type_name } => (
                "MissingKey",
                format!("{key} is required for contact type {type_name}"),
            ),
            WriteError::InvalidKey { key, message } => {
                let code = match key.as_str() {
                    "email" => "InvalidEmailAddress",
                    "mobilePhone" => "InvalidPhoneNumber",
                    "socialSecurityNumber" => "InvalidSocialSecurityNumber",
                    _ => "ValidationError",
                };
                (code, message.clone())
            }
            WriteError::KeyCleared { key } => (
                "ValidationError",
                format!("{key} identifies the contact and cannot be cleared"),
            ),
            WriteError::Invalid { message, .. } => ("ValidationError", message.clone()),
            WriteError::KeyTaken { key } => (
                "ContactAlreadyExists",
                format!("a contact with this {key} exists"),
            ),
            WriteError::NotFound => ("ContactNotFound", "no contact with this key".into()),
        }
    }
}

/// A body's attributes as Engage would keep them, and the first value it would refuse.
struct Cleaned {
    attributes: Map<String, Value>,
    problem: Option<(String, String)>,
}

impl Cleaned {
    /// The key attribute first (absent or empty, then invalid), then any other refused
    /// value, so a missing or bad key is reported as such whatever else is wrong.
    fn check(&self, key: &str, type_name: &str, key_required: bool) -> Result<(), WriteError> {
        let missing = || WriteError::MissingKey {
            key: key.into(),
            type_name: type_name.into(),
        };
        match self.attributes.get(key) {
            None if key_required => return Err(missing()),
            Some(v) if is_empty_value(v) && key_required => return Err(missing()),
            Some(v) if is_empty_value(v) => return Err(WriteError::KeyCleared { key: key.into() }),
            Some(v) => {
                if let Some(message) = value_problem(key, v) {
                    return Err(WriteError::InvalidKey {
                        key: key.into(),
                        message,
                    });
                }
            }
            None => {}
        }
        match &self.problem {
            Some((attribute, message)) => Err(WriteError::Invalid {
                attribute: attribute.clone(),
                message: message.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// Records violations for empty, unknown and read-only attributes and drops the latter
/// two. Every attribute is looked at, so one refused value does not hide other mistakes.
fn clean(tenant: &mut Tenant, endpoint: Endpoint, body: Map<String, Value>) -> Cleaned {
    let name = endpoint_name(endpoint);
    let mut attributes = Map::new();
    let mut problem = None;
    for (k, v) in body {
        if is_empty_value(&v) {
            tenant.violations.record(
                ViolationKind::EmptyValue,
                format!("{name}: attribute `{k}` sent as {v}"),
            );
        }
        if READ_ONLY.contains(&k.as_str()) {
            tenant.violations.record(
                ViolationKind::ReadOnlyAttribute,
                format!("{name}: attribute `{k}` is computed by Engage and was ignored"),
            );
            continue;
        }
        if !WRITABLE.contains(&k.as_str()) && !tenant.settings.custom_attributes.contains(&k) {
            tenant.violations.record(
                ViolationKind::UnknownAttribute,
                format!("{name}: attribute `{k}` does not exist on the tenant and was ignored"),
            );
            continue;
        }
        if problem.is_none() {
            problem = value_problem(&k, &v).map(|p| (k.clone(), p));
        }
        attributes.insert(k, v);
    }
    Cleaned {
        attributes,
        problem,
    }
}

pub(crate) fn endpoint_name(endpoint: Endpoint) -> String {
    serde_json::to_value(endpoint)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Another approved contact of `contact_type` holding this key value, if any.
fn key_holder(
    tenant: &Tenant,
    contact_type: &str,
    key: &str,
    value: &str,
    except: Option<&str>,
) -> Option<String> {
    tenant
        .find(key, value)
        .into_iter()
        .find(|c| c.approved && c.contact_type == contact_type && Some(c.id.as_str()) != except)
        .map(|c| c.id.clone())
}

/// The key attribute of a contact type.
pub(crate) fn type_key(tenant: &Tenant, type_name: &str) -> Result<String, WriteError> {
    tenant
        .settings
        .contact_type(type_name)
        .map(|t| t.key.clone())
        .ok_or_else(|| {
            WriteError::InvalidContactType(format!("unknown contact type `{type_name}`"))
        })
}

/// Query parameters of a create.
#[derive(Debug, Default)]
pub(crate) struct CreateParams {
    pub source: Option<String>,
    pub store_external_id: Option<String>,
    pub create_as_unapproved: bool,
}

/// Creates one contact of `type_name` from a flat body (without `contactType`), as a
/// single create or a bulk item; `endpoint` names the call in violations.
pub(crate) fn create_contact(
    tenant: &mut Tenant,
    endpoint: Endpoint,
    type_name: &str,
    params: &CreateParams,
    body: Map<String, Value>,
) -> Result<String, WriteError> {
    let key = type_key(tenant, type_name)?;
    let cleaned = clean(tenant, endpoint, body);
    cleaned.check(&key, type_name, true)?;
    let mut attributes = cleaned.attributes;
    attributes.retain(|_, v| !v.is_null());
    let present = |a: &str| attributes.get(a).is_some_and(|v| !is_empty_value(v));
    if let Some(missing) = tenant.settings.mandatory.iter().find(|m| !present(m)) {
        return Err(WriteError::Invalid {
            attribute: missing.clone(),
            message: format!("{missing} is mandatory"),
        });
    }
    let key_value = attributes
        .get(&key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let missed = (key.clone(), normalize_key(&key, &key_value));
    if key_holder(tenant, type_name, &key, &key_value, None).is_some() {
        // Bulk items are matched by key and an existing key is an ordinary item error the
        // client is expected to handle (update instead); only a single create is meant to
        // follow a lookup.
        if endpoint == Endpoint::Create && !tenant.missed_lookups.contains(&missed) {
            tenant.violations.record(
                ViolationKind::CreateForExistingKey,
                format!(
                    "{}: a {type_name} with this {key} exists and no lookup answered 404 for it",
                    endpoint_name(endpoint)
                ),
            );
        }
        return Err(WriteError::KeyTaken { key });
    }
    tenant.missed_lookups.remove(&missed);
    let contact = Contact {
        id: tenant.new_id(),
        contact_type: type_name.to_string(),
        approved: !params.create_as_unapproved,
        created_by: CreatedBy::Client,
        source: params.source.clone(),
        store_external_id: params.store_external_id.clone(),
        attributes,
    };
    Ok(tenant.insert(contact))
}

/// `POST /api/v3/contacts`
pub(crate) fn create(
    tenant: &mut Tenant,
    params: CreateParams,
    mut body: Map<String, Value>,
) -> Reply {
    let type_name = match body.remove("contactType") {
        None | Some(Value::Null) => "Member".to_string(),
        Some(Value::String(s)) => s,
        Some(other) => {
            return WriteError::InvalidContactType(format!("invalid contact type {other}")).reply();
        }
    };
    match create_contact(tenant, Endpoint::Create, &type_name, &params, body) {
        Ok(id) => Reply::ok(
            201,
            tenant.get(&id).map(Contact::to_api).unwrap_or(Value::Null),
        ),
        Err(e) => e.reply(),
    }
}

/// Which contact an update is for: by id (single PATCH), or by the key attribute in the
/// body among the contacts of a type (bulk PATCH).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    Id(&'a str),
    Key { type_name: &'a str },
}

/// The contact of `type_name` whose key is `value`, an approved one first.
fn by_key(tenant: &Tenant, type_name: &str, key: &str, value: &str) -> Option<String> {
    let matches: Vec<&Contact> = tenant
        .find(key, value)
        .into_iter()
        .filter(|c| c.contact_type == type_name)
        .collect();
    matches
        .iter()
        .find(|c| c.approved)
        .or(matches.first())
        .map(|c| c.id.clone())
}

/// Updates one contact: every attribute present overwrites, `contactType` is ignored.
/// Returns the contact's id.
pub(crate) fn update_contact(
    tenant: &mut Tenant,
    endpoint: Endpoint,
    target: Target<'_>,
    mut body: Map<String, Value>,
) -> Result<String, WriteError> {
    let type_name = match target {
        Target::Id(id) => tenant
            .get(id)
            .ok_or(WriteError::NotFound)?
            .contact_type
            .clone(),
        Target::Key { type_name } => type_name.to_string(),
    };
    if body.remove("contactType").is_some() {
        tenant.violations.record(
            ViolationKind::ContactTypeInPatch,
            format!(
                "{}: contactType cannot be changed by PATCH and was ignored",
                endpoint_name(endpoint)
            ),
        );
    }
    let key = type_key(tenant, &type_name)?;
    let cleaned = clean(tenant, endpoint, body);
    cleaned.check(&key, &type_name, matches!(target, Target::Key { .. }))?;
    let mut attributes = cleaned.attributes;
    let key_value = attributes
        .get(&key)
        .and_then(Value::as_str)
        .map(str::to_string);
    let id = match (target, &key_value) {
        (Target::Id(id), _) => id.to_string(),
        (Target::Key { .. }, Some(value)) => {
            by_key(tenant, &type_name, &key, value).ok_or(WriteError::NotFound)?
        }
        (Target::Key { .. }, None) => return Err(WriteError::NotFound),
    };
    if let Some(value) = &key_value
        && key_holder(tenant, &type_name, &key, value, Some(&id)).is_some()
    {
        return Err(WriteError::KeyTaken { key });
    }
    let store_set = tenant
        .get(&id)
        .and_then(|c| c.str("createdInStore"))
        .is_some_and(|s| !s.trim().is_empty());
    if store_set {
        // createdInStore cannot change once set: Engage keeps the old value silently.
        attributes.remove("createdInStore");
    }
    tenant
        .modify(&id, |c| c.attributes.extend(attributes))
        .ok_or(WriteError::NotFound)?;
    Ok(id)
}

/// `PATCH /api/v3/contacts/{contactId}`
pub(crate) fn update(tenant: &mut Tenant, id: &str, body: Map<String, Value>) -> Reply {
    match update_contact(tenant, Endpoint::Update, Target::Id(id), body) {
        Ok(id) => Reply::ok(
            200,
            tenant.get(&id).map(Contact::to_api).unwrap_or(Value::Null),
        ),
        Err(e) => e.reply(),
    }
}

/// `GET /api/v3/contacts/{contactId}`
pub(crate) fn get(tenant: &Tenant, id: &str) -> Reply {
    match tenant.get(id) {
        Some(c) => Reply::ok(200, c.to_api()),
        None => error(404, "ContactNotFound", "no contact with this id"),
    }
}
