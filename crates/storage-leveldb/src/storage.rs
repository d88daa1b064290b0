//! [`LevelDbStorage`]: the coordinator's `Storage` trait on LevelDB.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use alldata_coordinator::{EventStream, PutStatus, ScanRange, Storage, StorageError};
use alldata_keygen::{Clock, EventKey};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::command::Command;
use crate::db::{self, Db};
use crate::error::OpenError;
use crate::interval::{AcceptWindow, Interval, IntervalClosed, IntervalLength};

/// One interval as [`LevelDbStorage::intervals`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntervalState {
    /// The interval.
    pub interval: Interval,
    /// Whether it is closed (its count is final).
    pub closed: bool,
    /// The events stored in it (on this node).
    pub events: u64,
}
use crate::options::{Durability, Options};
use crate::writer::Writer;

/// A `put_many` of at most this many events may be written by its caller
/// (see `LevelDbStorage::idle_writer`); larger ones always go to the writer thread.
const INLINE_MAX_EVENTS: usize = 4;
/// Most event bytes written on the caller's thread: a larger write can fill
/// the memtable and wait for LevelDB to flush the previous one.
const INLINE_MAX_BYTES: usize = 64 * 1024;
/// A caller writes itself only when the writer has been idle this long: at
/// low load (a put every few hundred µs) that saves the hand-off, while under
/// load (puts tens of µs apart) the writer thread keeps grouping them.
const INLINE_AFTER_IDLE: Duration = Duration::from_micros(200);
/// Events fetched per blocking read of a scan.
const SCAN_CHUNK: usize = 1024;
/// Event bytes fetched per blocking read of a scan (soft limit).
const SCAN_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Write-once event storage on one LevelDB database.
///
/// * `put` is put-if-absent. Puts go through one writer thread that gathers
///   concurrent puts into one write batch (one `fsync` in
///   [`Durability::Sync`]): group commit. In [`Durability::Buffered`] a lone
///   put that finds the writer idle (nothing queued, nothing written for
///   200 µs) writes itself under the writer's lock instead, saving the two
///   thread hand-offs (about 50 µs at low load); the outcome is the same.
/// * `get` and `scan` run on tokio's blocking pool; scans stream in chunks of
///   1024 events, never loading the whole range.
/// * Keys are routed by their UTC timestamp into consolidation intervals; only
///   keys in the [`AcceptWindow`] around "now" are accepted, others are
///   [`StorageError::Rejected`]. Intervals that leave the window are closed and
///   reported ([`LevelDbStorage::closed_intervals`]).
///
/// Open with [`LevelDbStorage::open`] inside a tokio runtime. Dropping the store
/// closes the database in the background once in-flight operations and open
/// scan streams are done; [`LevelDbStorage::close`] waits for it.
pub struct LevelDbStorage {
    tx: mpsc::Sender<Command>,
    /// The writer's state; the writer thread locks it per batch.
    writer: Arc<Mutex<Writer>>,
    /// Puts (and put_many calls) in progress.
    active: AtomicUsize,
    /// Writes done by their caller rather than the writer thread.
    inline_writes: AtomicU64,
    db: Db,
    writer_done: oneshot::Receiver<()>,
    closed_rx: Mutex<Option<mpsc::UnboundedReceiver<IntervalClosed>>>,
    path: PathBuf,
    length: IntervalLength,
    window: AcceptWindow,
    durability: Durability,
    clock: Arc<dyn Clock>,
    /// The end of the last closed interval, kept by the writer.
    closed_mark: Arc<AtomicU64>,
    opened_clean: bool,
}

impl std::fmt::Debug for LevelDbStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LevelDbStorage")
            .field("path", &self.path)
            .field("interval", &self.length)
            .field("window", &self.window)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

fn closed_error() -> StorageError {
    StorageError::Failed("the LevelDB storage is closed".into())
}

fn join_error(e: tokio::task::JoinError) -> StorageError {
    StorageError::Failed(format!("blocking LevelDB task failed: {e}"))
}

impl LevelDbStorage {
    /// Opens (creating if needed) the store in `options.path`, starts its writer
    /// thread and, unless turned off, its interval-check task. Intervals that
    /// left the window while the store was closed are closed and reported at once.
    ///
    /// Must be called inside a tokio runtime. Fails with a typed [`OpenError`]
    /// when the directory is not writable, is locked by another process or
    /// handle, or holds a corrupt or foreign database.
    pub async fn open(options: Options) -> Result<Self, OpenError> {
        let path = options.path.clone();
        let opts = options.clone();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (db, writer) = tokio::task::spawn_blocking(move || {
            let db: Db = Arc::new(db::open(&opts)?);
            // Close what left the window while the store was closed, before
            // anything else can happen.
            let writer = Writer::new(db.clone(), &opts, events_tx)
                .and_then(|mut w| w.check().map(|_| w))
                .map_err(|e| OpenError::Failed {
                    path: opts.path.clone(),
                    message: e.to_string(),
                });
            match writer {
                Ok(w) => Ok((db, w)),
                Err(e) => {
                    if let Some(inner) = Arc::into_inner(db) {
                        inner.close_now();
                    }
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| OpenError::Failed {
            path: path.clone(),
            message: format!("open task failed: {e}"),
        })??;

        let (tx, rx) = mpsc::channel(options.queue_depth);
        let (done_tx, done_rx) = oneshot::channel();
        let closed_mark = Arc::clone(&writer.closed_mark);
        let opened_clean = writer.opened_clean;
        let writer = Arc::new(Mutex::new(writer));
        let thread_writer = Arc::clone(&writer);
        let spawned = std::thread::Builder::new()
            .name("alldata-leveldb-writer".into())
            .spawn(move || {
                Writer::run(&thread_writer, rx);
                // Release the writer's database handle before saying "done",
                // so `close` finds the last one.
                drop(thread_writer);
                let _ = done_tx.send(());
            });
        if let Err(e) = spawned {
            return Err(OpenError::Failed {
                path,
                message: format!("could not start the writer thread: {e}"),
            });
        }
        if let Some(every) = options.rotation_check {
            let weak = tx.downgrade();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(every);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker.tick().await; // the writer checked at start
                loop {
                    ticker.tick().await;
                    let Some(tx) = weak.upgrade() else { break };
                    if tx.send(Command::Check { reply: None }).await.is_err() {
                        break;
                    }
                }
            });
        }
        Ok(LevelDbStorage {
            tx,
            writer,
            active: AtomicUsize::new(0),
            inline_writes: AtomicU64::new(0),
            db,
            writer_done: done_rx,
            closed_rx: Mutex::new(Some(events_rx)),
            path,
            length: options.interval,
            window: options.window,
            durability: options.durability,
            clock: options.clock,
            closed_mark,
            opened_clean,
        })
    }

    /// Whether a put of `key` would pass the acceptance window now (and not
    /// fall into an interval already closed); the error says why not. The
    /// same check every put makes, for callers that want to refuse a key
    /// before anything is written anywhere.
    pub fn check_key(&self, key: EventKey) -> Result<(), String> {
        let closed_upto = self.closed_mark.load(Ordering::Relaxed);
        self.window
            .check(self.length, self.clock.now_ms(), closed_upto, key)
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The consolidation interval length.
    pub fn interval_length(&self) -> IntervalLength {
        self.length
    }

    /// The acceptance window.
    pub fn accept_window(&self) -> AcceptWindow {
        self.window
    }

    /// The durability mode.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// The stream of "interval closed" notifications, in closing order. Events
    /// are buffered from `open` on, so none is missed; the receiver can be taken
    /// once (later calls return `None`).
    pub fn closed_intervals(&self) -> Option<mpsc::UnboundedReceiver<IntervalClosed>> {
        self.closed_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Closes every interval that left the acceptance window now (the background
    /// task does this periodically) and returns what was closed. The same
    /// notifications also go to [`LevelDbStorage::closed_intervals`].
    pub async fn check_intervals(&self) -> Result<Vec<IntervalClosed>, StorageError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Check { reply: Some(reply) })
            .await
            .map_err(|_| closed_error())?;
        rx.await.map_err(|_| closed_error())?
    }

    /// The intervals of the configured length that hold events or are known
    /// closed, oldest first: the closed ones from their records (final
    /// counts), the open ones from the writer's counts. An interval that
    /// closes while this runs is reported closed.
    pub async fn intervals(&self) -> Result<Vec<IntervalState>, StorageError> {
        // The open counts first: an interval that closes in between is then
        // found among the records too, and closed wins. The writer's lock is
        // held during its writes, so it is taken off the async workers.
        let db = self.db.clone();
        let writer = Arc::clone(&self.writer);
        let (open, records) = tokio::task::spawn_blocking(move || {
            let open = crate::writer::lock(&writer).open_counts();
            db.interval_records().map(|records| (open, records))
        })
        .await
        .map_err(join_error)??;
        let len = self.length.as_millis();
        let mut by_start = std::collections::BTreeMap::new();
        for (start, events) in open {
            by_start.insert(start, (false, events));
        }
        for r in records.iter().filter(|r| r.length_ms == len) {
            if r.state == db::STATE_CLOSED {
                by_start.insert(r.start_ms, (true, r.count));
            }
        }
        Ok(by_start
            .into_iter()
            .map(|(start, (closed, events))| IntervalState {
                interval: Interval::containing(start, self.length),
                closed,
                events,
            })
            .collect())
    }

    /// Whether `interval` is closed: it left the acceptance window, no write
    /// is accepted in it any more and its content is final.
    pub fn is_closed(&self, interval: &Interval) -> bool {
        interval.end_ms() <= self.closed_mark.load(Ordering::Relaxed)
    }

    /// Compacts the whole database (e.g. after intervals closed), on the writer
    /// thread: puts wait meanwhile.
    pub async fn compact(&self) -> Result<(), StorageError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Compact { reply })
            .await
            .map_err(|_| closed_error())?;
        rx.await.map_err(|_| closed_error())?
    }

    /// Stops the writer through a shared handle: the puts queued before are
    /// written, the open intervals' counts and the clean-shutdown marker are
    /// recorded, and every later put fails as closed. For a shutdown that
    /// cannot wait for every holder of the store to let go (background
    /// writes past a deadline); the database itself closes when the last
    /// handle is dropped. Calling it again does nothing.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Whether the last shutdown before this open was clean (no recount was
    /// needed); `false` after a crash, for a new database, or one written by an
    /// earlier format.
    pub fn opened_clean(&self) -> bool {
        self.opened_clean
    }

    /// Stops the writer after the puts already queued and closes the database.
    /// When this returns, the directory can be opened again, unless a scan
    /// stream of this store is still alive (the database closes when the last
    /// one is dropped).
    pub async fn close(self) {
        let LevelDbStorage {
            tx,
            writer,
            db,
            writer_done,
            ..
        } = self;
        drop(tx);
        let _ = writer_done.await;
        // The writer holds a database handle too.
        drop(writer);
        if let Some(inner) = Arc::into_inner(db) {
            let _ = tokio::task::spawn_blocking(move || inner.close_now()).await;
        }
    }
}

impl LevelDbStorage {
    /// In buffered mode, the writer when this is the only put in progress,
    /// nothing is queued and the writer has been idle for a while: a lone write
    /// then costs no hand-off to the writer thread and back. A buffered LevelDB write is a
    /// memtable insert and a `write` to the OS (no fsync), shorter than the
    /// hand-off it saves. With concurrent puts they go to the writer thread,
    /// which groups them into one write batch. Never when LevelDB may stall
    /// the write (level 0 at its slowdown mark, or the last write slow): a
    /// stall then blocks the writer thread, not a tokio worker.
    fn idle_writer(&self) -> Option<MutexGuard<'_, Writer>> {
        if self.durability != Durability::Buffered
            || self.active.load(Ordering::Relaxed) != 1
            || self.tx.capacity() != self.tx.max_capacity()
        {
            return None;
        }
        let writer = self.writer.try_lock().ok()?;
        // A write within the last moment means a stream of puts that the
        // writer thread should keep grouping.
        if writer.idle_for() < INLINE_AFTER_IDLE {
            return None;
        }
        // A write stall must hold the writer thread, never an async worker.
        if !writer.inline_is_safe() {
            return None;
        }
        self.inline_writes.fetch_add(1, Ordering::Relaxed);
        Some(writer)
    }

    /// How many puts (or `put_many` calls) were written by their caller
    /// because the writer was idle, rather than handed to the writer thread
    /// (buffered mode only; for diagnostics and tests).
    pub fn inline_writes(&self) -> u64 {
        self.inline_writes.load(Ordering::Relaxed)
    }

    /// Counts a put in progress until the guard drops.
    fn enter(&self) -> Active<'_> {
        self.active.fetch_add(1, Ordering::Relaxed);
        Active(&self.active)
    }
}

/// A put in progress (see [`LevelDbStorage::enter`]).
struct Active<'a>(&'a AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Storage for LevelDbStorage {
    async fn put(&self, key: EventKey, event: Bytes) -> Result<PutStatus, StorageError> {
        let _active = self.enter();
        let (reply, mut rx) = oneshot::channel();
        if event.len() <= INLINE_MAX_BYTES
            && let Some(mut writer) = self.idle_writer()
        {
            writer.process(&mut vec![Command::Put { key, event, reply }]);
            drop(writer);
            return rx.try_recv().unwrap_or_else(|_| Err(closed_error()));
        }
        self.tx
            .send(Command::Put { key, event, reply })
            .await
            .map_err(|_| closed_error())?;
        rx.await.map_err(|_| closed_error())?
    }

    async fn put_many(
        &self,
        events: Vec<(EventKey, Bytes)>,
    ) -> Vec<Result<PutStatus, StorageError>> {
        let n = events.len();
        let _active = self.enter();
        let (reply, mut rx) = oneshot::channel();
        if n <= INLINE_MAX_EVENTS
            && events.iter().map(|(_, e)| e.len()).sum::<usize>() <= INLINE_MAX_BYTES
            && let Some(mut writer) = self.idle_writer()
        {
            writer.process(&mut vec![Command::PutMany { events, reply }]);
            drop(writer);
            return rx
                .try_recv()
                .unwrap_or_else(|_| (0..n).map(|_| Err(closed_error())).collect());
        }
        if self
            .tx
            .send(Command::PutMany { events, reply })
            .await
            .is_err()
        {
            return (0..n).map(|_| Err(closed_error())).collect();
        }
        rx.await
            .unwrap_or_else(|_| (0..n).map(|_| Err(closed_error())).collect())
    }

    async fn get(&self, key: EventKey) -> Result<Option<Bytes>, StorageError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.get_event(&key))
            .await
            .map_err(join_error)?
    }

    async fn quarantine(&self, key: EventKey, value_hash: u64) -> Result<bool, StorageError> {
        let _active = self.enter();
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Quarantine {
                key,
                value_hash,
                reply,
            })
            .await
            .map_err(|_| closed_error())?;
        rx.await.map_err(|_| closed_error())?
    }

    fn scan(&self, range: ScanRange, limit: usize) -> EventStream {
        if range.from > range.to || limit == 0 {
            return Box::pin(futures::stream::empty());
        }
        let state = ScanState {
            db: self.db.clone(),
            next: db::event_key(&range.from).to_vec(),
            to: db::event_key(&range.to),
            remaining: limit,
            buffer: VecDeque::new(),
            done: false,
        };
        Box::pin(futures::stream::unfold(state, ScanState::step))
    }
}

/// A scan in progress: reads the range chunk by chunk on the blocking pool.
struct ScanState {
    db: Db,
    /// The stored key to seek to next.
    next: Vec<u8>,
    to: [u8; 17],
    remaining: usize,
    buffer: VecDeque<(EventKey, Bytes)>,
    done: bool,
}

impl ScanState {
    async fn step(mut self) -> Option<(Result<(EventKey, Bytes), StorageError>, Self)> {
        loop {
            if let Some(item) = self.buffer.pop_front() {
                return Some((Ok(item), self));
            }
            if self.done || self.remaining == 0 {
                return None;
            }
            let db = self.db.clone();
            let from = std::mem::take(&mut self.next);
            let to = self.to;
            let max = self.remaining.min(SCAN_CHUNK);
            let read = tokio::task::spawn_blocking(move || {
                let result = db.read_events(&from, &to, max, SCAN_CHUNK_BYTES);
                (from, result)
            })
            .await;
            match read {
                Err(e) => {
                    self.done = true;
                    return Some((Err(join_error(e)), self));
                }
                Ok((_, Err(e))) => {
                    self.done = true;
                    return Some((Err(e), self));
                }
                Ok((from, Ok((items, more)))) => {
                    self.remaining -= items.len();
                    match items.last() {
                        Some((last, _)) if more => {
                            // The smallest stored key after `last`.
                            let mut next = db::event_key(last).to_vec();
                            next.push(0);
                            self.next = next;
                        }
                        _ => {
                            self.next = from;
                            self.done = true;
                        }
                    }
                    self.buffer.extend(items);
                }
            }
        }
    }
}
