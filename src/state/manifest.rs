//! The manifest: the one small file, written last, that says which snapshot and deltas make
//! up a sync's state. Whatever it does not name does not exist for readers.

use std::collections::BTreeMap;

use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::StateError;
use super::{State, storage};
use crate::error::{Error, Result};

/// The manifest format this version writes; a state with a newer one is refused.
pub const FORMAT_VERSION: u32 = 1;

/// The contents of `manifest.json`: the files that make up a sync's state and what they
/// were built with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Version of the manifest format (see `FORMAT_VERSION`).
    pub format_version: u32,
    /// Version of the row hash stored in the snapshot and deltas.
    pub hash_version: u32,
    /// Increases with every commit; file names carry it so commits never overwrite.
    pub generation: u64,
    /// The identifier key the state was built with; another key makes it meaningless.
    pub identifier_key: String,
    /// Every attribute a stored hash may cover, with its type class.
    pub attributes: BTreeMap<String, String>,
    /// Snapshot files, relative to the sync's state folder.
    pub snapshot: Vec<String>,
    /// Delta files appended since the snapshot, oldest first.
    #[serde(default)]
    pub deltas: Vec<String>,
    /// Rows in the snapshot files (deltas not included).
    pub snapshot_rows: u64,
    /// The run that wrote this manifest.
    pub run_id: String,
    /// When the state was committed, RFC 3339 in UTC with milliseconds; empty before the
    /// first commit.
    pub committed_at: String,
}

impl State {
    /// Reads the sync's manifest; `None` when the sync has no state yet.
    pub async fn manifest(&self) -> Result<Option<Manifest>> {
        let path = self.path("manifest.json");
        match self.store.get(&path).await {
            Ok(r) => {
                let bytes = r
                    .bytes()
                    .await
                    .map_err(|e| storage("reading manifest.json", e))?;
                let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::from(StateError::Unusable(format!(
                        "state: {}/manifest.json is not a valid manifest: {e}",
                        self.display
                    )))
                })?;
                if m.format_version > FORMAT_VERSION {
                    return Err(Error::from(StateError::Unusable(format!(
                        "state: manifest format {} is newer than this version of voyado-sync understands ({})",
                        m.format_version, FORMAT_VERSION
                    ))));
                }
                Ok(Some(m))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(storage("reading manifest.json", e)),
        }
    }

    pub(super) async fn put_manifest(&self, m: &Manifest) -> Result<()> {
        let body = serde_json::to_vec_pretty(m)
            .map_err(|e| Error::Internal(format!("manifest encode: {e}")))?;
        self.store
            .put(&self.path("manifest.json"), PutPayload::from(body))
            .await
            .map_err(|e| storage("writing manifest.json", e))?;
        Ok(())
    }
}
