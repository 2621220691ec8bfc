//! How the state location fails. Every variant is a failure of the store or of what it
//! holds, never of the user's model: an unreadable state file means a damaged state.

use datafusion::error::DataFusionError;

use crate::error::{ErrorKind, one_line};

/// A failure of the state location or of what it holds.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An object store call on the state location failed.
    #[error("{context}: {}", one_line(source))]
    Store {
        /// What was being done on the state location.
        context: String,
        /// The object store error.
        #[source]
        source: object_store::Error,
    },
    /// DataFusion failed reading the state's own files (snapshot, deltas, the staged
    /// change set). Undecodable data there is a storage failure, not the user's input;
    /// the rest is classified like any DataFusion failure.
    #[error("{context}: {}", one_line(source))]
    Files {
        /// What was being read.
        context: String,
        /// The DataFusion error.
        #[source]
        source: DataFusionError,
    },
    /// The state holds something this version cannot use (an invalid or newer manifest).
    #[error("{0}")]
    Unusable(String),
    /// Another run of the same sync holds the lock.
    #[error("{0}")]
    Locked(String),
}

impl StateError {
    /// An object store failure on the state location while `context`.
    pub fn store(context: impl Into<String>, source: object_store::Error) -> Self {
        StateError::Store {
            context: context.into(),
            source,
        }
    }

    /// A DataFusion failure reading the state's own files while `context`.
    pub fn files(context: impl Into<String>, source: DataFusionError) -> Self {
        StateError::Files {
            context: context.into(),
            source,
        }
    }

    /// What kind of failure this is, which decides the exit code: a held lock is `Locked`,
    /// most others `Storage`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StateError::Store { .. } | StateError::Unusable(_) => ErrorKind::Storage,
            StateError::Files { source, .. } => crate::error::classify(source, ErrorKind::Storage),
            StateError::Locked(_) => ErrorKind::Locked,
        }
    }
}
