//! Errors of this crate. Request-path errors are the coordinator's
//! [`alldata_coordinator::StorageError`]; opening a store has its own type.

use std::path::PathBuf;

/// Why [`crate::LevelDbStorage::open`] failed. Every variant names the directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The path cannot be handed to LevelDB (not UTF-8, or contains a NUL byte).
    #[error("invalid data directory {}: LevelDB needs a UTF-8 path without NUL bytes", path.display())]
    InvalidPath {
        /// The data directory.
        path: PathBuf,
    },
    /// The data directory could not be created or is not writable.
    #[error("data directory {} is not a writable directory: {source}", path.display())]
    NotWritable {
        /// The data directory.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Another process (or another open handle in this process) holds the
    /// database's `LOCK` file.
    #[error("database {} is already opened by another process or handle: {message}", path.display())]
    Locked {
        /// The data directory.
        path: PathBuf,
        /// LevelDB's message.
        message: String,
    },
    /// LevelDB found the database corrupt.
    #[error("database {} is corrupt: {message}", path.display())]
    Corrupt {
        /// The data directory.
        path: PathBuf,
        /// LevelDB's message.
        message: String,
    },
    /// The directory holds a LevelDB database that was not written by this crate,
    /// or by an incompatible version of it.
    #[error("database {} has an unknown format ({found}); expected AllData storage format 2 (format 1 is upgraded at open)", path.display())]
    IncompatibleFormat {
        /// The data directory.
        path: PathBuf,
        /// What the format marker says.
        found: String,
    },
    /// The database was written with another consolidation interval length.
    /// Nothing was changed; open it with the stored length (or export it and
    /// start a new data directory).
    #[error("database {} uses consolidation intervals of {stored}, not {requested}: the interval length of an existing data directory cannot change (open it with {stored}, or start a new data directory)", path.display())]
    IntervalLengthChanged {
        /// The data directory.
        path: PathBuf,
        /// The length the database was written with.
        stored: String,
        /// The length asked for.
        requested: crate::interval::IntervalLength,
    },
    /// Any other LevelDB or I/O failure while opening.
    #[error("could not open database {}: {message}", path.display())]
    Failed {
        /// The data directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl OpenError {
    /// The data directory the error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            OpenError::InvalidPath { path }
            | OpenError::NotWritable { path, .. }
            | OpenError::Locked { path, .. }
            | OpenError::Corrupt { path, .. }
            | OpenError::IncompatibleFormat { path, .. }
            | OpenError::IntervalLengthChanged { path, .. }
            | OpenError::Failed { path, .. } => path,
        }
    }

    /// Classifies a LevelDB `open` error message.
    pub(crate) fn from_leveldb(path: PathBuf, message: String) -> Self {
        let lower = message.to_ascii_lowercase();
        if lower.contains("lock")
            && (lower.contains("already held") || lower.contains("unavailable"))
        {
            OpenError::Locked { path, message }
        } else if lower.contains("corruption") {
            OpenError::Corrupt { path, message }
        } else if lower.contains("permission denied") || lower.contains("read-only file system") {
            OpenError::NotWritable {
                path,
                source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, message),
            }
        } else {
            OpenError::Failed { path, message }
        }
    }
}

/// A consolidation interval length that is not one of `P1D`, `PT3H`, `PT1H`,
/// `PT15M`, `PT5M`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid consolidation interval {input:?}: expected one of P1D, PT3H, PT1H, PT15M, PT5M")]
pub struct ParseIntervalLengthError {
    /// The text that was given.
    pub input: String,
}
