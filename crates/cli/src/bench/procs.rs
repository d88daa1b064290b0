//! Child processes on 127.0.0.1: a cluster of `alldata node`s, or the baseline
//! servers (`alldata bench --serve-baseline`). Every child is killed (by its
//! handle) when its group is dropped.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const SECRET: &str = "alldata-bench-cluster-secret";
/// Zones the nodes are spread over, round-robin.
const PLACES: [(&str, &str); 3] = [("eu", "a"), ("eu", "b"), ("us", "a")];

/// How to start the cluster.
#[derive(Debug, Clone)]
pub(crate) struct ClusterSpec {
    pub(crate) nodes: usize,
    pub(crate) rf: usize,
    pub(crate) commit: &'static str,
    pub(crate) durability: &'static str,
    pub(crate) other_zone_replicas: usize,
    pub(crate) other_region_replicas: usize,
    /// Parent of the temporary data directory (the system's temp dir if none).
    pub(crate) data_parent: Option<PathBuf>,
}

/// A group of child processes; killed on drop.
#[derive(Debug)]
pub(crate) struct Group {
    children: Vec<Child>,
    /// The addresses load goes to.
    pub(crate) apis: Vec<SocketAddr>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Group {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("no free port on 127.0.0.1")?;
    Ok(l.local_addr()?)
}

fn exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the alldata executable")
}

fn spawn(cmd: &mut Command) -> anyhow::Result<Child> {
    cmd.env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd.spawn().context("cannot start a child process")
}

impl Group {
    /// Waits until every API answers `GET /health` with 200.
    async fn wait_healthy(&mut self, health: &[SocketAddr]) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let start = Instant::now();
        for addr in health {
            loop {
                if let Ok(r) = client.get(format!("http://{addr}/health")).send().await
                    && r.status() == 200
                {
                    break;
                }
                for child in &mut self.children {
                    if let Some(status) = child.try_wait()? {
                        bail!("a child process exited during start-up ({status})");
                    }
                }
                if start.elapsed() > Duration::from_secs(30) {
                    bail!("{addr} did not become healthy within 30 s");
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        Ok(())
    }

    /// Starts `spec.nodes` `alldata node` processes that know each other.
    pub(crate) async fn cluster(spec: &ClusterSpec) -> anyhow::Result<Self> {
        anyhow::ensure!(
            spec.rf >= 1 && spec.rf <= spec.nodes,
            "--rf {} needs 1..={} (--nodes)",
            spec.rf,
            spec.nodes
        );
        let dir = match &spec.data_parent {
            Some(p) => {
                std::fs::create_dir_all(p)?;
                tempfile::Builder::new()
                    .prefix("alldata-bench-")
                    .tempdir_in(p)?
            }
            None => tempfile::Builder::new()
                .prefix("alldata-bench-")
                .tempdir()?,
        };
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, SECRET)?;
        let nodes: Vec<(String, SocketAddr, SocketAddr, (&str, &str))> = (0..spec.nodes)
            .map(|i| {
                Ok((
                    format!("n{}", i + 1),
                    free_addr()?,
                    free_addr()?,
                    PLACES[i % PLACES.len()],
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        let exe = exe()?;
        let mut group = Group {
            children: Vec::new(),
            apis: nodes.iter().map(|n| n.1).collect(),
            _dir: None,
        };
        for (id, api, peer, (region, zone)) in &nodes {
            let mut cmd = Command::new(&exe);
            cmd.arg("node")
                .args(["--id", id])
                .args(["--listen", &api.to_string()])
                .args(["--peer-listen", &peer.to_string()])
                .arg("--data-dir")
                .arg(dir.path().join(id))
                .args(["--region", region, "--zone", zone])
                .args(["--replication-factor", &spec.rf.to_string()])
                .args(["--commit-level", spec.commit])
                .args(["--durability", spec.durability])
                .args([
                    "--other-zone-replicas",
                    &spec.other_zone_replicas.to_string(),
                ])
                .args([
                    "--other-region-replicas",
                    &spec.other_region_replicas.to_string(),
                ])
                .arg("--cluster-secret-file")
                .arg(&secret_file);
            for (pid, _, paddr, (pr, pz)) in nodes.iter().filter(|n| &n.0 != id) {
                cmd.arg("--peer").arg(format!("{pid}={paddr}@{pr}/{pz}"));
            }
            group.children.push(spawn(&mut cmd)?);
        }
        let apis = group.apis.clone();
        group.wait_healthy(&apis).await?;
        group._dir = Some(dir);
        Ok(group)
    }

    /// Hangs the last `n` children (SIGSTOP) and returns their API
    /// addresses. Dropping the group still kills them.
    pub(crate) fn hang_last(&self, n: usize) -> anyhow::Result<Vec<SocketAddr>> {
        let from = self.children.len().saturating_sub(n);
        for child in &self.children[from..] {
            let ok = Command::new("kill")
                .args(["-STOP", &child.id().to_string()])
                .status()
                .context("cannot run kill")?
                .success();
            anyhow::ensure!(ok, "kill -STOP {} failed", child.id());
        }
        Ok(self.apis[from..].to_vec())
    }

    /// Starts the `null` baseline (one process) or the `fanout` baseline (a
    /// front that forwards to `fanout_peers` null processes).
    pub(crate) async fn baseline(fanout_peers: usize) -> anyhow::Result<Self> {
        let exe = exe()?;
        let serve = |listen: SocketAddr, forward: &[SocketAddr]| {
            let mut cmd = Command::new(&exe);
            cmd.args(["bench", "--serve-baseline", &listen.to_string()]);
            for f in forward {
                cmd.args(["--forward", &f.to_string()]);
            }
            spawn(&mut cmd)
        };
        let front = free_addr()?;
        let peers: Vec<SocketAddr> = (0..fanout_peers)
            .map(|_| free_addr())
            .collect::<anyhow::Result<_>>()?;
        let mut group = Group {
            children: Vec::new(),
            apis: vec![front],
            _dir: None,
        };
        for p in &peers {
            group.children.push(serve(*p, &[])?);
        }
        group.children.push(serve(front, &peers)?);
        let mut all = peers;
        all.push(front);
        group.wait_healthy(&all).await?;
        Ok(group)
    }
}

/// Refuses any target that is not on 127.0.0.1 (the bench only loads this host).
pub(crate) fn check_local(targets: &[SocketAddr]) -> anyhow::Result<()> {
    for t in targets {
        if !t.ip().is_loopback() {
            bail!("target {t} is not a loopback address: alldata bench only loads 127.0.0.1");
        }
    }
    Ok(())
}

/// The filesystem type that holds `path` (from /proc/mounts), if known.
pub(crate) fn filesystem_of(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, mnt, fs) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mnt).then(|| (mnt.len(), fs.to_owned()))
        })
        .max()
        .map(|(_, fs)| fs)
}
