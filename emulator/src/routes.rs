//! HTTP: routing, the API key, Content-Type, passive violation checks, faults, and the
//! admin endpoints under `/_emulator/` (never counted as requests or violations).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::bulk::{self, BatchKind};
use super::config::ApiKey;
use super::conn::Connection;
use super::contacts::{self, CreateParams, Reply, error};
use super::state::{Endpoint, Tenant};
use super::violations::ViolationKind;
use super::{Deletion, delete_contacts};

/// Bodies larger than this are refused like an unreadable body.
const BODY_LIMIT: usize = 4 * 1024 * 1024;
/// The same for bulk requests: 4000 contacts need room. ASP.NET's default request cap.
const BULK_BODY_LIMIT: usize = 30_000_000;

#[derive(Clone)]
pub(crate) struct AppState {
    pub tenant: Arc<Mutex<Tenant>>,
    pub api_key: Arc<ApiKey>,
}

/// Locks the tenant and applies the bulk batches that have come due, so whoever looks next
/// sees them applied. A panic elsewhere must not wedge the emulator, so poisoning is ignored.
pub(crate) fn lock(tenant: &Mutex<Tenant>) -> MutexGuard<'_, Tenant> {
    let mut guard = tenant.lock().unwrap_or_else(PoisonError::into_inner);
    bulk::settle(&mut guard, Instant::now());
    guard
}

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/_emulator/dump", get(dump))
        .route("/_emulator/delete-contacts", post(delete))
        .route("/_emulator/{*rest}", any(admin_unknown))
        .fallback(api)
        .with_state(state)
}

/// Which API operation a method and path name.
#[derive(Debug, PartialEq)]
enum Route {
    Lookup,
    Create,
    Update(String),
    Get(String),
    BulkCreate,
    BulkUpdate,
    BulkStatus,
    V2,
    /// A known path with a method it does not support.
    WrongMethod(Endpoint),
    Unknown,
}

impl Route {
    fn parse(method: &Method, path: &str) -> Route {
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        let lower: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
        let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
        match (method, lower.as_slice()) {
            (_, ["api", "v2", ..]) => Route::V2,
            (&Method::GET, ["api", "v3", "contacts", "id"]) => Route::Lookup,
            (_, ["api", "v3", "contacts", "id"]) => Route::WrongMethod(Endpoint::Lookup),
            (&Method::POST, ["api", "v3", "contacts"]) => Route::Create,
            (_, ["api", "v3", "contacts"]) => Route::WrongMethod(Endpoint::Create),
            (&Method::GET, ["api", "v3", "contacts", "bulk", "status"]) => Route::BulkStatus,
            (_, ["api", "v3", "contacts", "bulk", "status"]) => {
                Route::WrongMethod(Endpoint::BulkStatus)
            }
            (&Method::POST, ["api", "v3", "contacts", "bulk"]) => Route::BulkCreate,
            (&Method::PATCH, ["api", "v3", "contacts", "bulk"]) => Route::BulkUpdate,
            (_, ["api", "v3", "contacts", "bulk"]) => Route::WrongMethod(Endpoint::BulkCreate),
            (_, ["api", "v3", "contacts", "bulk", ..]) => Route::Unknown,
            (&Method::PATCH, ["api", "v3", "contacts", _]) => {
                Route::Update(segments[3].to_string())
            }
            (&Method::GET, ["api", "v3", "contacts", _]) => Route::Get(segments[3].to_string()),
            (_, ["api", "v3", "contacts", _]) => Route::WrongMethod(Endpoint::Update),
            _ => Route::Unknown,
        }
    }

    fn endpoint(&self) -> Endpoint {
        match self {
            Route::Lookup => Endpoint::Lookup,
            Route::Create => Endpoint::Create,
            Route::Update(_) => Endpoint::Update,
            Route::Get(_) => Endpoint::Get,
            Route::BulkCreate => Endpoint::BulkCreate,
            Route::BulkUpdate => Endpoint::BulkUpdate,
            Route::BulkStatus => Endpoint::BulkStatus,
            Route::V2 => Endpoint::V2,
            Route::WrongMethod(_) | Route::Unknown => Endpoint::Unknown,
        }
    }
}

/// ASP.NET-style message bodies, which is what Engage's framework answers outside its own
/// error codes.
fn message(status: u16, text: &str) -> Reply {
    Reply {
        status,
        body: json!({ "Message": text }),
    }
}

/// Records what is wrong with the request itself, whatever its answer will be.
fn passive_violations(
    tenant: &mut Tenant,
    method: &Method,
    path: &str,
    route: &Route,
    headers: &HeaderMap,
) {
    let what = format!("{method} {path}");
    if !headers.contains_key(header::USER_AGENT) {
        tenant.violations.record(
            ViolationKind::MissingUserAgent,
            format!("{what}: no User-Agent header"),
        );
    }
    for name in ["source", "storeexternalid", "createasunapproved"] {
        if headers.contains_key(name) {
            tenant.violations.record(
                ViolationKind::ParameterAsHeader,
                format!("{what}: `{name}` sent as a header; v3 reads it from the query string and ignored it"),
            );
        }
    }
    match route {
        Route::V2 => tenant
            .violations
            .record(ViolationKind::V2Path, format!("{what}: a v2 path")),
        Route::Unknown | Route::WrongMethod(_) => tenant.violations.record(
            ViolationKind::UnknownEndpoint,
            format!("{what}: no such endpoint"),
        ),
        _ => {}
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// Reads a write's JSON body: 500 without a JSON Content-Type (as Engage does), 400 NoData
/// for an empty, oversized or unparsable body.
async fn read_json(
    state: &AppState,
    headers: &HeaderMap,
    what: &str,
    body: Body,
    limit: usize,
) -> Result<Value, Reply> {
    if !is_json(headers) {
        lock(&state.tenant).violations.record(
            ViolationKind::MissingContentType,
            format!("{what}: body sent without Content-Type: application/json"),
        );
        return Err(message(500, "An error has occurred."));
    }
    let bytes = to_bytes(body, limit).await.unwrap_or_default();
    serde_json::from_slice::<Value>(&bytes)
        .map_err(|_| error(400, "NoData", "the body is empty or not JSON"))
}

/// A single write's body, which must be one JSON object (400 NoData otherwise).
async fn read_object(
    state: &AppState,
    headers: &HeaderMap,
    what: &str,
    body: Body,
) -> Result<Map<String, Value>, Reply> {
    match read_json(state, headers, what, body, BODY_LIMIT).await? {
        Value::Object(map) => Ok(map),
        _ => Err(error(400, "NoData", "the body is not a JSON object")),
    }
}

/// A bulk write: the body is checked and queued by [`bulk::submit`].
async fn bulk_submit(
    state: &AppState,
    kind: BatchKind,
    params: &[(String, String)],
    headers: &HeaderMap,
    what: &str,
    body: Body,
) -> Reply {
    match read_json(state, headers, what, body, BULK_BODY_LIMIT).await {
        Ok(value) => bulk::submit(
            &mut lock(&state.tenant),
            kind,
            params,
            value,
            Instant::now(),
        ),
        Err(reply) => reply,
    }
}

fn query(uri: &axum::http::Uri) -> Vec<(String, String)> {
    Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

fn create_params(params: &[(String, String)]) -> CreateParams {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    CreateParams {
        source: get("source"),
        store_external_id: get("storeExternalId"),
        create_as_unapproved: get("createAsUnapproved")
            .is_some_and(|v| v.eq_ignore_ascii_case("true")),
    }
}

/// Every API request: checks, faults, then the operation. Kept as one function so the
/// order in which Voyado refuses a request (key, path, method, faults, body) reads top to
/// bottom.
async fn api(
    State(state): State<AppState>,
    ConnectInfo(conn): ConnectInfo<Connection>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let route = Route::parse(&parts.method, &path);
    let endpoint = route.endpoint();
    let what = format!("{} {path}", parts.method);

    let latency = {
        let mut t = lock(&state.tenant);
        passive_violations(&mut t, &parts.method, &path, &route, &parts.headers);
        t.faults.latency()
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let authorised = parts
        .headers
        .get("apikey")
        .is_some_and(|v| state.api_key.matches(v.as_bytes()));
    if !authorised {
        return finish(
            &state,
            endpoint,
            message(401, "Authorization has been denied for this request."),
            None,
        );
    }
    let fault = {
        let mut t = lock(&state.tenant);
        match t.faults.rate_limited(Instant::now()) {
            Some(retry_after) => Err((429, retry_after)),
            None => match t.faults.server_error() {
                Some(e) => Err((e.status(), None)),
                None => Ok(()),
            },
        }
    };
    if let Err((status, retry_after)) = fault {
        return fault_response(&state, endpoint, status, retry_after);
    }

    let params = query(&parts.uri);
    let reply = match route {
        Route::Lookup => contacts::lookup(&mut lock(&state.tenant), &params),
        Route::Get(id) => contacts::get(&lock(&state.tenant), &id),
        Route::Create => match read_object(&state, &parts.headers, &what, body).await {
            Ok(map) => contacts::create(&mut lock(&state.tenant), create_params(&params), map),
            Err(reply) => reply,
        },
        Route::Update(id) => match read_object(&state, &parts.headers, &what, body).await {
            Ok(map) => contacts::update(&mut lock(&state.tenant), &id, map),
            Err(reply) => reply,
        },
        Route::BulkCreate => {
            bulk_submit(
                &state,
                BatchKind::Create,
                &params,
                &parts.headers,
                &what,
                body,
            )
            .await
        }
        Route::BulkUpdate => {
            bulk_submit(
                &state,
                BatchKind::Update,
                &params,
                &parts.headers,
                &what,
                body,
            )
            .await
        }
        Route::BulkStatus => bulk::status(&lock(&state.tenant), &params, Instant::now()),
        Route::V2 => message(404, "v2 paths are not emulated: use /api/v3/"),
        Route::WrongMethod(_) => message(
            405,
            &format!(
                "The requested resource does not support http method '{}'.",
                parts.method
            ),
        ),
        Route::Unknown => message(
            404,
            &format!("No HTTP resource was found that matches the request URI '{path}'."),
        ),
    };
    let is_write = matches!(
        endpoint,
        Endpoint::Create | Endpoint::Update | Endpoint::BulkCreate | Endpoint::BulkUpdate
    );
    if is_write && (200..300).contains(&reply.status) && lock(&state.tenant).faults.lose_answer() {
        conn.cut();
        return finish(&state, endpoint, reply, Some(0));
    }
    finish(&state, endpoint, reply, None)
}

/// Counts the request (under `status_override` for a lost answer) and builds the response.
fn finish(
    state: &AppState,
    endpoint: Endpoint,
    reply: Reply,
    status_override: Option<u16>,
) -> Response {
    lock(&state.tenant)
        .requests
        .record(endpoint, status_override.unwrap_or(reply.status));
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(reply.body)).into_response()
}

/// 429 (with Retry-After if configured) or a server error with the body a gateway or
/// Engage would send: not always JSON.
fn fault_response(
    state: &AppState,
    endpoint: Endpoint,
    status: u16,
    retry_after: Option<u64>,
) -> Response {
    lock(&state.tenant).requests.record(endpoint, status);
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match status {
        429 => {
            let mut response = (
                code,
                axum::Json(json!({"Message": "API calls quota exceeded."})),
            )
                .into_response();
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            response
        }
        500 => (
            code,
            axum::Json(json!({"Message": "An error has occurred."})),
        )
            .into_response(),
        502 => (code, "<html><body><h1>502 Bad Gateway</h1></body></html>").into_response(),
        _ => (
            code,
            "<html><body><h1>503 Service Unavailable</h1></body></html>",
        )
            .into_response(),
    }
}

async fn dump(State(state): State<AppState>) -> Response {
    axum::Json(lock(&state.tenant).dump()).into_response()
}

/// `POST /_emulator/delete-contacts` with `{"share": 0.3}` or `{"ids": [...]}`.
async fn delete(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    let which = match serde_json::from_slice::<Deletion>(&body) {
        Ok(w) => w,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("expected {{\"share\": 0.3}} or {{\"ids\": [...]}}: {e}"),
            )
                .into_response();
        }
    };
    let deleted = delete_contacts(&mut lock(&state.tenant), &which);
    axum::Json(json!({ "deleted": deleted })).into_response()
}

async fn admin_unknown() -> Response {
    (
        StatusCode::NOT_FOUND,
        "admin endpoints: GET /_emulator/dump, POST /_emulator/delete-contacts",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = |m: Method, p: &str| Route::parse(&m, p);
        assert_eq!(r(Method::GET, "/api/v3/contacts/id"), Route::Lookup);
        assert_eq!(r(Method::POST, "/api/v3/contacts"), Route::Create);
        assert_eq!(
            r(Method::PATCH, "/api/v3/contacts/abc"),
            Route::Update("abc".into())
        );
        assert_eq!(
            r(Method::GET, "/api/v3/contacts/abc"),
            Route::Get("abc".into())
        );
        assert_eq!(r(Method::POST, "/api/v2/contacts"), Route::V2);
        assert_eq!(r(Method::POST, "/api/v3/contacts/bulk"), Route::BulkCreate);
        assert_eq!(
            r(Method::PATCH, "/api/v3/contacts/Bulk/"),
            Route::BulkUpdate
        );
        assert_eq!(
            r(Method::GET, "/api/v3/contacts/bulk/status"),
            Route::BulkStatus
        );
        assert_eq!(
            r(Method::GET, "/api/v3/contacts/bulk"),
            Route::WrongMethod(Endpoint::BulkCreate)
        );
        assert_eq!(
            r(Method::POST, "/api/v3/contacts/bulk/status"),
            Route::WrongMethod(Endpoint::BulkStatus)
        );
        assert_eq!(r(Method::POST, "/api/v3/contacts/bulk/x"), Route::Unknown);
        assert_eq!(
            r(Method::DELETE, "/api/v3/contacts/abc"),
            Route::WrongMethod(Endpoint::Update)
        );
        assert_eq!(r(Method::GET, "/api/v3/orders"), Route::Unknown);
    }
}
