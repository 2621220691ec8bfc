//! One crate error whose class decides the process exit code.
//!
//! Messages are single lines naming the offending key, column, file or status, because
//! they end up in schedulers' mail and log aggregators, not in a terminal.

use std::fmt;

/// Exit codes documented in the README. Every command maps its outcome to one of these.
pub mod exit {
    pub const OK: u8 = 0;
    pub const INTERNAL: u8 = 1;
    pub const INPUT: u8 = 2;
    pub const WARNING: u8 = 3;
    pub const INCOMPLETE: u8 = 4;
    pub const GUARD: u8 = 5;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration problems; each entry is one line. Nothing was read or sent.
    #[error("{}", .0.join("\n"))]
    Config(Vec<String>),
    /// The model or its input data is unusable (SQL error, unreadable Parquet, bad column).
    #[error("{0}")]
    Input(String),
    /// The state location (local folder or object store) failed.
    #[error("{0}")]
    Storage(String),
    /// Voyado could not be reached or answered unusably; nothing more can be sent now.
    #[error("{0}")]
    Destination(String),
    /// Another run of the same sync holds the lock.
    #[error("{0}")]
    Locked(String),
    /// A guard refused the run before anything was sent.
    #[error("{0}")]
    Guard(String),
    /// A bug: an invariant the code relies on did not hold.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn config(msg: impl fmt::Display) -> Self {
        Error::Config(vec![msg.to_string()])
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Input(_) => exit::INPUT,
            Error::Storage(_) | Error::Locked(_) | Error::Destination(_) => exit::INCOMPLETE,
            Error::Guard(_) => exit::GUARD,
            Error::Internal(_) => exit::INTERNAL,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Turns a DataFusion error into a one-line message with the stage that failed.
pub fn df_message(context: &str, err: &datafusion::error::DataFusionError) -> String {
    format!("{context}: {}", one_line(err))
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
