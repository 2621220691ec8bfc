//! A sync's state, on a local folder or an object store: the snapshot of what Voyado
//! confirmed, deltas appended while a run goes, the manifest naming them, a lock, and run
//! reports.
//!
//! Layout under `<state>/<name>/`:
//! ```text
//! manifest.json                        written last; names the files below
//! snapshots/<generation>-<run>.parquet _identifier, _contact_id, _status, _row_hash, attributes
//! deltas/<generation>-<seq>-<run>.parquet  the same columns plus _op (upsert | delete)
//! staged/<run>.parquet                 a run's change set
//! reports/<run>.json                   a run's report
//! lock.json                            present while a run holds the sync
//! ```
//! Every file is written whole before the manifest names it, and the manifest is replaced
//! atomically, so a crash at any moment leaves the previous state (plus every delta it
//! already named) readable.
//!
//! One file per concern: `files` (Parquet and object-store I/O), `load` (snapshot plus
//! deltas, as one frame), `commit` (delta rows from outcomes, checkpoints, compaction, the
//! manifests a run and a commit write), `reports`, `manifest` and `lock`.

mod commit;
mod error;
mod files;
mod load;
pub mod lock;
pub mod manifest;
mod reports;

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::prelude::SessionContext;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::catalog::{redact, register_store};
use crate::config::{Location, Settings};
use crate::error::{Error, Result};
pub use commit::{Checkpoints, Recorded, Recording, delta_batch, run_manifest};
pub use error::StateError;
use files::{check_private, create_private_dir};
pub use load::empty_snapshot;
pub use lock::Lock;
pub use manifest::Manifest;
pub use reports::RejectedRows;

/// Snapshot column names. Attribute columns follow them, named by attribute.
pub const IDENTIFIER: &str = "_identifier";
/// The Voyado contact id of the row, when known.
pub const CONTACT_ID: &str = "_contact_id";
/// What Voyado last said of the row, as `SnapshotStatus::as_str`.
pub const STATUS: &str = "_status";
/// Hash of the row's attribute values as last delivered.
pub const ROW_HASH: &str = "_row_hash";
/// Delta-only columns.
pub const OP: &str = "_op";

/// The snapshot's fixed columns, in order; attribute columns follow.
pub const FIXED_COLUMNS: [&str; 4] = [IDENTIFIER, CONTACT_ID, STATUS, ROW_HASH];

/// What Voyado last said of a snapshot row. Stored in `_status` as
/// [`SnapshotStatus::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SnapshotStatus {
    /// Voyado accepted the row.
    Delivered,
    /// Voyado had no contact with the identifier (a sync that only updates).
    NotFound,
    /// Refused for good. Like a row not found, its next change is sent whole, as new.
    Rejected,
}

impl SnapshotStatus {
    /// Every status.
    pub const ALL: [SnapshotStatus; 3] = [
        SnapshotStatus::Delivered,
        SnapshotStatus::NotFound,
        SnapshotStatus::Rejected,
    ];

    /// The status's name as stored in `_status`.
    pub const fn as_str(self) -> &'static str {
        match self {
            SnapshotStatus::Delivered => "delivered",
            SnapshotStatus::NotFound => "not_found",
            SnapshotStatus::Rejected => "rejected",
        }
    }

    /// The status stored as `s` in `_status`, or `None` for an unknown name.
    pub fn parse(s: &str) -> Option<SnapshotStatus> {
        SnapshotStatus::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for SnapshotStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a delta row does to its identifier's snapshot row. Stored in `_op` as
/// [`DeltaOp::as_str`]; the latest delta row of an identifier wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeltaOp {
    /// The row, as the delta holds it, replaces the snapshot's.
    Upsert,
    /// The row leaves the snapshot.
    Delete,
}

impl DeltaOp {
    /// The operation's name as stored in `_op`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeltaOp::Upsert => "upsert",
            DeltaOp::Delete => "delete",
        }
    }
}

impl std::fmt::Display for DeltaOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sync's (or one shard's) state, on a local folder or an object store.
#[derive(Debug, Clone)]
pub struct State {
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    url_base: String,
    sync: String,
    display: String,
    /// Write state files from this process, from the query's result stream. A distributed
    /// engine would otherwise write them on an executor, with its files and credentials.
    client_writes: bool,
}

fn storage(what: &str, e: object_store::Error) -> Error {
    StateError::store(format!("state: {what}"), e).into()
}

impl State {
    /// Opens (and for a local folder, creates with owner-only permissions) the state of the
    /// sync named in `settings`.
    /// With `create` false (read-only commands), a missing local folder is not created.
    pub fn open(ctx: &SessionContext, settings: &Settings, create: bool) -> Result<State> {
        // A shard's state is a sync of its own one level down, with its own lock.
        let sync = match settings.shard {
            Some(s) => format!("{}/{}", settings.name, shard_dir(s)),
            None => settings.name.clone(),
        };
        match &settings.state {
            Location::Local(base) => {
                let dir = base.join(&sync);
                let made = if create || dir.exists() {
                    create_private_dir(&dir)
                } else {
                    Ok(())
                };
                made.map_err(|e| Error::io(format!("state: cannot create {}", dir.display()), e))?;
                let dir = dir.canonicalize().unwrap_or(dir);
                let dir = std::path::absolute(&dir).unwrap_or(dir);
                check_private(&dir)?;
                let prefix = ObjPath::from_absolute_path(&dir)
                    .map_err(|e| storage(&dir.display().to_string(), e.into()))?;
                let url = url::Url::from_directory_path(&dir).map_err(|_| {
                    StateError::Unusable(format!(
                        "state: {} is not an absolute path",
                        dir.display()
                    ))
                })?;
                Ok(State {
                    store: Arc::new(object_store::local::LocalFileSystem::new()),
                    prefix,
                    url_base: url.to_string(),
                    sync,
                    display: dir.display().to_string(),
                    client_writes: settings.engine.is_ballista(),
                })
            }
            Location::Url(url) => {
                let store = register_store(ctx, settings, url)?;
                let base = url.path().trim_matches('/');
                let prefix = if base.is_empty() {
                    ObjPath::from(sync.as_str())
                } else {
                    ObjPath::from(format!("{base}/{sync}"))
                };
                let host = url.host_str().unwrap_or_default();
                let url_base = format!("{}://{host}/{prefix}/", url.scheme());
                Ok(State {
                    store,
                    prefix,
                    display: redact(&url::Url::parse(&url_base).unwrap_or(url.clone())),
                    url_base,
                    sync,
                    client_writes: settings.engine.is_ballista(),
                })
            }
        }
    }

    /// Where the state is, for messages: a local path or a URL without credentials.
    pub fn location(&self) -> &str {
        &self.display
    }

    fn path(&self, rel: &str) -> ObjPath {
        ObjPath::from(format!("{}/{rel}", self.prefix))
    }

    /// The URL DataFusion reads and writes a state file at.
    pub fn url(&self, rel: &str) -> String {
        format!("{}{rel}", self.url_base)
    }
}

/// The folder of a shard's state under the sync's: `shard-<i>-of-<n>`.
pub fn shard_dir(s: crate::config::Shard) -> String {
    format!("shard-{}-of-{}", s.index, s.count)
}

/// How a sync's state is laid out now: an unsharded snapshot, and the shards that have one.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// Whether the sync has an unsharded state (a manifest of its own).
    pub unsharded: bool,
    /// The shards that have a state, by count, then index.
    pub shards: Vec<crate::config::Shard>,
}

impl State {
    /// Reads the layout of the sync's whole state (opened unsharded), so a sharded run can
    /// refuse a state split another way.
    pub async fn layout(&self) -> Result<Layout> {
        let mut layout = Layout {
            unsharded: self.manifest().await?.is_some(),
            shards: Vec::new(),
        };
        let listed = match self.store.list_with_delimiter(Some(&self.prefix)).await {
            Ok(l) => l,
            Err(object_store::Error::NotFound { .. }) => return Ok(layout),
            Err(e) => return Err(storage("listing shard states", e)),
        };
        for dir in listed.common_prefixes {
            let Some(name) = dir.filename() else { continue };
            let Some((i, n)) = name
                .strip_prefix("shard-")
                .and_then(|r| r.split_once("-of-"))
            else {
                continue;
            };
            let (Ok(index), Ok(count)) = (i.parse(), n.parse()) else {
                continue;
            };
            let manifest = dir.clone().join("manifest.json");
            match self.store.head(&manifest).await {
                Ok(_) => layout.shards.push(crate::config::Shard { index, count }),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(storage("reading a shard's manifest", e)),
            }
        }
        layout.shards.sort_by_key(|s| (s.count, s.index));
        Ok(layout)
    }
}

/// What a commit records besides the rows.
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    /// The run that commits.
    pub run_id: String,
    /// The identifier key the rows were built with.
    pub identifier_key: String,
    /// Every attribute a stored hash may cover, with its type class.
    pub attributes: BTreeMap<String, String>,
}

/// Double-quotes a SQL identifier.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
