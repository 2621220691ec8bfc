//! The one integration-test binary (each extra test binary would relink DataFusion).

#![allow(clippy::unwrap_used)] // a failed setup step should stop the run where it failed

#[cfg(feature = "ballista")]
mod ballista;
mod bulk;
mod cli;
mod common;
mod diff;
mod emulator;
mod exit_codes;
mod golden;
mod input;
mod object_store;
mod reliability;
mod shard;
mod state;
mod sync;
