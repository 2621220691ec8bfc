//! How the state location fails. Every variant is a failure of the store or of what it
//! holds, never of the user's model: an unreadable state file means a damaged state.

use datafusion::error::DataFusionError;

use crate::error::{ErrorKind, one_line};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An object store call on the state location failed.
    #[error("{context}: {}", one_line(source))]
    Store {
        context: String,
        #[source]
        source: object_store::Error,
    },
    /// DataFusion failed reading the state's own files (snapshot, deltas, the staged
    /// change set). Undecodable data there is a storage failure, not the user's input;
    /// the rest is classified like any DataFusion failure.
    #[error("{context}: {}", one_line(source))]
    Files {
        context: String,
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
    pub fn store(context: impl Into<String>, source: object_store::Error) -> Self {
        StateError::Store {
            context: context.into(),
            source,
        }
    }

    pub fn files(context: impl Into<String>, source: DataFusionError) -> Self {
        StateError::Files {
            context: context.into(),
            source,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            StateError::Store { .. } | StateError::Unusable(_) => ErrorKind::Storage,
            StateError::Files { source, .. } => crate::error::classify(source, ErrorKind::Storage),
            StateError::Locked(_) => ErrorKind::Locked,
        }
    }
}
