//! The Parquet side of AllData's batch-layer export: [`EventParquetWriter`]
//! writes events into a Parquet file, one row group at a time, to any
//! [`std::io::Write`] (the HTTP body of `GET /export?format=parquet`, a file).
//!
//! The file has one row per event and three columns ([`SCHEMA`]):
//!
//! | column | Parquet type | value |
//! | --- | --- | --- |
//! | `key` | `binary (STRING)` | the event key's canonical text (hyphenated lowercase UUID) |
//! | `time` | `int64 (TIMESTAMP(MILLIS, true))` | the key's timestamp: Unix milliseconds, UTC |
//! | `event` | `binary (STRING)` | the stored event bytes, exactly |
//!
//! Rows are buffered until a row group is full ([`ParquetOptions`]: at most
//! 65 536 rows or 8 MiB of keys and events by default), then the group is
//! encoded (Snappy) and written out, so memory stays bounded by one row
//! group whatever the number of events. Events written through the client API
//! are JSON, hence UTF-8; bytes that are not are still written as they are.
//! The files are plain Parquet meant for pyarrow, DuckDB and DataFusion as
//! they are; the tests read them back with the `parquet` crate's record
//! reader (pyarrow and DuckDB were not available where they run).
//!
//! This crate uses the `parquet` crate's low-level file writer, without
//! Arrow, to keep the build small.
//!
//! ```
//! use alldata_export::{EventParquetWriter, ParquetOptions};
//! use alldata_keygen::KeyGenerator;
//!
//! let mut writer = EventParquetWriter::new(Vec::new(), ParquetOptions::default())?;
//! writer.push(KeyGenerator::new().generate(), br#"{"type":"signup"}"#)?;
//! let file: Vec<u8> = writer.finish()?;
//! assert_eq!(&file[..4], b"PAR1");
//! # Ok::<(), alldata_export::ExportError>(())
//! ```

use std::io::Write;
use std::sync::Arc;

use alldata_keygen::EventKey;
use bytes::Bytes;
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

/// The Parquet schema of an export.
pub const SCHEMA: &str = "message event {
  required binary key (STRING);
  required int64 time (TIMESTAMP(MILLIS,true));
  required binary event (STRING);
}";

/// Why writing a Parquet export failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The Parquet encoder or the sink failed; the output is not a valid
    /// file.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
}

/// Row group bounds of an [`EventParquetWriter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParquetOptions {
    /// The most rows in one row group (default 65 536; at least 1).
    pub max_row_group_rows: usize,
    /// The most key and event bytes buffered for one row group (default
    /// 8 MiB); a group is written once it holds this much.
    pub max_row_group_bytes: usize,
}

impl Default for ParquetOptions {
    fn default() -> Self {
        Self {
            max_row_group_rows: 64 * 1024,
            max_row_group_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Writes events as rows of a Parquet file (see the crate docs), one bounded
/// row group at a time. Call [`EventParquetWriter::finish`] to write the
/// footer: without it the output is not a Parquet file (what an aborted
/// export must look like).
pub struct EventParquetWriter<W: Write + Send> {
    writer: SerializedFileWriter<W>,
    options: ParquetOptions,
    keys: Vec<ByteArray>,
    times: Vec<i64>,
    events: Vec<ByteArray>,
    buffered_bytes: usize,
    rows: u64,
    row_groups: u64,
}

impl<W: Write + Send> std::fmt::Debug for EventParquetWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventParquetWriter")
            .field("options", &self.options)
            .field("rows", &self.rows)
            .field("row_groups", &self.row_groups)
            .finish_non_exhaustive()
    }
}

impl<W: Write + Send> EventParquetWriter<W> {
    /// A writer into `sink`; the file's magic bytes are written at once.
    pub fn new(sink: W, options: ParquetOptions) -> Result<Self, ExportError> {
        let schema = Arc::new(parse_message_type(SCHEMA)?);
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("alldata {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = SerializedFileWriter::new(sink, schema, Arc::new(properties))?;
        let options = ParquetOptions {
            max_row_group_rows: options.max_row_group_rows.max(1),
            ..options
        };
        Ok(Self {
            writer,
            options,
            keys: Vec::new(),
            times: Vec::new(),
            events: Vec::new(),
            buffered_bytes: 0,
            rows: 0,
            row_groups: 0,
        })
    }

    /// Adds one event; writes a row group when the buffered rows reach a
    /// bound.
    pub fn push(&mut self, key: EventKey, event: &[u8]) -> Result<(), ExportError> {
        self.push_bytes(key, Bytes::copy_from_slice(event))
    }

    /// [`EventParquetWriter::push`] without copying the event.
    pub fn push_bytes(&mut self, key: EventKey, event: Bytes) -> Result<(), ExportError> {
        let text = key.to_string();
        self.buffered_bytes += text.len() + event.len();
        self.keys.push(ByteArray::from(text.into_bytes()));
        self.times
            .push(i64::try_from(key.timestamp_ms()).unwrap_or(i64::MAX));
        self.events.push(ByteArray::from(event));
        self.rows += 1;
        if self.keys.len() >= self.options.max_row_group_rows
            || self.buffered_bytes >= self.options.max_row_group_bytes
        {
            self.flush_row_group()?;
        }
        Ok(())
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Row groups written so far.
    pub fn row_groups(&self) -> u64 {
        self.row_groups
    }

    /// Encodes the buffered rows as one row group and writes it to the sink.
    pub fn flush_row_group(&mut self) -> Result<(), ExportError> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let mut group = self.writer.next_row_group()?;
        let mut index = 0;
        while let Some(mut column) = group.next_column()? {
            match index {
                0 => {
                    column
                        .typed::<ByteArrayType>()
                        .write_batch(&self.keys, None, None)?;
                }
                1 => {
                    column
                        .typed::<Int64Type>()
                        .write_batch(&self.times, None, None)?;
                }
                _ => {
                    column
                        .typed::<ByteArrayType>()
                        .write_batch(&self.events, None, None)?;
                }
            }
            column.close()?;
            index += 1;
        }
        group.close()?;
        self.keys.clear();
        self.times.clear();
        self.events.clear();
        self.buffered_bytes = 0;
        self.row_groups += 1;
        Ok(())
    }

    /// Writes the last row group and the footer, and returns the sink.
    pub fn finish(mut self) -> Result<W, ExportError> {
        self.flush_row_group()?;
        Ok(self.writer.into_inner()?)
    }
}
