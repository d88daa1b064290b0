//! `alldata export`: streams a range or a closed interval from a node's
//! `GET /export` into a file, through `FILE.partial` renamed on success, so
//! a failed export never leaves a file that looks complete.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::ValueEnum;

/// The file format asked of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum FormatArg {
    /// Apache Parquet (columns key, time, event).
    Parquet,
    /// One `{"key":…,"event":…}` per line.
    Ndjson,
}

/// Whose copies are exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ScopeArg {
    /// Every member's copies, merged; refused when too few members answer
    /// to be complete (see --allow-incomplete).
    Cluster,
    /// The node's own copies only.
    Local,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    /// The node's client API, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "ALLDATA_NODE")]
    node: String,
    /// A closed consolidation interval, e.g. 20261201T0000Z-P1D (see GET /intervals).
    #[arg(long, conflicts_with_all = ["from", "to"])]
    interval: Option<String>,
    /// First key or RFC 3339 time of the range (inclusive).
    #[arg(long)]
    from: Option<String>,
    /// Last key or RFC 3339 time of the range (inclusive).
    #[arg(long)]
    to: Option<String>,
    /// The file format.
    #[arg(long, value_enum)]
    format: FormatArg,
    /// The file to write (written as FILE.partial, renamed when complete).
    #[arg(long)]
    out: PathBuf,
    /// Export what the members that answer hold even when they cannot
    /// guarantee every event acknowledged at QUORUM.
    #[arg(long)]
    allow_incomplete: bool,
    /// Whose copies to export.
    #[arg(long, value_enum, default_value = "cluster")]
    scope: ScopeArg,
    /// How long to wait for the answer to start, and then for each next
    /// piece of it, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

impl ExportArgs {
    fn url(&self) -> anyhow::Result<reqwest::Url> {
        let base = reqwest::Url::parse(&self.node)
            .or_else(|_| reqwest::Url::parse(&format!("http://{}", self.node)))
            .with_context(|| format!("--node {:?} is not a URL", self.node))?;
        let path = match &self.interval {
            Some(name) => {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    bail!("--interval {name:?} is not an interval name such as 20261201T0000Z-P1D");
                }
                format!("intervals/{name}/export")
            }
            None => {
                if self.from.is_none() || self.to.is_none() {
                    bail!("give --interval NAME, or --from and --to");
                }
                "export".to_owned()
            }
        };
        let mut url = base
            .join(&path)
            .with_context(|| format!("cannot form the export URL from {:?}", self.node))?;
        {
            let mut query = url.query_pairs_mut();
            if let (Some(from), Some(to)) = (&self.from, &self.to) {
                query.append_pair("from", from).append_pair("to", to);
            }
            query.append_pair(
                "format",
                match self.format {
                    FormatArg::Parquet => "parquet",
                    FormatArg::Ndjson => "ndjson",
                },
            );
            query.append_pair(
                "scope",
                match self.scope {
                    ScopeArg::Cluster => "cluster",
                    ScopeArg::Local => "local",
                },
            );
            if self.allow_incomplete {
                query.append_pair("allow_incomplete", "true");
            }
        }
        Ok(url)
    }
}

fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Runs the export; the summary goes to stdout, progress to stderr when it
/// is a terminal.
pub(crate) async fn run(args: ExportArgs) -> anyhow::Result<()> {
    let url = args.url()?;
    let timeout = Duration::from_secs(args.timeout_secs.max(1));
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(timeout)
        .build()
        .context("cannot build the HTTP client")?;
    let started = Instant::now();
    let mut response = tokio::time::timeout(timeout, client.get(url.clone()).send())
        .await
        .with_context(|| format!("{url} did not answer within {timeout:?}"))?
        .with_context(|| format!("request to {url} failed"))?;
    let status = response.status();
    if !status.is_success() {
        let body = tokio::time::timeout(timeout, response.text())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                let e = &v["error"];
                Some(format!(
                    "{}: {}",
                    e["code"].as_str()?,
                    e["message"].as_str()?
                ))
            })
            .unwrap_or(body);
        bail!("the node answered {status}: {message}");
    }
    let partial = partial_path(&args.out);
    let file = std::fs::File::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
    let progress = std::io::stderr().is_terminal();
    let mut bytes: u64 = 0;
    let mut newlines: u64 = 0;
    let mut last_progress = Instant::now();
    let copied: anyhow::Result<()> = async {
        loop {
            let chunk = tokio::time::timeout(timeout, response.chunk())
                .await
                .with_context(|| format!("the export stalled for {timeout:?}"))?
                .context("the export broke off (the node aborted it or the connection failed)")?;
            let Some(chunk) = chunk else { break };
            bytes += chunk.len() as u64;
            if args.format == FormatArg::Ndjson {
                newlines += memchr::memchr_iter(b'\n', &chunk).count() as u64;
            }
            file.write_all(&chunk)
                .with_context(|| format!("cannot write {}", partial.display()))?;
            if progress && last_progress.elapsed() >= Duration::from_millis(250) {
                last_progress = Instant::now();
                let secs = started.elapsed().as_secs_f64();
                eprint!(
                    "\r{:>10.1} MiB  {:>8.1} MiB/s  {:>6.1} s",
                    bytes as f64 / 1048576.0,
                    bytes as f64 / 1048576.0 / secs.max(1e-9),
                    secs
                );
            }
        }
        file.flush()
            .with_context(|| format!("cannot write {}", partial.display()))?;
        file.get_ref()
            .sync_all()
            .with_context(|| format!("cannot sync {}", partial.display()))?;
        Ok(())
    }
    .await;
    if progress {
        eprintln!();
    }
    if let Err(e) = copied {
        drop(file);
        let _ = std::fs::remove_file(&partial);
        return Err(e.context(format!(
            "export failed after {bytes} bytes; nothing was written to {}",
            args.out.display()
        )));
    }
    drop(file);
    let events = match args.format {
        FormatArg::Ndjson => newlines,
        FormatArg::Parquet => match parquet_rows(&partial) {
            Ok(rows) => rows,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e.context(format!(
                    "the node's answer is not a whole Parquet file; nothing was written to {}",
                    args.out.display()
                )));
            }
        },
    };
    std::fs::rename(&partial, &args.out).with_context(|| {
        format!(
            "cannot rename {} to {}",
            partial.display(),
            args.out.display()
        )
    })?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "exported {events} events, {bytes} bytes in {secs:.2} s to {} ({:.0} events/s, {:.1} MiB/s)",
        args.out.display(),
        events as f64 / secs.max(1e-9),
        bytes as f64 / 1048576.0 / secs.max(1e-9)
    );
    Ok(())
}

/// The row count in a Parquet file's footer (read back as a check that the
/// file is whole).
fn parquet_rows(path: &Path) -> anyhow::Result<u64> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path)?;
    let reader = SerializedFileReader::new(file)
        .with_context(|| format!("{} is not a valid Parquet file", path.display()))?;
    Ok(u64::try_from(reader.metadata().file_metadata().num_rows()).unwrap_or(0))
}
