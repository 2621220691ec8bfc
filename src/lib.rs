//! voyado-sync keeps Voyado Engage contacts enriched with warehouse-computed attributes,
//! sending only what changed.
//!
//! The flow, one module per stage:
//! - [`config`]: the TOML contract, validated into [`config::Settings`].
//! - [`catalog`]: a DataFusion session bounded by the memory limit, with one SQL table per
//!   configured Parquet source (local or object store).
//! - [`model`]: the user's SQL, planned and checked against the mapping.
//! - [`identity`]: identifier normalisation and validity rules, also as SQL functions.
//! - [`functions`]: the crate's SQL functions (identity rules, row hash, slice key), the
//!   one list every session and Ballista executor registers.
//! - [`columns`]: the change set's column names and kinds, shared by the stages that
//!   write and read it.
//! - [`diff`]: joins of the model's rows with the state on the normalised identifier,
//!   classifying every row as new, changed, unchanged, deleted or invalid.
//! - [`spill`]: rows routed by a hash into per-bucket files, for a model or a diff larger
//!   than memory.
//! - [`stage`]: the change set written once to the state folder, counted, guards checked.
//! - [`sink`]: the Voyado Engage sink: staged rows -> requests -> confirmed outcomes.
//! - [`state`]: snapshot, deltas, commit, manifest, lock and reports on a folder or object
//!   store.
//! - [`pipeline`]: one file per command (`check`, `plan`, `baseline`, `run`, `reset`,
//!   `history`), the only place that strings the stages together; [`report`]: what they
//!   print.
//! - `cluster` (feature `ballista`): a Ballista scheduler or executor with the crate's
//!   functions and object stores, for `[engine] kind = "ballista"`.
//! - [`error`]: one crate error whose kind, and so the exit code, follows from the failure.
//!
//! The Voyado Engage emulator that tests and `demo` run against is its own crate,
//! `voyado-emulator` (folder `emulator/`), sharing no code with this one.

pub mod catalog;
pub mod cli;
#[cfg(feature = "ballista")]
pub mod cluster;
pub(crate) mod columns;
pub mod config;
pub mod demo;
pub(crate) mod diff;
pub mod error;
pub(crate) mod functions;
pub(crate) mod identity;
pub mod model;
pub mod pipeline;
pub mod report;
pub mod sink;
pub(crate) mod spill;
pub(crate) mod stage;
pub mod state;
pub(crate) mod strings;

pub use error::{Error, Result};
