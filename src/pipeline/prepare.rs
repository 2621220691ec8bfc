//! What every command starts from: validated settings, a DataFusion session with the
//! sources, and the sync's state, checked to be laid out (sharded or not) as the command
//! runs; and what every command ends with, its report stored with the state.

use std::time::Instant;

use datafusion::prelude::SessionContext;

use crate::config::{self, Settings, Target};
use crate::diff;
use crate::error::{Error, Result};
use crate::report::{Report, new_run_id};
use crate::state::{self, NewSnapshot, State};

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

/// Opens the target and registers its sources, refusing a state laid out another way.
pub(crate) async fn prepare(target: &Target, create_state: bool) -> Result<Prepared> {
    let p = prepare_state_only(target, create_state).await?;
    crate::catalog::register_sources(&p.ctx, &p.settings).await?;
    Ok(p)
}

impl Prepared {
    pub(super) fn report(&self, command: &str, summary: diff::Summary) -> Report {
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

    /// What a commit of `set` records besides the rows.
    pub(super) fn new_snapshot(&self, set: &diff::ChangeSet) -> NewSnapshot {
        NewSnapshot {
            run_id: self.run_id.clone(),
            identifier_key: self.settings.key.as_str().to_string(),
            attributes: set.attributes.clone(),
        }
    }

    /// The change set of the model against the state's last snapshot, with that snapshot's
    /// manifest.
    pub(super) async fn change_set(
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

pub(super) async fn open_target(target: &Target, create_state: bool) -> Result<Prepared> {
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
    if let Err(e) = p.state.put_report(&report.run_id, &value).await {
        tracing::warn!(error = %e, "could not store the run report");
    }
}
