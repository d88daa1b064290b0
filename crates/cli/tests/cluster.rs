//! Multi-process tests: real `alldata node` processes on 127.0.0.1 with their own
//! LevelDB directories, killed and restarted.

mod common;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_survives_a_killed_node_and_the_node_recovers() {
    let mut c = Cluster::start(3, 3).await;

    // All up: ALL reaches every node.
    let mut before = Vec::new();
    for i in 0..30 {
        let (status, body) = c
            .post(i % 3, "all", &format!(r#"{{"phase":"up","i":{i}}}"#))
            .await;
        assert_eq!(status, 201, "{body}");
        before.push(body["key"].as_str().unwrap().to_owned());
    }
    let counts = c.replica_counts(&[0, 1, 2]).await;
    for k in &before {
        assert_eq!(counts.get(k), Some(&3), "{k} not on all 3 nodes");
    }

    // SIGKILL n3; QUORUM keeps acknowledging every put on the survivors.
    c.kill(2);
    let mut during = Vec::new();
    for i in 0..60 {
        let (status, body) = c
            .post(i % 2, "quorum", &format!(r#"{{"phase":"down","i":{i}}}"#))
            .await;
        assert_eq!(status, 201, "put {i} with n3 down: {body}");
        during.push(body["key"].as_str().unwrap().to_owned());
    }
    // ALL has no spare node: 503 with required vs acked.
    let (status, body) = c.post(0, "all", r#"{"phase":"all-down"}"#).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "commit_not_reached", "{body}");
    let counts = c.replica_counts(&[0, 1]).await;
    for k in &during {
        assert!(
            counts.get(k).copied().unwrap_or(0) >= 2,
            "{k} acknowledged at QUORUM but on < 2 nodes"
        );
    }

    // Restart n3 on its old directory: it serves what it stored before.
    assert!(dir_exists(&c.nodes[2].dir));
    c.spawn(2);
    c.wait_healthy(2).await;
    let on_n3 = c.local_keys(2).await;
    for k in &before {
        assert!(on_n3.contains(k), "restarted n3 lost {k}");
        let r = c
            .client
            .get(c.url(2, &format!("/events/{k}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Events written while it was down are readable through it (it asks its peers).
    let r = c
        .client
        .get(c.url(2, &format!("/events/{}", during[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_put_reaches_rf_nodes_once_background_writes_finish() {
    let c = Cluster::start(4, 3).await;
    let mut keys = Vec::new();
    for i in 0..40 {
        let (status, body) = c.post(i % 4, "one", &format!(r#"{{"i":{i}}}"#)).await;
        assert_eq!(status, 201, "{body}");
        keys.push(body["key"].as_str().unwrap().to_owned());
    }
    let start = Instant::now();
    loop {
        let counts = c.replica_counts(&[0, 1, 2, 3]).await;
        let short: Vec<_> = keys
            .iter()
            .filter(|k| counts.get(*k).copied().unwrap_or(0) != 3)
            .collect();
        if short.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} keys not on exactly 3 nodes",
            short.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_error_codes_and_the_node_keeps_serving() {
    let c = Cluster::start(1, 1).await;
    let client = &c.client;
    // Wrong and missing secret on the peer port.
    let peer = format!("http://127.0.0.1:{}/peer/v1/events", c.nodes[0].peer);
    let r = client
        .post(&peer)
        .header("authorization", "Bearer wrong")
        .body(vec![0xA1u8, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(&peer)
        .body(vec![1u8, 2, 3])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Garbage to the peer port with the right secret.
    let r = client
        .post(&peer)
        .header("authorization", format!("Bearer {SECRET}"))
        .body(vec![0xA1u8, 0, 0, 0, 9, 1, 2])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // The oversize request gets a connection of its own: the node closes it
    // after the 413 without reading the body, and a pooled connection closed
    // that way could be handed to the next request.
    let unpooled = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let cases: Vec<(reqwest::RequestBuilder, u16)> = vec![
        (client.post(c.url(0, "/events")).body("{not json"), 400),
        (
            client
                .post(c.url(0, "/events"))
                .body(vec![0xffu8, 0xfe, 0x00]),
            400,
        ),
        (
            unpooled
                .post(c.url(0, "/events"))
                .body(format!(r#"{{"big":"{}"}}"#, "x".repeat(2 << 20))),
            413,
        ),
        (client.get(c.url(0, "/events/not-a-key")), 400),
        (
            client
                .put(c.url(0, "/events/0190a8b4-5c2e-4abc-8def-0123456789ab"))
                .body("{}"),
            400,
        ),
        (
            client.get(c.url(0, "/events/0190a8b4-5c2e-7abc-8def-0123456789ab")),
            404,
        ),
        (client.get(c.url(0, "/no/such/route")), 404),
        (client.delete(c.url(0, "/events")), 405),
        (client.post(c.url(0, "/events?commit=most")).body("{}"), 400),
    ];
    for (req, want) in cases {
        let r = match req.send().await {
            Ok(r) => r,
            // The node answers 413 without reading the rest of a huge body and
            // closes the connection; the client may see the reset before the
            // answer. (The 413 itself is asserted by server-http's handler tests.)
            Err(e) if want == 413 => {
                eprintln!("oversize request: connection closed early ({e})");
                continue;
            }
            Err(e) => panic!("request failed: {e}"),
        };
        let status = r.status().as_u16();
        let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null);
        assert_eq!(status, want, "{body}");
        assert!(body["error"]["code"].is_string(), "error body {body}");
    }
    // Still serving.
    let (status, body) = c.post(0, "one", r#"{"still":"alive"}"#).await;
    assert_eq!(status, 201, "{body}");
}

#[test]
fn bad_flags_a_taken_port_and_a_locked_directory_exit_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_alldata"))
            .args(args)
            .env("RUST_LOG", "off")
            .output()
            .expect("run alldata")
    };
    let out = run(&[
        "node",
        "--id",
        "x",
        "--data-dir",
        "d",
        "--replication-factor",
        "zero",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("replication-factor"));

    // More replicas than configured nodes: every put would fail.
    let out = run(&[
        "node",
        "--id",
        "x",
        "--data-dir",
        tmp.path().join("rf").to_str().unwrap(),
        "--replication-factor",
        "3",
        "--peer",
        "n2=127.0.0.1:1@r/z",
        "--cluster-secret-file",
        secret.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs 3 nodes, only 2 configured"), "{err}");
    let out = run(&[
        "node",
        "--id",
        "x",
        "--data-dir",
        tmp.path().join("rf").to_str().unwrap(),
        "--replication-factor",
        "2",
        "--cluster-secret-file",
        secret.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs 2 nodes, only 1 configured"), "{err}");

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tmp.path().join("d");
    let out = run(&[
        "node",
        "--id",
        "x",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--peer-listen",
        "127.0.0.1:0",
        "--cluster-secret-file",
        secret.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("port is taken") || err.contains("cannot listen"),
        "{err}"
    );

    // A data directory held by a running node.
    let api = free_port();
    let mut holder = Command::new(env!("CARGO_BIN_EXE_alldata"))
        .args(["node", "--id", "h", "--data-dir", dir.to_str().unwrap()])
        .args([
            "--listen",
            &format!("127.0.0.1:{api}"),
            "--peer-listen",
            "127.0.0.1:0",
        ])
        .arg("--cluster-secret-file")
        .arg(&secret)
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it printed its banner (storage open).
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("serving"), "{line}");
    let out = run(&[
        "node",
        "--id",
        "y",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--peer-listen",
        "127.0.0.1:0",
        "--cluster-secret-file",
        secret.to_str().unwrap(),
    ]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("data directory"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_gracefully_and_a_restart_keeps_the_data() {
    let mut c = Cluster::start(1, 1).await;
    let mut keys = Vec::new();
    for i in 0..20 {
        let (status, body) = c.post(0, "one", &format!(r#"{{"i":{i}}}"#)).await;
        assert_eq!(status, 201, "{body}");
        keys.push(body["key"].as_str().unwrap().to_owned());
    }
    let mut child = c.nodes[0].child.take().unwrap();
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "node ignored SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    c.spawn(0);
    c.wait_healthy(0).await;
    let stored = c.local_keys(0).await;
    assert_eq!(
        stored, keys,
        "every acknowledged event survives, in time order"
    );
}

/// Boolean switches read from the environment take the usual spellings
/// (`ALLDATA_NO_GOSSIP=1` is not a flag error).
#[test]
fn a_boolean_environment_switch_takes_one_and_zero() {
    for value in ["1", "0", "true", "off"] {
        let out = Command::new(env!("CARGO_BIN_EXE_alldata"))
            .args(["node", "--id", "x", "--replication-factor", "zero"])
            .env("ALLDATA_NO_GOSSIP", value)
            .env("RUST_LOG", "off")
            .output()
            .expect("run alldata");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(!stderr.contains("no-gossip"), "{value}: {stderr}");
        assert!(stderr.contains("replication-factor"), "{value}: {stderr}");
    }
}
