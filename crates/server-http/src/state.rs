//! The shared state of the API handlers and its background tasks.

use std::sync::{Arc, Weak};

use alldata_coordinator::{Coordinator, NodeId, ReplicationReport};
use alldata_http_serve::ConnectionStats;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::config::ApiConfig;
use crate::metrics::Counter;
use crate::metrics::Metrics;
use crate::peers::PeerHealth;

/// What the handlers share: the coordinator, the configuration, metrics and
/// peer health. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) coordinator: Coordinator,
    pub(crate) config: ApiConfig,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) health: Arc<PeerHealth>,
    pub(crate) connections: Arc<ConnectionStats>,
    /// `GET /events/tail` subscribers now.
    pub(crate) tail_subscribers: Arc<std::sync::atomic::AtomicUsize>,
    /// Exports running now.
    pub(crate) exports: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("coordinator", &self.inner.coordinator)
            .field(
                "peer_reader",
                &self.inner.coordinator.peer_reader().is_some(),
            )
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl ApiState {
    /// The state for a node's API over `coordinator`. `GET /events/{key}` reads
    /// through [`Coordinator::get`], which asks the peers for events missing
    /// locally when the coordinator has a
    /// [`PeerReader`](alldata_coordinator::PeerReader); the health probe uses
    /// the same reader.
    ///
    /// The state counts every put's replication report (per-peer health,
    /// replica-write and under-replication metrics) through a hook on the
    /// coordinator ([`Coordinator::on_report`]). Called inside a tokio
    /// runtime, it also spawns a cheap background task that probes peers
    /// every [`ApiConfig::health_probe_interval`] (only when the coordinator
    /// has a peer reader) and ends when the state is dropped.
    pub fn new(coordinator: Coordinator, config: ApiConfig) -> Self {
        let metrics = Arc::new(Metrics::default());
        let health = Arc::new(PeerHealth::default());
        let inner = Arc::new(Inner {
            coordinator,
            config,
            metrics,
            health,
            connections: Arc::default(),
            tail_subscribers: Arc::default(),
            exports: Arc::default(),
        });
        // Reports are counted in the task that finished the put (a hook, not
        // a channel and a task to wake per put); held weakly, so a dropped
        // state costs the coordinator nothing but the upgrade.
        let local = inner.coordinator.topology().local().clone();
        let state = Arc::downgrade(&inner);
        inner.coordinator.on_report(Arc::new(move |report| {
            if let Some(state) = state.upgrade() {
                record_report(report, &local, &state.metrics, &state.health);
            }
        }));
        if let Ok(runtime) = tokio::runtime::Handle::try_current()
            && let (Some(_), Some(interval)) = (
                inner.coordinator.peer_reader(),
                inner.config.health_probe_interval,
            )
            && !interval.is_zero()
        {
            runtime.spawn(probe_peers(Arc::downgrade(&inner), interval));
        }
        Self { inner }
    }

    /// The coordinator the API writes through.
    pub fn coordinator(&self) -> &Coordinator {
        &self.inner.coordinator
    }

    /// The counters of the API's connections (what [`crate::serve`] fills).
    pub fn connection_stats(&self) -> Arc<ConnectionStats> {
        Arc::clone(&self.inner.connections)
    }

    /// The configuration in force.
    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }

    /// The Prometheus text that `GET /metrics` answers.
    pub fn metrics_text(&self) -> String {
        let topology = self.inner.coordinator.topology();
        let now = tokio::time::Instant::now();
        let fresh_for = self.inner.config.peer_fresh_for;
        let up: Vec<(String, bool)> = topology
            .peers()
            .map(|p| {
                let up = self.inner.health.get(&p.id).up(now, fresh_for);
                (p.id.to_string(), up == Some(true))
            })
            .collect();
        let c = &self.inner.connections;
        let mut extra = vec![
            Counter {
                name: "alldata_api_connections_accepted_total",
                help: "Client connections accepted.",
                value: c.accepted(),
            },
            Counter {
                name: "alldata_api_connections_rejected_total",
                help: "Client connections refused at once because the connection cap was reached.",
                value: c.rejected(),
            },
            Counter {
                name: "alldata_storage_write_failures_total",
                help: "Local storage writes that failed (full disk, I/O error); see /health.",
                value: self.inner.coordinator.storage_health().failures_total,
            },
            Counter {
                name: "alldata_api_request_timeouts_total",
                help: "Client requests answered 408 because they took longer than the time limit.",
                value: c.request_timeouts(),
            },
        ];
        extra.extend(
            self.inner
                .config
                .counters
                .iter()
                .flat_map(|source| source()),
        );
        self.inner.metrics.render(
            &self.inner.coordinator.stats(),
            &up,
            &extra,
            self.inner.coordinator.catch_up().is_catching_up(),
        )
    }
}

/// Counts one finished put's report in the metrics and the peers' health.
fn record_report(
    report: &ReplicationReport,
    local: &NodeId,
    metrics: &Metrics,
    health: &PeerHealth,
) {
    metrics.report(report);
    health.ok_all(report.holders.iter().filter(|n| *n != local));
    for failure in report.failures.iter().filter(|f| f.node != *local) {
        if failure.error.kind().is_unresponsive() {
            health.failed(&failure.node, failure.error.to_string());
        } else {
            health.ok(&failure.node);
        }
    }
}

/// Probes every peer each `interval` until the API state is dropped.
async fn probe_peers(state: Weak<Inner>, interval: std::time::Duration) {
    loop {
        tokio::time::sleep(interval).await;
        // Hold the state only long enough to copy what the probe needs.
        let Some((reader, peers, health, timeout, own_durability, own_max_event_bytes)) =
            state.upgrade().and_then(|inner| {
                let reader = inner.coordinator.peer_reader()?;
                let peers: Vec<_> = inner.coordinator.topology().peers().cloned().collect();
                Some((
                    reader,
                    peers,
                    Arc::clone(&inner.health),
                    inner.config.health_probe_timeout,
                    inner.config.durability.clone(),
                    inner.config.max_event_bytes,
                ))
            })
        else {
            break;
        };
        let mut probes: FuturesUnordered<_> = peers
            .into_iter()
            .map(|peer| {
                let reader = Arc::clone(&reader);
                async move {
                    let result = tokio::time::timeout(timeout, reader.health(&peer)).await;
                    (peer.id, result)
                }
            })
            .collect();
        while let Some((id, result)) = probes.next().await {
            match result {
                Ok(Ok(profile)) => {
                    let problems = crate::peers::mismatches(
                        own_durability.as_deref(),
                        own_max_event_bytes,
                        &profile,
                    );
                    if health.profile(&id, profile) && !problems.is_empty() {
                        tracing::warn!(peer = %id, problems = ?problems, "peer configured differently from this node");
                    }
                }
                Ok(Err(e)) => health.failed(&id, e.to_string()),
                Err(_) => health.failed(&id, "health probe timed out".to_owned()),
            }
        }
    }
}

/// One of a bounded number of places (a tail subscriber, an export), held
/// until dropped.
pub(crate) struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Slot {
    /// A place among `limit` counted by `count`, if one is free.
    pub(crate) fn take(count: &Arc<std::sync::atomic::AtomicUsize>, limit: usize) -> Option<Slot> {
        use std::sync::atomic::Ordering;
        if count.fetch_add(1, Ordering::Relaxed) >= limit {
            count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(Arc::clone(count)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
