//! `history`: past runs' reports, read back from the state.

use crate::config::Target;
use crate::error::Result;

use super::prepare::open_target;

/// Past runs' reports, oldest first.
pub async fn history(target: impl Into<Target>) -> Result<Vec<serde_json::Value>> {
    // Read-only: no layout check, so a sharded sync's history never suggests a reset.
    let p = open_target(&target.into(), false).await?;
    p.state.reports().await
}

/// One line per report: when, what, counts, outcomes.
pub fn history_line(r: &serde_json::Value) -> String {
    let c = &r["counts"];
    let mut line = format!(
        "{}  {:<8} new {} changed {} unchanged {} deleted {} invalid {}",
        r["started_at"].as_str().unwrap_or("?"),
        r["command"].as_str().unwrap_or("?"),
        c["new"],
        c["changed"],
        c["unchanged"],
        c["deleted"],
        c["invalid"]
    );
    if let Some(o) = r.get("outcomes") {
        line.push_str(&format!(
            " | created {} updated {} skipped {} not_found {} rejected {} failed {}",
            o["created"], o["updated"], o["skipped"], o["not_found"], o["rejected"], o["failed"]
        ));
    }
    if let Some(w) = r.get("warnings").and_then(|w| w.as_array())
        && !w.is_empty()
    {
        line.push_str(&format!(" | {} warning(s)", w.len()));
    }
    line
}
