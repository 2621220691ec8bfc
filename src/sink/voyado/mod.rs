//! The Voyado Engage sink: staged change-set rows in, one outcome per row out.
//!
//! Split like an HTTP sink should be: [`encode`] turns Arrow columns into payload values,
//! [`client`] speaks the v3 API (pacing and retries inside), [`rows`] decides per row which
//! calls to make for the sync mode, [`bulk`] does the same through bulk batches (with the
//! undocumented parts of that API isolated in [`bulk_api`]), and [`outcome`] turns the
//! answers into state deltas.

pub mod bulk;
pub mod bulk_api;
pub mod client;
pub mod encode;
pub mod outcome;
pub mod rate;
pub mod retry;
pub mod rows;

pub use client::{ApiKey, Client, RequestCounts};
pub use outcome::{Outcome, OutcomeCounts};
