//! voyado-sync keeps Voyado Engage contacts enriched with warehouse-computed attributes,
//! sending only what changed.
//!
//! The flow, one module per stage:
//! - [`config`]: the TOML contract, validated into [`config::Settings`].
//! - [`catalog`]: a DataFusion session bounded by the memory limit, with one SQL table per
//!   configured Parquet source (local or object store).
//! - [`model`]: the user's SQL, planned and checked against the mapping.
//! - [`identity`]: identifier normalisation and validity rules, also as SQL functions.
//! - [`diff`]: joins of the model's rows with the state on the normalised identifier,
//!   classifying every row as new, changed, unchanged, deleted or invalid.
//! - [`spill`]: rows routed by a hash into per-bucket files, for a model or a diff larger
//!   than memory.
//! - [`state`]: snapshot, deltas, manifest and lock on a folder or object store.
//! - [`sink`]: the Voyado Engage client, payload encoding and per-row decisions.
//! - [`runner`]: one `run`, from the diff to the committed snapshot.
//! - [`commands`]: `check`, `plan`, `baseline`, `reset`; [`report`]: what they print.
//! - `cluster` (feature `ballista`): a Ballista scheduler or executor with the crate's
//!   functions and object stores, for `[engine] kind = "ballista"`.

pub mod catalog;
pub mod cli;
#[cfg(feature = "ballista")]
pub mod cluster;
pub mod commands;
pub mod config;
pub mod demo;
pub mod diff;
pub mod error;
pub mod identity;
pub mod model;
pub mod report;
pub mod runner;
pub mod sink;
pub mod spill;
pub mod state;
pub mod strings;

pub use error::{Error, Result};
