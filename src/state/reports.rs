//! Run reports stored with the state (and the rows a run's Voyado rejected, beside its
//! report), and the history read back from them.

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::AsyncArrowWriter;
use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStoreExt, PutPayload};

use super::{State, storage};
use crate::error::{Error, Result};

/// The rows Voyado rejected in one run, with the reasons, written as they come to
/// `reports/<run>.rejected.parquet`; the file exists only if a row was rejected.
pub struct RejectedRows<'a> {
    state: &'a State,
    rel: String,
    writer: Option<AsyncArrowWriter<BufWriter>>,
}

impl<'a> RejectedRows<'a> {
    /// A writer for the rows rejected in run `run_id`; nothing is written until one comes.
    pub fn new(state: &'a State, run_id: &str) -> RejectedRows<'a> {
        RejectedRows {
            state,
            rel: format!("reports/{run_id}.rejected.parquet"),
            writer: None,
        }
    }

    /// Appends rejected rows: identifiers and their reasons, one each per row.
    pub async fn write(&mut self, identifiers: Vec<String>, reasons: Vec<String>) -> Result<()> {
        if identifiers.is_empty() {
            return Ok(());
        }
        let b = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("identifier", DataType::Utf8, false),
                Field::new("reason", DataType::Utf8, false),
            ])),
            vec![
                Arc::new(StringArray::from(identifiers)),
                Arc::new(StringArray::from(reasons)),
            ],
        )
        .map_err(|e| Error::arrow("rejected rows", e))?;
        if self.writer.is_none() {
            self.writer = Some(self.state.parquet_writer(&self.rel, b.schema())?);
        }
        if let Some(w) = self.writer.as_mut() {
            w.write(&b)
                .await
                .map_err(|e| Error::parquet(format!("state: {}", self.rel), e))?;
        }
        Ok(())
    }

    /// Finishes the file, if one was started.
    pub async fn close(self) -> Result<()> {
        if let Some(w) = self.writer {
            w.close()
                .await
                .map_err(|e| Error::parquet(format!("state: {}", self.rel), e))?;
        }
        Ok(())
    }
}

impl State {
    /// Stores a run's report as `reports/<run>.json`.
    pub async fn put_report(&self, run_id: &str, value: &serde_json::Value) -> Result<()> {
        let rel = format!("reports/{run_id}.json");
        let body = serde_json::to_vec_pretty(value)
            .map_err(|e| Error::Internal(format!("json encode: {e}")))?;
        self.store
            .put(&self.path(&rel), PutPayload::from(body))
            .await
            .map_err(|e| storage(&format!("writing {rel}"), e))?;
        Ok(())
    }

    /// Every stored run report, oldest first (run ids sort by start time).
    pub async fn reports(&self) -> Result<Vec<serde_json::Value>> {
        let prefix = self.path("reports");
        let mut listed: Vec<ObjPath> =
            match self.store.list(Some(&prefix)).try_collect::<Vec<_>>().await {
                Ok(v) => v.into_iter().map(|o| o.location).collect(),
                Err(object_store::Error::NotFound { .. }) => Vec::new(),
                Err(e) => return Err(storage("listing reports", e)),
            };
        listed.retain(|p| p.as_ref().ends_with(".json"));
        listed.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        let mut out = Vec::new();
        for p in listed {
            let bytes = match self.store.get(&p).await {
                Ok(r) => r
                    .bytes()
                    .await
                    .map_err(|e| storage("reading a report", e))?,
                Err(e) => return Err(storage("reading a report", e)),
            };
            match serde_json::from_slice(&bytes) {
                Ok(v) => out.push(v),
                Err(e) => tracing::warn!(report = %p, error = %e, "skipping an unreadable report"),
            }
        }
        out.sort_by(|a: &serde_json::Value, b: &serde_json::Value| {
            let key = |v: &serde_json::Value| {
                (
                    v["started_at"].as_str().unwrap_or_default().to_string(),
                    v["run_id"].as_str().unwrap_or_default().to_string(),
                )
            };
            key(a).cmp(&key(b))
        });
        Ok(out)
    }
}
