//! The report every command prints (`--json`: exactly one object on stdout) and stores.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::diff::{Counts, Sample};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run_id: String,
    pub sync: String,
    pub command: String,
    pub mode: String,
    pub started_at: String,
    pub duration_ms: u64,
    pub counts: Counts,
    pub samples: BTreeMap<String, Vec<Sample>>,
}

/// A sortable, unique run id: UTC start time plus a random suffix.
pub fn new_run_id(now: chrono::DateTime<chrono::Utc>) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", now.format("%Y%m%dT%H%M%SZ"), &suffix[..8])
}

impl Report {
    /// Human-readable lines for a terminal.
    pub fn render(&self) -> String {
        let c = &self.counts;
        let mut out = format!(
            "{} {} (mode {}, run {})\n  new        {:>10}\n  changed    {:>10}\n  unchanged  {:>10}\n  deleted    {:>10}\n  invalid    {:>10}\n",
            self.command,
            self.sync,
            self.mode,
            self.run_id,
            c.new,
            c.changed,
            c.unchanged,
            c.deleted,
            c.invalid
        );
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
