//! A node whose data directory fills up (a small tmpfs): `/health` turns
//! non-OK with the reason, and every acknowledged event stays readable.
//! Skips with a message where a tmpfs cannot be mounted.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Unmounts the tmpfs when the test ends, however it ends.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_small_tmpfs(at: &Path) -> Result<Mounted, String> {
    std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(at)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(Mounted(at.to_owned()))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_turns_health_non_ok_and_keeps_what_was_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let small = tmp.path().join("small");
    let _mounted = match mount_small_tmpfs(&small) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: cannot mount a tmpfs here ({})", why.trim());
            return;
        }
    };
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let (api, peer) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_alldata"))
        .arg("node")
        .args(["--id", "n1"])
        .args(["--listen", &format!("127.0.0.1:{api}")])
        .args(["--peer-listen", &format!("127.0.0.1:{peer}")])
        .arg("--data-dir")
        .arg(small.join("n1"))
        .args(["--durability", "sync"])
        .arg("--cluster-secret-file")
        .arg(&secret)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start alldata node");
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = |path: &str| format!("http://127.0.0.1:{api}{path}");
    let started = Instant::now();
    while client.get(url("/health")).send().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "node never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 16 KiB events until the 2 MiB disk is full.
    let event = format!(r#"{{"pad":"{}"}}"#, "x".repeat(16 * 1024));
    let mut acked = Vec::new();
    let mut refused = 0;
    for _ in 0..400 {
        let r = client
            .post(url("/events?commit=one"))
            .body(event.clone())
            .send()
            .await
            .unwrap();
        if r.status() == 201 {
            let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            acked.push(v["key"].as_str().unwrap().to_owned());
        } else {
            assert_eq!(r.status(), 503, "a full disk is 503");
            refused += 1;
            if refused >= 3 {
                break;
            }
        }
    }
    assert!(refused > 0, "the disk never filled ({} acked)", acked.len());
    let health = client.get(url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    let health: serde_json::Value = serde_json::from_slice(&health.bytes().await.unwrap()).unwrap();
    assert_eq!(health["status"], "storage_failing", "{health}");
    assert!(health["storage"]["last_error"].is_string(), "{health}");
    // Everything acknowledged before is still there.
    for key in &acked {
        let r = client
            .get(url(&format!("/events/{key}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "acknowledged {key} lost");
    }
    let _ = child.kill();
    let _ = child.wait();
}
