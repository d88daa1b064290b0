//! Options for opening a [`crate::LevelDbStorage`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use alldata_keygen::{Clock, SystemClock};

use crate::interval::{AcceptWindow, IntervalLength};

/// When an acknowledged put is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every acknowledged put has been `fsync`ed: it survives a process or
    /// machine crash. Concurrent puts share one write batch and one sync (group
    /// commit). The default.
    #[default]
    Sync,
    /// Puts are handed to the OS without `fsync`: they survive a process crash
    /// but the last moments may be lost in a machine crash. Faster.
    Buffered,
}

/// Block compression of LevelDB's table files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// No compression.
    None,
    /// Snappy (fast, moderate ratio). The default.
    #[default]
    Snappy,
    /// Zstd at level 1.
    Zstd,
}

impl Compression {
    pub(crate) fn to_leveldb(self) -> leveldb::options::Compression {
        match self {
            Compression::None => leveldb::options::Compression::No,
            Compression::Snappy => leveldb::options::Compression::Snappy,
            Compression::Zstd => leveldb::options::Compression::Zstd,
        }
    }
}

/// How to open a [`crate::LevelDbStorage`]. Built with [`Options::new`] and the
/// builder methods; every setting has a sensible default.
#[derive(Clone)]
pub struct Options {
    pub(crate) path: PathBuf,
    pub(crate) interval: IntervalLength,
    pub(crate) window: AcceptWindow,
    pub(crate) durability: Durability,
    pub(crate) cache_bytes: usize,
    pub(crate) compression: Compression,
    pub(crate) write_buffer_bytes: Option<usize>,
    pub(crate) paranoid_checks: bool,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) rotation_check: Option<Duration>,
    pub(crate) follow_clock_jumps: bool,
    pub(crate) max_batch: usize,
    pub(crate) queue_depth: usize,
}

impl Options {
    /// Defaults for the data directory `path` (created if missing): `P1D`
    /// intervals, window previous/current/next, [`Durability::Sync`], 8 MiB
    /// cache, Snappy, the system clock, interval check every second, group
    /// commit of up to 1024 puts.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Options {
            path: path.into(),
            interval: IntervalLength::Day,
            window: AcceptWindow::default(),
            durability: Durability::Sync,
            cache_bytes: 8 * 1024 * 1024,
            compression: Compression::Snappy,
            write_buffer_bytes: None,
            paranoid_checks: true,
            clock: Arc::new(SystemClock),
            rotation_check: Some(Duration::from_secs(1)),
            follow_clock_jumps: false,
            max_batch: 1024,
            queue_depth: 8192,
        }
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The consolidation interval length.
    #[must_use]
    pub fn interval_length(mut self, length: IntervalLength) -> Self {
        self.interval = length;
        self
    }

    /// Which intervals around "now" accept writes.
    #[must_use]
    pub fn accept_window(mut self, window: AcceptWindow) -> Self {
        self.window = window;
        self
    }

    /// When an acknowledged put is on disk.
    #[must_use]
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The size of LevelDB's block cache in bytes (0 keeps LevelDB's own 8 MiB default).
    #[must_use]
    pub fn cache_bytes(mut self, bytes: usize) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// Table-file compression.
    #[must_use]
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// LevelDB's memtable size in bytes (LevelDB's default is 4 MiB).
    #[must_use]
    pub fn write_buffer_bytes(mut self, bytes: usize) -> Self {
        self.write_buffer_bytes = Some(bytes);
        self
    }

    /// LevelDB's paranoid checks: fail loudly on any detected corruption instead
    /// of skipping damaged log records (default **on**). With them, a log
    /// block damaged on disk makes [`crate::LevelDbStorage::open`] fail with
    /// [`crate::OpenError::Corrupt`] instead of dropping the events in it
    /// silently, and corruption found later by a compaction fails writes with
    /// [`alldata_coordinator::StorageError::Corrupt`].
    #[must_use]
    pub fn paranoid_checks(mut self, on: bool) -> Self {
        self.paranoid_checks = on;
        self
    }

    /// The clock that decides which intervals accept writes and when they close
    /// (inject an [`alldata_keygen::ManualClock`] in tests).
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How often a background task checks for intervals to close; `None` turns
    /// the task off (call [`crate::LevelDbStorage::check_intervals`] yourself).
    #[must_use]
    pub fn rotation_check(mut self, every: Option<Duration>) -> Self {
        self.rotation_check = every.filter(|d| !d.is_zero());
        self
    }

    /// Whether closing intervals follows the clock however far it jumps
    /// (default `false`). By default, between two checks the closing clock
    /// advances at most by the real time elapsed, plus a tenth, plus a second:
    /// a forward jump of the wall clock (a bad NTP step, an operator typo) is
    /// logged and followed only at that pace, so intervals are not closed (and
    /// the node's own later writes refused) because of it. A restart trusts
    /// the clock again. Tests that move a [`alldata_keygen::ManualClock`] by
    /// hours at once turn this on.
    #[must_use]
    pub fn follow_clock_jumps(mut self, follow: bool) -> Self {
        self.follow_clock_jumps = follow;
        self
    }

    /// The most puts the writer gathers into one write batch (and, in
    /// [`Durability::Sync`], one `fsync`). `1` turns group commit off: one sync
    /// per put, the naive baseline. Values below 1 count as 1.
    #[must_use]
    pub fn max_batch(mut self, puts: usize) -> Self {
        self.max_batch = puts.max(1);
        self
    }

    /// How many puts may wait for the writer before callers of `put` wait
    /// (back-pressure). Values below 1 count as 1.
    #[must_use]
    pub fn queue_depth(mut self, puts: usize) -> Self {
        self.queue_depth = puts.max(1);
        self
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("path", &self.path)
            .field("interval", &self.interval)
            .field("window", &self.window)
            .field("durability", &self.durability)
            .field("cache_bytes", &self.cache_bytes)
            .field("compression", &self.compression)
            .field("write_buffer_bytes", &self.write_buffer_bytes)
            .field("paranoid_checks", &self.paranoid_checks)
            .field("rotation_check", &self.rotation_check)
            .field("follow_clock_jumps", &self.follow_clock_jumps)
            .field("max_batch", &self.max_batch)
            .field("queue_depth", &self.queue_depth)
            .finish_non_exhaustive()
    }
}
