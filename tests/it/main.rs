//! The one integration-test binary (each extra test binary would relink DataFusion).

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
