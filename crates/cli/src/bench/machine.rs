//! Machine detection: CPUs, CPU model, memory, kernel and the filesystem of
//! the nodes' data, for the report's method section.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The machine the numbers come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Machine {
    pub(crate) cpus: usize,
    pub(crate) cpu_model: String,
    pub(crate) kernel: String,
    pub(crate) memory: String,
    pub(crate) data_filesystem: String,
}

impl Machine {
    /// Reads the machine from `/proc`; `data_dir` is where the nodes keep their data.
    pub(super) fn detect(data_dir: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let kb: u64 = m
                    .lines()
                    .find(|l| l.starts_with("MemTotal:"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                Some(format!("{:.0} GiB", kb as f64 / 1024.0 / 1024.0))
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".into()),
            memory,
            data_filesystem: super::procs::filesystem_of(data_dir)
                .unwrap_or_else(|| "unknown".into()),
        }
    }
}
