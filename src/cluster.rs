//! A Ballista scheduler and executor running in this process (feature `ballista`), with the
//! crate's functions and the sync's object stores, so a cluster can run the model and the
//! change detection of `[engine] kind = "ballista"` syncs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ballista_core::RuntimeProducer;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::{
    ballista_aggregate_functions, ballista_scalar_functions, ballista_window_functions,
};
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::SessionBuilder;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionConfig;

use crate::config::{Location, Settings};
use crate::error::{Error, Result, one_line};

/// The scheduler pushes tasks to executors; both sides must agree.
const POLICY: TaskSchedulingPolicy = TaskSchedulingPolicy::PushStaged;

/// Runs a scheduler on `bind` until the process is stopped.
pub async fn run_scheduler(settings: Option<&Settings>, bind: SocketAddr) -> Result<()> {
    let stores = store_registry(settings)?;
    let functions = shared_functions();
    // Ballista's default session builder plus the crate's functions (to decode client plans)
    // and object stores (to list source files while planning).
    let session_builder: SessionBuilder = Arc::new(move |config: SessionConfig| {
        let runtime = RuntimeEnvBuilder::new()
            .with_object_store_registry(Arc::clone(&stores))
            .build_arc()?;
        let mut scalar = ballista_scalar_functions();
        scalar.extend(functions.iter().cloned());
        Ok(SessionStateBuilder::new()
            .with_default_features()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_optimizer_rules(ballista_core::optimizer::ballista_default_optimizer_rules())
            .with_scalar_functions(scalar)
            .with_aggregate_functions(ballista_aggregate_functions())
            .with_window_functions(ballista_window_functions())
            .build())
    });
    let config = SchedulerConfig {
        bind_host: bind.ip().to_string(),
        bind_port: bind.port(),
        external_host: bind.ip().to_string(),
        scheduling_policy: POLICY,
        ..Default::default()
    }
    .with_override_session_builder(session_builder);
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| Error::Internal(format!("ballista scheduler: {}", one_line(&e))))?;
    tracing::info!(%bind, "ballista scheduler listening");
    start_server(cluster, bind, Arc::new(config))
        .await
        .map_err(|e| Error::Internal(format!("ballista scheduler on {bind}: {}", one_line(&e))))
}

/// Where and how an executor listens.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler's address, host:port.
    pub scheduler: String,
    /// The local address the executor's gRPC and Flight servers bind to.
    pub bind_host: String,
    /// The host the scheduler and clients reach this executor at.
    pub external_host: Option<String>,
    /// gRPC port the scheduler pushes tasks to.
    pub grpc_port: u16,
    /// Arrow Flight port serving shuffle data and results.
    pub flight_port: u16,
    /// Shuffle files; holds personal data, so keep it private. None = a private temporary
    /// folder removed on exit.
    pub work_dir: Option<PathBuf>,
}

/// Runs an executor registered with the scheduler until the process is stopped.
pub async fn run_executor(settings: Option<&Settings>, opts: ExecutorOptions) -> Result<()> {
    // Held to the end: dropping it removes the folder.
    let temp;
    let work_dir = match opts.work_dir {
        Some(d) => {
            create_private_dir(&d)?;
            d
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("voyado-sync-executor-")
                .tempdir()
                .map_err(|e| Error::io("executor work folder", e))?;
            temp.path().to_path_buf()
        }
    };
    let spill_dir = work_dir.join("spill");
    create_private_dir(&spill_dir)?;

    let stores = store_registry(settings)?;
    // Serves stores built from the sync's [storage] options; credentials never travel in
    // the session config the client sends.
    let runtime_producer: RuntimeProducer = Arc::new(move |_config: &SessionConfig| {
        RuntimeEnvBuilder::new()
            .with_object_store_registry(Arc::clone(&stores))
            .with_temp_file_path(spill_dir.clone())
            .build_arc()
    });
    // The scheduler's list (DataFusion's defaults, nested ones such as `array_compact`
    // included, then the crate's): the executor's default registry lacks the nested ones.
    let mut functions = BallistaFunctionRegistry::default();
    for udf in ballista_scalar_functions()
        .into_iter()
        .chain(shared_functions())
    {
        functions
            .scalar_functions
            .insert(udf.name().to_string(), udf);
    }
    let memory = settings.map(|s| s.limits.memory_limit_mb * 1024 * 1024);
    let (scheduler_host, scheduler_port) = opts
        .scheduler
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?)))
        .ok_or_else(|| {
            Error::config(format!(
                "--scheduler {:?}: expected host:port, e.g. 127.0.0.1:50050",
                opts.scheduler
            ))
        })?;
    let config = ExecutorProcessConfig {
        bind_host: opts.bind_host.clone(),
        external_host: opts.external_host.clone().or_else(|| {
            (opts.bind_host != "0.0.0.0" && opts.bind_host != "::").then(|| opts.bind_host.clone())
        }),
        port: opts.flight_port,
        grpc_port: opts.grpc_port,
        scheduler_host,
        scheduler_port,
        // Above 0, the executor waits for the scheduler to come up.
        scheduler_connect_timeout_seconds: 60,
        vcores: crate::catalog::cores(),
        task_scheduling_policy: POLICY,
        work_dir: Some(work_dir.to_string_lossy().into_owned()),
        // Without a limit Ballista takes 70% of the host's memory.
        memory_pool_size: memory,
        override_function_registry: Some(Arc::new(functions)),
        override_runtime_producer: Some(runtime_producer),
        ..Default::default()
    };
    tracing::info!(
        scheduler = %opts.scheduler,
        grpc_port = opts.grpc_port,
        flight_port = opts.flight_port,
        work_dir = %work_dir.display(),
        "ballista executor starting"
    );
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| Error::Internal(format!("ballista executor: {}", one_line(&e))))
}

#[cfg(unix)]
fn create_private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))
}

/// The crate's functions as the scheduler and executors register them (looked up by name
/// when they decode plans).
pub fn shared_functions() -> Vec<Arc<datafusion::logical_expr::ScalarUDF>> {
    crate::functions::all().into_iter().map(Arc::new).collect()
}

/// A registry with a store for every object-store location of the sync (sources and
/// state), built like the client's, so the cluster reads and lists what the client plans.
/// `file://` is always there. Without settings only local files are reachable.
pub fn store_registry(settings: Option<&Settings>) -> Result<Arc<dyn ObjectStoreRegistry>> {
    let registry = DefaultObjectStoreRegistry::new();
    if let Some(settings) = settings {
        let locations = settings
            .tables
            .iter()
            .map(|(_, l)| l)
            .chain(std::iter::once(&settings.state));
        for loc in locations {
            if let Location::Url(url) = loc {
                let store = crate::catalog::object_store_for(url, settings.storage_options(url))?;
                registry.register_store(url, store);
            }
        }
    }
    Ok(Arc::new(registry))
}
