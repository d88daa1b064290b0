//! The multi-process harness: real `alldata node` processes on 127.0.0.1 with
//! their own LevelDB directories, killed, stopped and restarted.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const SECRET: &str = "test-cluster-secret";

pub struct Proc {
    pub id: String,
    pub api: u16,
    pub peer: u16,
    pub region: &'static str,
    pub zone: &'static str,
    pub dir: PathBuf,
    pub child: Option<Child>,
    /// Extra flags for this node only (set before `spawn`); a `--durability`
    /// here replaces the harness's `buffered`.
    pub extra: Vec<String>,
    /// A node that joins by `--seed` (the peer endpoint of node `seed`)
    /// instead of `--peer` flags; the static nodes do not list it.
    pub seed: Option<usize>,
}

pub struct Cluster {
    pub _tmp: tempfile::TempDir,
    pub secret_file: PathBuf,
    pub nodes: Vec<Proc>,
    pub rf: usize,
    pub client: reqwest::Client,
    /// Extra flags for every node.
    pub extra: Vec<String>,
}

/// A port for a test node. Ports come from one counter per test process,
/// below the kernel's ephemeral range (so outgoing connections never take
/// them), each checked free: tests that start clusters at the same time never
/// get the same port (asking the kernel for port 0 and releasing it races).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    // Each test process starts in a block of its own (by process id), below
    // the kernel's ephemeral ports: nextest runs tests as processes side by
    // side, and blocks that overlapped handed two of them one port. A port
    // is taken only when both TCP and UDP (gossip) are free there.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let _ = NEXT.compare_exchange(
        0,
        (std::process::id() % 300) * 40,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = (20_000 + NEXT.fetch_add(1, Ordering::SeqCst) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
}

impl Cluster {
    /// `n` nodes over zones eu/a, eu/b, us/a (round-robin), replication factor `rf`.
    pub async fn start(n: usize, rf: usize) -> Self {
        Self::start_with(n, rf, &[]).await
    }

    /// `start` with extra flags for every node.
    pub async fn start_with(n: usize, rf: usize, extra: &[&str]) -> Self {
        Self::start_each(&vec![&[][..]; n], rf, extra).await
    }

    /// One node per entry of `own` (that node's own extra flags), with
    /// `extra` flags for every node.
    pub async fn start_each(own: &[&[&str]], rf: usize, extra: &[&str]) -> Self {
        let n = own.len();
        let tmp = tempfile::tempdir().unwrap();
        let secret_file = tmp.path().join("secret");
        std::fs::write(&secret_file, SECRET).unwrap();
        let places = [("eu", "a"), ("eu", "b"), ("us", "a")];
        let nodes = (0..n)
            .map(|i| Proc {
                id: format!("n{}", i + 1),
                api: free_port(),
                peer: free_port(),
                region: places[i % 3].0,
                zone: places[i % 3].1,
                dir: tmp.path().join(format!("n{}", i + 1)),
                child: None,
                extra: own[i].iter().map(|s| (*s).to_owned()).collect(),
                seed: None,
            })
            .collect();
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut c = Cluster {
            _tmp: tmp,
            secret_file,
            nodes,
            rf,
            client,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        for i in 0..n {
            c.spawn(i);
        }
        for i in 0..n {
            c.wait_healthy(i).await;
        }
        // A fresh cluster's nodes start empty and catch up for their first
        // repair rounds; tests start from a cluster in full service.
        for i in 0..n {
            c.wait_caught_up(i).await;
        }
        c
    }

    /// Waits until node `i`'s `/health` no longer says `catching_up`.
    pub async fn wait_caught_up(&self, i: usize) {
        let url = format!("http://127.0.0.1:{}/health", self.nodes[i].api);
        let start = Instant::now();
        loop {
            if let Ok(r) = self.client.get(&url).send().await
                && let Ok(text) = r.text().await
                && let Ok(v) = serde_json::from_str::<Value>(&text)
                && v["catching_up"] == Value::Bool(false)
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "node {} never caught up",
                self.nodes[i].id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn spawn(&mut self, i: usize) {
        let me = &self.nodes[i];
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_alldata"));
        cmd.arg("node")
            .args(["--id", &me.id])
            .args(["--listen", &format!("127.0.0.1:{}", me.api)])
            .args(["--peer-listen", &format!("127.0.0.1:{}", me.peer)])
            .args(["--data-dir", me.dir.to_str().unwrap()])
            .args(["--region", me.region, "--zone", me.zone])
            .args(["--replication-factor", &self.rf.to_string()])
            .args(["--replica-timeout-ms", "1000", "--deadline-ms", "3000"])
            .arg("--cluster-secret-file")
            .arg(&self.secret_file)
            .args(&self.extra)
            .args(&me.extra);
        if !me.extra.iter().any(|a| a == "--durability") {
            cmd.args(["--durability", "buffered"]);
        }
        if let Some(seed) = me.seed {
            cmd.arg("--seed")
                .arg(format!("127.0.0.1:{}", self.nodes[seed].peer));
        }
        for p in self
            .nodes
            .iter()
            .filter(|p| p.id != me.id && p.seed.is_none() && me.seed.is_none())
        {
            cmd.arg("--peer").arg(format!(
                "{}=127.0.0.1:{}@{}/{}",
                p.id, p.peer, p.region, p.zone
            ));
        }
        cmd.env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd.spawn().expect("start alldata node");
        self.nodes[i].child = Some(child);
    }

    /// Adds and starts a node that joins by `--seed` through node `seed`
    /// (zone as the round-robin gives it); its index.
    pub async fn add_joiner(&mut self, seed: usize, extra: &[&str]) -> usize {
        let i = self.nodes.len();
        let places = [("eu", "a"), ("eu", "b"), ("us", "a")];
        self.nodes.push(Proc {
            id: format!("n{}", i + 1),
            api: free_port(),
            peer: free_port(),
            region: places[i % 3].0,
            zone: places[i % 3].1,
            dir: self._tmp.path().join(format!("n{}", i + 1)),
            child: None,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            seed: Some(seed),
        });
        self.spawn(i);
        self.wait_healthy(i).await;
        i
    }

    /// Runs `alldata admin ARGS --node <node i's peer endpoint>
    /// --secret-file <secret>`: success and standard output.
    pub fn admin(&self, i: usize, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_alldata"))
            .arg("admin")
            .args(args)
            .arg("--node")
            .arg(format!("http://127.0.0.1:{}", self.nodes[i].peer))
            .arg("--secret-file")
            .arg(&self.secret_file)
            .output()
            .expect("run alldata admin");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    /// The members node `i`'s `/health` lists: id to state.
    pub async fn member_states(&self, i: usize) -> BTreeMap<String, String> {
        let (_, body) = self.get_text(i, "/health").await;
        let health: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        health["members"]["members"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                (
                    m["id"].as_str().unwrap_or_default().to_owned(),
                    m["state"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    pub async fn wait_healthy(&self, i: usize) {
        let url = format!("http://127.0.0.1:{}/health", self.nodes[i].api);
        let start = Instant::now();
        loop {
            if let Ok(r) = self.client.get(&url).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "node {} never became healthy",
                self.nodes[i].id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    /// Freezes node `i` (SIGSTOP): its sockets stay open but nothing answers.
    /// Returns once the kernel reports the process stopped.
    pub fn stop(&self, i: usize) {
        self.signal(i, "-STOP");
        let pid = self.nodes[i].child.as_ref().expect("running").id();
        let start = Instant::now();
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            if state == Some("T") {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "node {} did not stop: {stat}",
                self.nodes[i].id
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Thaws node `i` (SIGCONT).
    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, sig: &str) {
        let pid = self.nodes[i].child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// `PUT /events/{key}` with `body` at node `i`: status and JSON answer.
    pub async fn put(&self, i: usize, key: &str, level: &str, body: &str) -> (u16, Value) {
        let url = self.url(i, &format!("/events/{key}?commit={level}"));
        send_json(self.client.put(url).body(body.to_owned())).await
    }

    /// `GET path` at node `i`: status and the whole body as text.
    /// The value of metric `name` on node `i` (panics when it is absent).
    pub async fn metric(&self, i: usize, name: &str) -> u64 {
        let (_, text) = self.get_text(i, "/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name}"))
    }

    pub async fn get_text(&self, i: usize, path: &str) -> (u16, String) {
        let r = self
            .client
            .get(self.url(i, path))
            .send()
            .await
            .expect("request");
        (r.status().as_u16(), r.text().await.expect("a whole body"))
    }

    /// `GET /events/{key}` at node `i`: status and body.
    pub async fn get(&self, i: usize, key: &str) -> (u16, String) {
        self.get_text(i, &format!("/events/{key}")).await
    }

    /// The bytes node `i` stores for `key` in its own storage (a local scan of
    /// exactly that key), if any.
    pub async fn stored(&self, i: usize, key: &str) -> Option<String> {
        let (_, body) = self
            .get_text(i, &format!("/events?from={key}&to={key}"))
            .await;
        body.lines().next().map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["event"].to_string()
        })
    }

    pub fn url(&self, i: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.nodes[i].api, path)
    }

    pub async fn post(&self, i: usize, level: &str, body: &str) -> (u16, Value) {
        let url = self.url(i, &format!("/events?commit={level}"));
        send_json(self.client.post(url).body(body.to_owned())).await
    }

    /// Keys stored locally on node `i` (the scan reads local storage only).
    pub async fn local_keys(&self, i: usize) -> Vec<String> {
        let (_, body) = self.get_text(i, "/events?limit=100000").await;
        body.lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["key"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    /// How many of the live nodes hold each key.
    pub async fn replica_counts(&self, alive: &[usize]) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for &i in alive {
            for k in self.local_keys(i).await {
                *counts.entry(k).or_default() += 1;
            }
        }
        counts
    }
}

/// Sends `request`: the status and the JSON answer (`Null` when not JSON).
async fn send_json(request: reqwest::RequestBuilder) -> (u16, Value) {
    let r = request.send().await.expect("request");
    let status = r.status().as_u16();
    let json = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null);
    (status, json)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

pub fn dir_exists(p: &Path) -> bool {
    p.join("CURRENT").exists() || p.exists()
}
