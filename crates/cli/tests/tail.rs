//! The live tail against real processes: a subscriber on one node sees the
//! events posted to the others, a reconnect with `Last-Event-ID` leaves no
//! gap, a stalled subscriber is sent `lagged` and cut off, and the number of
//! subscribers is bounded.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;

/// One server-sent message.
#[derive(Debug, Default, Clone)]
struct Msg {
    event: Option<String>,
    id: Option<String>,
    data: String,
}

/// A `GET /events/tail` stream, parsed as it arrives.
struct Sse {
    response: reqwest::Response,
    buf: String,
}

impl Sse {
    async fn open(c: &Cluster, i: usize, last_id: Option<&str>) -> Self {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut request = client.get(c.url(i, "/events/tail"));
        if let Some(id) = last_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("tail request");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Sse {
            response,
            buf: String::new(),
        }
    }

    /// The next message within `within`; `None` when the stream ended.
    async fn next(&mut self, within: Duration) -> Option<Msg> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut msg = Msg::default();
                let mut comment = true;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("data:") {
                        msg.data.push_str(v.trim_start());
                        comment = false;
                    } else if let Some(v) = line.strip_prefix("id:") {
                        msg.id = Some(v.trim().to_owned());
                        comment = false;
                    } else if let Some(v) = line.strip_prefix("event:") {
                        msg.event = Some(v.trim().to_owned());
                        comment = false;
                    }
                }
                if comment {
                    continue; // a heartbeat
                }
                return Some(msg);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.chunk())
                .await
                .unwrap_or_else(|_| panic!("no message within {within:?}; have {:?}", self.buf))
                .expect("stream read");
            match chunk {
                Some(bytes) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                None => return None,
            }
        }
    }

    /// Reads until every key of `want` came; returns the ids seen.
    async fn until_all(&mut self, want: &BTreeSet<String>) -> Vec<String> {
        let mut seen = Vec::new();
        let mut missing = want.clone();
        while !missing.is_empty() {
            let msg = self
                .next(Duration::from_secs(10))
                .await
                .expect("stream open");
            let id = msg.id.expect("an event has an id");
            let v: serde_json::Value = serde_json::from_str(&msg.data).expect("data is JSON");
            assert!(v.is_object(), "{v}");
            missing.remove(&id);
            seen.push(id);
        }
        seen
    }
}

async fn post_many(c: &Cluster, i: usize, n: usize, tag: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for j in 0..n {
        let (status, answer) = c.post(i, "quorum", &format!(r#"{{"{tag}":{j}}}"#)).await;
        assert_eq!(status, 201, "{answer}");
        keys.insert(answer["key"].as_str().unwrap().to_owned());
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_one_node_sees_every_event_posted_to_the_others() {
    let c = Cluster::start(3, 3).await;
    let mut sse = Sse::open(&c, 0, None).await;
    // Let the node open its peers' tails.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut want = post_many(&c, 1, 20, "at_n2").await;
    want.extend(post_many(&c, 2, 20, "at_n3").await);
    let seen = sse.until_all(&want).await;
    let distinct: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(distinct, want);
    eprintln!("{} messages for {} events", seen.len(), want.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_with_last_event_id_leaves_no_gap() {
    let c = Cluster::start(3, 3).await;
    let mut sse = Sse::open(&c, 0, None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = post_many(&c, 1, 10, "before").await;
    let seen = sse.until_all(&first).await;
    let last = seen.last().unwrap().clone();
    drop(sse);
    // Posted while nobody listens, at every node.
    let mut gap = BTreeSet::new();
    for i in 0..3 {
        gap.extend(post_many(&c, i, 10, "during").await);
    }
    let mut sse = Sse::open(&c, 0, Some(&last)).await;
    let again = sse.until_all(&gap).await;
    assert!(again.len() >= gap.len());
}

/// Node `i`'s anonymous resident memory in KiB (Linux; file-backed pages of
/// LevelDB's memory-mapped tables left out).
fn rss_kib(c: &Cluster, i: usize) -> u64 {
    let pid = c.nodes[i].child.as_ref().unwrap().id();
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// Posts 1600 events of 60 kB (~96 MB) to node 0 in batches of 100 and
/// returns how much its resident memory grew, in KiB.
async fn write_96_mb(c: &Cluster) -> u64 {
    let before = rss_kib(c, 0);
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(60_000));
    let body: String = std::iter::repeat_n(big.as_str(), 100)
        .collect::<Vec<_>>()
        .join("\n");
    for _ in 0..16 {
        let r = c
            .client
            .post(c.url(0, "/events/batch"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    rss_kib(c, 0).saturating_sub(before)
}

const FLAGS: [&str; 8] = [
    "--tail-buffer-events",
    "8",
    "--tail-stall-timeout-ms",
    "300",
    "--max-tail-subscribers",
    "1",
    "--write-buffer-mb",
    "4",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_sent_lagged_and_the_subscribers_are_bounded() {
    // The same writes on a node nobody tails, for comparison.
    let alone = Cluster::start_with(1, 1, &FLAGS).await;
    let growth_alone = write_96_mb(&alone).await;
    drop(alone);

    let c = Cluster::start_with(1, 1, &FLAGS).await;
    let mut stalled = Sse::open(&c, 0, None).await;
    // A second subscriber is refused while the first is connected.
    let second = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(c.url(0, "/events/tail"))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 503);
    assert_eq!(second.headers()["retry-after"], "1");
    assert!(second.text().await.unwrap().contains("overloaded"));
    // The stalled subscriber reads nothing while ~96 MB are written: more
    // than the socket buffers and its 8 events of buffer hold. Holding them
    // would grow the node by as much; allow half for the allocator.
    let growth = write_96_mb(&c).await;
    eprintln!(
        "node memory grew {growth} KiB with a stalled subscriber, {growth_alone} KiB without"
    );
    assert!(
        growth < growth_alone + 48 * 1024,
        "a stalled subscriber made the node hold the events: {growth} KiB vs {growth_alone} KiB"
    );
    // Reading now: what was buffered, then the notice, then the end.
    let mut lagged = None;
    while let Some(msg) = stalled.next(Duration::from_secs(10)).await {
        if msg.event.as_deref() == Some("lagged") {
            lagged = Some(msg);
            break;
        }
    }
    let lagged = lagged.expect("an `event: lagged` message");
    let v: serde_json::Value = serde_json::from_str(&lagged.data).unwrap();
    assert!(v["resume_from"].is_string(), "{v}");
    assert!(
        stalled.next(Duration::from_secs(5)).await.is_none(),
        "the stream ends after the notice"
    );
    // Its slot is free again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _again = Sse::open(&c, 0, None).await;
}
