//! `alldata admin`: cluster administration over a node's peer endpoint,
//! authenticated with the cluster secret.

use std::path::PathBuf;
use std::time::Duration;

use alldata_peer_wire::{MEMBERS_PATH, base_url, member_path};
use anyhow::Context;
use clap::{Args, Subcommand};

/// Cluster administration through one node's peer endpoint.
#[derive(Debug, Args)]
pub(crate) struct AdminArgs {
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// List the members as the node's gossip sees them (state alive,
    /// suspect, down, left, or unknown for a configured peer never heard).
    Members {
        #[command(flatten)]
        target: Target,
        /// Print the node's JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a member for good: every member drops it, gossip never adds
    /// it back under that id, and repair restores RF for what it held.
    Remove {
        #[command(flatten)]
        target: Target,
        /// The id of the member to remove (not the node asked).
        #[arg(long)]
        id: String,
    },
}

#[derive(Debug, Args)]
struct Target {
    /// The peer endpoint of any member: `http://HOST:PEERPORT` or `HOST:PEERPORT`.
    #[arg(long, env = "ALLDATA_NODE")]
    node: String,
    /// File holding the cluster secret.
    #[arg(long, env = "ALLDATA_CLUSTER_SECRET_FILE")]
    secret_file: PathBuf,
}

impl Target {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", base_url(&self.node))
    }

    fn secret(&self) -> anyhow::Result<String> {
        let secret = std::fs::read_to_string(&self.secret_file).with_context(|| {
            format!("cannot read the secret file {}", self.secret_file.display())
        })?;
        let secret = secret.trim().to_owned();
        anyhow::ensure!(!secret.is_empty(), "the secret file is empty");
        Ok(secret)
    }
}

fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .context("cannot build the HTTP client")
}

async fn send(request: reqwest::RequestBuilder, what: &str) -> anyhow::Result<String> {
    let response = request
        .send()
        .await
        .with_context(|| format!("{what}: no answer"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    anyhow::ensure!(status.is_success(), "{what}: HTTP {status}: {body}");
    Ok(body)
}

pub(crate) async fn run(args: AdminArgs) -> anyhow::Result<()> {
    match args.command {
        AdminCommand::Members { target, json } => {
            let body = send(
                client()?
                    .get(target.url(MEMBERS_PATH))
                    .bearer_auth(target.secret()?),
                "members",
            )
            .await?;
            if json {
                println!("{body}");
                return Ok(());
            }
            let list: serde_json::Value =
                serde_json::from_str(&body).context("malformed member list")?;
            print!("{}", table(&list));
            Ok(())
        }
        AdminCommand::Remove { target, id } => {
            let url = target.url(&member_path(&id));
            send(
                client()?.delete(url).bearer_auth(target.secret()?),
                "remove",
            )
            .await?;
            println!("removed {id}");
            Ok(())
        }
    }
}

/// The member list as a table, then the removed ids.
fn table(list: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value, k: &str| {
        v.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_owned()
    };
    let mut rows = vec![[
        "ID".to_owned(),
        "STATE".to_owned(),
        "PEER ADDRESS".to_owned(),
        "REGION/ZONE".to_owned(),
        "DECIDES CLIENT KEYS".to_owned(),
    ]];
    for m in list
        .get("members")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
    {
        let decides = m.get("decides_client_keys").and_then(|d| d.as_bool()) == Some(true);
        rows.push([
            text(m, "id"),
            text(m, "state"),
            text(m, "peer_address"),
            format!("{}/{}", text(m, "region"), text(m, "zone")),
            if decides { "yes" } else { "no" }.to_owned(),
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    let removed: Vec<&str> = list
        .get("removed")
        .and_then(|r| r.as_array())
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str())
        .collect();
    if !removed.is_empty() {
        out.push_str(&format!("removed: {}\n", removed.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_members_and_removed_ids() {
        let list = serde_json::json!({
            "node": "a",
            "members": [
                {"id": "a", "state": "alive", "peer_address": "127.0.0.1:1", "region": "r", "zone": "z", "decides_client_keys": true},
                {"id": "joiner", "state": "down", "peer_address": "127.0.0.1:2", "region": "r", "zone": "y", "decides_client_keys": false}
            ],
            "removed": ["old"]
        });
        let t = table(&list);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID"));
        assert!(
            lines[1].starts_with("a ") && lines[1].contains("alive") && lines[1].ends_with("yes")
        );
        assert!(
            lines[2].contains("joiner") && lines[2].contains("down") && lines[2].contains("r/y")
        );
        assert_eq!(lines[3], "removed: old");
        assert_eq!(member_path("a b"), "/peer/v1/members/a%20b");
    }
}
