//! The cluster-wide read: a k-way merge by key of this node's scan and every
//! member's peer scan, each key once, in key order, with the completeness
//! rule checked at the start and whenever a source fails.

use std::sync::Arc;

use alldata_coordinator::{CommitLevel, Coordinator, EventKey, ScanRange};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::error::ApiError;
use crate::metrics::Metrics;

/// One source's events in key order; an `Err` item ends it as failed.
pub(crate) type SourceStream = BoxStream<'static, Result<(EventKey, Bytes), String>>;

/// The merged events; an `Err` item means the answer can no longer be
/// complete and must be aborted.
pub(crate) type Merged = BoxStream<'static, Result<(EventKey, Bytes), String>>;

/// A named source of the merge.
pub(crate) struct Source {
    pub(crate) name: String,
    pub(crate) stream: SourceStream,
}

/// How many members must answer for a complete answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Completeness {
    /// Members of the cluster, this node included.
    pub(crate) members: usize,
    /// Members that must answer: an event acknowledged at QUORUM has at least
    /// `required(QUORUM)` holders, so any `members - required + 1` members
    /// hold every such event.
    pub(crate) needed: usize,
    /// Go on with fewer (the answer may then miss events).
    pub(crate) allow_incomplete: bool,
}

impl Completeness {
    /// The rule for a cluster of `members` with replication factor `rf`.
    pub(crate) fn for_cluster(members: usize, rf: usize, allow_incomplete: bool) -> Self {
        let required = CommitLevel::Quorum.required(rf).max(1);
        let needed = (members.saturating_sub(required) + 1).min(members.max(1));
        Self {
            members,
            needed,
            allow_incomplete,
        }
    }
}

/// Opens every source of a cluster-wide read of `range`: this node's storage
/// and each peer's scan (started concurrently, each within `timeout`).
/// Fails with `503 incomplete` when too few members answer, unless
/// `allow_incomplete`.
pub(crate) async fn open_cluster(
    coordinator: &Coordinator,
    range: ScanRange,
    timeout: std::time::Duration,
    allow_incomplete: bool,
) -> Result<(Vec<Source>, Completeness, Vec<(String, String)>), ApiError> {
    let topology = coordinator.topology();
    let rule = Completeness::for_cluster(
        topology.node_count(),
        coordinator.options().replication_factor,
        allow_incomplete,
    );
    let local = coordinator
        .storage()
        .scan(range, usize::MAX)
        .map(|r| r.map_err(|e| format!("local storage: {e}")))
        .boxed();
    let mut sources = Vec::new();
    let mut missing = Vec::new();
    // A node catching up lacks what it held: it does not count as a member
    // that answered.
    if coordinator.catch_up().is_catching_up() {
        missing.push((
            topology.local().to_string(),
            "catching up after a restart with an empty disk".to_owned(),
        ));
    } else {
        sources.push(Source {
            name: topology.local().to_string(),
            stream: local,
        });
    }
    let reader = coordinator.peer_reader();
    let starts = topology.peers().cloned().map(|peer| {
        let reader = reader.clone();
        async move {
            let result = match reader {
                None => Err("no peer reader configured".to_owned()),
                Some(reader) => {
                    match tokio::time::timeout(timeout, reader.scan(&peer, range)).await {
                        Ok(Ok(stream)) => Ok(stream),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no answer within {timeout:?}")),
                    }
                }
            };
            (peer.id.to_string(), result)
        }
    });
    for (name, result) in futures::future::join_all(starts).await {
        match result {
            // A peer's key outside the range asked for is a broken peer, not
            // an event of this export.
            Ok(stream) => sources.push(Source {
                stream: with_piece_deadline(
                    stream
                        .map(move |r| match r {
                            Ok((key, _)) if !range.contains(&key) => {
                                Err(format!("sent key {key} outside the range asked for"))
                            }
                            other => other.map_err(|e| e.to_string()),
                        })
                        .boxed(),
                    timeout,
                ),
                name,
            }),
            Err(error) => missing.push((name, error)),
        }
    }
    if sources.len() < rule.needed && !allow_incomplete {
        return Err(ApiError::Incomplete {
            answered: sources.len(),
            members: rule.members,
            needed: rule.needed,
            missing,
        });
    }
    if !missing.is_empty() {
        tracing::warn!(
            answered = sources.len(),
            members = rule.members,
            needed = rule.needed,
            ?missing,
            "cluster read goes on without some members"
        );
    }
    Ok((sources, rule, missing))
}

/// `stream`, failing (and ending) when its next item takes longer than
/// `timeout`: a peer slower than that counts as failed, whatever its reader.
fn with_piece_deadline(stream: SourceStream, timeout: std::time::Duration) -> SourceStream {
    futures::stream::unfold(Some(stream), move |stream| async move {
        let mut stream = stream?;
        match tokio::time::timeout(timeout, stream.next()).await {
            Ok(Some(Ok(item))) => Some((Ok(item), Some(stream))),
            Ok(Some(Err(e))) => Some((Err(e), None)),
            Ok(None) => None,
            Err(_) => Some((Err(format!("no data within {timeout:?}")), None)),
        }
    })
    .boxed()
}

struct MergeState {
    names: Vec<String>,
    streams: Vec<Option<SourceStream>>,
    heads: Vec<Option<(EventKey, Bytes)>>,
    /// Members that answered and have not failed (sources that ended
    /// complete still count).
    healthy: usize,
    rule: Completeness,
    metrics: Option<Arc<Metrics>>,
    done: bool,
}

/// Merges `sources` (each in key order) into one stream in key order with
/// every key once. When sources disagree on a key's bytes (write-once makes
/// that impossible unless something is broken) the first source's bytes are
/// kept (this node's, when it has the key), and the conflict is logged and
/// counted. A failing source is dropped; when the healthy sources no longer
/// satisfy `rule`, the stream ends with an `Err`. Holds one pending event per
/// source.
pub(crate) fn merge(
    sources: Vec<Source>,
    rule: Completeness,
    metrics: Option<Arc<Metrics>>,
) -> Merged {
    let healthy = sources.len();
    let (names, streams): (Vec<_>, Vec<_>) = sources
        .into_iter()
        .map(|s| (s.name, Some(s.stream)))
        .unzip();
    let state = MergeState {
        heads: vec![None; names.len()],
        names,
        streams,
        healthy,
        rule,
        metrics,
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        let item = st.next().await?;
        Some((item, st))
    })
    .boxed()
}

impl MergeState {
    async fn next(&mut self) -> Option<Result<(EventKey, Bytes), String>> {
        if self.done {
            return None;
        }
        // Refill every live source without a pending event, concurrently.
        let pulls = self
            .streams
            .iter_mut()
            .zip(self.heads.iter())
            .enumerate()
            .filter(|(_, (_, head))| head.is_none())
            .filter_map(|(i, (stream, _))| stream.as_mut().map(|s| (i, s)))
            .map(|(i, s)| async move { (i, s.next().await) });
        let pulled = futures::future::join_all(pulls).await;
        for (i, item) in pulled {
            match item {
                Some(Ok(event)) => self.heads[i] = Some(event),
                None => self.streams[i] = None,
                Some(Err(error)) => {
                    self.streams[i] = None;
                    self.healthy -= 1;
                    if let Some(m) = &self.metrics {
                        m.export_source_failed();
                    }
                    tracing::warn!(source = %self.names[i], %error, healthy = self.healthy, needed = self.rule.needed, "a source of a cluster read failed mid-stream");
                    if self.healthy < self.rule.needed && !self.rule.allow_incomplete {
                        self.done = true;
                        return Some(Err(format!(
                            "{} failed mid-stream ({error}); {} of {} members left, {} needed for a complete answer",
                            self.names[i], self.healthy, self.rule.members, self.rule.needed
                        )));
                    }
                }
            }
        }
        let min = self.heads.iter().flatten().map(|(k, _)| *k).min()?;
        let mut chosen: Option<(usize, Bytes)> = None;
        for (i, head) in self.heads.iter_mut().enumerate() {
            if head.as_ref().is_some_and(|(k, _)| *k == min)
                && let Some((_, bytes)) = head.take()
            {
                match &chosen {
                    None => chosen = Some((i, bytes)),
                    Some((first, kept)) if *kept != bytes => {
                        if let Some(m) = &self.metrics {
                            m.export_conflict();
                        }
                        tracing::error!(key = %min, kept = %self.names[*first], other = %self.names[i], "two members hold different bytes for one key; keeping the first");
                    }
                    Some(_) => {}
                }
            }
        }
        chosen.map(|(_, bytes)| Ok((min, bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alldata_coordinator::KeyGenerator;

    fn keys(n: usize) -> Vec<EventKey> {
        let g = KeyGenerator::new();
        (0..n).map(|_| g.generate()).collect()
    }

    fn source(name: &str, items: Vec<Result<(EventKey, Bytes), String>>) -> Source {
        Source {
            name: name.into(),
            stream: futures::stream::iter(items).boxed(),
        }
    }

    fn ev(k: EventKey, text: &str) -> Result<(EventKey, Bytes), String> {
        Ok((k, Bytes::from(text.to_owned())))
    }

    async fn run(
        sources: Vec<Source>,
        rule: Completeness,
    ) -> Vec<Result<(EventKey, Bytes), String>> {
        merge(sources, rule, None).collect().await
    }

    fn rule(members: usize, rf: usize) -> Completeness {
        Completeness::for_cluster(members, rf, false)
    }

    #[test]
    fn the_rule_counts_members_that_hold_every_quorum_event() {
        // RF 3 QUORUM 2: 2 of 3 members suffice; RF 3 on 5 members: 4 of 5.
        assert_eq!(rule(3, 3).needed, 2);
        assert_eq!(rule(5, 3).needed, 4);
        assert_eq!(rule(1, 1).needed, 1);
        assert_eq!(rule(3, 1).needed, 3);
        assert_eq!(rule(5, 5).needed, 3);
    }

    #[tokio::test]
    async fn every_key_once_in_key_order() {
        let k = keys(6);
        let a = source("a", vec![ev(k[0], "0"), ev(k[2], "2"), ev(k[4], "4")]);
        let b = source(
            "b",
            vec![ev(k[0], "0"), ev(k[1], "1"), ev(k[4], "4"), ev(k[5], "5")],
        );
        let c = source("c", vec![ev(k[1], "1"), ev(k[2], "2"), ev(k[3], "3")]);
        let out: Vec<_> = run(vec![a, b, c], rule(3, 3))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let got: Vec<_> = out.iter().map(|(key, _)| *key).collect();
        assert_eq!(got, k);
        for (i, (_, bytes)) in out.iter().enumerate() {
            assert_eq!(bytes, &Bytes::from(i.to_string()));
        }
    }

    #[tokio::test]
    async fn differing_bytes_keep_the_first_sources() {
        let k = keys(1);
        let out = run(
            vec![
                source("local", vec![ev(k[0], "mine")]),
                source("peer", vec![ev(k[0], "theirs")]),
            ],
            rule(2, 2),
        )
        .await;
        assert_eq!(out, vec![ev(k[0], "mine")]);
    }

    #[tokio::test]
    async fn a_source_failing_mid_stream_aborts_when_too_few_are_left() {
        let k = keys(4);
        // 3 members, 2 needed: one failure is fine, the answer stays complete.
        let a = source("a", vec![ev(k[0], "0"), ev(k[1], "1"), ev(k[3], "3")]);
        let b = source("b", vec![ev(k[0], "0"), Err("connection reset".into())]);
        let c = source("c", vec![ev(k[1], "1"), ev(k[2], "2"), ev(k[3], "3")]);
        let out = run(vec![a, b, c], rule(3, 3)).await;
        assert!(out.iter().all(Result::is_ok), "{out:?}");
        assert_eq!(out.len(), 4);

        // Two sources only (one member already missing): a failure ends it
        // with an error, after what was certain.
        let a = source("a", vec![ev(k[0], "0"), ev(k[1], "1"), ev(k[3], "3")]);
        let b = source("b", vec![ev(k[0], "0"), Err("connection reset".into())]);
        let out = run(vec![a, b], rule(3, 3)).await;
        let last = out.last().expect("items");
        assert!(
            matches!(last, Err(m) if m.contains("b failed mid-stream") && m.contains("connection reset")),
            "{out:?}"
        );
        assert!(out[..out.len() - 1].iter().all(Result::is_ok));

        // Allowed incomplete: it goes on with what is left.
        let a = source("a", vec![ev(k[0], "0"), ev(k[1], "1"), ev(k[3], "3")]);
        let b = source("b", vec![ev(k[0], "0"), Err("connection reset".into())]);
        let out = run(vec![a, b], Completeness::for_cluster(3, 3, true)).await;
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(Result::is_ok));
    }
}
