//! One crate error whose kind, and so the process exit code, follows from the type of the
//! failure, never from the call site: the same DataFusion failure gives the same code from
//! every command. Call sites add context (the stage, key, file or status) and keep the
//! source.
//!
//! Messages are single lines naming the offending key, column, file or status, because
//! they end up in schedulers' mail and log aggregators, not in a terminal.

use std::fmt;

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::parquet::errors::ParquetError;

pub use crate::sink::voyado::VoyadoError;
pub use crate::state::StateError;

/// Exit codes documented in the README. Every command maps its outcome to one of these.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Internal error: a bug.
    pub const INTERNAL: u8 = 1;
    /// Configuration, input or credentials error; nothing was sent.
    pub const INPUT: u8 = 2;
    /// The run finished and committed, but a warning threshold was breached.
    pub const WARNING: u8 = 3;
    /// The run could not complete (Voyado or storage unreachable, lock held, or rows left
    /// for the next run).
    pub const INCOMPLETE: u8 = 4;
    /// A guard refused the run before anything was sent.
    pub const GUARD: u8 = 5;
}

/// What kind of failure an error is; decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The configuration or the credentials are wrong. Nothing was read or sent.
    Config,
    /// The model or its input data is unusable (SQL error, unreadable Parquet, bad column,
    /// a plan that does not fit in the memory limit).
    Input,
    /// A store (the state location, or an object store holding the extracts) failed.
    Storage,
    /// Voyado could not be reached or answered unusably; nothing more can be sent now.
    Destination,
    /// Another run of the same sync holds the lock.
    Locked,
    /// A guard refused the run before anything was sent.
    Guard,
    /// A bug: an invariant the code relies on did not hold.
    Internal,
}

impl ErrorKind {
    /// The process exit code for this kind of failure (one of the `exit` codes).
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Config | ErrorKind::Input => exit::INPUT,
            ErrorKind::Storage | ErrorKind::Locked | ErrorKind::Destination => exit::INCOMPLETE,
            ErrorKind::Guard => exit::GUARD,
            ErrorKind::Internal => exit::INTERNAL,
        }
    }
}

/// The crate's error; its [`ErrorKind`] decides the exit code, and its message is one line
/// per problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration problems; each entry is one line. Nothing was read or sent.
    #[error("{}", .0.join("\n"))]
    Config(Vec<String>),
    /// Every problem `check` found, one or more lines each.
    #[error("{}", lines(.0))]
    Problems(Vec<Error>),
    /// DataFusion failed while planning or running a query; its kind follows from the
    /// DataFusion error's own variant (see [`engine_kind`]).
    #[error("{context}: {}", one_line(source))]
    Engine {
        /// What was being done (the stage or key), which prefixes the message.
        context: String,
        /// The DataFusion error.
        #[source]
        source: DataFusionError,
    },
    /// A local file or folder could not be used; the message names the kind of failure
    /// (`permission denied`), which is what a user acts on.
    #[error("{context}: {}", source.kind())]
    Io {
        /// What was being done, naming the file or folder.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Arrow failed on batches this crate built itself: a bug, unless it failed on I/O.
    #[error("{context}: {}", one_line(source))]
    Arrow {
        /// What was being done when Arrow failed.
        context: String,
        /// The Arrow error.
        #[source]
        source: ArrowError,
    },
    /// Writing a Parquet file of this crate's own batches (a state file, the staged
    /// change set) failed: in the store, or (a bug) in the batches.
    #[error("{context}: {}", one_line(source))]
    Parquet {
        /// What was being written (the state file or the staged change set).
        context: String,
        /// The Parquet error.
        #[source]
        source: ParquetError,
    },
    /// The state location failed or holds something unusable, or the lock is held.
    #[error(transparent)]
    State(#[from] StateError),
    /// Voyado refused the credentials or could not be used.
    #[error(transparent)]
    Voyado(#[from] VoyadoError),
    /// The model or its input data is unusable, found by this crate's own checks.
    #[error("{0}")]
    Input(String),
    /// The `emulator` command could not start or could not write its dump.
    #[error(transparent)]
    Emulator(#[from] voyado_emulator::CliError),
    /// A guard refused the run before anything was sent.
    #[error("{0}")]
    Guard(String),
    /// A bug: an invariant the code relies on did not hold.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// A configuration error of one line.
    pub fn config(msg: impl fmt::Display) -> Self {
        Error::Config(vec![msg.to_string()])
    }

    /// A DataFusion failure while `context` (the stage or the key it came from).
    pub fn engine(context: impl Into<String>, source: DataFusionError) -> Self {
        Error::Engine {
            context: context.into(),
            source,
        }
    }

    /// A local file or folder failure while `context` (naming the file or folder).
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// An Arrow failure while `context`.
    pub fn arrow(context: impl Into<String>, source: ArrowError) -> Self {
        Error::Arrow {
            context: context.into(),
            source,
        }
    }

    /// A Parquet write failure while `context`.
    pub fn parquet(context: impl Into<String>, source: ParquetError) -> Self {
        Error::Parquet {
            context: context.into(),
            source,
        }
    }

    /// What kind of failure this is, which decides the exit code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(_) => ErrorKind::Config,
            Error::Problems(all) => problems_kind(all),
            Error::Engine { source, .. } => engine_kind(source),
            Error::State(e) => e.kind(),
            Error::Io { .. } => ErrorKind::Storage,
            Error::Arrow { source, .. } => arrow_kind(source, ErrorKind::Internal),
            Error::Parquet { source, .. } => parquet_kind(source, ErrorKind::Internal),
            Error::Voyado(e) => e.kind(),
            Error::Input(_) => ErrorKind::Input,
            Error::Emulator(voyado_emulator::CliError::Input(_)) => ErrorKind::Input,
            Error::Emulator(voyado_emulator::CliError::Storage(_)) => ErrorKind::Storage,
            Error::Guard(_) => ErrorKind::Guard,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// The process exit code this error ends the command with.
    pub fn exit_code(&self) -> u8 {
        self.kind().exit_code()
    }
}

/// A result whose error defaults to the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn lines(all: &[Error]) -> String {
    let lines: Vec<String> = all.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// A list of problems exits with the code of the most fundamental one: a bug first, then
/// what the user must fix (config, input), then what may pass by itself (storage, Voyado).
fn problems_kind(all: &[Error]) -> ErrorKind {
    let kinds: Vec<ErrorKind> = all.iter().map(Error::kind).collect();
    [ErrorKind::Internal, ErrorKind::Config, ErrorKind::Input]
        .into_iter()
        .find(|k| kinds.contains(k))
        .or_else(|| kinds.first().copied())
        .unwrap_or(ErrorKind::Config)
}

/// The kind of a DataFusion failure, looking through the variants that wrap another error:
/// a store or file system failure is storage (but a missing path is input), a panic or broken invariant is internal, and
/// the rest (SQL, plan, schema, data that cannot be decoded or computed, a plan over the
/// memory limit) is the model's or its data's: input.
pub fn engine_kind(e: &DataFusionError) -> ErrorKind {
    classify(e, ErrorKind::Input)
}

/// [`engine_kind`], with `data` the kind of data that cannot be decoded or computed: the
/// user's input, or a damaged state.
pub(crate) fn classify(e: &DataFusionError, data: ErrorKind) -> ErrorKind {
    match e {
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            classify(inner, data)
        }
        DataFusionError::Shared(inner) => classify(inner, data),
        DataFusionError::Collection(all) => all.first().map_or(data, |e| classify(e, data)),
        DataFusionError::ObjectStore(e) => store_kind(e, data),
        DataFusionError::IoError(e) => io_kind(e, data),
        DataFusionError::ArrowError(e, _) => arrow_kind(e, data),
        DataFusionError::ParquetError(e) => parquet_kind(e, data),
        DataFusionError::External(e) => external_kind(e.as_ref(), data),
        DataFusionError::Internal(_) | DataFusionError::ExecutionJoin(_) => ErrorKind::Internal,
        _ => ErrorKind::Input,
    }
}

fn arrow_kind(e: &ArrowError, data: ErrorKind) -> ErrorKind {
    match e {
        ArrowError::IoError(_, e) => io_kind(e, data),
        ArrowError::ExternalError(e) => external_kind(e.as_ref(), data),
        _ => data,
    }
}

fn parquet_kind(e: &ParquetError, data: ErrorKind) -> ErrorKind {
    match e {
        ParquetError::External(e) => external_kind(e.as_ref(), data),
        _ => data,
    }
}

/// The kind of an error DataFusion, Arrow or Parquet carries as a boxed `dyn Error`.
fn external_kind(
    e: &(dyn std::error::Error + Send + Sync + 'static),
    data: ErrorKind,
) -> ErrorKind {
    if let Some(e) = e.downcast_ref::<DataFusionError>() {
        classify(e, data)
    } else if let Some(e) = e.downcast_ref::<object_store::Error>() {
        store_kind(e, data)
    } else if let Some(e) = e.downcast_ref::<std::io::Error>() {
        io_kind(e, data)
    } else if let Some(e) = e.downcast_ref::<ArrowError>() {
        arrow_kind(e, data)
    } else if let Some(e) = e.downcast_ref::<ParquetError>() {
        parquet_kind(e, data)
    } else if let Some(e) = e.downcast_ref::<Error>() {
        e.kind()
    } else {
        data
    }
}

/// A path that does not exist is `missing` (a wrong path for a query's input, a damaged
/// state for the state's files); any other store failure is storage, refused access
/// included: an expired credential is renewed outside the sync, and the next run passes.
fn store_kind(e: &object_store::Error, missing: ErrorKind) -> ErrorKind {
    match e {
        object_store::Error::NotFound { .. } => missing,
        _ => ErrorKind::Storage,
    }
}

fn io_kind(e: &std::io::Error, data: ErrorKind) -> ErrorKind {
    match e.kind() {
        std::io::ErrorKind::NotFound => data,
        _ => ErrorKind::Storage,
    }
}

/// The first line of an error's text: nested causes and backtraces would break the
/// one-line messages schedulers and log aggregators show.
pub fn one_line(e: &dyn fmt::Display) -> String {
    e.to_string()
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn store_down() -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: "connection refused".into(),
        }
    }

    fn store_missing() -> object_store::Error {
        object_store::Error::NotFound {
            path: "data/a.parquet".into(),
            source: "no such object".into(),
        }
    }

    fn store_error(context: &str, e: object_store::Error) -> Error {
        StateError::store(context, e).into()
    }

    fn df(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> DataFusionError {
        DataFusionError::External(e.into())
    }

    /// Each DataFusion failure, as the model's (`engine`) and as the state's (`state_files`).
    #[test]
    fn a_datafusion_failure_exits_by_its_own_variant() {
        use DataFusionError as D;
        let io = |k| std::io::Error::new(k, "io");
        let table: Vec<(&str, DataFusionError, u8, u8)> = vec![
            ("plan", D::Plan("no table x".into()), 2, 2),
            ("execution", D::Execution("bad cast".into()), 2, 2),
            ("not implemented", D::NotImplemented("x".into()), 2, 2),
            ("configuration", D::Configuration("x".into()), 2, 2),
            (
                "memory",
                D::ResourcesExhausted("HashJoinInput; raise memory_limit_mb".into()),
                2,
                2,
            ),
            ("internal", D::Internal("invariant".into()), 1, 1),
            ("store", D::ObjectStore(Box::new(store_down())), 4, 4),
            (
                "missing object",
                D::ObjectStore(Box::new(store_missing())),
                2,
                4,
            ),
            (
                "io",
                D::IoError(io(std::io::ErrorKind::PermissionDenied)),
                4,
                4,
            ),
            (
                "missing file",
                D::IoError(io(std::io::ErrorKind::NotFound)),
                2,
                4,
            ),
            (
                "arrow",
                D::ArrowError(Box::new(ArrowError::CastError("x".into())), None),
                2,
                4,
            ),
            (
                "arrow over a store",
                D::ArrowError(
                    Box::new(ArrowError::ExternalError(Box::new(store_down()))),
                    None,
                ),
                4,
                4,
            ),
            (
                "parquet",
                D::ParquetError(Box::new(ParquetError::General("bad magic".into()))),
                2,
                4,
            ),
            (
                "parquet over io",
                D::ParquetError(Box::new(ParquetError::External(Box::new(io(
                    std::io::ErrorKind::ConnectionReset,
                ))))),
                4,
                4,
            ),
            (
                "context around a store",
                D::Context(
                    "reading".into(),
                    Box::new(D::ObjectStore(Box::new(store_down()))),
                ),
                4,
                4,
            ),
            (
                "context around memory",
                D::Context("join".into(), Box::new(D::ResourcesExhausted("x".into()))),
                2,
                2,
            ),
            (
                "shared store",
                D::Shared(Arc::new(D::ObjectStore(Box::new(store_down())))),
                4,
                4,
            ),
            ("external store", df(store_down()), 4, 4),
            (
                "credentials refused",
                D::ObjectStore(Box::new(object_store::Error::PermissionDenied {
                    path: "x".into(),
                    source: "403".into(),
                })),
                4,
                4,
            ),
            (
                "no credentials",
                df(object_store::Error::Unauthenticated {
                    path: "x".into(),
                    source: "401".into(),
                }),
                4,
                4,
            ),
            ("external io", df(io(std::io::ErrorKind::TimedOut)), 4, 4),
            ("external internal", df(D::Internal("x".into())), 1, 1),
            (
                "external crate error",
                df(Error::from(StateError::Locked("held".into()))),
                4,
                4,
            ),
            ("external other", df("a UDF failed"), 2, 4),
        ];
        let mut wrong = Vec::new();
        for (name, e, engine, state) in table {
            let shared = Arc::new(e);
            let got = (
                Error::engine("model", DataFusionError::Shared(Arc::clone(&shared))).exit_code(),
                Error::from(StateError::files("state", DataFusionError::Shared(shared)))
                    .exit_code(),
            );
            if got != (engine, state) {
                wrong.push(format!("{name}: {got:?} instead of {:?}", (engine, state)));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn other_failures_exit_by_their_type() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let table: Vec<(&str, Error, u8)> = vec![
            ("config", Error::config("[sync] mode: x"), exit::INPUT),
            ("input", Error::Input("x".into()), exit::INPUT),
            (
                "store",
                store_error("state: x", store_missing()),
                exit::INCOMPLETE,
            ),
            (
                "state store refuses the credentials",
                store_error(
                    "state: x",
                    object_store::Error::Unauthenticated {
                        path: "x".into(),
                        source: "401".into(),
                    },
                ),
                exit::INCOMPLETE,
            ),
            (
                "io",
                Error::io("state: cannot create x", io),
                exit::INCOMPLETE,
            ),
            (
                "arrow on own batches",
                Error::arrow("building a delta", ArrowError::CastError("x".into())),
                exit::INTERNAL,
            ),
            (
                "parquet writer over a store",
                Error::parquet(
                    "state: writing x",
                    ParquetError::External(Box::new(store_down())),
                ),
                exit::INCOMPLETE,
            ),
            (
                "parquet writer on own batches",
                Error::parquet("state: writing x", ParquetError::General("x".into())),
                exit::INTERNAL,
            ),
            (
                "key rejected",
                VoyadoError::KeyRejected { status: 401 }.into(),
                exit::INPUT,
            ),
            (
                "Voyado down",
                VoyadoError::Unreachable {
                    base: "http://x".into(),
                    reason: "refused".into(),
                }
                .into(),
                exit::INCOMPLETE,
            ),
            (
                "locked",
                StateError::Locked("x".into()).into(),
                exit::INCOMPLETE,
            ),
            ("guard", Error::Guard("x".into()), exit::GUARD),
            ("internal", Error::Internal("x".into()), exit::INTERNAL),
            (
                "problems: config before storage",
                Error::Problems(vec![
                    store_error("state: x", store_down()),
                    Error::config("x"),
                ]),
                exit::INPUT,
            ),
            (
                "problems: storage only",
                Error::Problems(vec![store_error("state: x", store_down())]),
                exit::INCOMPLETE,
            ),
            (
                "problems: a bug first",
                Error::Problems(vec![Error::config("x"), Error::Internal("x".into())]),
                exit::INTERNAL,
            ),
        ];
        let wrong: Vec<String> = table
            .into_iter()
            .filter(|(_, e, code)| e.exit_code() != *code)
            .map(|(name, e, code)| format!("{name}: {} instead of {code}", e.exit_code()))
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn messages_are_the_context_and_the_first_line_of_the_source() {
        let e = Error::engine(
            "running the model",
            DataFusionError::ResourcesExhausted(
                "Failed to allocate 1 MB for HashJoinInput; raise memory_limit_mb\nbacktrace"
                    .into(),
            ),
        );
        assert_eq!(
            e.to_string(),
            "running the model: Resources exhausted: Failed to allocate 1 MB for HashJoinInput; raise memory_limit_mb"
        );
        assert!(
            std::error::Error::source(&e).is_some(),
            "the source is kept"
        );
        let e = Error::io(
            "state: cannot create /x",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert_eq!(e.to_string(), "state: cannot create /x: permission denied");
        let e = Error::Problems(vec![
            Error::Config(vec!["a".into(), "b".into()]),
            store_error("state: reading manifest.json", store_down()),
        ]);
        assert_eq!(
            e.to_string(),
            "a\nb\nstate: reading manifest.json: Generic S3 error: connection refused"
        );
    }
}
