//! The LevelDB handle, the on-disk layout, and the blocking operations on it.
//! Everything here blocks: call it from the writer thread or `spawn_blocking`.
//!
//! Layout (one database, bytewise key order):
//! - `e` + 16-byte event key → `0x01` + event bytes (the version byte also makes
//!   empty events non-empty values, which LevelDB's iterators need);
//! - `i` + interval length (u64 BE ms) + interval start (u64 BE ms) → event
//!   count (u64 BE) + state (`0` open, `1` closed). A closed record is written
//!   when its interval closes and is final. Open records are written only at a
//!   clean shutdown, together with `m/clean`; event batches carry no record, so
//!   level-0 files no longer all overlap (every one reached the `i` keys);
//! - `m/clean` → `1`: present only between a clean shutdown and the next open,
//!   which deletes it. Without it the open records may be stale and the open
//!   intervals are recounted from the events;
//! - `m/format` → `2` (format `1`, which rewrote the open record in every
//!   batch, is upgraded at open: it has no `m/clean`, so it is recounted);
//! - `m/interval` → the interval length the database was created with (`P1D`,
//!   `PT1H`, ...). An open with another length is refused; a database without
//!   the marker gets it at open (when its interval records agree).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use alldata_coordinator::StorageError;
use alldata_keygen::EventKey;
use bytes::Bytes;
use leveldb::batch::Writebatch;
use leveldb::database::{Database, Slice};
use leveldb::iterator::{
    Context, EntryIterator, Iterable, KeyIteratorRev, LevelDBIterator, Policy,
};
use leveldb::kv::KV;
use leveldb::options::{ReadOptions, WriteOptions};

use crate::error::OpenError;
use crate::options::Options;

pub(crate) const EVENT_PREFIX: u8 = b'e';
pub(crate) const INTERVAL_PREFIX: u8 = b'i';
/// Events moved aside by repair (another member's decider held other bytes):
/// never scanned, served or counted.
pub(crate) const QUARANTINE_PREFIX: u8 = b'q';
const VALUE_V1: u8 = 1;
const FORMAT_KEY: &[u8] = b"m/format";
const FORMAT_V1: &[u8] = b"1";
const FORMAT_V2: &[u8] = b"2";
const CLEAN_KEY: &[u8] = b"m/clean";
const INTERVAL_KEY: &[u8] = b"m/interval";
pub(crate) const STATE_OPEN: u8 = 0;
pub(crate) const STATE_CLOSED: u8 = 1;

/// The stored key of an event.
pub(crate) fn event_key(key: &EventKey) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = EVENT_PREFIX;
    k[1..].copy_from_slice(key.as_bytes());
    k
}

/// The stored value of an event.
pub(crate) fn encode_event(event: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(event.len() + 1);
    v.push(VALUE_V1);
    v.extend_from_slice(event);
    v
}

fn decode_event(raw: &[u8]) -> Result<&[u8], StorageError> {
    match raw.split_first() {
        Some((&VALUE_V1, event)) => Ok(event),
        _ => Err(StorageError::Corrupt(
            "corrupt event value (unknown format byte)".into(),
        )),
    }
}

/// The event key of a stored key: `None` for a key that is not an event's,
/// an error for a corrupt one.
fn decode_event_key(stored: &[u8]) -> Option<Result<EventKey, StorageError>> {
    let raw = stored.strip_prefix(&[EVENT_PREFIX])?;
    Some(EventKey::from_slice(raw).map_err(|_| corrupt_event_key(stored)))
}

fn corrupt_event_key(stored: &[u8]) -> StorageError {
    StorageError::Corrupt(format!("corrupt event key {stored:02x?}"))
}

/// The stored key of an interval record.
fn interval_key(length_ms: u64, start_ms: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = INTERVAL_PREFIX;
    k[1..9].copy_from_slice(&length_ms.to_be_bytes());
    k[9..].copy_from_slice(&start_ms.to_be_bytes());
    k
}

/// The stored key of a quarantined event.
pub(crate) fn quarantine_key(key: &EventKey) -> [u8; 17] {
    let mut k = event_key(key);
    k[0] = QUARANTINE_PREFIX;
    k
}

/// Adds the record of the interval of `length_ms` starting at `start_ms`
/// (`count` events, `state` open or closed) to `batch`.
pub(crate) fn put_interval_record(
    batch: &mut Writebatch,
    length_ms: u64,
    start_ms: u64,
    count: u64,
    state: u8,
) {
    let mut v = [0u8; 9];
    v[..8].copy_from_slice(&count.to_be_bytes());
    v[8] = state;
    batch.put(
        Slice::from(&interval_key(length_ms, start_ms)[..]),
        Slice::from(&v[..]),
    );
}

/// Adds the deletion of an interval record to `batch`.
pub(crate) fn delete_interval_record(batch: &mut Writebatch, length_ms: u64, start_ms: u64) {
    batch.delete(Slice::from(&interval_key(length_ms, start_ms)[..]));
}

/// Adds the clean-shutdown marker (`clean`) or its deletion to `batch`.
pub(crate) fn set_clean_marker(batch: &mut Writebatch, clean: bool) {
    if clean {
        batch.put(Slice::from(CLEAN_KEY), Slice::from(&b"1"[..]));
    } else {
        batch.delete(Slice::from(CLEAN_KEY));
    }
}

/// One interval record read back at open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IntervalRecord {
    pub(crate) length_ms: u64,
    pub(crate) start_ms: u64,
    pub(crate) count: u64,
    pub(crate) state: u8,
}

/// An iterator policy that leaves positioning to an explicit `seek`.
struct SeekFirst;

impl Policy for SeekFirst {
    fn should_continue(&self, _context: &dyn Context) -> bool {
        true
    }

    fn should_seek_begin(&self) -> bool {
        false
    }
}

/// A LevelDB error as a [`StorageError`]: LevelDB reports damaged data with a
/// `Corruption:` status, which becomes [`StorageError::Corrupt`].
pub(crate) fn failed(what: &str, e: impl std::fmt::Display) -> StorageError {
    let message = format!("{what}: {e}");
    if is_corruption(&message) {
        StorageError::Corrupt(message)
    } else {
        StorageError::Failed(message)
    }
}

/// Whether a LevelDB status message reports corruption: its `Corruption:`
/// status code (a path that merely contains the word does not count).
pub(crate) fn is_corruption(message: &str) -> bool {
    message.contains("Corruption: ")
}

/// Owns the LevelDB database. When the last handle goes, the database is
/// closed; closing can wait for a background compaction, so it is moved off the
/// async workers when dropped inside a tokio runtime.
pub(crate) struct DbInner {
    db: Option<Database>,
    path: PathBuf,
}

impl DbInner {
    fn db(&self) -> Result<&Database, StorageError> {
        self.db
            .as_ref()
            .ok_or_else(|| StorageError::Failed("database is closed".into()))
    }

    /// Closes the database now, on this thread.
    pub(crate) fn close_now(mut self) {
        drop(self.db.take());
    }
}

impl Drop for DbInner {
    fn drop(&mut self) {
        if let Some(db) = self.db.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    drop(handle.spawn_blocking(move || drop(db)));
                }
                Err(_) => drop(db),
            }
        }
    }
}

/// LevelDB's level-0 file count from which it delays every write (its
/// `kL0_SlowdownWritesTrigger`).
pub(crate) const L0_SLOWDOWN_FILES: u64 = 8;

/// A shared handle to the open database.
pub(crate) type Db = Arc<DbInner>;

impl DbInner {
    /// The data directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The stored bytes of `key` (raw stored value with the format byte stripped).
    pub(crate) fn get_event(&self, key: &EventKey) -> Result<Option<Bytes>, StorageError> {
        let db = self.db()?;
        let k = event_key(key);
        match db.get(ReadOptions::new(), Slice::from(&k[..])) {
            Ok(None) => Ok(None),
            Ok(Some(raw)) => Ok(Some(Bytes::copy_from_slice(decode_event(raw.as_bytes())?))),
            Err(e) => Err(failed("leveldb get failed", e)),
        }
    }

    /// How many table files level 0 holds now (`None` when LevelDB does not
    /// say). From [`L0_SLOWDOWN_FILES`] on, LevelDB delays every write, and
    /// from 12 on it stops writes until a compaction catches up.
    pub(crate) fn level0_files(&self) -> Option<u64> {
        use leveldb::database::property::Property;
        self.db()
            .ok()?
            .get_property("leveldb.num-files-at-level0")
            .ok()??
            .trim()
            .parse()
            .ok()
    }

    /// Writes a batch.
    pub(crate) fn write(
        &self,
        batch: &leveldb::batch::Writebatch,
        sync: bool,
    ) -> Result<(), StorageError> {
        use leveldb::batch::Batch;
        self.db()?
            .write(WriteOptions { sync }, batch)
            .map_err(|e| failed("leveldb write failed", e))
    }

    /// Up to `max` events with stored keys in `from..=to`, stopping early after
    /// `max_bytes` of event data. Returns the events and whether the range may
    /// hold more.
    pub(crate) fn read_events(
        &self,
        from: &[u8],
        to: &[u8; 17],
        max: usize,
        max_bytes: usize,
    ) -> Result<(Vec<(EventKey, Bytes)>, bool), StorageError> {
        let db = self.db()?;
        let read = ReadOptions {
            verify_checksums: false,
            fill_cache: false,
            snapshot: None,
        };
        let mut it: EntryIterator<'_, SeekFirst> = db.iter_with_policy(read, SeekFirst);
        it.seek(&Slice::from(from));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        while out.len() < max {
            if bytes >= max_bytes {
                more = true;
                break;
            }
            let Some((k, v)) = it.next() else { break };
            let k = k.as_bytes();
            if k > &to[..] {
                break;
            }
            let key = decode_event_key(k).unwrap_or_else(|| Err(corrupt_event_key(k)))?;
            let event = Bytes::copy_from_slice(decode_event(v.as_bytes())?);
            bytes += event.len() + 16;
            out.push((key, event));
        }
        if out.len() == max {
            more = true;
        }
        if let Some(e) = it.get_error() {
            return Err(failed("leveldb iteration failed", e));
        }
        Ok((out, more))
    }

    /// Event counts per interval of `length_ms`, by interval start, of every
    /// stored event at or after the Unix millisecond `from_ms` (a key-order scan
    /// to the end of the events). Intervals without events are absent.
    pub(crate) fn count_by_interval(
        &self,
        from_ms: u64,
        length_ms: u64,
    ) -> Result<BTreeMap<u64, u64>, StorageError> {
        let db = self.db()?;
        let from = event_key(&EventKey::min_for_ms(from_ms));
        let read = ReadOptions {
            verify_checksums: false,
            fill_cache: false,
            snapshot: None,
        };
        let mut it: EntryIterator<'_, SeekFirst> = db.iter_with_policy(read, SeekFirst);
        it.seek(&Slice::from(&from[..]));
        let mut counts = BTreeMap::new();
        for (k, _) in it.by_ref() {
            let Some(key) = decode_event_key(k.as_bytes()) else {
                break;
            };
            let ms = key?.timestamp_ms();
            *counts.entry(ms / length_ms * length_ms).or_insert(0) += 1;
        }
        if let Some(e) = it.get_error() {
            return Err(failed("leveldb iteration failed", e));
        }
        Ok(counts)
    }

    /// Whether the last shutdown was clean: the clean-shutdown marker is
    /// present, so the open interval records are exact.
    pub(crate) fn has_clean_marker(&self) -> Result<bool, StorageError> {
        Ok(self
            .db()?
            .get(ReadOptions::new(), Slice::from(CLEAN_KEY))
            .map_err(|e| failed("leveldb get failed", e))?
            .is_some())
    }

    /// The largest stored event key, if any.
    pub(crate) fn newest_event_key(&self) -> Result<Option<EventKey>, StorageError> {
        let db = self.db()?;
        let mut it: KeyIteratorRev<'_, SeekFirst> =
            db.iter_with_policy(ReadOptions::new(), SeekFirst);
        // The first key after every event key; walk back from there.
        it.seek(&Slice::from(&[EVENT_PREFIX + 1][..]));
        if !it.valid() {
            it.seek_to_last();
        }
        for k in it.by_ref() {
            let k = k.as_bytes();
            if k.first() > Some(&EVENT_PREFIX) {
                continue;
            }
            return decode_event_key(k).transpose();
        }
        match it.get_error() {
            Some(e) => Err(failed("leveldb iteration failed", e)),
            None => Ok(None),
        }
    }

    /// Every interval record.
    pub(crate) fn interval_records(&self) -> Result<Vec<IntervalRecord>, StorageError> {
        let db = self.db()?;
        let mut it: EntryIterator<'_, SeekFirst> =
            db.iter_with_policy(ReadOptions::new(), SeekFirst);
        it.seek(&Slice::from(&[INTERVAL_PREFIX][..]));
        let mut out = Vec::new();
        for (k, v) in it.by_ref() {
            let (k, v) = (k.as_bytes(), v.as_bytes());
            if k.first() != Some(&INTERVAL_PREFIX) {
                break;
            }
            let (Ok(k), Ok(v)) = (<[u8; 17]>::try_from(k), <[u8; 9]>::try_from(v)) else {
                return Err(StorageError::Failed(format!(
                    "corrupt interval record {k:02x?}"
                )));
            };
            let mut word = [0u8; 8];
            word.copy_from_slice(&k[1..9]);
            let length_ms = u64::from_be_bytes(word);
            word.copy_from_slice(&k[9..]);
            let start_ms = u64::from_be_bytes(word);
            word.copy_from_slice(&v[..8]);
            out.push(IntervalRecord {
                length_ms,
                start_ms,
                count: u64::from_be_bytes(word),
                state: v[8],
            });
        }
        if let Some(e) = it.get_error() {
            return Err(failed("leveldb iteration failed", e));
        }
        Ok(out)
    }

    /// Compacts the whole key space.
    pub(crate) fn compact_all(&self) -> Result<(), StorageError> {
        use leveldb::compaction::Compaction;
        self.db()?.compact_all();
        Ok(())
    }
}

/// Creates the directory if needed, checks it is writable, opens LevelDB with
/// the options, and checks (or writes) the format marker.
pub(crate) fn open(options: &Options) -> Result<DbInner, OpenError> {
    let path = options.path.clone();
    if path.to_str().is_none_or(|s| s.contains('\0')) {
        return Err(OpenError::InvalidPath { path });
    }
    if let Err(source) = std::fs::create_dir_all(&path) {
        return Err(OpenError::NotWritable { path, source });
    }
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(OpenError::NotWritable {
                path,
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        Err(source) => return Err(OpenError::NotWritable { path, source }),
    }
    // LevelDB would report an unwritable directory as a generic I/O error on
    // its LOCK file; probe first so the error says what is wrong.
    let probe = path.join(".alldata-write-probe");
    if let Err(source) = std::fs::write(&probe, b"probe") {
        return Err(OpenError::NotWritable { path, source });
    }
    let _ = std::fs::remove_file(&probe);

    let mut lo = leveldb::options::Options::new();
    lo.create_if_missing = true;
    lo.paranoid_checks = options.paranoid_checks;
    lo.compression = options.compression.to_leveldb();
    lo.write_buffer_size = options.write_buffer_bytes;
    if options.cache_bytes > 0 {
        lo.set_builtin_lru_cache(options.cache_bytes);
    }
    // Puts look up absent keys; a bloom filter keeps that off the disk.
    lo.set_bloom_filter(10);
    let db =
        Database::open(&path, lo).map_err(|e| OpenError::from_leveldb(path.clone(), e.message))?;
    let inner = DbInner {
        db: Some(db),
        path: path.clone(),
    };
    match check_format(&inner, &path).and_then(|()| check_interval_length(&inner, options)) {
        Ok(()) => Ok(inner),
        Err(e) => {
            inner.close_now();
            Err(e)
        }
    }
}

/// Checks that the database was written with `options.interval`, and records
/// the length in a database that does not say yet. Changing the length of an
/// existing database would put one event in two intervals of different
/// lengths (one closed, one not), so it is refused.
fn check_interval_length(inner: &DbInner, options: &Options) -> Result<(), OpenError> {
    let path = options.path.clone();
    let requested = options.interval;
    let failed = |message: String| OpenError::Failed {
        path: path.clone(),
        message,
    };
    let db = inner.db().map_err(|e| failed(e.to_string()))?;
    let stored = db
        .get(ReadOptions::new(), Slice::from(INTERVAL_KEY))
        .map_err(|e| OpenError::from_leveldb(path.clone(), e.message))?;
    if let Some(v) = stored {
        let text = String::from_utf8_lossy(v.as_bytes()).into_owned();
        return if text == requested.as_str() {
            Ok(())
        } else {
            Err(OpenError::IntervalLengthChanged {
                path: path.clone(),
                stored: text,
                requested,
            })
        };
    }
    // No marker (a new database, or one from before the marker): the interval
    // records say which length is in use. Builds before the marker could
    // change the length, leaving closed records of an older length behind:
    // the open records decide, else the newest one.
    let records = inner
        .interval_records()
        .map_err(|e| failed(e.to_string()))?;
    let in_use = records
        .iter()
        .filter(|r| r.state == STATE_OPEN)
        .max_by_key(|r| r.start_ms)
        .or_else(|| records.iter().max_by_key(|r| r.start_ms));
    if let Some(other) = in_use.filter(|r| r.length_ms != requested.as_millis()) {
        let stored = crate::interval::IntervalLength::ALL
            .into_iter()
            .find(|l| l.as_millis() == other.length_ms)
            .map_or_else(|| format!("{} ms", other.length_ms), |l| l.to_string());
        return Err(OpenError::IntervalLengthChanged {
            path: path.clone(),
            stored,
            requested,
        });
    }
    db.put(
        WriteOptions { sync: true },
        Slice::from(INTERVAL_KEY),
        Slice::from(requested.as_str().as_bytes()),
    )
    .map_err(|e| OpenError::from_leveldb(path.clone(), e.message))
}

/// Checks the format marker, writing it into a fresh database.
fn check_format(inner: &DbInner, path: &Path) -> Result<(), OpenError> {
    let path = path.to_path_buf();
    let db = inner.db().map_err(|e| OpenError::Failed {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let format = db
        .get(ReadOptions::new(), Slice::from(FORMAT_KEY))
        .map_err(|e| OpenError::from_leveldb(path.clone(), e.message))?;
    match format {
        Some(v) if v.as_bytes() == FORMAT_V2 => {}
        Some(v) if v.as_bytes() == FORMAT_V1 => {
            // Format 1 has no clean marker (none is trusted), so its open
            // intervals are recounted at this open; from then on it is format 2.
            use leveldb::batch::Batch;
            let mut batch = Writebatch::new();
            set_clean_marker(&mut batch, false);
            batch.put(Slice::from(FORMAT_KEY), Slice::from(FORMAT_V2));
            db.write(WriteOptions { sync: true }, &batch)
                .map_err(|e| OpenError::from_leveldb(path.clone(), e.message))?;
        }
        Some(v) => {
            return Err(OpenError::IncompatibleFormat {
                path,
                found: String::from_utf8_lossy(v.as_bytes()).into_owned(),
            });
        }
        None => {
            // A fresh database, or one written by something else.
            let probe: EntryIterator<'_, SeekFirst> =
                db.iter_with_policy(ReadOptions::new(), SeekFirst);
            probe.seek_to_first();
            if probe.valid() {
                return Err(OpenError::IncompatibleFormat {
                    path,
                    found: "no format marker in a non-empty database".into(),
                });
            }
            drop(probe);
            db.put(
                WriteOptions { sync: true },
                Slice::from(FORMAT_KEY),
                Slice::from(FORMAT_V2),
            )
            .map_err(|e| OpenError::from_leveldb(path.clone(), e.message))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_db_with(path: &Path, key: &[u8], value: &[u8]) {
        let mut lo = leveldb::options::Options::new();
        lo.create_if_missing = true;
        let db = Database::open(path, lo).unwrap();
        db.put(
            WriteOptions { sync: true },
            Slice::from(key),
            Slice::from(value),
        )
        .unwrap();
    }

    #[test]
    fn a_foreign_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        raw_db_with(dir.path(), b"some-key", b"some-value");
        let err = open(&Options::new(dir.path())).err().expect("refused");
        assert!(
            matches!(err, OpenError::IncompatibleFormat { .. }),
            "{err:?}"
        );
        // Refusing it released the lock and changed nothing.
        raw_db_with(dir.path(), b"other", b"x");
    }

    #[test]
    fn a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        raw_db_with(dir.path(), FORMAT_KEY, b"3");
        match open(&Options::new(dir.path())) {
            Err(OpenError::IncompatibleFormat { found, path }) => {
                assert_eq!(found, "3");
                assert_eq!(path, dir.path());
            }
            other => panic!("expected IncompatibleFormat, got {:?}", other.err()),
        }
    }

    #[test]
    fn level0_files_are_read_from_leveldb() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&Options::new(dir.path()).write_buffer_bytes(64 * 1024)).unwrap();
        assert_eq!(db.level0_files(), Some(0), "a new database");
        let mut seen = 0;
        for round in 0u8..20 {
            let mut batch = Writebatch::new();
            let value = vec![round; 100 * 1024];
            // Overlapping key ranges keep the flushed tables in level 0.
            batch.put(Slice::from(&[b'a', round][..]), Slice::from(&value[..]));
            batch.put(Slice::from(&[b'z', round][..]), Slice::from(&b"z"[..]));
            db.write(&batch, false).unwrap();
            seen = seen.max(db.level0_files().expect("the property"));
        }
        assert!(seen >= 1, "full memtables became level-0 tables");
        db.compact_all().unwrap();
        assert_eq!(db.level0_files(), Some(0), "compacted");
    }

    #[test]
    fn leveldb_corruption_is_a_typed_storage_error() {
        assert!(
            failed(
                "leveldb write failed",
                "Corruption: block checksum mismatch"
            )
            .is_corrupt()
        );
        assert!(!failed("leveldb write failed", "IO error: No space left on device").is_corrupt());
        assert!(
            !failed(
                "leveldb write failed",
                "IO error: /data/corruption-tests/000012.log: No space"
            )
            .is_corrupt(),
            "a path with the word is not corruption"
        );
    }

    #[test]
    fn open_error_messages_are_classified() {
        let p = PathBuf::from("/x");
        let c = |m: &str| OpenError::from_leveldb(p.clone(), m.to_owned());
        assert!(matches!(
            c("IO error: lock /x/LOCK: Resource temporarily unavailable"),
            OpenError::Locked { .. }
        ));
        assert!(matches!(
            c("IO error: lock /x/LOCK: already held by process"),
            OpenError::Locked { .. }
        ));
        assert!(matches!(
            c("Corruption: bad record length"),
            OpenError::Corrupt { .. }
        ));
        assert!(matches!(
            c("IO error: /x/LOCK: Permission denied"),
            OpenError::NotWritable { .. }
        ));
        assert!(matches!(
            c("IO error: disk on fire"),
            OpenError::Failed { .. }
        ));
    }

    #[test]
    fn event_values_carry_a_format_byte() {
        assert_eq!(encode_event(b""), vec![VALUE_V1]);
        assert_eq!(decode_event(&encode_event(b"abc")).unwrap(), b"abc");
        assert!(decode_event(b"").is_err());
        assert!(decode_event(&[9, 1, 2]).is_err());
    }
}
