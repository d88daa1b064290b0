//! The single writer thread: every put and every interval close goes through it,
//! in order. That serialises put-if-absent per key (LevelDB has no
//! compare-and-set), gathers concurrent puts into one batch and one sync (group
//! commit), and makes closing an interval race-free: a put is either written and
//! counted before its interval closes, or rejected with a clear error.
//!
//! It stays one file (about 500 lines): gathering, deciding a batch, closing
//! intervals and shutting down share the writer's state and its invariants.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use alldata_coordinator::{PutStatus, StorageError};
use alldata_keygen::{Clock, EventKey};
use bytes::Bytes;
use leveldb::batch::Writebatch;
use leveldb::database::Slice;
use tokio::sync::mpsc;

use crate::command::{Command, Load, ManyReply, PutReply, answer_closed};
use crate::db::{self, Db, STATE_CLOSED, STATE_OPEN};
use crate::interval::{AcceptWindow, Interval, IntervalClosed, IntervalLength};
use crate::options::{Durability, Options};

/// At most this many empty intervals are reported closed in one check (after a
/// long pause or a clock jump); intervals that hold events are always reported.
const MAX_EMPTY_CLOSES: u64 = 10_000;

/// The most event bytes the writer gathers into one write batch (a single
/// larger command still goes alone).
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// How long the sync-mode gather sleeps between looks at the queue.
const GATHER_STEP: Duration = Duration::from_micros(20);

/// How far the closing clock may run ahead of the real time elapsed between
/// two interval checks.
const CLOCK_SLACK_MS: u64 = 1_000;

/// A sync-mode batch waits for the callers of the previous batch at most half
/// as long as the last sync took, and never longer than this.
const MAX_GATHER_WAIT: Duration = Duration::from_millis(1);

/// The result of one put inside a batch.
enum Outcome {
    /// Known now, independent of the batch.
    Now(Result<PutStatus, StorageError>),
    /// Valid only if the batch commits.
    IfCommitted(Result<PutStatus, StorageError>),
}

/// Locks the writer; a panic while processing poisons nothing we rely on
/// (every reply channel of that batch is dropped, so its callers see an error).
pub(crate) fn lock(writer: &Mutex<Writer>) -> MutexGuard<'_, Writer> {
    writer.lock().unwrap_or_else(|e| e.into_inner())
}

/// A write that took at least this long says LevelDB is stalling (or the disk
/// is slow): callers stop writing inline until a quick write is seen again.
pub(crate) const SLOW_WRITE: Duration = Duration::from_millis(2);

/// Whether writing on an async worker is safe: the last write took less than
/// [`SLOW_WRITE`] and level 0 holds fewer files than LevelDB's slowdown mark
/// (unknown: not safe). Otherwise the write goes to the writer thread, where
/// a stall blocks that thread only and the async workers keep serving.
pub(crate) fn inline_is_safe(last_write: Duration, level0_files: Option<u64>) -> bool {
    last_write < SLOW_WRITE && level0_files.is_some_and(|n| n < db::L0_SLOWDOWN_FILES)
}

pub(crate) struct Writer {
    db: Db,
    clock: Arc<dyn Clock>,
    /// The clock reading the last interval check used, and when (monotonic).
    closing_ms: u64,
    closing_at: Instant,
    /// Whether checks follow any jump of the clock (see `Options`).
    follow_clock_jumps: bool,
    /// A jump is being absorbed (logged once).
    absorbing_jump: bool,
    /// Shut down: nothing more is written.
    closed: bool,
    /// The database had a clean-shutdown marker (and fitting records) at open.
    pub(crate) opened_clean: bool,
    length: IntervalLength,
    window: AcceptWindow,
    sync: bool,
    max_batch: usize,
    /// Event counts of open intervals that hold events, by start.
    counts: BTreeMap<u64, u64>,
    /// The largest event key stored or being stored: a put of a larger key
    /// cannot find it stored, so it skips the lookup. Only ever grows, and
    /// grows before a batch is written, so it never claims a stored key absent.
    newest: Option<EventKey>,
    /// No key below this is ever accepted again (end of the last closed interval).
    closed_upto: u64,
    /// `closed_upto`, shared with [`crate::LevelDbStorage::check_key`].
    pub(crate) closed_mark: Arc<AtomicU64>,
    /// Empty intervals from here on are reported when they close.
    next_to_close: u64,
    events: mpsc::UnboundedSender<IntervalClosed>,
    /// How long the last batch write (and sync) took.
    last_write: Duration,
    /// When the last batch was done.
    last_done: Instant,
}

impl Writer {
    /// Loads the interval records (blocking). After a clean shutdown the open
    /// records hold exact counts. Otherwise (a crash, a format-1 database) or
    /// when open records of another interval length exist (only in a
    /// database from before the length marker, see `db`), every event from the first open interval on is recounted and
    /// the open records are dropped: they are written again at shutdown.
    pub(crate) fn new(
        db: Db,
        options: &Options,
        events: mpsc::UnboundedSender<IntervalClosed>,
    ) -> Result<Self, StorageError> {
        let length = options.interval;
        let len = length.as_millis();
        let clean = db.has_clean_marker()?;
        let mut counts = BTreeMap::new();
        let mut closed_upto = 0u64;
        let mut open = Vec::new();
        for r in db.interval_records()? {
            if r.state == STATE_CLOSED {
                closed_upto = closed_upto.max(r.start_ms.saturating_add(r.length_ms));
            } else {
                open.push(r);
            }
        }
        // The marker goes before any write of this run, so that a crash from
        // now on is seen at the next open.
        let mut batch = Writebatch::new();
        db::set_clean_marker(&mut batch, false);
        let opened_clean = clean && open.iter().all(|r| r.length_ms == len);
        if opened_clean {
            counts.extend(open.iter().map(|r| (r.start_ms, r.count)));
            db.write(&batch, true)?;
        } else {
            let started = Instant::now();
            let from = Interval::containing(closed_upto, length).start_ms();
            counts = db.count_by_interval(from, len)?;
            for r in &open {
                db::delete_interval_record(&mut batch, r.length_ms, r.start_ms);
            }
            db.write(&batch, true)?;
            // A new (or empty) database has nothing to say.
            if !open.is_empty() || !counts.is_empty() {
                tracing::info!(
                    path = %db.path().display(),
                    events = counts.values().sum::<u64>(),
                    intervals = counts.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    why = if clean { "the interval length changed" } else { "no clean shutdown" },
                    "recounted the open intervals as {length}"
                );
            }
        }
        let newest = db.newest_event_key()?;
        let now = options.clock.now_ms();
        let next_to_close = closed_upto.max(options.window.oldest_ms(length, now));
        Ok(Writer {
            db,
            clock: options.clock.clone(),
            closing_ms: now,
            closing_at: Instant::now(),
            follow_clock_jumps: options.follow_clock_jumps,
            absorbing_jump: false,
            closed: false,
            opened_clean,
            length,
            window: options.window,
            sync: options.durability == Durability::Sync,
            max_batch: options.max_batch,
            counts,
            newest,
            closed_upto,
            closed_mark: Arc::new(AtomicU64::new(closed_upto)),
            next_to_close,
            events,
            last_write: Duration::ZERO,
            last_done: Instant::now(),
        })
    }

    /// The open intervals that hold events: (start, count), oldest first.
    pub(crate) fn open_counts(&self) -> Vec<(u64, u64)> {
        self.counts.iter().map(|(s, c)| (*s, *c)).collect()
    }

    /// How long ago the last batch was done.
    pub(crate) fn idle_for(&self) -> Duration {
        self.last_done.elapsed()
    }

    /// Whether a write by the caller's own thread cannot run into a LevelDB
    /// write stall: the last write was quick and level 0 is below LevelDB's
    /// slowdown mark (see [`inline_is_safe`]).
    pub(crate) fn inline_is_safe(&self) -> bool {
        inline_is_safe(self.last_write, self.db.level0_files())
    }

    /// Runs until every sender is gone. The lock is held only while a batch
    /// is processed, so a caller may process a lone put itself in between
    /// (see `LevelDbStorage::put`).
    pub(crate) fn run(writer: &Mutex<Writer>, mut rx: mpsc::Receiver<Command>) {
        let (sync, max_batch) = {
            let w = lock(writer);
            (w.sync, w.max_batch)
        };
        let mut commands = Vec::with_capacity(max_batch);
        // Puts in the previous batch: about how many callers are writing.
        let mut expected = 1usize;
        while let Some(first) = rx.blocking_recv() {
            // A batch is bounded by events and bytes, not by commands: one
            // command may carry a whole group of events.
            let mut load = first.load();
            commands.push(first);
            let room = |commands: &Vec<Command>, load: Load| {
                commands.len() < max_batch
                    && load.events < max_batch
                    && load.bytes < MAX_BATCH_BYTES
            };
            while room(&commands, load) {
                match rx.try_recv() {
                    Ok(c) => {
                        load = load.add(c.load());
                        commands.push(c);
                    }
                    Err(_) => break,
                }
            }
            // In sync mode the callers answered by the last batch come back
            // within microseconds; waiting briefly for them keeps one sync per
            // round instead of alternating small and large batches. The wait
            // sleeps in small steps rather than spinning.
            if sync && commands.len() < expected {
                let last_write = lock(writer).last_write;
                let deadline = Instant::now() + (last_write / 2).min(MAX_GATHER_WAIT);
                while commands.len() < expected
                    && room(&commands, load)
                    && Instant::now() < deadline
                {
                    match rx.try_recv() {
                        Ok(c) => {
                            load = load.add(c.load());
                            commands.push(c);
                        }
                        Err(mpsc::error::TryRecvError::Empty) => std::thread::sleep(GATHER_STEP),
                        Err(mpsc::error::TryRecvError::Disconnected) => break,
                    }
                }
            }
            // Callers, not events: each caller sends one command.
            let puts = commands
                .iter()
                .filter(|c| matches!(c, Command::Put { .. } | Command::PutMany { .. }))
                .count();
            let stop = commands
                .iter()
                .position(|c| matches!(c, Command::Shutdown { .. }));
            if let Some(at) = stop {
                let later: Vec<Command> = commands.drain(at..).collect();
                let mut w = lock(writer);
                w.process(&mut commands);
                w.shut_down();
                drop(w);
                // What came with or after the shutdown finds the store closed.
                for command in later {
                    answer_closed(command);
                }
                rx.close();
                while let Ok(command) = rx.try_recv() {
                    answer_closed(command);
                }
                return;
            }
            lock(writer).process(&mut commands);
            expected = puts.clamp(1, max_batch);
        }
        lock(writer).shut_down();
    }

    /// Writes the open intervals' counts and the clean-shutdown marker, so the
    /// next open need not recount. On failure the next open recounts. Once
    /// done, nothing more is written (a caller writing inline finds the
    /// writer closed).
    fn shut_down(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        let len = self.length.as_millis();
        let mut batch = Writebatch::new();
        for (start, count) in &self.counts {
            db::put_interval_record(&mut batch, len, *start, *count, STATE_OPEN);
        }
        db::set_clean_marker(&mut batch, true);
        if let Err(e) = self.db.write(&batch, true) {
            tracing::warn!(error = %e, "could not record a clean shutdown; the next open recounts the open intervals");
        }
    }

    pub(crate) fn process(&mut self, commands: &mut Vec<Command>) {
        if self.closed {
            for command in commands.drain(..) {
                answer_closed(command);
            }
            return;
        }
        let now = self.clock.now_ms();
        let mut batch = Writebatch::new();
        let mut pending: HashMap<EventKey, Bytes> = HashMap::new();
        let mut delta: BTreeMap<u64, u64> = BTreeMap::new();
        let mut waiting: Vec<(PutReply, Result<PutStatus, StorageError>)> = Vec::new();
        let mut many: Vec<ManyReply> = Vec::new();
        let mut checks = Vec::new();
        let mut compactions = Vec::new();
        let mut quarantines = Vec::new();
        for command in commands.drain(..) {
            match command {
                Command::Put { key, event, reply } => {
                    match self.prepare(now, key, event, &mut batch, &mut pending, &mut delta) {
                        Outcome::Now(result) => {
                            let _ = reply.send(result);
                        }
                        Outcome::IfCommitted(result) => waiting.push((reply, result)),
                    }
                }
                Command::PutMany { events, reply } => {
                    let mut results = Vec::with_capacity(events.len());
                    let mut if_committed = Vec::new();
                    for (key, event) in events {
                        match self.prepare(now, key, event, &mut batch, &mut pending, &mut delta) {
                            Outcome::Now(result) => results.push(result),
                            Outcome::IfCommitted(result) => {
                                if_committed.push(results.len());
                                results.push(result);
                            }
                        }
                    }
                    if if_committed.is_empty() {
                        let _ = reply.send(results);
                    } else {
                        many.push((reply, results, if_committed));
                    }
                }
                Command::Check { reply } => checks.push(reply),
                Command::Compact { reply } => compactions.push(reply),
                Command::Quarantine {
                    key,
                    value_hash,
                    reply,
                } => quarantines.push((key, value_hash, reply)),
                // `run` splits batches at a shutdown; one reaching here (an
                // inline caller cannot send it) is answered as done.
                Command::Shutdown { reply } => {
                    let _ = reply.send(());
                }
            }
        }
        if !delta.is_empty() {
            self.newest = self.newest.max(pending.keys().max().copied());
            let started = Instant::now();
            let written = self.db.write(&batch, self.sync);
            self.last_write = started.elapsed();
            match written {
                Ok(()) => {
                    for (start, added) in delta {
                        *self.counts.entry(start).or_insert(0) += added;
                    }
                    for (reply, result) in waiting {
                        let _ = reply.send(result);
                    }
                    for (reply, results, _) in many {
                        let _ = reply.send(results);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, puts = waiting.len(), "write batch failed");
                    for (reply, _) in waiting {
                        let _ = reply.send(Err(e.clone()));
                    }
                    for (reply, mut results, if_committed) in many {
                        for i in if_committed {
                            results[i] = Err(e.clone());
                        }
                        let _ = reply.send(results);
                    }
                }
            }
        } else {
            // Only in-batch duplicates of nothing: cannot happen, but answer anyway.
            for (reply, result) in waiting {
                let _ = reply.send(result);
            }
            for (reply, results, _) in many {
                let _ = reply.send(results);
            }
        }
        for reply in checks {
            let result = self.check();
            if let Err(e) = &result {
                tracing::error!(error = %e, "closing intervals failed; will retry");
            }
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
        }
        for reply in compactions {
            let _ = reply.send(self.db.compact_all());
        }
        // After this round's puts: a put of the same key in it is seen.
        for (key, value_hash, reply) in quarantines {
            let _ = reply.send(self.quarantine(key, value_hash));
        }
        self.last_done = Instant::now();
    }

    /// Moves the event under `key` aside (its interval counts one less) if
    /// its bytes hash to `value_hash`; a key outside the acceptance window
    /// (a closed interval) is refused like a put.
    fn quarantine(&mut self, key: EventKey, value_hash: u64) -> Result<bool, StorageError> {
        // Closed intervals never change (their counts and exports are final).
        if let Err(message) =
            self.window
                .check(self.length, self.clock.now_ms(), self.closed_upto, key)
        {
            return Err(StorageError::Rejected(message));
        }
        let Some(stored) = self.db.get_event(&key)? else {
            return Ok(false);
        };
        if alldata_coordinator::repair::value_hash(&stored) != value_hash {
            return Ok(false);
        }
        let mut batch = Writebatch::new();
        batch.delete(Slice::from(&db::event_key(&key)[..]));
        batch.put(
            Slice::from(&db::quarantine_key(&key)[..]),
            Slice::from(&db::encode_event(&stored)[..]),
        );
        self.db.write(&batch, self.sync)?;
        let start = Interval::containing(key.timestamp_ms(), self.length).start_ms();
        if let Some(count) = self.counts.get_mut(&start) {
            *count = count.saturating_sub(1);
        }
        tracing::warn!(%key, "event quarantined: the key's decider holds other bytes");
        Ok(true)
    }

    /// Decides one put against the window, this batch and the database.
    fn prepare(
        &self,
        now: u64,
        key: EventKey,
        event: Bytes,
        batch: &mut Writebatch,
        pending: &mut HashMap<EventKey, Bytes>,
        delta: &mut BTreeMap<u64, u64>,
    ) -> Outcome {
        let ms = key.timestamp_ms();
        if let Err(message) = self.window.check(self.length, now, self.closed_upto, key) {
            return Outcome::Now(Err(StorageError::Rejected(message)));
        }
        if let Some(existing) = pending.get(&key) {
            return Outcome::IfCommitted(if *existing == event {
                Ok(PutStatus::AlreadyPresent)
            } else {
                Err(StorageError::Conflict(key))
            });
        }
        // Keys are time-ordered and mostly arrive in order: most puts are of
        // a key above everything stored, which needs no lookup.
        let stored = if self.newest.is_some_and(|newest| key <= newest) {
            self.db.get_event(&key)
        } else {
            Ok(None)
        };
        match stored {
            Err(e) => Outcome::Now(Err(e)),
            Ok(Some(stored)) if stored == event => Outcome::Now(Ok(PutStatus::AlreadyPresent)),
            Ok(Some(_)) => Outcome::Now(Err(StorageError::Conflict(key))),
            Ok(None) => {
                batch.put(
                    Slice::from(&db::event_key(&key)[..]),
                    Slice::from(&db::encode_event(&event)[..]),
                );
                pending.insert(key, event);
                *delta
                    .entry(Interval::containing(ms, self.length).start_ms())
                    .or_insert(0) += 1;
                Outcome::IfCommitted(Ok(PutStatus::Stored))
            }
        }
    }

    /// Closes every interval that left the acceptance window, records it, and
    /// reports it.
    /// The time interval closing goes by: the clock, unless it jumped ahead
    /// of the real time elapsed since the last check (see
    /// `Options::follow_clock_jumps`).
    fn closing_now(&mut self) -> u64 {
        let wall = self.clock.now_ms();
        let now = if self.follow_clock_jumps {
            wall
        } else {
            let elapsed = u64::try_from(self.closing_at.elapsed().as_millis()).unwrap_or(u64::MAX);
            let bound = self
                .closing_ms
                .saturating_add(elapsed.saturating_add(elapsed / 10))
                .saturating_add(CLOCK_SLACK_MS);
            if wall > bound {
                if !self.absorbing_jump {
                    tracing::warn!(
                        ahead_ms = wall - bound,
                        "the wall clock jumped ahead of the time elapsed; closing intervals follows it only at a bounded pace"
                    );
                }
                self.absorbing_jump = true;
                bound
            } else {
                self.absorbing_jump = false;
                wall
            }
        };
        self.closing_ms = now;
        self.closing_at = Instant::now();
        now
    }

    pub(crate) fn check(&mut self) -> Result<Vec<IntervalClosed>, StorageError> {
        let now = self.closing_now();
        let oldest = self.window.oldest_ms(self.length, now);
        let len = self.length.as_millis();
        let mut starts: BTreeSet<u64> = self.counts.range(..oldest).map(|(s, _)| *s).collect();
        if oldest > self.next_to_close && (oldest - self.next_to_close) / len <= MAX_EMPTY_CLOSES {
            let mut s = self.next_to_close;
            while s < oldest {
                starts.insert(s);
                s += len;
            }
        }
        let mut closed = Vec::with_capacity(starts.len());
        if !starts.is_empty() {
            let mut batch = Writebatch::new();
            for s in &starts {
                let count = self.counts.get(s).copied().unwrap_or(0);
                db::put_interval_record(&mut batch, len, *s, count, STATE_CLOSED);
                closed.push(IntervalClosed::new(
                    Interval::containing(*s, self.length),
                    count,
                ));
            }
            self.db.write(&batch, true)?;
            for s in &starts {
                self.counts.remove(s);
            }
        }
        if oldest > self.next_to_close {
            self.next_to_close = oldest;
        }
        // Nothing below `oldest` is accepted any more; a clock stepping back
        // does not reopen what was closed.
        self.closed_upto = self.closed_upto.max(oldest);
        self.closed_mark
            .store(self.closed_upto, std::sync::atomic::Ordering::Relaxed);
        for event in &closed {
            tracing::info!(interval = %event.name, events = event.events, "interval closed");
            let _ = self.events.send(event.clone());
        }
        Ok(closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_writes_stop_when_leveldb_may_stall() {
        let quick = Duration::from_micros(50);
        assert!(inline_is_safe(quick, Some(0)));
        assert!(inline_is_safe(quick, Some(db::L0_SLOWDOWN_FILES - 1)));
        assert!(
            !inline_is_safe(quick, Some(db::L0_SLOWDOWN_FILES)),
            "level 0 at the slowdown mark"
        );
        assert!(!inline_is_safe(quick, Some(12)), "writes stopped");
        assert!(!inline_is_safe(quick, None), "unknown level 0");
        assert!(
            !inline_is_safe(SLOW_WRITE, Some(0)),
            "the last write was slow"
        );
    }
}
