//! Sessions and object stores for a Ballista cluster (feature `ballista`).

use std::sync::Arc;

use ballista::prelude::{SessionConfigExt, SessionContextExt};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::error::{Error, Result, one_line};

/// A client session whose queries the scheduler at `url` (`df://host:port`) plans and the
/// executors run. Nothing connects until the first query.
/// `tune` applies the crate's session options (the catalog's, for every engine).
pub fn client_session(
    url: &str,
    runtime: Arc<RuntimeEnv>,
    tune: impl FnOnce(SessionConfig) -> Result<SessionConfig>,
) -> Result<SessionContext> {
    // new_with_ballista() applies Ballista's restricted options once, so the crate's
    // options set after it are the ones sent with every query.
    // The static planner, not adaptive planning: with adaptive planning, Ballista 55 re-ran
    // a stage without end when a join's side was an empty table (a first run's snapshot),
    // and its empty-stage rewrites have had wrong-result bugs (datafusion-ballista#2185).
    let config = tune(SessionConfig::new_with_ballista())?
        .with_ballista_job_name("voyado-sync")
        .with_ballista_adaptive_query_planner(false);
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .build();
    // remote_with_state only rebuilds the state (it never awaits I/O), so blocking on it
    // keeps `session` synchronous for every caller.
    let ctx = futures::executor::block_on(SessionContext::remote_with_state(url, state))
        .map_err(|e| Error::config(format!("[engine] url {url}: {}", one_line(&e))))?;
    // After, not before: the Ballista upgrade replaces the state's scalar function list.
    crate::functions::register(&ctx);
    Ok(ctx)
}
