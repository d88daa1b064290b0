//! The batch-layer export against real `alldata node` processes: a cluster
//! export equals, key for key and byte for byte, what was acknowledged (in
//! NDJSON and Parquet, read back with the parquet crate's reader), with one
//! node of three down it is still complete, with two down it is 503
//! `incomplete` (and 200 when incompleteness is allowed), and an open
//! interval is 409.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Posts `n` events through nodes `via` (round-robin) at QUORUM; returns
/// key -> the exact bytes sent.
async fn post_events(c: &Cluster, via: &[usize], n: usize, tag: &str) -> BTreeMap<String, String> {
    let mut acked = BTreeMap::new();
    for i in 0..n {
        // Odd spacing on purpose: the bytes must come back exactly.
        let body = format!(r#"{{ "tag":"{tag}",  "i": {i}, "text": "é ✓ \"q\"" }}"#);
        let (status, answer) = c.post(via[i % via.len()], "quorum", &body).await;
        assert_eq!(status, 201, "{answer}");
        acked.insert(answer["key"].as_str().unwrap().to_owned(), body);
    }
    acked
}

/// An NDJSON export's lines as key -> the event's exact bytes.
fn ndjson_events(body: &str) -> Vec<(String, String)> {
    body.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("a JSON line");
            let key = v["key"].as_str().unwrap().to_owned();
            // `{"key":"…","event":<the stored bytes>}`
            let prefix = format!("{{\"key\":\"{key}\",\"event\":");
            let event = line
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix('}'))
                .expect("the scan's line layout")
                .to_owned();
            (key, event)
        })
        .collect()
}

/// Every row of a Parquet file as (key, time ms, event).
fn parquet_rows(path: &Path) -> Vec<(String, i64, String)> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::RowAccessor;
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    reader
        .get_row_iter(None)
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            (
                r.get_string(0).unwrap().clone(),
                r.get_timestamp_millis(1).unwrap(),
                r.get_string(2).unwrap().clone(),
            )
        })
        .collect()
}

/// `alldata export` against node `i`: exit status, stdout, stderr.
fn cli_export(c: &Cluster, i: usize, args: &[&str], out: &Path) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_alldata"))
        .arg("export")
        .args(["--node", &c.url(i, "")])
        .arg("--out")
        .arg(out)
        .args(args)
        .args(["--timeout-secs", "20"])
        .output()
        .expect("run alldata export");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn expected(acked: &BTreeMap<String, String>) -> Vec<(String, String)> {
    acked.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_export_is_complete_with_one_node_down_and_refused_with_two() {
    let mut c = Cluster::start(3, 3).await;
    let mut acked = post_events(&c, &[0, 1, 2], 150, "all-up").await;
    // n1 killed: these land on n2 and n3 only (nothing reaches a dead
    // process), so n1's export must read them from its peers.
    c.kill(0);
    let only_on_peers = post_events(&c, &[1, 2], 60, "n1-down").await;
    c.spawn(0);
    c.wait_healthy(0).await;
    let local: std::collections::BTreeSet<String> = c.local_keys(0).await.into_iter().collect();
    assert!(
        only_on_peers.keys().all(|k| !local.contains(k)),
        "n1 was down: it holds none of these"
    );
    acked.extend(only_on_peers);
    let dir = tempfile::tempdir().unwrap();

    // All up: NDJSON over HTTP and through the CLI, Parquet through the CLI.
    let (status, body) = c.get_text(0, "/export?format=ndjson").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        ndjson_events(&body),
        expected(&acked),
        "key for key, byte for byte"
    );

    let ndjson = dir.path().join("all.ndjson");
    let (ok, stdout, stderr) = cli_export(
        &c,
        0,
        &[
            "--format",
            "ndjson",
            "--from",
            "1970-01-01T00:00:00Z",
            "--to",
            "2100-01-01T00:00:00Z",
        ],
        &ndjson,
    );
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("exported {} events", acked.len())),
        "{stdout}"
    );
    assert_eq!(
        ndjson_events(&std::fs::read_to_string(&ndjson).unwrap()),
        expected(&acked)
    );

    let check_parquet = |path: &Path| {
        let rows = parquet_rows(path);
        assert_eq!(rows.len(), acked.len());
        for ((key, event), (k, t, e)) in acked.iter().zip(&rows) {
            assert_eq!(k, key);
            assert_eq!(e, event, "event bytes of {key}");
            let parsed: alldata_coordinator::EventKey = key.parse().unwrap();
            assert_eq!(*t as u64, parsed.timestamp_ms());
        }
    };
    let parquet = dir.path().join("all.parquet");
    let (ok, stdout, stderr) = cli_export(
        &c,
        0,
        &[
            "--format",
            "parquet",
            "--from",
            "1970-01-01T00:00:00Z",
            "--to",
            "2100-01-01T00:00:00Z",
        ],
        &parquet,
    );
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("exported {} events", acked.len())),
        "{stdout}"
    );
    check_parquet(&parquet);

    // n2 frozen (SIGSTOP): n1 and n3 still hold every QUORUM event, and the
    // events that missed n1 come from n3.
    c.stop(1);
    let started = Instant::now();
    let (status, body) = c.get_text(0, "/export").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ndjson_events(&body), expected(&acked));
    assert!(started.elapsed() < Duration::from_secs(10));
    let one_down = dir.path().join("one-down.parquet");
    let (ok, _, stderr) = cli_export(
        &c,
        0,
        &[
            "--format",
            "parquet",
            "--from",
            "1970-01-01T00:00:00Z",
            "--to",
            "2100-01-01T00:00:00Z",
        ],
        &one_down,
    );
    assert!(ok, "{stderr}");
    check_parquet(&one_down);

    // n3 frozen too: one member of three cannot promise completeness.
    c.stop(2);
    let (status, body) = c.get_text(0, "/export?format=parquet").await;
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "incomplete");
    let mut missing: Vec<_> = v["error"]["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["node"].as_str().unwrap().to_owned())
        .collect();
    missing.sort();
    assert_eq!(missing, ["n2", "n3"]);
    let (status, body) = c.get_text(0, "/events?scope=cluster").await;
    assert_eq!(status, 503, "{body}");

    let refused = dir.path().join("refused.parquet");
    let (ok, _, stderr) = cli_export(
        &c,
        0,
        &[
            "--format",
            "parquet",
            "--from",
            "1970-01-01T00:00:00Z",
            "--to",
            "2100-01-01T00:00:00Z",
        ],
        &refused,
    );
    assert!(!ok, "the CLI must fail");
    assert!(stderr.contains("incomplete"), "{stderr}");
    assert!(!refused.exists(), "no file that looks complete");
    assert!(!dir.path().join("refused.parquet.partial").exists());

    // Allowed incomplete: what n1 holds.
    let (status, body) = c.get_text(0, "/export?allow_incomplete=true").await;
    assert_eq!(status, 200, "{body}");
    let got: Vec<String> = ndjson_events(&body).into_iter().map(|(k, _)| k).collect();
    assert_eq!(got, local.iter().cloned().collect::<Vec<_>>());
    let partial = dir.path().join("partial.ndjson");
    let (ok, _, stderr) = cli_export(
        &c,
        0,
        &[
            "--format",
            "ndjson",
            "--from",
            "1970-01-01T00:00:00Z",
            "--to",
            "2100-01-01T00:00:00Z",
            "--allow-incomplete",
        ],
        &partial,
    );
    assert!(ok, "{stderr}");
    c.resume(1);
    c.resume(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intervals_are_listed_and_an_open_one_is_not_exported() {
    let c = Cluster::start_with(3, 3, &["--interval", "PT5M"]).await;
    let acked = post_events(&c, &[0, 1, 2], 20, "intervals").await;
    let (status, body) = c.get_text(0, "/intervals").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["length"], "PT5M");
    let intervals = v["intervals"].as_array().unwrap();
    let events: u64 = intervals
        .iter()
        .map(|i| i["events"].as_u64().unwrap())
        .sum();
    assert_eq!(
        events as usize,
        acked.len(),
        "RF 3: every event on every node"
    );
    let open = intervals
        .iter()
        .find(|i| i["closed"] == false)
        .expect("the current interval is open");
    let name = open["name"].as_str().unwrap();
    assert!(name.ends_with("-PT5M"), "{name}");

    let (status, body) = c
        .get_text(0, &format!("/intervals/{name}/export?format=parquet"))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("interval_open"), "{body}");
    let (status, _) = c.get_text(0, "/intervals/20261201T0000Z-P1D/export").await;
    assert_eq!(
        status, 404,
        "another length is not one of this node's intervals"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("open.parquet");
    let (ok, _, stderr) = cli_export(&c, 1, &["--format", "parquet", "--interval", name], &out);
    assert!(!ok);
    assert!(stderr.contains("interval_open"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn a_node_refuses_another_interval_length_on_its_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let data = dir.path().join("data");
    let node = |interval: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_alldata"));
        cmd.args(["node", "--id", "n1"])
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--peer-listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--data-dir")
            .arg(&data)
            .arg("--cluster-secret-file")
            .arg(&secret)
            .env("ALLDATA_INTERVAL", interval)
            .env("RUST_LOG", "error");
        cmd
    };
    let mut first = node("PT1H").spawn().unwrap();
    // Wait until the directory is initialised, then stop it cleanly.
    let until = Instant::now() + Duration::from_secs(20);
    while !data.join("CURRENT").exists() {
        assert!(Instant::now() < until, "node never created its directory");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status();
    let _ = first.wait();
    let second = node("P1D").output().unwrap();
    assert!(!second.status.success(), "another length must be refused");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("PT1H") && stderr.contains("P1D"),
        "{stderr}"
    );
}

#[test]
fn a_broken_off_export_leaves_no_file() {
    use std::io::{Read, Write};
    // A node stand-in that starts a chunked 200 answer and then drops the
    // connection before its end, as a node does when it aborts an export.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut request = [0u8; 4096];
        let _ = socket.read(&mut request);
        let line = "{\"key\":\"k\",\"event\":{}}\n";
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{line}\r\n",
            line.len()
        );
        socket.write_all(head.as_bytes()).unwrap();
        // Dropped without the terminating chunk.
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cut.ndjson");
    let output = Command::new(env!("CARGO_BIN_EXE_alldata"))
        .args(["export", "--node", &format!("http://127.0.0.1:{port}")])
        .args([
            "--from",
            "1970-01-01T00:00:00Z",
            "--to",
            "2100-01-01T00:00:00Z",
        ])
        .args(["--format", "ndjson", "--timeout-secs", "10"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    server.join().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a cut export must fail");
    assert!(stderr.contains("broke off"), "{stderr}");
    assert!(!out.exists());
    assert!(!dir.path().join("cut.ndjson.partial").exists());
}
