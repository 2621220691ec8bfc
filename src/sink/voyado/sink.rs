//! The sink driver: the staged change set in, confirmed outcomes out, a chunk at a time.
//!
//! Each chunk of staged rows is decoded by the request builder, sent through the single or
//! the bulk path (one [`Sender`]), and answered with one outcome per row; rows Voyado did
//! not take are logged, counted and sampled here, so the caller only records and reports.

use std::collections::BTreeMap;

use datafusion::arrow::array::RecordBatch;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::StreamExt;

use super::bulk::{self, BulkPlanner};
use super::client::Client;
use super::outcome::{Outcome, OutcomeCounts};
use super::request::{EncodedRow, Rechunker, encode_rows};
use super::single::SinglePlanner;
use crate::config::{Api, Settings};
use crate::diff::Sample;
use crate::error::{Error, Result};
use crate::state::StateError;

/// The two ways rows reach Voyado, behind one call.
pub enum Sender<'a> {
    /// One request (or a few) per row, `concurrency` rows at a time.
    Single {
        /// The planner making each row's calls.
        planner: SinglePlanner<'a>,
        /// Rows in flight at once.
        concurrency: usize,
    },
    /// Bulk batches, polled until Voyado reports them finished.
    Bulk(BulkPlanner<'a>),
}

impl<'a> Sender<'a> {
    /// The path `settings.api` names.
    pub fn new(client: &'a Client, s: &'a Settings) -> Sender<'a> {
        match s.api {
            Api::Single => Sender::Single {
                planner: SinglePlanner {
                    client,
                    mode: s.mode,
                    key: s.key,
                    contact_type: &s.destination.contact_type,
                },
                concurrency: s.limits.concurrency as usize,
            },
            Api::Bulk => Sender::Bulk(BulkPlanner {
                client,
                mode: s.mode,
                key: s.key,
                settings: s.bulk,
                stopped: Default::default(),
            }),
        }
    }

    /// Rows sent per chunk: no more than a checkpoint (so a checkpoint never waits for a
    /// whole staged batch), or a few whole bulk batches.
    fn chunk_rows(&self, s: &Settings) -> usize {
        match self {
            Sender::Single { concurrency, .. } => {
                (s.limits.checkpoint_rows as usize).clamp(*concurrency * 2, 2048)
            }
            Sender::Bulk(_) => s.bulk.batch_size * bulk::IN_FLIGHT,
        }
    }

    /// One outcome per row: (row index, identifier, outcome), in no particular order.
    pub async fn send(&self, rows: Vec<(usize, EncodedRow)>) -> Vec<(usize, String, Outcome)> {
        match self {
            Sender::Single {
                planner,
                concurrency,
            } => planner.process_all(rows, *concurrency).await,
            Sender::Bulk(planner) => planner.process(rows).await,
        }
    }
}

/// One chunk of staged rows, answered.
pub struct OutcomeChunk {
    /// The staged rows the outcomes point into.
    pub staged: RecordBatch,
    /// (row index in `staged`, outcome), deleted rows included.
    pub outcomes: Vec<(usize, Outcome)>,
    /// Rows sent to Voyado (deleted rows are not).
    pub sent: u64,
    /// The rows Voyado rejected, with their reasons.
    pub rejected_ids: Vec<String>,
    /// The reasons for `rejected_ids`, in the same order.
    pub rejected_reasons: Vec<String>,
}

/// What a run's sending came to: outcome counts, and samples of rows not delivered.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Rows counted by outcome.
    pub outcomes: OutcomeCounts,
    /// Up to five rejected and failed rows per outcome name, with their reasons.
    pub samples: BTreeMap<String, Vec<Sample>>,
}

fn read_err(e: datafusion::error::DataFusionError) -> Error {
    Error::from(StateError::files("reading the staged change set", e))
}

/// Drives the staged stream through a [`Sender`].
pub struct Sink<'a> {
    stream: SendableRecordBatchStream,
    chunks: Rechunker,
    ended: bool,
    sender: Sender<'a>,
    attributes: &'a [String],
    delivered: Delivered,
}

impl<'a> Sink<'a> {
    /// Sends the rows of `staged` (the staged change set's stream) with their `attributes`.
    pub fn new(
        client: &'a Client,
        settings: &'a Settings,
        attributes: &'a [String],
        staged: SendableRecordBatchStream,
    ) -> Sink<'a> {
        let sender = Sender::new(client, settings);
        let chunks = Rechunker::new(staged.schema(), sender.chunk_rows(settings));
        Sink {
            stream: staged,
            chunks,
            ended: false,
            sender,
            attributes,
            delivered: Delivered::default(),
        }
    }

    /// The next chunk of outcomes; None once every staged row is answered.
    pub async fn next(&mut self) -> Result<Option<OutcomeChunk>> {
        loop {
            if let Some(batch) = self.chunks.next_chunk(self.ended)? {
                return self.send(batch).await.map(Some);
            }
            if self.ended {
                return Ok(None);
            }
            match self.stream.next().await {
                Some(b) => self.chunks.push(b.map_err(read_err)?),
                None => self.ended = true,
            }
        }
    }

    async fn send(&mut self, batch: RecordBatch) -> Result<OutcomeChunk> {
        let (mut outcomes, rows) = encode_rows(&batch, self.attributes)?;
        let done = self.sender.send(rows).await;
        for (_, identifier, o) in &done {
            match o {
                Outcome::Rejected(r) => {
                    tracing::error!(identifier = %identifier, reason = %r, "row rejected")
                }
                Outcome::Failed(r) => {
                    tracing::error!(identifier = %identifier, reason = %r, "row failed")
                }
                _ => {}
            }
        }
        let mut rejected_ids = Vec::new();
        let mut rejected_reasons = Vec::new();
        for (_, identifier, o) in &done {
            self.delivered.outcomes.add(o);
            let reason = match o {
                Outcome::Rejected(r) | Outcome::Failed(r) => r,
                _ => continue,
            };
            let list = self
                .delivered
                .samples
                .entry(o.as_str().to_string())
                .or_default();
            if list.len() < 5 {
                list.push(Sample {
                    identifier: Some(identifier.clone()),
                    reason: Some(reason.clone()),
                });
            }
            if matches!(o, Outcome::Rejected(_)) {
                rejected_ids.push(identifier.clone());
                rejected_reasons.push(reason.clone());
            }
        }
        let sent = done.len() as u64;
        outcomes.extend(done.into_iter().map(|(i, _, o)| (i, o)));
        Ok(OutcomeChunk {
            staged: batch,
            outcomes,
            sent,
            rejected_ids,
            rejected_reasons,
        })
    }

    /// Counts and samples of every row answered.
    pub fn finish(self) -> Delivered {
        self.delivered
    }
}
