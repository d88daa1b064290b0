//! The batch-layer routes without sockets: `GET /intervals`, and the exports.

mod common;

use alldata_coordinator::{CommitLevel, EventKey, ScanRange};
use alldata_server_http::{ApiConfig, IntervalInfo, IntervalRef, IntervalSource};
use async_trait::async_trait;
use axum::http::{Method, StatusCode};
use common::{call, node, options};

const HOUR: u64 = 3_600_000;
/// 2026-12-01T00:00:00Z.
const DEC1: u64 = 1_796_083_200_000;

/// Hourly intervals: 00:00 and 01:00 closed, 02:00 open.
struct FakeIntervals;

fn info(hour: u64, closed: bool, events: u64) -> IntervalInfo {
    IntervalInfo {
        name: format!("20261201T{hour:02}00Z-PT1H"),
        start: format!("2026-12-01T{hour:02}:00:00Z"),
        end: format!("2026-12-01T{:02}:00:00Z", hour + 1),
        closed,
        events,
    }
}

#[async_trait]
impl IntervalSource for FakeIntervals {
    fn length(&self) -> String {
        "PT1H".into()
    }

    async fn list(&self) -> Result<Vec<IntervalInfo>, String> {
        Ok(vec![info(0, true, 3), info(1, true, 0), info(2, false, 5)])
    }

    fn lookup(&self, name: &str) -> Option<IntervalRef> {
        let hour: u64 = name
            .strip_prefix("20261201T")?
            .strip_suffix("00Z-PT1H")?
            .parse()
            .ok()?;
        let start = DEC1 + hour * HOUR;
        Some(IntervalRef {
            range: ScanRange::new(
                EventKey::min_for_ms(start),
                EventKey::max_for_ms(start + HOUR - 1),
            ),
            closed: hour < 2,
        })
    }
}

fn with_intervals() -> common::TestNode {
    node(
        options(1, CommitLevel::One),
        &[],
        None,
        ApiConfig::default().with_intervals(FakeIntervals),
    )
}

#[tokio::test]
async fn intervals_are_listed_with_their_state() {
    let n = with_intervals();
    let a = call(&n.app, Method::GET, "/intervals", "").await;
    assert_eq!(a.status, StatusCode::OK);
    let v = a.json();
    assert_eq!(v["length"], "PT1H");
    let list = v["intervals"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["name"], "20261201T0000Z-PT1H");
    assert_eq!(list[0]["start"], "2026-12-01T00:00:00Z");
    assert_eq!(list[0]["end"], "2026-12-01T01:00:00Z");
    assert_eq!(list[0]["closed"], true);
    assert_eq!(list[0]["events"], 3);
    assert_eq!(list[2]["closed"], false);

    // Pollers: only the closed intervals after the one named.
    let a = call(
        &n.app,
        Method::GET,
        "/intervals?closed_since=20261201T0000Z-PT1H",
        "",
    )
    .await;
    let names: Vec<_> = a.json()["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["20261201T0100Z-PT1H"]);

    let bad = call(&n.app, Method::GET, "/intervals?closed_since=yesterday", "").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.code(), "bad_param");
}

#[tokio::test]
async fn a_node_without_intervals_answers_404() {
    let n = node(
        options(1, CommitLevel::One),
        &[],
        None,
        ApiConfig::default(),
    );
    let a = call(&n.app, Method::GET, "/intervals", "").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}
