//! The Voyado Engage sink: staged change-set rows in, one confirmed outcome per row out.
//!
//! Split like an HTTP sink should be: [`request`] decodes staged rows into encoded rows
//! (with [`encode`] turning Arrow columns into payload values), [`sink`] drives them through
//! the single path ([`single`]: per-row decisions for the sync mode) or the bulk path
//! ([`bulk`], with the undocumented parts of that API isolated in [`bulk_api`]) and yields
//! outcomes ([`outcome`]) a chunk at a time. [`calls`] are the Voyado calls, over the
//! transport in [`client`] (pacing in [`rate`], retries in [`retry`]); [`wire`] holds what
//! every call shares on the wire.

pub mod bulk;
pub mod bulk_api;
pub mod calls;
pub mod client;
pub mod encode;
pub mod outcome;
pub mod rate;
pub mod request;
pub mod retry;
pub mod single;
pub mod sink;
pub mod wire;

pub use calls::VoyadoError;
pub use client::{ApiKey, Client, RequestCounts};
pub use outcome::{Outcome, OutcomeCounts};
pub use sink::{Delivered, OutcomeChunk, Sink};
