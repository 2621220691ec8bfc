//! The manifest: the one small file, written last, that says which snapshot and deltas make
//! up a sync's state. Whatever it does not name does not exist for readers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
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
    pub run_id: String,
    pub committed_at: String,
}
