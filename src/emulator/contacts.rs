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
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    fn ok(status: u16, body: Value) -> Self {
        Reply { status, body }
    }
}

/// Voyado-style error body: `{"status", "errorCode", "message"}` plus details.
pub fn error(status: u16, code: &str, message: impl Into<String>) -> Reply {
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
pub fn lookup(tenant: &mut Tenant, params: &[(String, String)]) -> Reply {
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

/// Records violations for empty, unknown and read-only attributes, drops the latter two,
/// and refuses values Engage would refuse.
fn clean(
    tenant: &mut Tenant,
    endpoint: Endpoint,
    body: Map<String, Value>,
) -> Result<Map<String, Value>, Reply> {
    let name = endpoint_name(endpoint);
    let mut attributes = Map::new();
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
        if let Some(problem) = value_problem(&k, &v) {
            return Err(validation_error(&k, problem));
        }
        attributes.insert(k, v);
    }
    Ok(attributes)
}

fn endpoint_name(endpoint: Endpoint) -> String {
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

/// Query parameters of a create.
#[derive(Debug, Default)]
pub struct CreateParams {
    pub source: Option<String>,
    pub store_external_id: Option<String>,
    pub create_as_unapproved: bool,
}

/// `POST /api/v3/contacts`
pub fn create(tenant: &mut Tenant, params: CreateParams, mut body: Map<String, Value>) -> Reply {
    let type_name = match body.remove("contactType") {
        None | Some(Value::Null) => "Member".to_string(),
        Some(Value::String(s)) => s,
        Some(other) => {
            return error(
                400,
                "InvalidContactType",
                format!("invalid contact type {other}"),
            );
        }
    };
    let Some(key) = tenant
        .settings
        .contact_type(&type_name)
        .map(|t| t.key.clone())
    else {
        return error(
            400,
            "InvalidContactType",
            format!("unknown contact type `{type_name}`"),
        );
    };
    let mut attributes = match clean(tenant, Endpoint::Create, body) {
        Ok(attributes) => attributes,
        Err(reply) => return reply,
    };
    attributes.retain(|_, v| !v.is_null());
    let present = |a: &str| attributes.get(a).is_some_and(|v| !is_empty_value(v));
    let Some(key_value) = attributes
        .get(&key)
        .and_then(Value::as_str)
        .filter(|_| present(&key))
    else {
        return validation_error(
            &key,
            format!("{key} is required for contact type {type_name}"),
        );
    };
    let key_value = key_value.to_string();
    if let Some(missing) = tenant.settings.mandatory.iter().find(|m| !present(m)) {
        return validation_error(missing, format!("{missing} is mandatory"));
    }
    if key_holder(tenant, &type_name, &key, &key_value, None).is_some() {
        let missed = (key.clone(), normalize_key(&key, &key_value));
        if !tenant.missed_lookups.contains(&missed) {
            tenant.violations.record(
                ViolationKind::CreateForExistingKey,
                format!("POST /api/v3/contacts: a {type_name} with this {key} exists and no lookup answered 404 for it"),
            );
        }
        return error(
            409,
            "ApprovedContactWithKeyExists",
            format!("an approved contact with this {key} exists"),
        );
    }
    tenant
        .missed_lookups
        .remove(&(key.clone(), normalize_key(&key, &key_value)));
    let contact = Contact {
        id: tenant.new_id(),
        contact_type: type_name,
        approved: !params.create_as_unapproved,
        created_by: CreatedBy::Client,
        source: params.source,
        store_external_id: params.store_external_id,
        attributes,
    };
    let id = tenant.insert(contact);
    let body = tenant.get(&id).map(Contact::to_api).unwrap_or(Value::Null);
    Reply::ok(201, body)
}

/// `PATCH /api/v3/contacts/{contactId}`
pub fn update(tenant: &mut Tenant, id: &str, mut body: Map<String, Value>) -> Reply {
    let Some(existing) = tenant.get(id) else {
        return error(404, "ContactNotFound", "no contact with this id");
    };
    let type_name = existing.contact_type.clone();
    let store_set = existing
        .str("createdInStore")
        .is_some_and(|s| !s.trim().is_empty());
    if body.remove("contactType").is_some() {
        tenant.violations.record(
            ViolationKind::ContactTypeInPatch,
            "PATCH /api/v3/contacts/{contactId}: contactType cannot be changed by PATCH and was ignored",
        );
    }
    let mut attributes = match clean(tenant, Endpoint::Update, body) {
        Ok(attributes) => attributes,
        Err(reply) => return reply,
    };
    let key = tenant
        .settings
        .contact_type(&type_name)
        .map(|t| t.key.clone())
        .unwrap_or_default();
    if let Some(v) = attributes.get(&key) {
        let Some(s) = v.as_str().filter(|_| !is_empty_value(v)) else {
            return validation_error(
                &key,
                format!("{key} identifies the contact and cannot be cleared"),
            );
        };
        if key_holder(tenant, &type_name, &key, s, Some(id)).is_some() {
            return error(
                409,
                "ApprovedContactWithKeyExists",
                format!("an approved contact with this {key} exists"),
            );
        }
    }
    if store_set {
        // createdInStore cannot change once set: Engage keeps the old value silently.
        attributes.remove("createdInStore");
    }
    let updated = tenant.modify(id, |c| c.attributes.extend(attributes));
    match updated {
        Some(c) => Reply::ok(200, c.to_api()),
        None => error(404, "ContactNotFound", "no contact with this id"),
    }
}

/// `GET /api/v3/contacts/{contactId}`
pub fn get(tenant: &Tenant, id: &str) -> Reply {
    match tenant.get(id) {
        Some(c) => Reply::ok(200, c.to_api()),
        None => error(404, "ContactNotFound", "no contact with this id"),
    }
}
