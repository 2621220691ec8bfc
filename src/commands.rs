//! The commands that work on the model and the state without calling Voyado: `check`,
//! `plan`, `baseline` and `reset`.

use std::time::Instant;

use datafusion::prelude::SessionContext;

use crate::config::{self, Settings, Target};
use crate::diff::{self, CHANGED, KIND, NEW, UNCHANGED};
use crate::error::{Error, Result, df_message};
use crate::report::{Report, new_run_id};
use crate::state::{self, NewSnapshot, State, quote};

/// What `check` found: non-fatal notes (fatal problems are returned as `Error::Config`).
#[derive(Debug)]
pub struct CheckOutcome {
    pub settings: Settings,
    pub columns: Vec<String>,
    pub notes: Vec<String>,
}

/// Validates everything that can be validated without sending data.
pub async fn check(target: impl Into<Target>) -> Result<CheckOutcome> {
    let settings = config::load_target(&target.into())?;
    let mut problems = Vec::new();
    if let Err(p) = settings.destination.api_key.check_available() {
        problems.push(p);
    }
    let ctx = crate::catalog::session(&settings)?;
    let mut columns = Vec::new();
    match crate::catalog::register_sources(&ctx, &settings).await {
        Err(e) => problems.push(e.to_string()),
        Ok(()) => match crate::model::dataframe(&ctx, &settings).await {
            Err(e) => problems.push(e.to_string()),
            Ok(df) => {
                let schema = df.schema().as_arrow().clone();
                columns = schema
                    .fields()
                    .iter()
                    .map(|f| format!("{} {}", f.name(), f.data_type()))
                    .collect();
                problems.extend(crate::model::check_output(&schema, &settings));
                problems.extend(crate::model::check_slice_keys(&ctx, &settings).await);
            }
        },
    }
    match State::open(&ctx, &settings, false) {
        Err(e) => problems.push(e.to_string()),
        Ok(state) => match state.manifest().await {
            Err(e) => problems.push(e.to_string()),
            Ok(Some(m)) if m.identifier_key != settings.key.as_str() => problems.push(format!(
                "[identifier] key: the state was built with key {}, not {}; run `voyado-sync reset` to start over with the new key",
                m.identifier_key,
                settings.key.as_str()
            )),
            Ok(_) => {}
        },
    }
    if !problems.is_empty() {
        return Err(Error::Config(problems));
    }
    let notes = settings.notes.clone();
    Ok(CheckOutcome {
        settings,
        columns,
        notes,
    })
}

/// A command's session: validated settings, a DataFusion session with the sources, and the
/// sync's state.
pub(crate) struct Prepared {
    pub settings: Settings,
    pub ctx: SessionContext,
    pub state: State,
    pub run_id: String,
    pub started: chrono::DateTime<chrono::Utc>,
    pub clock: Instant,
}

pub(crate) async fn prepare(target: &Target, create_state: bool) -> Result<Prepared> {
    let p = prepare_state_only(target, create_state).await?;
    crate::catalog::register_sources(&p.ctx, &p.settings).await?;
    Ok(p)
}

impl Prepared {
    pub fn report(&self, command: &str, summary: diff::Summary) -> Report {
        Report {
            run_id: self.run_id.clone(),
            sync: self.settings.name.clone(),
            command: command.to_string(),
            shard: self.settings.shard.map(|s| s.to_string()),
            mode: self.settings.mode.as_str().to_string(),
            started_at: self
                .started
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            duration_ms: self.clock.elapsed().as_millis() as u64,
            counts: summary.counts,
            outcomes: None,
            requests: None,
            retries: None,
            warnings: Vec::new(),
            samples: summary.samples,
        }
    }

    pub async fn change_set(
        &self,
        wide: bool,
    ) -> Result<(diff::ChangeSet, Option<state::Manifest>)> {
        let manifest = self.state.manifest().await?;
        let snapshot = match &manifest {
            Some(m) => Some((self.state.load(&self.ctx, m).await?, m)),
            None => None,
        };
        let set = diff::change_set(&self.ctx, &self.settings, snapshot, wide).await?;
        Ok((set, manifest))
    }
}

/// A dry run: counts of new / changed / unchanged / deleted / invalid rows. Writes nothing,
/// calls nothing.
pub async fn plan(target: impl Into<Target>) -> Result<Report> {
    let p = prepare(&target.into(), false).await?;
    let (set, _) = p.change_set(false).await?;
    let summary = diff::summarize(&set).await?;
    tracing::info!(
        new = summary.counts.new,
        changed = summary.counts.changed,
        unchanged = summary.counts.unchanged,
        deleted = summary.counts.deleted,
        invalid = summary.counts.invalid,
        "change set computed"
    );
    Ok(p.report("plan", summary))
}

/// Runs the model alone and discards its output: the floor any change detection is
/// measured against. Returns (rows, milliseconds).
pub async fn model_only(target: impl Into<Target>) -> Result<(u64, u64)> {
    let p = prepare(&target.into(), false).await?;
    // The partitions `plan` would run this model with.
    let state_rows = p.state.manifest().await?.map(|m| m.snapshot_rows);
    diff::size_session(&p.ctx, &p.settings, state_rows, false).await;
    let mut rows = 0u64;
    let (slices, _files) = crate::model::slices(&p.ctx, &p.settings).await?;
    for df in slices {
        let mut stream = df
            .execute_stream()
            .await
            .map_err(|e| Error::Input(df_message("running the model", &e)))?;
        while let Some(b) = futures::StreamExt::next(&mut stream).await {
            rows += b
                .map_err(|e| Error::Input(df_message("running the model", &e)))?
                .num_rows() as u64;
        }
    }
    Ok((rows, p.clock.elapsed().as_millis() as u64))
}

/// Adopts the model's current valid rows as the snapshot (status delivered), for a
/// destination that already holds the data. Known contactIds are kept.
pub async fn baseline(target: impl Into<Target>) -> Result<Report> {
    let p = prepare(&target.into(), true).await?;
    let lock = p
        .state
        .lock(&p.run_id, "baseline", p.settings.lock_stale_secs)
        .await?;
    let result = baseline_locked(&p).await;
    let released = lock.release().await;
    let report = result?;
    released?;
    Ok(report)
}

async fn baseline_locked(p: &Prepared) -> Result<Report> {
    let (set, manifest) = p.change_set(true).await?;
    let summary = diff::summarize(&set).await?;
    let mut cols = vec![
        quote(state::IDENTIFIER),
        quote(state::CONTACT_ID),
        format!("'{}' AS {}", state::DELIVERED, quote(state::STATUS)),
        quote(state::ROW_HASH),
    ];
    cols.extend(p.settings.attributes.iter().map(|m| quote(&m.attribute)));
    let mut rows = Vec::new();
    for df in &set.buckets {
        let name = crate::catalog::temp_view(&p.ctx, "baseline", df.clone())
            .map_err(|e| Error::Internal(df_message("baseline", &e)))?;
        let df = p
            .ctx
            .sql(&format!(
                "SELECT {} FROM {name} WHERE {KIND} IN ('{NEW}', '{CHANGED}', '{UNCHANGED}')",
                cols.join(", ")
            ))
            .await
            .map_err(|e| Error::Internal(df_message("baseline", &e)))?;
        rows.push(df);
    }
    let committed = p
        .state
        .commit(
            manifest.as_ref(),
            rows,
            &NewSnapshot {
                run_id: p.run_id.clone(),
                identifier_key: p.settings.key.as_str().to_string(),
                attributes: set.attributes.clone(),
            },
        )
        .await?;
    tracing::info!(
        rows = committed.snapshot_rows,
        generation = committed.generation,
        "baseline committed"
    );
    let report = p.report("baseline", summary);
    store_report(p, &report).await;
    Ok(report)
}

/// Computes and stages the change set under the lock, as `run` does before sending; the
/// staged file's location is returned with the counts.
pub async fn stage(target: impl Into<Target>) -> Result<(Report, diff::stage::Staged, State)> {
    let p = prepare(&target.into(), true).await?;
    let lock = p
        .state
        .lock(&p.run_id, "stage", p.settings.lock_stale_secs)
        .await?;
    let result = async {
        let (set, _) = p.change_set(true).await?;
        diff::stage::stage(&p.ctx, &p.settings, &p.state, &set, &p.run_id).await
    }
    .await;
    let released = lock.release().await;
    let staged = result?;
    released?;
    let report = p.report("stage", staged.summary.clone());
    Ok((report, staged, p.state.clone()))
}

/// Forgets the snapshot so the next run is a full sync. Without a shard, every shard's
/// state is forgotten too (the way to change the number of shards).
pub async fn reset(target: impl Into<Target>) -> Result<bool> {
    let target = target.into();
    let p = open_target(&target, true).await?;
    let mut existed = reset_one(&p.state, &p).await?;
    if target.shard.is_none() {
        for shard in p.state.layout().await?.shards {
            let mut settings = p.settings.clone();
            settings.shard = Some(shard);
            let state = State::open(&p.ctx, &settings, true)?;
            existed |= reset_one(&state, &p).await?;
        }
    }
    Ok(existed)
}

async fn reset_one(state: &State, p: &Prepared) -> Result<bool> {
    let lock = state
        .lock(&p.run_id, "reset", p.settings.lock_stale_secs)
        .await?;
    let result = state.reset().await;
    let released = lock.release().await;
    let existed = result?;
    released?;
    Ok(existed)
}

/// Refuses a state split into shards another way than this command's: rows would be
/// diffed against the wrong snapshot.
async fn check_layout(p: &Prepared) -> Result<()> {
    let mut whole = p.settings.clone();
    whole.shard = None;
    let layout = State::open(&p.ctx, &whole, false)?.layout().await?;
    let counts: std::collections::BTreeSet<u32> = layout.shards.iter().map(|s| s.count).collect();
    let list = |c: &std::collections::BTreeSet<u32>| {
        c.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" and ")
    };
    match p.settings.shard {
        None if !counts.is_empty() => Err(Error::config(format!(
            "sync {}: its state is split into {} shards; run each with --shard i/n, or run `voyado-sync reset` to go back to one unsharded run (every row is then sent again once)",
            p.settings.name,
            list(&counts)
        ))),
        Some(s) if layout.unsharded => Err(Error::config(format!(
            "sync {}: its state is unsharded; running it as shards ({s}) needs `voyado-sync reset` first (every row is then sent again once)",
            p.settings.name
        ))),
        Some(s) if counts.iter().any(|c| *c != s.count) => Err(Error::config(format!(
            "sync {}: its state is split into {} shards, not {}; changing the number of shards needs `voyado-sync reset` first (every row is then sent again once)",
            p.settings.name,
            list(&counts),
            s.count
        ))),
        _ => Ok(()),
    }
}

/// Like `prepare`, without reading the sources (reset and history must work when they are
/// gone).
async fn prepare_state_only(target: &Target, create_state: bool) -> Result<Prepared> {
    let p = open_target(target, create_state).await?;
    check_layout(&p).await?;
    Ok(p)
}

async fn open_target(target: &Target, create_state: bool) -> Result<Prepared> {
    let started = chrono::Utc::now();
    let clock = Instant::now();
    let settings = config::load_target(target)?;
    let ctx = crate::catalog::session(&settings)?;
    let state = State::open(&ctx, &settings, create_state)?;
    Ok(Prepared {
        settings,
        ctx,
        state,
        run_id: new_run_id(started),
        started,
        clock,
    })
}

/// Stores a report with the state; a failure here is logged, not fatal (the state itself
/// is already committed).
pub(crate) async fn store_report(p: &Prepared, report: &Report) {
    let value = match serde_json::to_value(report) {
        Ok(v) => v,
        Err(_) => return,
    };
    if let Err(e) = p
        .state
        .put_json(&format!("reports/{}.json", report.run_id), &value)
        .await
    {
        tracing::warn!(error = %e, "could not store the run report");
    }
}

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
