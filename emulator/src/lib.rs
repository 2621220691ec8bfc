//! A strict local stand-in for Voyado Engage's contacts API (v3), built to Voyado's
//! documentation rather than to the sink, so the two can disagree and tests can notice.
//!
//! It answers as Engage does, including the unpleasant parts (500 for a missing
//! Content-Type, unknown attributes silently dropped, `""` and `null` overwriting, bulk
//! batches applied some time after they were accepted), records
//! every request and every protocol mistake ([`ViolationKind`]), and injects faults on
//! demand from a seed ([`Faults`]). Start it with [`Emulator::start`], or as a process
//! with [`run_cli`] (`voyado-sync emulator`); see the README's emulator section.
//!
//! It is a crate of its own, not a module of voyado-sync, because it shares no code with
//! the sync: as a crate, the compiler keeps the sync from reaching into the emulator's
//! internals (a test passing because both sides share a helper would prove nothing) and
//! the emulator from reaching into the sync's, and the emulator and its own tests build
//! without DataFusion.

mod attributes;
mod bulk;
mod cli;
mod config;
mod conn;
mod contacts;
mod faults;
mod routes;
mod state;
mod violations;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use bulk::{BatchInfo, BatchKind, BatchStatus, ItemError, MAX_ITEMS};
pub use cli::{CliError, EmulatorArgs, run_cli};
pub use config::{ApiKey, ContactTypeConfig, EmulatorConfig, Faults, RateLimit};
pub use faults::InjectedFaults;
pub use state::{Contact, CreatedBy, Dump, Endpoint, RequestCounts};
pub use violations::{ViolationKind, ViolationRecord, Violations};

use attributes::{READ_ONLY, WRITABLE};
use conn::{Connection, CutListener};
use routes::{AppState, lock};
use state::Tenant;

/// Why the emulator could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// The configuration is invalid, e.g. a share outside 0..=1 or no contact type.
    #[error("emulator configuration: {0}")]
    Config(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// A seed or inserted contact was refused.
    #[error("seed contacts: {0}")]
    Seed(String),
    /// The dump could not be written on shutdown.
    #[error("cannot write the dump to {path}: {message}")]
    Dump {
        /// The `dump_on_exit` path.
        path: PathBuf,
        /// Why serializing or writing failed.
        message: String,
    },
}

/// Which contacts to delete, as "another process" would between two sync runs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Deletion {
    /// Each contact with this probability, drawn from the seeded stream.
    Share(f64),
    /// These contacts, by id; unknown ids are skipped.
    Ids(Vec<String>),
}

/// Deletes contacts and returns the ids removed, in creation order.
fn delete_contacts(tenant: &mut Tenant, which: &Deletion) -> Vec<String> {
    let doomed: Vec<String> = match which {
        Deletion::Share(share) => {
            let share = share.clamp(0.0, 1.0);
            tenant
                .ids()
                .into_iter()
                .filter(|_| tenant.faults.delete_one(share))
                .collect()
        }
        Deletion::Ids(ids) => ids
            .iter()
            .filter(|id| tenant.get(id).is_some())
            .cloned()
            .collect(),
    };
    for id in &doomed {
        tenant.remove(id);
    }
    tenant.faults.injected.deleted_contacts += doomed.len() as u64;
    doomed
}

/// Adds one seed contact: a flat object with optional `id` and `contactType`. Seeds are
/// checked strictly, since a wrong seed would make every later assertion meaningless.
fn seed(tenant: &mut Tenant, mut object: Map<String, Value>) -> Result<String, String> {
    let id = match object.remove("id") {
        Some(Value::String(id)) if !id.is_empty() => id,
        None => tenant.new_id(),
        Some(other) => return Err(format!("invalid id {other}")),
    };
    if tenant.get(&id).is_some() {
        return Err(format!("duplicate id {id}"));
    }
    let type_name = match object.remove("contactType") {
        Some(Value::String(t)) => t,
        None => "Member".into(),
        Some(other) => return Err(format!("contact {id}: invalid contactType {other}")),
    };
    let key = tenant
        .settings
        .contact_type(&type_name)
        .map(|t| t.key.clone())
        .ok_or_else(|| format!("contact {id}: unknown contact type `{type_name}`"))?;
    for name in object.keys() {
        let known = WRITABLE.contains(&name.as_str())
            || name == "memberNumber"
            || tenant.settings.custom_attributes.contains(name);
        if !known {
            let why = if READ_ONLY.contains(&name.as_str()) {
                "is computed"
            } else {
                "is not configured"
            };
            return Err(format!("contact {id}: attribute `{name}` {why}"));
        }
    }
    let key_value = object
        .get(&key)
        .and_then(Value::as_str)
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| format!("contact {id}: no {key}, the key of {type_name}"))?;
    if tenant
        .find(&key, key_value)
        .iter()
        .any(|c| c.contact_type == type_name)
    {
        return Err(format!(
            "contact {id}: another {type_name} has the same {key}"
        ));
    }
    Ok(tenant.insert(Contact {
        id,
        contact_type: type_name,
        approved: true,
        created_by: CreatedBy::Seed,
        source: None,
        store_external_id: None,
        attributes: object,
    }))
}

/// A running emulator. Dropping it stops the server; [`Emulator::shutdown`] also returns
/// the final dump and writes it to `dump_on_exit` if configured.
#[derive(Debug)]
pub struct Emulator {
    addr: SocketAddr,
    tenant: Arc<Mutex<Tenant>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    dump_on_exit: Option<PathBuf>,
}

impl Emulator {
    /// Binds `config.listen` (port 0 picks a free port), seeds contacts, applies
    /// `delete_on_start`, and serves until shut down or dropped.
    pub async fn start(config: EmulatorConfig) -> Result<Emulator, EmulatorError> {
        config.validate().map_err(EmulatorError::Config)?;
        let mut tenant = Tenant::new(&config);
        for object in config.seed_contacts.iter().cloned() {
            seed(&mut tenant, object).map_err(EmulatorError::Seed)?;
        }
        if config.faults.delete_on_start > 0.0 {
            delete_contacts(&mut tenant, &Deletion::Share(config.faults.delete_on_start));
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| EmulatorError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| EmulatorError::Bind {
                addr: config.listen,
                source,
            })?;
        let tenant = Arc::new(Mutex::new(tenant));
        let app = routes::router(AppState {
            tenant: tenant.clone(),
            api_key: Arc::new(config.api_key.clone()),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let server = axum::serve(
            CutListener(listener),
            app.into_make_service_with_connect_info::<Connection>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        let task = tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "emulator server stopped");
            }
        });
        tracing::info!(%addr, "Voyado emulator listening");
        Ok(Emulator {
            addr,
            tenant,
            stop: Some(stop),
            task: Some(task),
            dump_on_exit: config.dump_on_exit,
        })
    }

    /// The address the emulator listens on, with the actual port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the base URL to configure a client with.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Contacts, request counts, violations and injected faults, as `GET /_emulator/dump`.
    pub fn dump(&self) -> Dump {
        lock(&self.tenant).dump()
    }

    /// All contacts in creation order.
    pub fn contacts(&self) -> Vec<Contact> {
        lock(&self.tenant).contacts().cloned().collect()
    }

    /// The contact with this id, if it exists.
    pub fn contact(&self, id: &str) -> Option<Contact> {
        lock(&self.tenant).get(id).cloned()
    }

    /// Contacts whose key attribute (`email`, `mobilePhone`, `socialSecurityNumber`,
    /// `externalId`, `memberNumber`) equals `value`, compared as lookups compare.
    pub fn find(&self, attribute: &str, value: &str) -> Vec<Contact> {
        lock(&self.tenant)
            .find(attribute, value)
            .into_iter()
            .cloned()
            .collect()
    }

    /// Requests received so far, by endpoint and status.
    pub fn requests(&self) -> RequestCounts {
        lock(&self.tenant).requests.clone()
    }

    /// Protocol violations recorded so far.
    pub fn violations(&self) -> Violations {
        lock(&self.tenant).violations.clone()
    }

    /// Counts of the faults injected so far.
    pub fn injected_faults(&self) -> InjectedFaults {
        lock(&self.tenant).faults.injected
    }

    /// Bulk batches in acceptance order, with their status as of now.
    pub fn batches(&self) -> Vec<BatchInfo> {
        lock(&self.tenant)
            .batches
            .infos(tokio::time::Instant::now())
    }

    /// The bulk batch with this id and its status as of now, if it exists.
    pub fn batch(&self, id: &str) -> Option<BatchInfo> {
        lock(&self.tenant)
            .batches
            .info(id, tokio::time::Instant::now())
    }

    /// Adds a contact as a seed would (flat object, optional `id`/`contactType`).
    pub fn insert_contact(&self, object: Map<String, Value>) -> Result<String, EmulatorError> {
        seed(&mut lock(&self.tenant), object).map_err(EmulatorError::Seed)
    }

    /// Deletes contacts between two runs of the code under test; returns the deleted ids.
    pub fn delete_contacts(&self, which: Deletion) -> Vec<String> {
        delete_contacts(&mut lock(&self.tenant), &which)
    }

    /// Stops serving (in-flight requests finish, idle connections close), writes the dump
    /// to `dump_on_exit` if configured, and returns it.
    pub async fn shutdown(mut self) -> Result<Dump, EmulatorError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // Keep-alive clients may hold connections open; do not wait on them forever.
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        let dump = self.dump();
        if let Some(path) = &self.dump_on_exit {
            let text = serde_json::to_vec_pretty(&dump).map_err(|e| EmulatorError::Dump {
                path: path.clone(),
                message: e.to_string(),
            })?;
            std::fs::write(path, text).map_err(|e| EmulatorError::Dump {
                path: path.clone(),
                message: e.to_string(),
            })?;
        }
        Ok(dump)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
