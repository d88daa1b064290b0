//! Files written by `EventParquetWriter`, read back with the `parquet`
//! crate's own reader (row API), row for row.

use alldata_export::{EventParquetWriter, ParquetOptions};
use alldata_keygen::{EventKey, KeyGenerator, ManualClock};
use bytes::Bytes;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::RowAccessor;

fn events(n: usize) -> Vec<(EventKey, Vec<u8>)> {
    let clock = ManualClock::new(1_796_083_200_000);
    let keys = KeyGenerator::with_clock(clock.clone());
    (0..n)
        .map(|i| {
            clock.set(1_796_083_200_000 + i as u64 * 7);
            let event = format!(
                "{{\"i\":{i},\"text\":\"é ✓ {}\",\"nested\":{{\"a\":[1,2,3]}}}}",
                "x".repeat(i % 300)
            );
            (keys.generate(), event.into_bytes())
        })
        .collect()
}

/// Every row of `file`: (key, time ms, event), and the number of row groups.
fn read_back(file: Vec<u8>) -> (Vec<(String, i64, String)>, usize) {
    let reader = SerializedFileReader::new(Bytes::from(file)).expect("a parquet file");
    let groups = reader.metadata().num_row_groups();
    let schema = reader.metadata().file_metadata().schema_descr();
    let names: Vec<_> = schema
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    assert_eq!(names, ["key", "time", "event"]);
    let rows = reader
        .get_row_iter(None)
        .expect("rows")
        .map(|row| {
            let row = row.expect("a row");
            (
                row.get_string(0).expect("key").clone(),
                row.get_timestamp_millis(1).expect("time"),
                row.get_string(2).expect("event").clone(),
            )
        })
        .collect();
    (rows, groups)
}

#[test]
fn every_row_reads_back_exactly_and_row_groups_are_bounded() {
    let written = events(5000);
    let options = ParquetOptions {
        max_row_group_rows: 1000,
        ..ParquetOptions::default()
    };
    let mut writer = EventParquetWriter::new(Vec::new(), options).unwrap();
    for (key, event) in &written {
        writer.push(*key, event).unwrap();
    }
    assert_eq!(writer.rows(), 5000);
    let (rows, groups) = read_back(writer.finish().unwrap());
    assert_eq!(groups, 5, "5000 rows in groups of at most 1000");
    assert_eq!(rows.len(), written.len());
    for ((key, event), (k, t, e)) in written.iter().zip(&rows) {
        assert_eq!(*k, key.to_string());
        assert_eq!(*t as u64, key.timestamp_ms());
        assert_eq!(e.as_bytes(), &event[..]);
    }
}

#[test]
fn the_byte_bound_cuts_row_groups_too() {
    let written = events(600);
    let options = ParquetOptions {
        max_row_group_rows: 1_000_000,
        max_row_group_bytes: 16 * 1024,
    };
    let mut writer = EventParquetWriter::new(Vec::new(), options).unwrap();
    for (key, event) in &written {
        writer.push(*key, event).unwrap();
    }
    let (rows, groups) = read_back(writer.finish().unwrap());
    assert_eq!(rows.len(), 600);
    assert!(
        groups > 5,
        "{groups} row groups for ~100 KiB with a 16 KiB bound"
    );
}

#[test]
fn an_empty_export_is_a_valid_file() {
    let writer = EventParquetWriter::new(Vec::new(), ParquetOptions::default()).unwrap();
    let (rows, groups) = read_back(writer.finish().unwrap());
    assert!(rows.is_empty());
    assert_eq!(groups, 0);
}
