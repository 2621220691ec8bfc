//! One run: diff -> stage -> guards -> probe -> send -> checkpoints -> commit -> report.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, RecordBatch, StringArray};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::AsyncArrowWriter;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::StreamExt;
use object_store::buffered::BufWriter;

use crate::commands::{Prepared, prepare, store_report};
use crate::config::Settings;
use crate::config::{Api, Target};
use crate::diff::stage::{CHANGED_COLUMNS, Staged, stage};
use crate::diff::{
    self, CHANGED, DELETED, KIND, KNOWN_CONTACT_ID, NEW, PREV_STATUS, Sample, string_column,
};
use crate::error::{Error, Result, df_message, exit};
use crate::report::Report;
use crate::sink::voyado::bulk::{self, BulkPlanner};
use crate::sink::voyado::encode::ColumnEncoder;
use crate::sink::voyado::outcome::delta_batch;
use crate::sink::voyado::rows::{Job, Planner};
use crate::sink::voyado::{ApiKey, Client, Outcome, OutcomeCounts};
use crate::state::{self, Manifest, NewSnapshot, State, quote};

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
    pub report: Report,
    pub exit_code: u8,
}

pub async fn run(target: impl Into<Target>, options: &RunOptions) -> Result<RunResult> {
    let p = prepare(&target.into(), true).await?;
    let api_key = ApiKey::read(&p.settings)?;
    let lock = p
        .state
        .lock(&p.run_id, "run", p.settings.lock_stale_secs)
        .await?;
    let result = run_locked(&p, &api_key, options).await;
    let released = lock.release().await;
    let result = result?;
    released?;
    Ok(result)
}

fn df_err(what: &'static str) -> impl Fn(datafusion::error::DataFusionError) -> Error {
    move |e| Error::Storage(df_message(what, &e))
}

async fn run_locked(p: &Prepared, api_key: &ApiKey, options: &RunOptions) -> Result<RunResult> {
    let s = &p.settings;
    let (set, manifest) = p.change_set(true).await?;
    let staged = stage(&p.ctx, s, &p.state, &set, &p.run_id).await?;
    let counts = staged.summary.counts;
    tracing::info!(
        new = counts.new,
        changed = counts.changed,
        unchanged = counts.unchanged,
        deleted = counts.deleted,
        invalid = counts.invalid,
        "change set staged"
    );
    if let Err(e) = check_guards(s, &staged, options.force) {
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

    // Deltas need a manifest to be named in; a first run starts from an empty one.
    let mut m = match manifest {
        Some(m) => m,
        None => Manifest {
            format_version: state::manifest::FORMAT_VERSION,
            hash_version: diff::row_hash::HASH_VERSION,
            generation: 0,
            identifier_key: s.key.as_str().to_string(),
            attributes: set.attributes.clone(),
            snapshot: Vec::new(),
            deltas: Vec::new(),
            snapshot_rows: 0,
            run_id: p.run_id.clone(),
            committed_at: String::new(),
        },
    };
    if m.attributes != set.attributes {
        // Until the commit rehashes everything, stored hashes mix two mappings: make
        // readers compare values instead.
        m.hash_version = 0;
        for (k, v) in &set.attributes {
            m.attributes.insert(k.clone(), v.clone());
        }
    }

    let sent = send(p, &client, &staged, &mut m, options).await?;

    // Commit: compact snapshot + deltas, rehashed over the current mapping.
    let compacted = compact(&p.ctx, &p.state, &m, s).await?;
    let committed = p
        .state
        .commit(
            if m.generation == 0 && m.snapshot.is_empty() {
                None
            } else {
                Some(&m)
            },
            vec![compacted],
            &NewSnapshot {
                run_id: p.run_id.clone(),
                identifier_key: s.key.as_str().to_string(),
                attributes: set.attributes.clone(),
            },
        )
        .await?;
    p.state.remove(&staged.rel).await;
    tracing::info!(
        rows = committed.snapshot_rows,
        generation = committed.generation,
        "snapshot committed"
    );

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
    store_report(p, &report).await;
    let exit_code = if sent.outcomes.failed > 0 {
        tracing::error!(
            failed = sent.outcomes.failed,
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

fn check_guards(s: &Settings, staged: &Staged, force: bool) -> Result<()> {
    let c = staged.summary.counts;
    let snapshot = c.changed + c.unchanged + c.deleted;
    if force || snapshot == 0 {
        return Ok(());
    }
    let t = &s.thresholds;
    let deleted = c.deleted as f64 * 100.0 / snapshot as f64;
    if deleted > t.max_deleted_percent {
        return Err(Error::Guard(format!(
            "guard max_deleted_percent: {} of {snapshot} snapshot rows would be deleted ({deleted:.1}% > {}%); nothing was sent; rerun with --force if this is intended",
            c.deleted, t.max_deleted_percent
        )));
    }
    if let Some(max) = t.max_changed_percent {
        let changed = c.changed as f64 * 100.0 / snapshot as f64;
        if changed > max {
            return Err(Error::Guard(format!(
                "guard max_changed_percent: {} of {snapshot} snapshot rows changed ({changed:.1}% > {max}%); nothing was sent; rerun with --force if this is intended",
                c.changed
            )));
        }
    }
    Ok(())
}

struct Sent {
    outcomes: OutcomeCounts,
    samples: BTreeMap<String, Vec<Sample>>,
}

fn opt(a: &StringArray, i: usize) -> Option<String> {
    a.is_valid(i).then(|| a.value(i).to_string())
}

/// Streams the staged change set through the sink, appending confirmed outcomes as deltas
/// at each checkpoint.
async fn send(
    p: &Prepared,
    client: &Client,
    staged: &Staged,
    m: &mut Manifest,
    options: &RunOptions,
) -> Result<Sent> {
    let s = &p.settings;
    let attrs: Vec<String> = s.attributes.iter().map(|a| a.attribute.clone()).collect();
    let planner = Planner {
        client,
        mode: s.mode,
        key: s.key,
        contact_type: &s.destination.contact_type,
    };
    let total = staged.summary.counts.new + staged.summary.counts.changed;
    let df = p
        .ctx
        .read_parquet(p.state.url(&staged.rel), ParquetReadOptions::default())
        .await
        .map_err(df_err("reading the staged change set"))?;
    let mut stream = df
        .execute_stream()
        .await
        .map_err(df_err("reading the staged change set"))?;

    let mut outcomes = OutcomeCounts::default();
    let mut samples: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0u64;
    let mut last_checkpoint = Instant::now();
    let mut rejected_writer: Option<AsyncArrowWriter<BufWriter>> = None;
    let rejected_rel = format!("reports/{}.rejected.parquet", p.run_id);
    let mut progress = Progress::new(total, options.progress);

    // Rows go out in chunks no larger than a checkpoint (so a checkpoint never waits for a
    // whole, possibly huge, staged batch), or a few whole bulk batches.
    let chunk = match s.api {
        Api::Single => {
            (s.limits.checkpoint_rows as usize).clamp(s.limits.concurrency as usize * 2, 2048)
        }
        Api::Bulk => s.bulk.batch_size * bulk::IN_FLIGHT,
    };
    let bulk = BulkPlanner {
        client,
        mode: s.mode,
        key: s.key,
        settings: s.bulk,
        stopped: Default::default(),
    };
    let schema = stream.schema();
    let mut buffered: Vec<RecordBatch> = Vec::new();
    let mut buffered_rows = 0usize;
    let mut ended = false;
    while !ended {
        match stream.next().await {
            Some(b) => {
                let b = b.map_err(df_err("reading the staged change set"))?;
                buffered_rows += b.num_rows();
                buffered.push(b);
            }
            None => ended = true,
        }
        while buffered_rows >= chunk || (ended && buffered_rows > 0) {
            let all = concat_batches(&schema, &buffered)
                .map_err(|e| Error::Internal(format!("staged rows: {e}")))?;
            let len = chunk.min(all.num_rows());
            let batch = all.slice(0, len);
            let rest = all.slice(len, all.num_rows() - len);
            buffered_rows = rest.num_rows();
            buffered = if buffered_rows > 0 {
                vec![rest]
            } else {
                Vec::new()
            };

            let (mut results, jobs) = jobs(&batch, &attrs)?;
            let done = match s.api {
                Api::Single => single(&planner, jobs, s.limits.concurrency as usize).await,
                Api::Bulk => bulk.process(jobs).await,
            };
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
                outcomes.add(o);
                let (kind, reason) = match o {
                    Outcome::Rejected(r) => ("rejected", r),
                    Outcome::Failed(r) => ("failed", r),
                    _ => continue,
                };
                let list = samples.entry(kind.to_string()).or_default();
                if list.len() < 5 {
                    list.push(Sample {
                        identifier: Some(identifier.clone()),
                        reason: Some(reason.clone()),
                    });
                }
                if kind == "rejected" {
                    rejected_ids.push(identifier.clone());
                    rejected_reasons.push(reason.clone());
                }
            }
            progress.advance(done.len() as u64);
            results.extend(done.into_iter().map(|(i, _, o)| (i, o)));
            if !rejected_ids.is_empty() {
                let b = RecordBatch::try_new(
                    Arc::new(Schema::new(vec![
                        Field::new("identifier", DataType::Utf8, false),
                        Field::new("reason", DataType::Utf8, false),
                    ])),
                    vec![
                        Arc::new(StringArray::from(rejected_ids)),
                        Arc::new(StringArray::from(rejected_reasons)),
                    ],
                )
                .map_err(|e| Error::Internal(format!("rejected rows: {e}")))?;
                if rejected_writer.is_none() {
                    rejected_writer = Some(p.state.parquet_writer(&rejected_rel, b.schema())?);
                }
                if let Some(w) = rejected_writer.as_mut() {
                    w.write(&b)
                        .await
                        .map_err(|e| Error::Storage(format!("state: {rejected_rel}: {e}")))?;
                }
            }
            if let Some(delta) = delta_batch(&batch, &results, &attrs)? {
                pending_rows += delta.num_rows() as u64;
                pending.push(delta);
            }
            if pending_rows >= s.limits.checkpoint_rows
                || last_checkpoint.elapsed() >= Duration::from_secs(s.limits.checkpoint_secs)
            {
                checkpoint(p, m, &mut pending, &mut pending_rows).await?;
                last_checkpoint = Instant::now();
            }
        }
    }
    checkpoint(p, m, &mut pending, &mut pending_rows).await?;
    if let Some(w) = rejected_writer {
        w.close()
            .await
            .map_err(|e| Error::Storage(format!("state: {rejected_rel}: {e}")))?;
    }
    progress.finish();
    Ok(Sent { outcomes, samples })
}

/// Sends each job through the single-contact API, `concurrency` rows at a time.
async fn single(
    planner: &Planner<'_>,
    jobs: Vec<(usize, Job)>,
    concurrency: usize,
) -> Vec<(usize, String, Outcome)> {
    futures::stream::iter(jobs)
        .map(|(i, job)| async move {
            let o = planner.process(&job).await;
            (i, job.identifier, o)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// The rows of one staged chunk as sink jobs: (row, job) for new and changed rows, and
/// the outcomes known without a request (deleted rows: no Voyado call).
#[allow(clippy::type_complexity)]
fn jobs(
    batch: &RecordBatch,
    attrs: &[String],
) -> Result<(Vec<(usize, Outcome)>, Vec<(usize, Job)>)> {
    let kinds = string_column(batch, KIND)?;
    let ids = string_column(batch, state::IDENTIFIER)?;
    let prev_status = string_column(batch, PREV_STATUS)?;
    let contact_ids = string_column(batch, state::CONTACT_ID)?;
    let known_ids = string_column(batch, KNOWN_CONTACT_ID)?;
    let changed_cols = string_column(batch, CHANGED_COLUMNS)?;
    let encoders = attrs
        .iter()
        .map(|a| {
            let col = batch
                .column_by_name(a)
                .ok_or_else(|| Error::Internal(format!("staged change set has no column {a}")))?;
            ColumnEncoder::new(col).map(|e| (a.clone(), e))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut known = Vec::new();
    let mut jobs = Vec::new();
    for i in 0..batch.num_rows() {
        let kind = kinds.value(i);
        if kind == DELETED {
            known.push((i, Outcome::Deleted));
            continue;
        }
        if kind != NEW && kind != CHANGED {
            continue;
        }
        let prev = opt(&prev_status, i);
        let as_new =
            kind == NEW || matches!(prev.as_deref(), Some(state::NOT_FOUND | state::REJECTED));
        let full: Vec<(String, String)> = encoders
            .iter()
            .filter_map(|(a, e)| e.json(i).map(|v| (a.clone(), v)))
            .collect();
        let changed = if as_new {
            Vec::new()
        } else {
            let names = opt(&changed_cols, i).unwrap_or_default();
            let names: Vec<&str> = names.split(',').collect();
            full.iter()
                .filter(|(a, _)| names.contains(&a.as_str()))
                .cloned()
                .collect()
        };
        jobs.push((
            i,
            Job {
                identifier: ids.value(i).to_string(),
                as_new,
                contact_id: opt(&known_ids, i).or_else(|| opt(&contact_ids, i)),
                full,
                changed,
            },
        ));
    }
    Ok((known, jobs))
}

/// Appends the pending outcomes as one delta and names it in the manifest.
async fn checkpoint(
    p: &Prepared,
    m: &mut Manifest,
    pending: &mut Vec<RecordBatch>,
    pending_rows: &mut u64,
) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let batches = std::mem::take(pending);
    let rows = p.state.append_delta(m, batches, &p.run_id).await?;
    tracing::info!(rows, deltas = m.deltas.len(), "checkpoint");
    *pending_rows = 0;
    Ok(())
}

/// The state with its deltas applied, keeping only the current mapping's attributes and
/// rehashing every row from its stored values, so the next diff can trust the hashes.
async fn compact(
    ctx: &SessionContext,
    state: &State,
    m: &Manifest,
    s: &Settings,
) -> Result<datafusion::prelude::DataFrame> {
    let loaded = state.load(ctx, m).await?;
    let schema = loaded.schema().as_arrow().clone();
    let src =
        crate::catalog::temp_view(ctx, "commit", loaded).map_err(df_err("compacting the state"))?;
    let present: Vec<&str> = s
        .attributes
        .iter()
        .map(|a| a.attribute.as_str())
        .filter(|a| schema.field_with_name(a).is_ok())
        .collect();
    let hash = diff::row_hash::sql_call(present.iter().map(|a| (*a, quote(a))));
    let mut cols = vec![
        quote(state::IDENTIFIER),
        quote(state::CONTACT_ID),
        quote(state::STATUS),
        format!("{hash} AS {}", quote(state::ROW_HASH)),
    ];
    cols.extend(present.iter().map(|a| quote(a)));
    ctx.sql(&format!("SELECT {} FROM {src}", cols.join(", ")))
        .await
        .map_err(df_err("compacting the state"))
}

/// Rows done / total, rate and ETA: a line redrawn on a terminal, a log line every ten
/// seconds elsewhere.
struct Progress {
    total: u64,
    done: u64,
    started: Instant,
    last: Instant,
    tty: bool,
}

impl Progress {
    fn new(total: u64, enabled: bool) -> Progress {
        Progress {
            total,
            done: 0,
            started: Instant::now(),
            last: Instant::now(),
            tty: enabled && std::io::stderr().is_terminal(),
        }
    }

    fn advance(&mut self, n: u64) {
        self.done += n;
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.done as f64 / secs;
        let eta = if rate > 0.0 {
            (self.total.saturating_sub(self.done)) as f64 / rate
        } else {
            0.0
        };
        if self.tty {
            eprint!(
                "\r  sending {}/{} rows, {rate:.0}/s, ETA {eta:.0}s   ",
                self.done, self.total
            );
        } else if self.last.elapsed() >= Duration::from_secs(10) {
            self.last = Instant::now();
            tracing::info!(
                done = self.done,
                total = self.total,
                rate = rate as u64,
                eta_secs = eta as u64,
                "sending"
            );
        }
    }

    fn finish(&self) {
        if self.tty && self.total > 0 {
            eprintln!();
        }
    }
}
