//! `run`: diff -> stage -> guards -> probe -> send -> checkpoints -> commit -> report.

use std::time::Duration;

use crate::config::Target;
use crate::error::{Result, exit};
use crate::report::Report;
use crate::sink::voyado::{ApiKey, Client, Delivered, Sink};
use crate::stage::{self, Staged};
use crate::state::{self, Checkpoints, Manifest, NewSnapshot, RejectedRows, State};

use super::prepare::{Prepared, prepare, store_report};
use super::progress::Progress;
use super::with_lock;

/// Options a caller (CLI, demo, tests) can set beyond the config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run even when a guard trips.
    pub force: bool,
    /// Shorter backoff waits (tests).
    pub backoff_base: Option<Duration>,
    /// Draw a progress line on stderr (only on a terminal).
    pub progress: bool,
}

/// A finished run: its report and the exit code it maps to.
#[derive(Debug)]
pub struct RunResult {
    /// The run's report.
    pub report: Report,
    /// The process exit code the run maps to (see the exit codes in docs/operations.md).
    pub exit_code: u8,
}

/// Runs one sync of `target` under its lock: diff, stage, guards, key probe, send,
/// checkpoints, commit and report.
pub async fn run(target: impl Into<Target>, options: &RunOptions) -> Result<RunResult> {
    let p = prepare(&target.into(), true).await?;
    let api_key = ApiKey::read(&p.settings)?;
    with_lock(&p.state, &p, "run", run_locked(&p, &api_key, options)).await
}

/// Computes and stages the change set under the lock, as `run` does before sending; the
/// staged file's location is returned with the counts.
pub async fn stage(target: impl Into<Target>) -> Result<(Report, Staged, State)> {
    let p = prepare(&target.into(), true).await?;
    let (staged, _, _) = with_lock(&p.state, &p, "stage", stage_change_set(&p)).await?;
    let report = p.report("stage", staged.summary.clone());
    Ok((report, staged, p.state.clone()))
}

/// The change set staged, with the manifest of the snapshot it was computed against and
/// what a commit of it records.
async fn stage_change_set(p: &Prepared) -> Result<(Staged, Option<Manifest>, NewSnapshot)> {
    let (set, manifest) = p.change_set(true).await?;
    let staged = stage::stage(&p.ctx, &p.settings, &p.state, &set, &p.run_id).await?;
    Ok((staged, manifest, p.new_snapshot(&set)))
}

async fn run_locked(p: &Prepared, api_key: &ApiKey, options: &RunOptions) -> Result<RunResult> {
    let s = &p.settings;
    let (staged, manifest, fields) = stage_change_set(p).await?;
    let counts = staged.summary.counts;
    tracing::info!(
        new = counts.new,
        changed = counts.changed,
        unchanged = counts.unchanged,
        deleted = counts.deleted,
        invalid = counts.invalid,
        "change set staged"
    );
    if let Err(e) = staged.check_guards(s, options.force) {
        p.state.remove(&staged.rel).await;
        return Err(e);
    }

    let mut client = Client::new(s, api_key)?;
    if let Some(b) = options.backoff_base {
        client = client.with_backoff_base(b);
    }
    if counts.new + counts.changed > 0 {
        client.probe().await?;
    }

    let m = state::run_manifest(manifest, &fields);
    let (delivered, m) = send(p, &client, &staged, m, options).await?;

    let committed = p.state.commit_run(&p.ctx, &m, s, &fields).await?;
    p.state.remove(&staged.rel).await;
    tracing::info!(
        rows = committed.snapshot_rows,
        generation = committed.generation,
        "snapshot committed"
    );

    let failed = delivered.outcomes.failed;
    let report = run_report(p, &staged, delivered, &client);
    store_report(p, &report).await;
    let exit_code = if failed > 0 {
        tracing::error!(
            failed,
            "rows failed with transient errors; the next run sends them again"
        );
        exit::INCOMPLETE
    } else if !report.warnings.is_empty() {
        exit::WARNING
    } else {
        exit::OK
    };
    Ok(RunResult { report, exit_code })
}

/// The run's report: the staged counts, what sending came to, and the warning
/// thresholds it breached.
fn run_report(p: &Prepared, staged: &Staged, sent: Delivered, client: &Client) -> Report {
    let s = &p.settings;
    let counts = staged.summary.counts;
    let mut report = p.report("run", staged.summary.clone());
    report.outcomes = Some(sent.outcomes);
    report.requests = Some(client.counts());
    report.retries = Some(client.retries());
    for (kind, samples) in sent.samples {
        report.samples.insert(kind, samples);
    }
    let attempted = counts.new + counts.changed;
    let model_rows = counts.new + counts.changed + counts.unchanged + counts.invalid;
    let t = &s.thresholds;
    if attempted > 0 {
        let pct = sent.outcomes.rejected as f64 * 100.0 / attempted as f64;
        if pct > t.max_rejected_percent {
            report.warnings.push(format!(
                "{} of {attempted} rows attempted were rejected ({pct:.1}%, max_rejected_percent = {})",
                sent.outcomes.rejected, t.max_rejected_percent
            ));
        }
    }
    if model_rows > 0 {
        let pct = counts.invalid as f64 * 100.0 / model_rows as f64;
        if pct > t.max_invalid_percent {
            report.warnings.push(format!(
                "{} of {model_rows} model rows are invalid ({pct:.1}%, max_invalid_percent = {})",
                counts.invalid, t.max_invalid_percent
            ));
        }
    }
    for w in &report.warnings {
        tracing::warn!(warning = %w, "threshold breached");
    }
    report.duration_ms = p.clock.elapsed().as_millis() as u64;
    report
}

/// Streams the staged change set through the sink, appending confirmed outcomes as deltas
/// (named in `m`) at each checkpoint.
async fn send(
    p: &Prepared,
    client: &Client,
    staged: &Staged,
    m: Manifest,
    options: &RunOptions,
) -> Result<(Delivered, Manifest)> {
    let s = &p.settings;
    let attrs: Vec<String> = s.attributes.iter().map(|a| a.attribute.clone()).collect();
    let total = staged.summary.counts.new + staged.summary.counts.changed;
    let mut sink = Sink::new(client, s, &attrs, staged.stream(&p.ctx, &p.state).await?);
    let mut checkpoints = Checkpoints::new(
        &p.state,
        &p.run_id,
        m,
        s.limits.checkpoint_rows,
        Duration::from_secs(s.limits.checkpoint_secs),
    );
    let mut rejected = RejectedRows::new(&p.state, &p.run_id);
    let mut progress = Progress::new(total, options.progress);
    while let Some(chunk) = sink.next().await? {
        progress.advance(chunk.sent);
        rejected
            .write(chunk.rejected_ids, chunk.rejected_reasons)
            .await?;
        checkpoints.add(&chunk.staged, &chunk.outcomes, &attrs)?;
        checkpoints.checkpoint_if_due().await?;
    }
    checkpoints.checkpoint().await?;
    rejected.close().await?;
    progress.finish();
    Ok((sink.finish(), checkpoints.into_manifest()))
}
