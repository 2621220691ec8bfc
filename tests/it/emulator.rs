//! The emulator's own tests: every row of its behaviour table (in the README), every
//! violation kind, every fault, the admin endpoint and the command line, over real HTTP.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};
use voyado_emulator::{
    BatchKind, BatchStatus, CreatedBy, Deletion, Dump, Emulator, EmulatorConfig, Endpoint, Faults,
    RateLimit, ViolationKind,
};

const KEY: &str = "test-api-key-123";

/// A well-behaved client: apikey, User-Agent, JSON Content-Type.
struct Api {
    base: String,
    http: reqwest::Client,
}

struct Answer {
    status: StatusCode,
    body: Value,
    text: String,
    headers: reqwest::header::HeaderMap,
}

impl Api {
    fn new(emulator: &Emulator) -> Self {
        let http = reqwest::Client::builder()
            .user_agent("voyado-sync-tests/0.1")
            .build()
            .unwrap();
        Api {
            base: emulator.base_url(),
            http,
        }
    }

    async fn send(&self, builder: reqwest::RequestBuilder) -> Answer {
        let response = builder.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            body,
            text,
            headers,
        }
    }

    fn request(&self, method: Method, path_and_query: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path_and_query}", self.base))
            .header("apikey", KEY)
    }

    /// `query` is sent exactly as given: callers percent-encode (or deliberately not).
    async fn lookup(&self, query: &str) -> Answer {
        self.send(self.request(Method::GET, &format!("/api/v3/contacts/id?{query}")))
            .await
    }

    async fn create(&self, query: &str, body: Value) -> Answer {
        self.send(
            self.request(Method::POST, &format!("/api/v3/contacts{query}"))
                .json(&body),
        )
        .await
    }

    async fn patch(&self, id: &str, body: Value) -> Answer {
        self.send(
            self.request(Method::PATCH, &format!("/api/v3/contacts/{id}"))
                .json(&body),
        )
        .await
    }

    async fn get(&self, id: &str) -> Answer {
        self.send(self.request(Method::GET, &format!("/api/v3/contacts/{id}")))
            .await
    }

    async fn create_ok(&self, body: Value) -> String {
        let answer = self.create("", body).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
        answer.body["id"].as_str().unwrap().to_string()
    }
}

fn config() -> EmulatorConfig {
    EmulatorConfig::new(KEY)
}

async fn start(config: EmulatorConfig) -> (Emulator, Api) {
    let emulator = Emulator::start(config).await.unwrap();
    let api = Api::new(&emulator);
    (emulator, api)
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => panic!("not an object"),
    }
}

fn code(answer: &Answer) -> &str {
    answer.body["errorCode"].as_str().unwrap_or("")
}

fn assert_no_violations(emulator: &Emulator) {
    let v = emulator.violations();
    assert_eq!(v.total(), 0, "unexpected violations: {v:?}");
}

// ---- Lookups ----------------------------------------------------------------------------

#[tokio::test]
async fn lookup_by_email_ignores_case_and_answers_a_json_string() {
    let (emulator, api) = start(config()).await;
    let id = api.create_ok(json!({"email": "Ann.Lee@Example.com"})).await;
    let answer = api.lookup("email=ann.lee%40EXAMPLE.com").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, Value::String(id));
    assert!(answer.text.starts_with('"'), "{}", answer.text);
    assert_no_violations(&emulator);
}

#[tokio::test]
async fn lookup_unknown_contact_is_404_contact_not_found() {
    let (emulator, api) = start(config()).await;
    let answer = api.lookup("email=nobody%40example.com").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(code(&answer), "ContactNotFound");
    assert_no_violations(&emulator);
}

#[tokio::test]
async fn lookup_with_invalid_email_is_400() {
    let (_emulator, api) = start(config()).await;
    let answer = api.lookup("email=not-an-email").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&answer), "InvalidEmailAddress");
}

#[tokio::test]
async fn phone_lookup_needs_a_percent_encoded_plus() {
    let mut c = config();
    c.contact_types[0].key = "mobilePhone".into();
    let (_emulator, api) = start(c).await;
    let id = api.create_ok(json!({"mobilePhone": "+46701234567"})).await;
    // Unencoded, the `+` arrives as a space: Voyado refuses the number.
    let raw = api.lookup("mobilePhone=+46701234567").await;
    assert_eq!(raw.status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&raw), "InvalidPhoneNumber");
    let missing_plus = api.lookup("mobilePhone=46701234567").await;
    assert_eq!(code(&missing_plus), "InvalidPhoneNumber");
    let encoded = api.lookup("mobilePhone=%2B46701234567").await;
    assert_eq!(encoded.status, StatusCode::OK);
    assert_eq!(encoded.body, Value::String(id));
}

#[tokio::test]
async fn phone_lookup_ignores_spaces_and_hyphens() {
    let (_emulator, api) = start(config()).await;
    let id = api
        .create_ok(json!({"email": "ph@example.com", "mobilePhone": "+46 70-123 45 67"}))
        .await;
    let answer = api.lookup("mobilePhone=%2B46701234567").await;
    assert_eq!(answer.body, Value::String(id));
}

#[tokio::test]
async fn custom_key_can_be_the_member_number() {
    let mut c = config();
    c.custom_key = "memberNumber".into();
    let (_emulator, api) = start(c).await;
    let created = api.create("", json!({"email": "mn@example.com"})).await;
    let number = created.body["memberNumber"].as_str().unwrap().to_string();
    let answer = api.lookup(&format!("customKey={number}")).await;
    assert_eq!(answer.body, created.body["id"]);
}

#[tokio::test]
async fn lookup_with_several_matches_is_409_listing_the_ids() {
    let (_emulator, api) = start(config()).await;
    let a = api
        .create_ok(json!({"email": "a@example.com", "mobilePhone": "+46700000001"}))
        .await;
    let b = api
        .create_ok(json!({"email": "b@example.com", "mobilePhone": "+46700000001"}))
        .await;
    let answer = api.lookup("mobilePhone=%2B46700000001").await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(code(&answer), "MultipleMatches");
    assert_eq!(answer.body["contactIds"], json!([a, b]));
}

#[tokio::test]
async fn lookup_by_ssn_custom_key_and_any() {
    let (_emulator, api) = start(config()).await;
    let id = api
        .create_ok(json!({
            "email": "c@example.com",
            "socialSecurityNumber": "19811218-9876",
            "externalId": "EXT-1"
        }))
        .await;
    for query in [
        "socialSecurityNumber=198112189876",
        "customKey=EXT-1",
        "any=EXT-1",
        "any=C%40example.com",
    ] {
        let answer = api.lookup(query).await;
        assert_eq!(answer.status, StatusCode::OK, "{query}: {}", answer.text);
        assert_eq!(answer.body, Value::String(id.clone()), "{query}");
    }
    let bad_ssn = api.lookup("socialSecurityNumber=12").await;
    assert_eq!(code(&bad_ssn), "InvalidSocialSecurityNumber");
}

#[tokio::test]
async fn lookup_filters_by_contact_type_and_refuses_unknown_types() {
    let mut c = config();
    c.contact_types.push("Lead=email".parse().unwrap());
    let (_emulator, api) = start(c).await;
    let lead = api
        .create_ok(json!({"email": "d@example.com", "contactType": "Lead"}))
        .await;
    let member = api.create_ok(json!({"email": "d@example.com"})).await;
    let as_lead = api.lookup("email=d%40example.com&contactType=Lead").await;
    assert_eq!(as_lead.body, Value::String(lead));
    let as_member = api.lookup("email=d%40example.com&contactType=Member").await;
    assert_eq!(as_member.body, Value::String(member));
    let both = api.lookup("email=d%40example.com").await;
    assert_eq!(code(&both), "MultipleMatches");
    let unknown = api.lookup("email=d%40example.com&contactType=Robot").await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&unknown), "InvalidContactType");
}

#[tokio::test]
async fn lookup_needs_exactly_one_search_parameter() {
    let (_emulator, api) = start(config()).await;
    for query in [
        "",
        "contactType=Member",
        "email=a%40b.se&customKey=1",
        "nickname=x",
    ] {
        let answer = api.lookup(query).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(code(&answer), "InvalidSearchQuery", "{query}");
    }
}

// ---- Creates ----------------------------------------------------------------------------

#[tokio::test]
async fn create_answers_201_with_the_contact_and_its_new_id() {
    let (emulator, api) = start(config()).await;
    let answer = api
        .create(
            "?source=voyado-sync&storeExternalId=S1&createAsUnapproved=false",
            json!({"email": "e@example.com", "firstName": "Eve", "countryCode": "SE"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let id = answer.body["id"].as_str().unwrap();
    assert_eq!(answer.body["contactType"], "Member");
    assert_eq!(answer.body["firstName"], "Eve");
    assert!(answer.body["memberNumber"].is_string());
    let stored = emulator.contact(id).unwrap();
    assert_eq!(stored.source.as_deref(), Some("voyado-sync"));
    assert_eq!(stored.store_external_id.as_deref(), Some("S1"));
    assert!(stored.approved);
    assert_eq!(stored.created_by, CreatedBy::Client);
    assert_no_violations(&emulator);
}

#[tokio::test]
async fn create_as_unapproved_is_read_from_the_query() {
    let (emulator, api) = start(config()).await;
    let answer = api
        .create(
            "?createAsUnapproved=true",
            json!({"email": "u@example.com"}),
        )
        .await;
    let id = answer.body["id"].as_str().unwrap();
    assert!(!emulator.contact(id).unwrap().approved);
    // An unapproved contact does not block an approved one with the same key.
    api.create_ok(json!({"email": "u@example.com"})).await;
}

#[tokio::test]
async fn create_with_unknown_contact_type_is_400() {
    let (emulator, api) = start(config()).await;
    let answer = api
        .create(
            "",
            json!({"email": "f@example.com", "contactType": "Robot"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&answer), "InvalidContactType");
    assert!(emulator.contacts().is_empty());
}

#[tokio::test]
async fn create_without_the_key_attribute_is_422_naming_it() {
    let (emulator, api) = start(config()).await;
    let answer = api.create("", json!({"firstName": "Nokey"})).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&answer), "ValidationError");
    assert_eq!(answer.body["attribute"], "email");
    assert!(emulator.contacts().is_empty());
}

#[tokio::test]
async fn create_without_a_mandatory_attribute_is_422_naming_it() {
    let mut c = config();
    c.mandatory = vec!["firstName".into()];
    let (_emulator, api) = start(c).await;
    let answer = api.create("", json!({"email": "g@example.com"})).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.body["attribute"], "firstName");
    api.create_ok(json!({"email": "g@example.com", "firstName": "Gus"}))
        .await;
}

#[tokio::test]
async fn create_with_an_invalid_value_is_422() {
    let mut c = config();
    c.custom_attributes = vec!["tier".into()];
    let (emulator, api) = start(c).await;
    for body in [
        json!({"email": "not-an-email"}),
        json!({"email": "h@example.com", "mobilePhone": "0701234567"}),
        json!({"email": "h@example.com", "birthDay": "1990-13-01"}),
        json!({"email": "h@example.com", "gender": "Unknown"}),
        json!({"email": "h@example.com", "countryCode": "se"}),
        json!({"email": "h@example.com", "firstName": 7}),
        json!({"email": "h@example.com", "tier": ["a"]}),
    ] {
        let answer = api.create("", body.clone()).await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(code(&answer), "ValidationError");
    }
    assert!(emulator.contacts().is_empty());
}

#[tokio::test]
async fn create_for_an_existing_key_is_409_and_a_violation_without_a_lookup() {
    let (emulator, api) = start(config()).await;
    api.create_ok(json!({"email": "i@example.com"})).await;
    let answer = api.create("", json!({"email": "I@EXAMPLE.COM"})).await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(code(&answer), "ApprovedContactWithKeyExists");
    assert_eq!(emulator.contacts().len(), 1);
    let v = emulator.violations();
    assert_eq!(v.count(ViolationKind::CreateForExistingKey), 1);
    assert!(
        v.get(ViolationKind::CreateForExistingKey)
            .unwrap()
            .example
            .contains("POST")
    );
}

#[tokio::test]
async fn body_without_json_content_type_is_500_an_error_has_occurred() {
    let (emulator, api) = start(config()).await;
    let answer = api
        .send(
            api.request(Method::POST, "/api/v3/contacts")
                .body(r#"{"email":"j@example.com"}"#),
        )
        .await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        answer.text.contains("An error has occurred"),
        "{}",
        answer.text
    );
    assert!(emulator.contacts().is_empty());
    let text_plain = api
        .send(
            api.request(Method::PATCH, "/api/v3/contacts/x")
                .header("content-type", "text/plain")
                .body("{}"),
        )
        .await;
    assert_eq!(text_plain.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        emulator
            .violations()
            .count(ViolationKind::MissingContentType),
        2
    );
}

#[tokio::test]
async fn empty_or_malformed_bodies_are_400_no_data() {
    let (emulator, api) = start(config()).await;
    for body in [
        "",
        "{not json",
        "[{\"email\":\"k@example.com\"}]",
        "\"text\"",
    ] {
        let answer = api
            .send(
                api.request(Method::POST, "/api/v3/contacts")
                    .header("content-type", "application/json; charset=utf-8")
                    .body(body),
            )
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(code(&answer), "NoData");
    }
    assert!(emulator.contacts().is_empty());
}

#[tokio::test]
async fn unknown_attributes_are_ignored_silently_and_recorded() {
    let mut c = config();
    c.custom_attributes = vec!["loyaltyTier".into()];
    let (emulator, api) = start(c).await;
    let answer = api
        .create(
            "",
            json!({"email": "l@example.com", "loyaltyTier": "gold", "loyalityTier": "typo"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let id = answer.body["id"].as_str().unwrap();
    let stored = emulator.contact(id).unwrap();
    assert_eq!(stored.get("loyaltyTier"), Some(&json!("gold")));
    assert_eq!(stored.get("loyalityTier"), None);
    let patched = api.patch(id, json!({"favouriteColour": "red"})).await;
    assert_eq!(patched.status, StatusCode::OK);
    let v = emulator.violations();
    assert_eq!(v.count(ViolationKind::UnknownAttribute), 2);
    assert!(
        v.get(ViolationKind::UnknownAttribute)
            .unwrap()
            .example
            .contains("loyalityTier")
    );
}

#[tokio::test]
async fn computed_attributes_are_ignored_and_recorded() {
    let (emulator, api) = start(config()).await;
    let id = api
        .create_ok(json!({"email": "m@example.com", "age": 40}))
        .await;
    assert_eq!(emulator.contact(&id).unwrap().get("age"), None);
    assert_eq!(
        emulator
            .violations()
            .count(ViolationKind::ReadOnlyAttribute),
        1
    );
}

// ---- Updates and reads ------------------------------------------------------------------

#[tokio::test]
async fn patch_overwrites_every_attribute_present_including_empty_and_null() {
    let (emulator, api) = start(config()).await;
    let id = api
        .create_ok(json!({"email": "n@example.com", "firstName": "Nina", "lastName": "Berg", "city": "Lund"}))
        .await;
    let answer = api
        .patch(
            &id,
            json!({"firstName": "", "lastName": null, "zipCode": "22100"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["id"], json!(id));
    let stored = emulator.contact(&id).unwrap();
    assert_eq!(stored.get("firstName"), Some(&json!("")));
    assert_eq!(stored.get("lastName"), Some(&Value::Null));
    assert_eq!(stored.get("zipCode"), Some(&json!("22100")));
    assert_eq!(
        stored.get("city"),
        Some(&json!("Lund")),
        "absent attributes are kept"
    );
    assert_eq!(emulator.violations().count(ViolationKind::EmptyValue), 2);
}

#[tokio::test]
async fn patch_of_an_unknown_id_is_404() {
    let (_emulator, api) = start(config()).await;
    let answer = api
        .patch(
            "00000000-0000-4000-8000-000000000000",
            json!({"firstName": "X"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(code(&answer), "ContactNotFound");
}

#[tokio::test]
async fn patch_cannot_change_the_contact_type() {
    let mut c = config();
    c.contact_types.push("Lead=email".parse().unwrap());
    let (emulator, api) = start(c).await;
    let id = api.create_ok(json!({"email": "o@example.com"})).await;
    let answer = api
        .patch(&id, json!({"contactType": "Lead", "firstName": "Olle"}))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let stored = emulator.contact(&id).unwrap();
    assert_eq!(stored.contact_type, "Member");
    assert_eq!(stored.get("firstName"), Some(&json!("Olle")));
    assert_eq!(
        emulator
            .violations()
            .count(ViolationKind::ContactTypeInPatch),
        1
    );
}

#[tokio::test]
async fn patch_cannot_clear_or_duplicate_the_key() {
    let (emulator, api) = start(config()).await;
    let id = api.create_ok(json!({"email": "p@example.com"})).await;
    api.create_ok(json!({"email": "q@example.com"})).await;
    let cleared = api.patch(&id, json!({"email": ""})).await;
    assert_eq!(cleared.status, StatusCode::UNPROCESSABLE_ENTITY);
    let taken = api.patch(&id, json!({"email": "Q@example.com"})).await;
    assert_eq!(taken.status, StatusCode::CONFLICT);
    assert_eq!(code(&taken), "ApprovedContactWithKeyExists");
    let invalid = api.patch(&id, json!({"birthDay": "31/12/1990"})).await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(invalid.body["attribute"], "birthDay");
    let moved = api.patch(&id, json!({"email": "p2@example.com"})).await;
    assert_eq!(moved.status, StatusCode::OK);
    assert_eq!(emulator.find("email", "p2@example.com").len(), 1);
    assert!(emulator.find("email", "p@example.com").is_empty());
}

#[tokio::test]
async fn created_in_store_cannot_change_once_set() {
    let (emulator, api) = start(config()).await;
    let id = api
        .create_ok(json!({"email": "r@example.com", "createdInStore": "S1"}))
        .await;
    api.patch(&id, json!({"createdInStore": "S2", "store": "S2"}))
        .await;
    let stored = emulator.contact(&id).unwrap();
    assert_eq!(stored.get("createdInStore"), Some(&json!("S1")));
    assert_eq!(stored.get("store"), Some(&json!("S2")));
}

#[tokio::test]
async fn get_returns_the_contact_or_404() {
    let (_emulator, api) = start(config()).await;
    let id = api
        .create_ok(json!({"email": "s@example.com", "firstName": "Sam"}))
        .await;
    let answer = api.get(&id).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["firstName"], "Sam");
    assert_eq!(answer.body["email"], "s@example.com");
    let missing = api.get("no-such-id").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(code(&missing), "ContactNotFound");
}

// ---- Headers, paths and violations ------------------------------------------------------

#[tokio::test]
async fn requests_without_the_right_apikey_are_401() {
    let (emulator, api) = start(config()).await;
    let http = reqwest::Client::builder()
        .user_agent("t/1")
        .build()
        .unwrap();
    let url = format!("{}/api/v3/contacts/id?email=a%40b.se", api.base);
    let none = http.get(&url).send().await.unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    let wrong = http
        .get(&url)
        .header("apikey", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let bearer = http
        .get(&url)
        .header("authorization", format!("Bearer {KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(emulator.requests().count(Endpoint::Lookup, 401), 3);
    assert!(
        !serde_json::to_string(&emulator.dump())
            .unwrap()
            .contains(KEY)
    );
}

#[tokio::test]
async fn a_request_without_user_agent_is_a_violation() {
    let (emulator, api) = start(config()).await;
    let bare = reqwest::Client::new();
    let answer = bare
        .get(format!("{}/api/v3/contacts/id?email=a%40b.se", api.base))
        .header("apikey", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        emulator.violations().count(ViolationKind::MissingUserAgent),
        1
    );
}

#[tokio::test]
async fn create_parameters_sent_as_headers_are_ignored_and_recorded() {
    let (emulator, api) = start(config()).await;
    let answer = api
        .send(
            api.request(Method::POST, "/api/v3/contacts")
                .header("source", "voyado-sync")
                .header("storeExternalId", "S9")
                .header("createAsUnapproved", "true")
                .json(&json!({"email": "t@example.com"})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let stored = emulator
        .contact(answer.body["id"].as_str().unwrap())
        .unwrap();
    assert_eq!(stored.source, None);
    assert_eq!(stored.store_external_id, None);
    assert!(stored.approved);
    assert_eq!(
        emulator
            .violations()
            .count(ViolationKind::ParameterAsHeader),
        3
    );
}

#[tokio::test]
async fn empty_whitespace_and_null_values_are_violations() {
    let (emulator, api) = start(config()).await;
    let id = api
        .create_ok(
            json!({"email": "w@example.com", "firstName": "", "lastName": "  ", "city": null}),
        )
        .await;
    let v = emulator.violations();
    assert_eq!(v.count(ViolationKind::EmptyValue), 3);
    let example = &v.get(ViolationKind::EmptyValue).unwrap().example;
    assert!(
        example.starts_with("POST /api/v3/contacts: attribute"),
        "{example}"
    );
    // On create a null sets nothing.
    assert_eq!(emulator.contact(&id).unwrap().get("city"), None);
}

#[tokio::test]
async fn v2_paths_and_unknown_endpoints_are_recorded() {
    let (emulator, api) = start(config()).await;
    let v2 = api
        .send(api.request(Method::GET, "/api/v2/contacts/id?email=a%40b.se"))
        .await;
    assert_eq!(v2.status, StatusCode::NOT_FOUND);
    let unknown = api.send(api.request(Method::GET, "/api/v3/orders")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let bulk = api
        .send(
            api.request(Method::POST, "/api/v3/contacts/bulk/nope")
                .json(&json!([])),
        )
        .await;
    assert_eq!(bulk.status, StatusCode::NOT_FOUND);
    let wrong_method = api
        .send(api.request(Method::DELETE, "/api/v3/contacts/x"))
        .await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    let v = emulator.violations();
    assert_eq!(v.count(ViolationKind::V2Path), 1);
    assert_eq!(v.count(ViolationKind::UnknownEndpoint), 3);
    let requests = emulator.requests();
    assert_eq!(requests.count(Endpoint::V2, 404), 1);
    assert_eq!(requests.endpoint(Endpoint::Unknown), 3);
}

#[tokio::test]
async fn a_well_behaved_client_makes_no_violations() {
    let (emulator, api) = start(config()).await;
    let lookup = api.lookup("email=x%40example.com").await;
    assert_eq!(lookup.status, StatusCode::NOT_FOUND);
    let id = api
        .create_ok(json!({"email": "x@example.com", "firstName": "Xi"}))
        .await;
    api.patch(&id, json!({"lastName": "Yu"})).await;
    api.get(&id).await;
    assert_no_violations(&emulator);
}

#[tokio::test]
async fn every_request_is_counted_by_endpoint_and_status_but_not_admin_calls() {
    let (emulator, api) = start(config()).await;
    api.lookup("email=y%40example.com").await;
    let id = api.create_ok(json!({"email": "y@example.com"})).await;
    api.create("", json!({"email": "y@example.com"})).await;
    api.patch(&id, json!({"firstName": "Y"})).await;
    api.get(&id).await;
    api.http
        .get(format!("{}/_emulator/dump", api.base))
        .send()
        .await
        .unwrap();
    let r = emulator.requests();
    assert_eq!(r.count(Endpoint::Lookup, 404), 1);
    assert_eq!(r.count(Endpoint::Create, 201), 1);
    assert_eq!(r.count(Endpoint::Create, 409), 1);
    assert_eq!(r.count(Endpoint::Update, 200), 1);
    assert_eq!(r.count(Endpoint::Get, 200), 1);
    assert_eq!(r.total(), 5);
}

// ---- Admin endpoint, seeds and dumps ----------------------------------------------------

#[tokio::test]
async fn admin_dump_lists_contacts_requests_and_violations() {
    let (_emulator, api) = start(config()).await;
    api.create_ok(json!({"email": "z@example.com", "bogus": 1}))
        .await;
    let text = api
        .http
        .get(format!("{}/_emulator/dump", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let raw: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(raw["requests"]["POST /api/v3/contacts"]["201"], 1);
    assert_eq!(raw["violations"]["UnknownAttribute"]["count"], 1);
    assert_eq!(raw["violationTotal"], 1);
    let dump: Dump = serde_json::from_value(raw).unwrap();
    assert_eq!(dump.contacts.len(), 1);
    assert_eq!(dump.contacts[0].attributes["email"], "z@example.com");
}

#[tokio::test]
async fn seed_contacts_are_served_and_bad_seeds_refuse_to_start() {
    let mut c = config();
    c.custom_attributes = vec!["tier".into()];
    c.seed_contacts = vec![
        object(json!({"id": "seed-1", "email": "seed@example.com", "tier": "gold"})),
        object(json!({"email": "seed2@example.com"})),
    ];
    let (emulator, api) = start(c).await;
    assert_eq!(
        api.lookup("email=seed%40example.com").await.body,
        json!("seed-1")
    );
    assert_eq!(emulator.contacts().len(), 2);
    assert_eq!(emulator.contacts()[0].created_by, CreatedBy::Seed);

    let mut bad = config();
    bad.seed_contacts = vec![object(json!({"email": "a@example.com", "nope": 1}))];
    assert!(Emulator::start(bad).await.is_err());
    let mut duplicate = config();
    duplicate.seed_contacts = vec![
        object(json!({"email": "a@example.com"})),
        object(json!({"email": "A@example.com"})),
    ];
    assert!(Emulator::start(duplicate).await.is_err());
    let mut no_key = config();
    no_key.seed_contacts = vec![object(json!({"firstName": "Nokey"}))];
    assert!(Emulator::start(no_key).await.is_err());
}

#[tokio::test]
async fn shutdown_writes_the_dump_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dump.json");
    let mut c = config();
    c.dump_on_exit = Some(path.clone());
    let (emulator, api) = start(c).await;
    api.create_ok(json!({"email": "dump@example.com"})).await;
    let dump = emulator.shutdown().await.unwrap();
    let written: Dump = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(written, dump);
    assert_eq!(written.contacts.len(), 1);
    assert!(!std::fs::read_to_string(&path).unwrap().contains(KEY));
}

// ---- Faults -----------------------------------------------------------------------------

fn faulty(faults: Faults) -> EmulatorConfig {
    let mut c = config();
    c.faults = faults;
    c
}

#[tokio::test]
async fn rate_cap_answers_429_with_retry_after() {
    let (emulator, api) = start(faulty(Faults {
        rate_limit: Some(RateLimit {
            requests: 2,
            window: Duration::from_secs(3600),
            retry_after_secs: Some(7),
        }),
        ..Faults::default()
    }))
    .await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let answer = api.lookup("email=rate%40example.com").await;
        statuses.push(answer.status.as_u16());
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            retry_after = answer.headers.get("retry-after").cloned();
        }
    }
    assert_eq!(statuses, [404, 404, 429, 429]);
    assert_eq!(retry_after.unwrap(), "7");
    assert_eq!(emulator.injected_faults().rate_limited, 2);
    assert_eq!(emulator.requests().count(Endpoint::Lookup, 429), 2);
}

#[tokio::test]
async fn rate_cap_without_retry_after_sends_no_header() {
    let (_emulator, api) = start(faulty(Faults {
        rate_limit: Some(RateLimit {
            requests: 1,
            window: Duration::from_secs(3600),
            retry_after_secs: None,
        }),
        ..Faults::default()
    }))
    .await;
    api.lookup("email=a%40example.com").await;
    let limited = api.lookup("email=a%40example.com").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers.get("retry-after").is_none());
}

#[tokio::test]
async fn server_errors_are_500_502_or_503_and_apply_nothing() {
    let (emulator, api) = start(faulty(Faults {
        error_rate: 1.0,
        ..Faults::default()
    }))
    .await;
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..30 {
        let answer = api
            .create("", json!({"email": format!("e{i}@example.com")}))
            .await;
        seen.insert(answer.status.as_u16());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [500, 502, 503]);
    assert!(emulator.contacts().is_empty());
    assert_eq!(emulator.injected_faults().server_errors, 30);
}

async fn statuses_with_seed(seed: u64) -> Vec<u16> {
    let (_emulator, api) = start(faulty(Faults {
        seed,
        error_rate: 0.5,
        ..Faults::default()
    }))
    .await;
    let mut out = Vec::new();
    for _ in 0..40 {
        out.push(api.lookup("email=seed%40example.com").await.status.as_u16());
    }
    out
}

#[tokio::test]
async fn the_same_seed_replays_the_same_faults() {
    let a = statuses_with_seed(42).await;
    let b = statuses_with_seed(42).await;
    let c = statuses_with_seed(43).await;
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.contains(&404) && a.iter().any(|s| *s >= 500), "{a:?}");
}

#[tokio::test]
async fn the_same_seed_gives_the_same_contact_ids() {
    let ids = |seed| async move {
        let (_emulator, api) = start(faulty(Faults {
            seed,
            ..Faults::default()
        }))
        .await;
        api.create_ok(json!({"email": "id@example.com"})).await
    };
    assert_eq!(ids(5).await, ids(5).await);
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let (_emulator, api) = start(faulty(Faults {
        latency: Duration::from_millis(300),
        ..Faults::default()
    }))
    .await;
    let started = Instant::now();
    api.lookup("email=slow%40example.com").await;
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_lost_answer_applies_the_write_and_cuts_the_connection() {
    let (emulator, api) = start(faulty(Faults {
        lost_answer_rate: 1.0,
        ..Faults::default()
    }))
    .await;
    let sent = api
        .request(Method::POST, "/api/v3/contacts")
        .json(&json!({"email": "lost@example.com"}))
        .send()
        .await;
    let err = sent.expect_err("the answer must be lost");
    assert!(!err.is_status() && !err.is_timeout(), "{err:?}");
    let contacts = emulator.find("email", "lost@example.com");
    assert_eq!(contacts.len(), 1, "the write was applied");
    // Lookups are not writes: they are answered, and find the contact.
    let found = api.lookup("email=lost%40example.com").await;
    assert_eq!(found.body, json!(contacts[0].id));
    let patched = api
        .request(
            Method::PATCH,
            &format!("/api/v3/contacts/{}", contacts[0].id),
        )
        .json(&json!({"firstName": "Lost"}))
        .send()
        .await;
    assert!(patched.is_err());
    let stored = emulator.contact(&contacts[0].id).unwrap();
    assert_eq!(stored.get("firstName"), Some(&json!("Lost")));
    let r = emulator.requests();
    assert_eq!(r.count(Endpoint::Create, 0), 1);
    assert_eq!(r.count(Endpoint::Update, 0), 1);
    assert_eq!(emulator.injected_faults().lost_answers, 2);
}

#[tokio::test]
async fn a_lost_answer_sends_not_a_single_byte() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (emulator, _api) = start(faulty(Faults {
        lost_answer_rate: 1.0,
        ..Faults::default()
    }))
    .await;
    let body = r#"{"email":"raw@example.com"}"#;
    let request = format!(
        "POST /api/v3/contacts HTTP/1.1\r\nHost: x\r\nConnection: close\r\napikey: {KEY}\r\nUser-Agent: t/1\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut socket = tokio::net::TcpStream::connect(emulator.addr())
        .await
        .unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    // Closed (EOF) or reset: either way, nothing of a response arrives.
    let read = tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut received));
    assert!(read.await.is_ok(), "the connection must be closed");
    assert!(
        received.is_empty(),
        "{}",
        String::from_utf8_lossy(&received)
    );
    assert_eq!(emulator.find("email", "raw@example.com").len(), 1);
}

#[tokio::test]
async fn failed_writes_are_answered_even_with_lost_answers_on() {
    let (_emulator, api) = start(faulty(Faults {
        lost_answer_rate: 1.0,
        ..Faults::default()
    }))
    .await;
    let answer = api.create("", json!({"firstName": "Nokey"})).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn another_writer_creates_the_contact_right_after_a_404() {
    let (emulator, api) = start(faulty(Faults {
        race_create_rate: 1.0,
        ..Faults::default()
    }))
    .await;
    let lookup = api.lookup("email=race%40example.com").await;
    assert_eq!(lookup.status, StatusCode::NOT_FOUND);
    let create = api.create("", json!({"email": "race@example.com"})).await;
    assert_eq!(create.status, StatusCode::CONFLICT);
    assert_eq!(code(&create), "ApprovedContactWithKeyExists");
    let contacts = emulator.contacts();
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0].created_by, CreatedBy::OtherWriter);
    // The client looked up first: the 409 is not its mistake.
    assert_no_violations(&emulator);
    // The documented recovery: look up again and update.
    let again = api.lookup("email=race%40example.com").await;
    assert_eq!(again.body, json!(contacts[0].id));
    assert_eq!(emulator.injected_faults().race_creates, 1);
}

#[tokio::test]
async fn contacts_are_deleted_between_runs() {
    let (emulator, api) = start(config()).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            api.create_ok(json!({"email": format!("d{i}@example.com")}))
                .await,
        );
    }
    let gone = emulator.delete_contacts(Deletion::Ids(vec![ids[0].clone(), "nope".into()]));
    assert_eq!(gone, [ids[0].clone()]);
    let answer = api.patch(&ids[0], json!({"firstName": "Gone"})).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    let half = emulator.delete_contacts(Deletion::Share(0.5));
    assert!(!half.is_empty() && half.len() < 19, "{}", half.len());
    assert_eq!(emulator.contacts().len(), 19 - half.len());
    let rest = api
        .http
        .post(format!("{}/_emulator/delete-contacts", api.base))
        .json(&json!({"share": 1.0}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(rest["deleted"].as_array().unwrap().len(), 19 - half.len());
    assert!(emulator.contacts().is_empty());
    assert_eq!(emulator.injected_faults().deleted_contacts, 20);
}

#[tokio::test]
async fn delete_on_start_removes_a_seeded_share_of_seed_contacts() {
    let seeds: Vec<_> = (0..30)
        .map(|i| object(json!({"email": format!("s{i}@example.com")})))
        .collect();
    let run = |seed| {
        let seeds = seeds.clone();
        async move {
            let mut c = faulty(Faults {
                seed,
                delete_on_start: 0.5,
                ..Faults::default()
            });
            c.seed_contacts = seeds;
            let emulator = Emulator::start(c).await.unwrap();
            emulator
                .contacts()
                .into_iter()
                .map(|c| c.attributes["email"].clone())
                .collect::<Vec<_>>()
        }
    };
    let a = run(9).await;
    assert!(!a.is_empty() && a.len() < 30, "{}", a.len());
    assert_eq!(a, run(9).await);
}

// ---- Bulk -------------------------------------------------------------------------------

impl Api {
    async fn bulk(&self, method: Method, query: &str, body: Value) -> Answer {
        self.send(
            self.request(method, &format!("/api/v3/contacts/bulk{query}"))
                .json(&body),
        )
        .await
    }

    async fn bulk_status(&self, id: &str) -> Answer {
        self.send(self.request(
            Method::GET,
            &format!("/api/v3/contacts/bulk/status?batchId={id}"),
        ))
        .await
    }

    /// Submits a batch that must be accepted; returns its id.
    async fn bulk_ok(&self, method: Method, query: &str, body: Value) -> String {
        let answer = self.bulk(method, query, body).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text);
        answer.body.as_str().unwrap().to_string()
    }

    /// Polls a batch until it has ended (at most 10 s); returns the last status body.
    async fn bulk_done(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = self.bulk_status(id).await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
            let status = answer.body["status"].as_str().unwrap_or_default();
            if matches!(status, "Completed" | "Failed") || Instant::now() > deadline {
                return answer.body;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn bulk_config(delay: Duration) -> EmulatorConfig {
    let mut c = config();
    c.bulk_delay = delay;
    c
}

/// `(index, errorCode)` of each refused item in a status body.
fn item_errors(status: &Value) -> Vec<(u64, String)> {
    status["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["errorCode"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn status_of(body: &Value) -> &str {
    body["status"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn bulk_create_is_accepted_with_202_and_a_batch_id_string() {
    let (emulator, api) = start(config()).await;
    let answer = api
        .bulk(
            Method::POST,
            "",
            json!([{"email": "b1@example.com", "firstName": "Bo"}, {"email": "b2@example.com"}]),
        )
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    assert!(answer.text.starts_with('"'), "{}", answer.text);
    let id = answer.body.as_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "{id}");
    let batches = emulator.batches();
    assert_eq!(batches.len(), 1);
    assert_eq!(
        (&batches[0].id, batches[0].kind, batches[0].items),
        (&id, BatchKind::Create, 2)
    );
    assert_eq!(batches[0].contact_type, "Member");

    let done = api.bulk_done(&id).await;
    assert_eq!(
        done,
        json!({"batchId": id, "status": "Completed", "totalItems": 2, "succeededItems": 2,
               "failedItems": 0, "errors": []})
    );
    let stored = emulator.find("email", "b1@example.com");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].created_by, CreatedBy::Client);
    assert_eq!(stored[0].get("firstName"), Some(&json!("Bo")));
    assert!(stored[0].get("memberNumber").is_some_and(Value::is_string));
    assert_eq!(emulator.find("email", "b2@example.com").len(), 1);
    assert_no_violations(&emulator);

    let r = emulator.requests();
    assert_eq!(r.count(Endpoint::BulkCreate, 202), 1);
    assert!(r.count(Endpoint::BulkStatus, 200) >= 1);
    let raw = serde_json::to_value(emulator.dump()).unwrap();
    assert_eq!(raw["requests"]["POST /api/v3/contacts/bulk"]["202"], 1);
    assert_eq!(raw["batches"][0]["status"], "Completed");
    assert_eq!(raw["batches"][0]["succeeded"], 2);
}

#[tokio::test]
async fn a_batch_is_queued_then_applied_after_the_delay_even_unpolled() {
    let delay = Duration::from_millis(400);
    let (emulator, api) = start(bulk_config(delay)).await;
    let started = Instant::now();
    let id = api
        .bulk_ok(Method::POST, "", json!([{"email": "d1@example.com"}]))
        .await;
    let early = api.bulk_status(&id).await;
    if started.elapsed() < delay / 2 {
        assert_eq!(status_of(&early.body), "Queued", "{}", early.text);
        assert_eq!(early.body["succeededItems"], 0);
        assert!(emulator.find("email", "d1@example.com").is_empty());
        assert_eq!(emulator.batch(&id).unwrap().status, BatchStatus::Queued);
    }
    tokio::time::sleep(delay + Duration::from_millis(50)).await;
    // Nobody polled since: the accessors and the admin dump see the batch applied.
    assert_eq!(emulator.find("email", "d1@example.com").len(), 1);
    assert_eq!(emulator.batch(&id).unwrap().status, BatchStatus::Completed);
    let dump: Value = api
        .http
        .get(format!("{}/_emulator/dump", api.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dump["contacts"].as_array().unwrap().len(), 1);
    let done = api.bulk_status(&id).await;
    assert_eq!(status_of(&done.body), "Completed");
    assert!(started.elapsed() >= delay);
}

#[tokio::test]
async fn a_stalled_batch_stays_processing_and_applies_nothing() {
    let delay = Duration::from_millis(300);
    let mut c = faulty(Faults {
        bulk_stall_rate: 1.0,
        ..Faults::default()
    });
    c.bulk_delay = delay;
    let (emulator, api) = start(c).await;
    let started = Instant::now();
    let id = api
        .bulk_ok(Method::POST, "", json!([{"email": "st@example.com"}]))
        .await;
    let early = api.bulk_status(&id).await;
    if started.elapsed() < delay / 2 {
        assert_eq!(status_of(&early.body), "Queued");
    }
    tokio::time::sleep(delay * 2).await;
    for _ in 0..2 {
        let late = api.bulk_status(&id).await;
        assert_eq!(status_of(&late.body), "Processing", "{}", late.text);
        assert_eq!(late.body["succeededItems"], 0);
        tokio::time::sleep(delay).await;
    }
    assert!(emulator.contacts().is_empty());
    assert_eq!(emulator.batches()[0].status, BatchStatus::Processing);
    assert_eq!(emulator.injected_faults().stalled_batches, 1);
}

#[tokio::test]
async fn bulk_create_reports_each_refused_item_by_index() {
    let mut c = bulk_config(Duration::ZERO);
    c.seed_contacts = vec![object(json!({"email": "old@example.com"}))];
    let (emulator, api) = start(c).await;
    let id = api
        .bulk_ok(
            Method::POST,
            "?contactType=Member",
            json!([
                {"email": "ok1@example.com", "firstName": "A"},
                {"firstName": "Nokey"},
                {"email": ""},
                {"email": "not-an-email"},
                {"email": "bd@example.com", "birthDay": "1990-13-01", "firstName": "Bd"},
                {"email": "g@example.com", "gender": "male"},
                {"email": "OLD@example.com"},
                {"email": "dup@example.com", "contactType": "Member"},
                {"email": "Dup@Example.com", "firstName": "Second"},
                {"email": "cc@example.com", "countryCode": "Sweden"},
                {"email": "robot@example.com", "contactType": "Robot"},
            ]),
        )
        .await;
    let done = api.bulk_done(&id).await;
    assert_eq!(status_of(&done), "Completed");
    let expected: Vec<(u64, String)> = [
        (1, "MissingKey"),
        (2, "MissingKey"),
        (3, "InvalidEmailAddress"),
        (4, "ValidationError"),
        (5, "ValidationError"),
        (6, "ContactAlreadyExists"),
        (8, "ContactAlreadyExists"),
        (9, "ValidationError"),
        (10, "InvalidContactType"),
    ]
    .into_iter()
    .map(|(i, c)| (i, c.to_string()))
    .collect();
    assert_eq!(item_errors(&done), expected);
    assert_eq!(
        (
            &done["totalItems"],
            &done["succeededItems"],
            &done["failedItems"]
        ),
        (&json!(11), &json!(2), &json!(9))
    );
    let errors = done["errors"].as_array().unwrap();
    assert_eq!(errors[0]["key"], Value::Null);
    assert_eq!(errors[2]["key"], "not-an-email");
    assert!(errors[2]["message"].is_string());
    // A refused item is not applied at all.
    assert!(emulator.find("email", "bd@example.com").is_empty());
    let dup = emulator.find("email", "dup@example.com");
    assert_eq!(dup.len(), 1);
    assert_eq!(dup[0].get("firstName"), None);
    assert_eq!(emulator.contacts().len(), 3);
    // Bulk items are matched by key: an existing key is an item error, not a protocol
    // violation (the client updates those items instead).
    let v = emulator.violations();
    assert_eq!(v.count(ViolationKind::CreateForExistingKey), 0);
    assert_eq!(v.count(ViolationKind::EmptyValue), 1);
}

#[tokio::test]
async fn bulk_items_follow_the_contact_type_and_mandatory_attributes() {
    let mut c = bulk_config(Duration::ZERO);
    c.contact_types.push("Lead=mobilePhone".parse().unwrap());
    c.contact_types
        .push("Person=socialSecurityNumber".parse().unwrap());
    c.mandatory = vec!["firstName".into()];
    let (emulator, api) = start(c).await;
    let leads = api
        .bulk_ok(
            Method::POST,
            "?contactType=Lead",
            json!([
                {"mobilePhone": "0701234567", "firstName": "P"},
                {"mobilePhone": "+46701234567", "firstName": "P"},
                {"mobilePhone": "+46701234568"},
                {"email": "lead@example.com", "firstName": "P"},
            ]),
        )
        .await;
    let done = api.bulk_done(&leads).await;
    let codes: Vec<String> = item_errors(&done).into_iter().map(|(_, c)| c).collect();
    assert_eq!(
        codes,
        ["InvalidPhoneNumber", "ValidationError", "MissingKey"]
    );
    let lead = emulator.find("mobilePhone", "+46701234567");
    assert_eq!(lead.len(), 1);
    assert_eq!(lead[0].contact_type, "Lead");
    assert_eq!(emulator.batches()[0].contact_type, "Lead");

    let people = api
        .bulk_ok(
            Method::POST,
            "?contactType=Person",
            json!([{"socialSecurityNumber": "811218", "firstName": "S"}]),
        )
        .await;
    let done = api.bulk_done(&people).await;
    assert_eq!(
        item_errors(&done),
        [(0, "InvalidSocialSecurityNumber".to_string())]
    );
}

#[tokio::test]
async fn bulk_update_matches_items_by_key() {
    let mut c = bulk_config(Duration::ZERO);
    c.seed_contacts = vec![
        object(json!({"id": "a", "email": "a@example.com", "firstName": "Ann", "city": "Lund"})),
        object(json!({"id": "b", "email": "b@example.com"})),
    ];
    let (emulator, api) = start(c).await;
    let id = api
        .bulk_ok(
            Method::PATCH,
            "?avoidTriggeringExport=false",
            json!([
                {"email": "A@EXAMPLE.COM", "firstName": "Anna", "contactType": "Lead"},
                {"email": "nobody@example.com", "firstName": "X"},
                {"firstName": "Nokey"},
                {"email": "b@example.com", "birthDay": "1990-02-30", "lastName": "Berg"},
                {"email": "bad"},
            ]),
        )
        .await;
    assert_eq!(emulator.batches()[0].kind, BatchKind::Update);
    let done = api.bulk_done(&id).await;
    let expected: Vec<(u64, String)> = [
        (1, "ContactNotFound"),
        (2, "MissingKey"),
        (3, "ValidationError"),
        (4, "InvalidEmailAddress"),
    ]
    .into_iter()
    .map(|(i, c)| (i, c.to_string()))
    .collect();
    assert_eq!(item_errors(&done), expected);
    assert_eq!(done["succeededItems"], 1);
    let a = emulator.contact("a").unwrap();
    assert_eq!(a.get("firstName"), Some(&json!("Anna")));
    assert_eq!(a.get("city"), Some(&json!("Lund")));
    assert_eq!(a.contact_type, "Member");
    assert_eq!(emulator.contact("b").unwrap().get("lastName"), None);
    assert_eq!(emulator.contacts().len(), 2);
    let v = emulator.violations();
    assert_eq!(v.count(ViolationKind::ContactTypeInPatch), 1);
    assert!(
        v.get(ViolationKind::ContactTypeInPatch)
            .unwrap()
            .example
            .starts_with("PATCH /api/v3/contacts/bulk")
    );
    assert_eq!(emulator.requests().count(Endpoint::BulkUpdate, 202), 1);

    // An item need hold only the key and what changes.
    let second = api
        .bulk_ok(
            Method::PATCH,
            "",
            json!([{"email": "b@example.com", "externalId": "E1"}]),
        )
        .await;
    assert_eq!(api.bulk_done(&second).await["succeededItems"], 1);
    assert_eq!(
        emulator.contact("b").unwrap().get("externalId"),
        Some(&json!("E1"))
    );
}

#[tokio::test]
async fn bulk_empty_values_overwrite_and_are_violations() {
    let mut c = bulk_config(Duration::ZERO);
    c.seed_contacts = vec![object(
        json!({"id": "e", "email": "e@example.com", "firstName": "Eve", "lastName": "Lee", "city": "Lund"}),
    )];
    let (emulator, api) = start(c).await;
    let update = api
        .bulk_ok(
            Method::PATCH,
            "",
            json!([{"email": "e@example.com", "firstName": "", "lastName": null, "city": "  "}]),
        )
        .await;
    assert_eq!(api.bulk_done(&update).await["succeededItems"], 1);
    let e = emulator.contact("e").unwrap();
    assert_eq!(e.get("firstName"), Some(&json!("")));
    assert_eq!(e.get("lastName"), Some(&Value::Null));
    assert_eq!(e.get("city"), Some(&json!("  ")));
    let v = emulator.violations();
    assert_eq!(v.count(ViolationKind::EmptyValue), 3);
    assert!(
        v.get(ViolationKind::EmptyValue)
            .unwrap()
            .example
            .starts_with("PATCH /api/v3/contacts/bulk: attribute"),
        "{v:?}"
    );
    // On create, as on single creates: "" is stored, null sets nothing.
    let create = api
        .bulk_ok(
            Method::POST,
            "",
            json!([{"email": "n@example.com", "firstName": "", "city": null}]),
        )
        .await;
    assert_eq!(api.bulk_done(&create).await["succeededItems"], 1);
    let n = &emulator.find("email", "n@example.com")[0];
    assert_eq!(n.get("firstName"), Some(&json!("")));
    assert_eq!(n.get("city"), None);
    assert_eq!(emulator.violations().count(ViolationKind::EmptyValue), 5);
}

#[tokio::test]
async fn bulk_unknown_attributes_are_ignored_silently_and_recorded() {
    let mut c = bulk_config(Duration::ZERO);
    c.custom_attributes = vec!["loyaltyTier".into()];
    let (emulator, api) = start(c).await;
    let id = api
        .bulk_ok(
            Method::POST,
            "",
            json!([{"email": "u@example.com", "loyaltyTier": "gold", "loyalityTier": "typo", "age": 3}]),
        )
        .await;
    let done = api.bulk_done(&id).await;
    assert_eq!(done["succeededItems"], 1);
    assert_eq!(done["errors"], json!([]));
    let u = &emulator.find("email", "u@example.com")[0];
    assert_eq!(u.get("loyaltyTier"), Some(&json!("gold")));
    assert_eq!(u.get("loyalityTier"), None);
    assert_eq!(u.get("age"), None);
    let v = emulator.violations();
    assert_eq!(v.count(ViolationKind::UnknownAttribute), 1);
    assert_eq!(v.count(ViolationKind::ReadOnlyAttribute), 1);
    let example = &v.get(ViolationKind::UnknownAttribute).unwrap().example;
    assert!(
        example.starts_with("POST /api/v3/contacts/bulk") && example.contains("loyalityTier"),
        "{example}"
    );
}

#[tokio::test]
async fn more_than_4000_items_is_400_too_many_items_and_nothing_is_queued() {
    let (emulator, api) = start(bulk_config(Duration::ZERO)).await;
    let items = |n: usize| {
        Value::Array(
            (0..n)
                .map(|i| json!({"email": format!("m{i}@example.com")}))
                .collect(),
        )
    };
    let refused = api.bulk(Method::POST, "", items(4001)).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&refused), "TooManyItems");
    assert!(emulator.batches().is_empty());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(emulator.contacts().is_empty());
    let v = emulator.violations();
    assert_eq!(v.count(ViolationKind::OversizedBatch), 1);
    assert_eq!(v.total(), 1);
    assert_eq!(emulator.requests().count(Endpoint::BulkCreate, 400), 1);

    let id = api.bulk_ok(Method::POST, "", items(4000)).await;
    assert_eq!(api.bulk_done(&id).await["succeededItems"], 4000);
    assert_eq!(emulator.contacts().len(), 4000);
}

#[tokio::test]
async fn malformed_bulk_requests_are_400_and_queue_nothing() {
    let (emulator, api) = start(config()).await;
    let raw = |body: &'static str| {
        api.request(Method::POST, "/api/v3/contacts/bulk")
            .header("content-type", "application/json")
            .body(body)
    };
    for body in ["", "{not json", r#"{"email":"o@example.com"}"#, "[]"] {
        let answer = api.send(raw(body)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(code(&answer), "NoData", "{body}");
    }
    let not_object = api
        .bulk(
            Method::PATCH,
            "",
            json!([{"email": "o@example.com"}, "o@example.com"]),
        )
        .await;
    assert_eq!(not_object.status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&not_object), "InvalidBody");
    let robot = api
        .bulk(
            Method::POST,
            "?contactType=Robot",
            json!([{"email": "o@example.com"}]),
        )
        .await;
    assert_eq!(robot.status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&robot), "InvalidContactType");
    assert!(emulator.batches().is_empty());
    let get = api
        .send(api.request(Method::GET, "/api/v3/contacts/bulk"))
        .await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        emulator.violations().count(ViolationKind::UnknownEndpoint),
        1
    );
}

#[tokio::test]
async fn bulk_status_of_an_unknown_batch_is_404_and_without_an_id_400() {
    let (emulator, api) = start(config()).await;
    let unknown = api.bulk_status("no-such-batch").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(code(&unknown), "BatchNotFound");
    let missing = api
        .send(api.request(Method::GET, "/api/v3/contacts/bulk/status"))
        .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    let r = emulator.requests();
    assert_eq!(r.count(Endpoint::BulkStatus, 404), 1);
    assert_eq!(r.count(Endpoint::BulkStatus, 400), 1);
    assert_no_violations(&emulator);
}

#[tokio::test]
async fn a_failed_batch_applies_nothing() {
    let (emulator, api) = start(faulty(Faults {
        bulk_fail_rate: 1.0,
        ..Faults::default()
    }))
    .await;
    let id = api
        .bulk_ok(
            Method::POST,
            "",
            json!([{"email": "f1@example.com"}, {"email": "f2@example.com"}]),
        )
        .await;
    let done = api.bulk_done(&id).await;
    assert_eq!(status_of(&done), "Failed", "{done}");
    assert_eq!(done["errors"], json!([]));
    assert!(done["message"].is_string());
    assert_eq!(
        (&done["succeededItems"], &done["failedItems"]),
        (&json!(0), &json!(2))
    );
    assert!(emulator.contacts().is_empty());
    assert_eq!(emulator.batches()[0].status, BatchStatus::Failed);
    assert_eq!(emulator.injected_faults().failed_batches, 1);
}

#[tokio::test]
async fn a_lost_bulk_answer_still_queues_and_applies_the_batch() {
    let (emulator, api) = start(faulty(Faults {
        lost_answer_rate: 1.0,
        ..Faults::default()
    }))
    .await;
    let sent = api
        .request(Method::POST, "/api/v3/contacts/bulk")
        .json(&json!([{"email": "lostbulk@example.com"}]))
        .send()
        .await;
    let err = sent.expect_err("the answer must be lost");
    assert!(!err.is_status() && !err.is_timeout(), "{err:?}");
    let batches = emulator.batches();
    assert_eq!(batches.len(), 1);
    // The status endpoint is not a write: it is answered.
    let done = api.bulk_done(&batches[0].id).await;
    assert_eq!(status_of(&done), "Completed");
    assert_eq!(emulator.find("email", "lostbulk@example.com").len(), 1);
    assert_eq!(emulator.requests().count(Endpoint::BulkCreate, 0), 1);
    assert_eq!(emulator.injected_faults().lost_answers, 1);
}

#[tokio::test]
async fn bulk_calls_without_the_api_key_are_401() {
    let (emulator, api) = start(config()).await;
    let http = reqwest::Client::builder()
        .user_agent("t/1")
        .build()
        .unwrap();
    let url = format!("{}/api/v3/contacts/bulk", api.base);
    let body = json!([{"email": "k@example.com"}]);
    let post = http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(post.status(), StatusCode::UNAUTHORIZED);
    let patch = http
        .patch(&url)
        .header("apikey", "wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), StatusCode::UNAUTHORIZED);
    let status = http
        .get(format!("{url}/status?batchId=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), StatusCode::UNAUTHORIZED);
    assert!(emulator.batches().is_empty());
    let r = emulator.requests();
    assert_eq!(r.count(Endpoint::BulkCreate, 401), 1);
    assert_eq!(r.count(Endpoint::BulkUpdate, 401), 1);
    assert_eq!(r.count(Endpoint::BulkStatus, 401), 1);
}

#[tokio::test]
async fn bulk_body_without_json_content_type_is_500() {
    let (emulator, api) = start(config()).await;
    let answer = api
        .send(
            api.request(Method::POST, "/api/v3/contacts/bulk")
                .body(r#"[{"email":"ct@example.com"}]"#),
        )
        .await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        answer.text.contains("An error has occurred"),
        "{}",
        answer.text
    );
    assert!(emulator.batches().is_empty());
    assert_eq!(
        emulator
            .violations()
            .count(ViolationKind::MissingContentType),
        1
    );
}

#[tokio::test]
async fn rate_cap_server_errors_and_latency_apply_to_bulk_calls() {
    let body = json!([{"email": "rl@example.com"}]);
    let (errors, api) = start(faulty(Faults {
        error_rate: 1.0,
        ..Faults::default()
    }))
    .await;
    let failed = api.bulk(Method::POST, "", body.clone()).await;
    assert!(failed.status.is_server_error(), "{}", failed.status);
    assert!(api.bulk_status("x").await.status.is_server_error());
    assert!(errors.batches().is_empty());
    assert_eq!(errors.injected_faults().server_errors, 2);

    let (capped, api) = start(faulty(Faults {
        rate_limit: Some(RateLimit {
            requests: 1,
            window: Duration::from_secs(3600),
            retry_after_secs: None,
        }),
        ..Faults::default()
    }))
    .await;
    let id = api.bulk_ok(Method::POST, "", body.clone()).await;
    let limited = api.bulk_status(&id).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    let again = api.bulk(Method::PATCH, "", body.clone()).await;
    assert_eq!(again.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(capped.batches().len(), 1);
    assert_eq!(capped.requests().count(Endpoint::BulkStatus, 429), 1);

    let (_slow, api) = start(faulty(Faults {
        latency: Duration::from_millis(200),
        ..Faults::default()
    }))
    .await;
    let started = Instant::now();
    api.bulk_ok(Method::POST, "", body).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn the_same_seed_gives_the_same_batch_ids_and_faults() {
    let run = |seed| async move {
        let (emulator, api) = start(faulty(Faults {
            seed,
            bulk_fail_rate: 0.5,
            ..Faults::default()
        }))
        .await;
        let mut out = Vec::new();
        for i in 0..8 {
            let id = api
                .bulk_ok(
                    Method::POST,
                    "",
                    json!([{"email": format!("s{i}@example.com")}]),
                )
                .await;
            let done = api.bulk_done(&id).await;
            out.push((id, status_of(&done).to_string()));
        }
        drop(emulator);
        out
    };
    let a = run(11).await;
    assert_eq!(a, run(11).await);
    let statuses: Vec<&str> = a.iter().map(|(_, s)| s.as_str()).collect();
    assert!(
        statuses.contains(&"Failed") && statuses.contains(&"Completed"),
        "{statuses:?}"
    );
}

// ---- Command line -----------------------------------------------------------------------

mod cli {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Child, Command, Stdio};

    use super::*;

    fn spawn(args: &[&str]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_voyado-sync"))
            .arg("emulator")
            .args(args)
            .env("VOYADO_EMULATOR_API_KEY", KEY)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn wait(child: &mut Child) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("emulator did not stop");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[tokio::test]
    async fn the_binary_serves_until_sigterm_and_dumps_on_exit() {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("seed.json");
        let dump = dir.path().join("dump.json");
        std::fs::write(
            &seed,
            r#"[{"id": "cli-1", "email": "cli@example.com", "tier": "gold"}]"#,
        )
        .unwrap();
        let mut child = spawn(&[
            "--listen",
            "127.0.0.1:0",
            "--seed-contacts",
            seed.to_str().unwrap(),
            "--custom-attributes",
            "tier,points",
            "--mandatory",
            "firstName",
            "--rate-limit",
            "1",
            "--retry-after-secs",
            "9",
            "--seed",
            "3",
            "--dump-on-exit",
            dump.to_str().unwrap(),
        ]);
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let base = line.trim().to_string();
        assert!(base.starts_with("http://127.0.0.1:"), "{base}");

        let http = reqwest::Client::builder()
            .user_agent("t/1")
            .build()
            .unwrap();
        let first = http
            .get(format!("{base}/api/v3/contacts/id?email=cli%40example.com"))
            .header("apikey", KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(first.text().await.unwrap(), "\"cli-1\"");
        // One request per second: twenty in a row cannot all get through.
        let mut limited = None;
        for _ in 0..20 {
            let r = http
                .post(format!("{base}/api/v3/contacts"))
                .header("apikey", KEY)
                .json(&json!({"email": "new@example.com"}))
                .send()
                .await
                .unwrap();
            if r.status() == StatusCode::TOO_MANY_REQUESTS {
                limited = r.headers().get("retry-after").cloned();
                break;
            }
            // Under the cap, the mandatory firstName is missing.
            assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        }
        assert_eq!(limited.unwrap(), "9");

        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        assert!(wait(&mut child).success());
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(!line.contains(KEY) && !rest.contains(KEY) && !stderr.contains(KEY));
        let written: Dump = serde_json::from_slice(&std::fs::read(&dump).unwrap()).unwrap();
        assert_eq!(written.contacts.len(), 1);
        assert_eq!(written.requests.count(Endpoint::Lookup, 200), 1);
        assert!(written.faults.rate_limited >= 1);
        assert!(!std::fs::read_to_string(&dump).unwrap().contains(KEY));

        // The dump seeds the next run, which may delete contacts "between runs".
        let mut next = spawn(&[
            "--seed-contacts",
            dump.to_str().unwrap(),
            "--custom-attributes",
            "tier",
            "--delete-on-start",
            "1",
        ]);
        let mut out = BufReader::new(next.stdout.take().unwrap());
        let mut next_base = String::new();
        out.read_line(&mut next_base).unwrap();
        let gone = http
            .get(format!("{}/api/v3/contacts/cli-1", next_base.trim()))
            .header("apikey", KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(gone.status(), StatusCode::NOT_FOUND);
        Command::new("kill")
            .args(["-INT", &next.id().to_string()])
            .status()
            .unwrap();
        assert!(wait(&mut next).success());
    }

    #[test]
    fn bad_flags_exit_with_the_input_error_code() {
        let mut child = spawn(&["--error-rate", "2"]);
        let status = wait(&mut child);
        assert_eq!(status.code(), Some(2));
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(stderr.contains("error rate"), "{stderr}");
    }

    #[test]
    fn help_does_not_print_the_api_key_from_the_environment() {
        let out = Command::new(env!("CARGO_BIN_EXE_voyado-sync"))
            .args(["emulator", "--help"])
            .env("VOYADO_EMULATOR_API_KEY", KEY)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("--api-key"), "{text}");
        assert!(!text.contains(KEY));
    }
}
