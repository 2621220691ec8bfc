//! The report every command prints (`--json`: exactly one object on stdout) and stores.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::diff::{Counts, Sample};
use crate::sink::voyado::{OutcomeCounts, RequestCounts};

/// The report of one command: what it worked on, when, and what it counted and sent.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Unique, sortable id of the run: its UTC start time plus a random suffix.
    pub run_id: String,
    /// The sync's name, from the configuration.
    pub sync: String,
    /// The command that produced the report (`plan`, `baseline`, `run`, ...).
    pub command: String,
    /// `i/n` when the command worked on one shard of the sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// The sync's mode: `upsert` or `update`.
    pub mode: String,
    /// When the command started, RFC 3339 in UTC with milliseconds.
    pub started_at: String,
    /// How long the command took, in milliseconds.
    pub duration_ms: u64,
    /// Rows by kind: new, changed, unchanged, deleted and invalid.
    pub counts: Counts,
    /// `run` only: one outcome per new or changed row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcomes: Option<OutcomeCounts>,
    /// `run` only: requests by endpoint and answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<RequestCounts>,
    /// `run` only: requests repeated after a retryable failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u64>,
    /// Breached warning thresholds (the run exits 3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// A few sample identifiers (with a reason, where there is one) per kind of row.
    pub samples: BTreeMap<String, Vec<Sample>>,
}

/// A sortable, unique run id: UTC start time plus a random suffix.
pub fn new_run_id(now: chrono::DateTime<chrono::Utc>) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", now.format("%Y%m%dT%H%M%S%3fZ"), &suffix[..8])
}

impl Report {
    /// Human-readable lines for a terminal.
    pub fn render(&self) -> String {
        let c = &self.counts;
        let mut out = format!(
            "{} {}{} (mode {}, run {})\n  new        {:>10}\n  changed    {:>10}\n  unchanged  {:>10}\n  deleted    {:>10}\n  invalid    {:>10}\n",
            self.command,
            self.sync,
            self.shard
                .as_ref()
                .map(|s| format!(" shard {s}"))
                .unwrap_or_default(),
            self.mode,
            self.run_id,
            c.new,
            c.changed,
            c.unchanged,
            c.deleted,
            c.invalid
        );
        if let Some(o) = &self.outcomes {
            out.push_str(&format!(
                "  outcomes: created {}, updated {}, skipped {}, not_found {}, rejected {}, failed {}\n",
                o.created, o.updated, o.skipped, o.not_found, o.rejected, o.failed
            ));
        }
        if let Some(r) = &self.requests {
            let fmt = |m: &BTreeMap<String, u64>| {
                if m.is_empty() {
                    "none".to_string()
                } else {
                    m.iter()
                        .map(|(k, v)| format!("{k}: {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            };
            out.push_str(&format!(
                "  requests: lookup [{}], create [{}], update [{}]; retries {}\n",
                fmt(&r.lookup),
                fmt(&r.create),
                fmt(&r.update),
                self.retries.unwrap_or(0)
            ));
        }
        for w in &self.warnings {
            out.push_str(&format!("  warning: {w}\n"));
        }
        for (kind, samples) in &self.samples {
            if samples.is_empty() {
                continue;
            }
            out.push_str(&format!("  sample {kind}:\n"));
            for s in samples {
                let id = s.identifier.as_deref().unwrap_or("<null>");
                match &s.reason {
                    Some(r) => out.push_str(&format!("    {id:?}: {r}\n")),
                    None => out.push_str(&format!("    {id}\n")),
                }
            }
        }
        out.push_str(&format!("  took {} ms\n", self.duration_ms));
        out
    }
}
