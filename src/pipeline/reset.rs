//! `reset`: the snapshot forgotten, so the next run is a full sync.

use crate::config::Target;
use crate::error::Result;
use crate::state::State;

use super::prepare::{Prepared, open_target};
use super::with_lock;

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
    with_lock(state, p, "reset", state.reset()).await
}
