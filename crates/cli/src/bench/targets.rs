//! Acceptance targets, read from data next to the docs and evaluated against
//! the results for the report.
//!
//! The code carries no targets of its own: they live in
//! `<docs dir>/bench/targets.json` ([`TARGETS_FILE`]), and without that file
//! the report has no targets section. The file is
//! `{"targets": [target, ...]}` (other top-level keys, such as a `note`, are
//! ignored), each target being
//!
//! ```json
//! {
//!   "description": "Sync >= 50% of buffered (RF=3 QUORUM, each mode and concurrency)",
//!   "cells": {"rf": 3, "commit": "quorum", "durability": "sync",
//!             "batch": [1, 100], "concurrency": [1, 64]},
//!   "pick": "every",
//!   "checks": [{"metric": "events_per_sec", "relative_to": "buffered", "op": ">=", "bound": 0.5}]
//! }
//! ```
//!
//! - `description`: the text of the report's target column.
//! - `cells`: the AllData cells the target applies to. Each field is one value
//!   or a list, and the cells are every combination (rf, then commit,
//!   durability, batch and concurrency, the last varying fastest). `commit` is
//!   `one`, `quorum` or `all`; `durability` is `buffered` or `sync`.
//! - `pick`: `every` (the default): every measured cell must pass every
//!   check; `best`: only the measured cell with the most events/s is checked.
//! - `checks`: `metric` is `events_per_sec`, `p50_ms` or `p99_ms`. Without
//!   `relative_to` the bound applies to the metric; with it, to the metric
//!   divided by the same metric of `null` or `fanout` (the baseline at the
//!   same batch and concurrency) or of `buffered` or `sync` (the same cell
//!   with that durability). `op` is `>=` or `<=`.
//!
//! A cell is measured when its result and every result its checks divide by
//! are there; a target with no measured cell is "not measured".

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer, Error as _};

use super::model::{RunResult, baseline_for, div, fmt_int, mode};
use super::{Cell, Commit, Durability};

/// The targets file, relative to the docs directory (`--docs-dir`).
pub(crate) const TARGETS_FILE: &str = "bench/targets.json";

/// The targets file's contents.
#[derive(Debug, Clone, Deserialize)]
struct TargetsFile {
    targets: Vec<Target>,
}

/// One target: the cells it applies to and the checks they must pass.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Target {
    description: String,
    cells: CellSpec,
    #[serde(default)]
    pick: Pick,
    checks: Vec<Check>,
}

/// Which measured cells a target checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Pick {
    /// Every measured cell must pass.
    #[default]
    Every,
    /// Only the measured cell with the most events/s must pass.
    Best,
}

/// One value or a non-empty list of them.
#[derive(Debug, Clone)]
struct Values<T>(Vec<T>);

impl<'de, T: DeserializeOwned> Deserialize<'de> for Values<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = match serde_json::Value::deserialize(d)? {
            serde_json::Value::Array(items) => items,
            one => vec![one],
        };
        if items.is_empty() {
            return Err(D::Error::custom("an empty list matches no cell"));
        }
        items
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<Vec<T>, _>>()
            .map(Values)
            .map_err(D::Error::custom)
    }
}

/// The AllData cells a target applies to: every combination of the values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CellSpec {
    rf: Values<usize>,
    commit: Values<Commit>,
    durability: Values<Durability>,
    batch: Values<usize>,
    concurrency: Values<usize>,
}

impl CellSpec {
    fn cells(&self) -> Vec<Cell> {
        let mut cells = Vec::new();
        for &rf in &self.rf.0 {
            for &commit in &self.commit.0 {
                for &durability in &self.durability.0 {
                    for &batch in &self.batch.0 {
                        for &concurrency in &self.concurrency.0 {
                            cells.push(Cell {
                                rf,
                                commit,
                                durability,
                                batch,
                                concurrency,
                            });
                        }
                    }
                }
            }
        }
        cells
    }

    /// What tells `cell` apart from the spec's other cells (`single c=64`).
    fn label(&self, cell: &Cell) -> String {
        let mut parts = Vec::new();
        if self.rf.0.len() > 1 {
            parts.push(format!("RF={}", cell.rf));
        }
        if self.commit.0.len() > 1 {
            parts.push(cell.commit.as_str().to_uppercase());
        }
        if self.durability.0.len() > 1 {
            parts.push(cell.durability.as_str().to_owned());
        }
        if self.batch.0.len() > 1 {
            parts.push(mode(cell.batch));
        }
        if self.concurrency.0.len() > 1 {
            parts.push(format!("c={}", cell.concurrency));
        }
        parts.join(" ")
    }
}

/// One bound on one metric of a cell.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct Check {
    metric: Metric,
    #[serde(default)]
    relative_to: Option<Reference>,
    op: Op,
    bound: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Metric {
    EventsPerSec,
    P50Ms,
    P99Ms,
}

impl Metric {
    fn of(self, r: &RunResult) -> f64 {
        match self {
            Metric::EventsPerSec => r.events_per_sec,
            Metric::P50Ms => r.latency_ms.p50,
            Metric::P99Ms => r.latency_ms.p99,
        }
    }
}

/// What a relative check divides by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Reference {
    /// The `null` baseline at the same batch and concurrency.
    Null,
    /// The `fanout` baseline at the same batch and concurrency.
    Fanout,
    /// The same cell, buffered.
    Buffered,
    /// The same cell, sync.
    Sync,
}

impl Reference {
    fn name(self) -> &'static str {
        match self {
            Reference::Null => "null",
            Reference::Fanout => "fanout",
            Reference::Buffered => Durability::Buffered.as_str(),
            Reference::Sync => Durability::Sync.as_str(),
        }
    }

    fn find<'a>(
        self,
        results: &'a [RunResult],
        ours: &RunResult,
        cell: &Cell,
    ) -> Option<&'a RunResult> {
        let durability = match self {
            Reference::Null | Reference::Fanout => {
                return baseline_for(results, self.name(), ours);
            }
            Reference::Buffered => Durability::Buffered,
            Reference::Sync => Durability::Sync,
        };
        find(
            results,
            &Cell {
                durability,
                ..*cell
            },
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum Op {
    #[serde(rename = ">=")]
    AtLeast,
    #[serde(rename = "<=")]
    AtMost,
}

fn find<'a>(results: &'a [RunResult], cell: &Cell) -> Option<&'a RunResult> {
    results.iter().find(|r| {
        r.is(
            cell.rf,
            cell.commit,
            cell.durability,
            cell.batch,
            cell.concurrency,
        )
    })
}

impl Check {
    /// What was measured and whether it is within the bound; `None` when a
    /// result the check divides by is missing.
    fn evaluate(
        &self,
        results: &[RunResult],
        cell: &Cell,
        ours: &RunResult,
    ) -> Option<(String, bool)> {
        let value = self.metric.of(ours);
        let (x, text) = match self.relative_to {
            None => {
                let text = match self.metric {
                    Metric::EventsPerSec => format!("{} events/s", fmt_int(value)),
                    Metric::P50Ms => format!("p50 {value:.2} ms"),
                    Metric::P99Ms => format!("p99 {value:.2} ms"),
                };
                (value, text)
            }
            Some(reference) => {
                let base = reference.find(results, ours, cell)?;
                let base_value = self.metric.of(base);
                let x = div(value, base_value);
                let name = reference.name();
                let text = match (self.metric, reference) {
                    (Metric::EventsPerSec, Reference::Null | Reference::Fanout) => format!(
                        "{} events/s = {x:.2}x {name} ({} {})",
                        fmt_int(value),
                        fmt_int(base_value),
                        if base.batch > 1 { "events/s" } else { "req/s" }
                    ),
                    (Metric::EventsPerSec, Reference::Buffered | Reference::Sync) => {
                        format!("{:.0}%", x * 100.0)
                    }
                    (Metric::P50Ms, _) => {
                        format!("p50 {value:.3} ms vs {name} {base_value:.3} ms = {x:.2}x")
                    }
                    (Metric::P99Ms, _) => {
                        format!("p99 {value:.3} ms vs {name} {base_value:.3} ms = {x:.2}x")
                    }
                };
                (x, text)
            }
        };
        let ok = match self.op {
            Op::AtLeast => x >= self.bound,
            Op::AtMost => x <= self.bound,
        };
        Some((text, ok))
    }
}

/// A measured cell: its result and each check's text and outcome.
type Measured<'a> = (Cell, &'a RunResult, Vec<(String, bool)>);

impl Target {
    /// (target, measured, verdict) for the report's targets table.
    fn evaluate(&self, results: &[RunResult]) -> (String, String, &'static str) {
        let cells = self.cells.cells();
        let several = cells.len() > 1;
        let measured: Vec<Measured<'_>> = cells
            .into_iter()
            .filter_map(|cell| {
                let ours = find(results, &cell)?;
                let checks = self
                    .checks
                    .iter()
                    .map(|c| c.evaluate(results, &cell, ours))
                    .collect::<Option<Vec<_>>>()?;
                Some((cell, ours, checks))
            })
            .collect();
        let text = |checks: &[(String, bool)]| {
            let texts: Vec<&str> = checks.iter().map(|(t, _)| t.as_str()).collect();
            texts.join(if several { ", " } else { "; " })
        };
        let pass = |checks: &[(String, bool)]| checks.iter().all(|(_, ok)| *ok);
        let (measured_text, ok) = match self.pick {
            _ if measured.is_empty() => ("-".to_owned(), None),
            Pick::Every => {
                let parts: Vec<String> = measured
                    .iter()
                    .map(|(cell, _, checks)| {
                        if several {
                            format!("{}: {}", self.cells.label(cell), text(checks))
                        } else {
                            text(checks)
                        }
                    })
                    .collect();
                let ok = measured.iter().all(|(_, _, checks)| pass(checks));
                (parts.join("; "), Some(ok))
            }
            Pick::Best => {
                let best = measured
                    .iter()
                    .max_by(|a, b| a.1.events_per_sec.total_cmp(&b.1.events_per_sec));
                let (cell, _, checks) = best.expect("measured is not empty");
                let label = self.cells.label(cell);
                let t = if label.is_empty() {
                    text(checks)
                } else {
                    format!("{} at {label}", text(checks))
                };
                (t, Some(pass(checks)))
            }
        };
        (self.description.clone(), measured_text, verdict(ok))
    }
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

/// The targets in `text` (the contents of a targets file).
pub(crate) fn parse(text: &str) -> anyhow::Result<Vec<Target>> {
    let file: TargetsFile = serde_json::from_str(text)?;
    for t in &file.targets {
        anyhow::ensure!(
            !t.checks.is_empty(),
            "target {:?} has no checks",
            t.description
        );
    }
    Ok(file.targets)
}

/// The targets under `docs_dir` ([`TARGETS_FILE`]); `None` without the file.
pub(crate) fn load(docs_dir: &Path) -> anyhow::Result<Option<Vec<Target>>> {
    let path = docs_dir.join(TARGETS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    parse(&text)
        .with_context(|| format!("{} is not a targets file", path.display()))
        .map(Some)
}

/// Every target evaluated against `results`: (target, measured, verdict).
pub(crate) fn evaluate(
    targets: &[Target],
    results: &[RunResult],
) -> Vec<(String, String, &'static str)> {
    targets.iter().map(|t| t.evaluate(results)).collect()
}

#[cfg(test)]
mod tests {
    use super::super::model::tests::result;
    use super::*;

    /// The docs directory holding the shipped targets, relative to this
    /// crate's manifest directory.
    const SHIPPED_DOCS_DIR: &str = "../../docs";

    fn ours(eps: f64, p50: f64, p99: f64, durability: &str, batch: usize, c: usize) -> RunResult {
        let mut r = result("alldata", eps, p50, p99);
        r.rf = Some(3);
        r.commit = Some("quorum".into());
        r.durability = Some(durability.into());
        r.batch = batch;
        r.concurrency = c;
        r
    }

    #[test]
    fn targets_from_json_give_verdicts() {
        let rows = vec![
            result("null", 40_000.0, 1.0, 2.0),
            result("fanout", 20_000.0, 2.0, 4.0),
            ours(10_000.0, 4.0, 8.0, "buffered", 1, 64),
        ];
        let targets = parse(
            r#"{"targets": [{
                "description": "RF=3 QUORUM single, c=64 (buffered): >= 1.0x fanout and p99 <= 5 ms",
                "cells": {"rf": 3, "commit": "quorum", "durability": "buffered", "batch": 1, "concurrency": 64},
                "checks": [
                    {"metric": "events_per_sec", "relative_to": "fanout", "op": ">=", "bound": 1.0},
                    {"metric": "p99_ms", "op": "<=", "bound": 5}
                ]
            }, {
                "description": "c=64 p50 <= 2x fanout",
                "cells": {"rf": 3, "commit": "quorum", "durability": "buffered", "batch": 1, "concurrency": 64},
                "checks": [{"metric": "p50_ms", "relative_to": "fanout", "op": "<=", "bound": 2}]
            }, {
                "description": "sync c=64",
                "cells": {"rf": 3, "commit": "quorum", "durability": "sync", "batch": 1, "concurrency": 64},
                "checks": [{"metric": "events_per_sec", "op": ">=", "bound": 1}]
            }]}"#,
        )
        .unwrap();
        let verdicts = evaluate(&targets, &rows);
        assert!(verdicts[0].1.contains("0.50x fanout"), "{:?}", verdicts[0]);
        assert_eq!(
            verdicts[0].1,
            "10,000 events/s = 0.50x fanout (20,000 req/s); p99 8.00 ms"
        );
        assert_eq!(verdicts[0].2, "**missed**");
        assert_eq!(verdicts[1].1, "p50 4.000 ms vs fanout 2.000 ms = 2.00x");
        assert_eq!(verdicts[1].2, "**met**");
        assert_eq!(
            verdicts[2],
            ("sync c=64".into(), "-".into(), "not measured")
        );
    }

    #[test]
    fn every_checks_each_measured_cell_and_best_only_the_fastest() {
        let rows = vec![
            ours(10_000.0, 1.0, 2.0, "buffered", 1, 1),
            ours(4_000.0, 1.0, 2.0, "sync", 1, 1),
            ours(20_000.0, 1.0, 2.0, "buffered", 1, 64),
            ours(15_000.0, 1.0, 2.0, "sync", 1, 64),
            ours(90_000.0, 1.0, 2.0, "buffered", 100, 1),
            ours(120_000.0, 1.0, 2.0, "buffered", 100, 64),
        ];
        let targets = parse(
            r#"{"note": "ignored", "targets": [{
                "description": "sync >= 50% of buffered",
                "cells": {"rf": 3, "commit": "quorum", "durability": "sync", "batch": [1, 100], "concurrency": [1, 64]},
                "pick": "every",
                "checks": [{"metric": "events_per_sec", "relative_to": "buffered", "op": ">=", "bound": 0.5}]
            }, {
                "description": "batch >= 100k",
                "cells": {"rf": 3, "commit": "quorum", "durability": "buffered", "batch": 100, "concurrency": [1, 64]},
                "pick": "best",
                "checks": [{"metric": "events_per_sec", "op": ">=", "bound": 100000}]
            }, {
                "description": "batch sync >= 100k",
                "cells": {"rf": 3, "commit": "quorum", "durability": "sync", "batch": 100, "concurrency": [1, 64]},
                "pick": "best",
                "checks": [{"metric": "events_per_sec", "op": ">=", "bound": 100000}]
            }]}"#,
        )
        .unwrap();
        let v = evaluate(&targets, &rows);
        assert_eq!(v[0].1, "single c=1: 40%; single c=64: 75%");
        assert_eq!(v[0].2, "**missed**");
        assert_eq!(v[1].1, "120,000 events/s at c=64");
        assert_eq!(v[1].2, "**met**");
        assert_eq!(v[2].2, "not measured");
    }

    #[test]
    fn bad_targets_are_refused() {
        let cells =
            r#"{"rf": 3, "commit": "quorum", "durability": "sync", "batch": 1, "concurrency": 1}"#;
        let check = r#"{"metric": "p99_ms", "op": "<=", "bound": 5}"#;
        let file = |cells: &str, checks: &str| {
            format!(
                r#"{{"targets": [{{"description": "t", "cells": {cells}, "checks": [{checks}]}}]}}"#
            )
        };
        parse(&file(cells, check)).unwrap();
        assert!(parse(&file(cells, "")).is_err(), "no checks");
        assert!(parse(&file(&cells.replace("quorum", "qourum"), check)).is_err());
        assert!(
            parse(&file(
                &cells.replace("\"batch\": 1", "\"batch\": []"),
                check
            ))
            .is_err()
        );
        assert!(parse(&file(&cells.replace("\"rf\"", "\"replicas\""), check)).is_err());
        assert!(parse(&file(cells, &check.replace("<=", "<"))).is_err());
        assert!(parse(&file(cells, &check.replace("p99_ms", "p95_ms"))).is_err());
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none(), "no file, no targets");
    }

    #[test]
    fn the_shipped_targets_parse() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join(SHIPPED_DOCS_DIR);
        let targets = load(&docs)
            .unwrap()
            .unwrap_or_else(|| panic!("{} is missing", docs.join(TARGETS_FILE).display()));
        assert!(!targets.is_empty());
        for (description, measured, verdict) in evaluate(&targets, &[]) {
            assert!(!description.is_empty());
            assert_eq!((measured.as_str(), verdict), ("-", "not measured"));
        }
    }
}
