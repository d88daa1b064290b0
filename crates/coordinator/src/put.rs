//! Puts: one event or many, each written first at its decider, then at the
//! replicas placement chose (the async part runs in `driver`). Appends take
//! the fast path (see `fresh.rs`): the local decider write and the peer
//! writes start at once.

use std::sync::atomic::Ordering;

use alldata_keygen::EventKey;
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::commit::{CommitLevel, Tracker};
use crate::coordinator::Coordinator;
use crate::driver::{Batch, PeerGroups};
use crate::error::PutError;
use crate::health::Avoid;
use crate::options::PutOptions;
use crate::outcome::{Completion, PutAck, ReplicationReport};
use crate::placement;
use crate::slot::{Slot, Target};
use crate::topology::{NodeId, Topology};

impl Coordinator {
    /// Gives `event` a new key and stores it at the default commit level.
    pub async fn append(&self, event: Bytes) -> Result<PutAck, PutError> {
        self.append_with(event, PutOptions::default()).await
    }

    /// Gives `event` a new key and stores it with per-put options. The key is
    /// this node's, so its decider is the local storage; the local write and
    /// the peer writes start at once (the fast path, see the README's write
    /// contract), and the answer still waits for the local copy.
    pub async fn append_with(&self, event: Bytes, options: PutOptions) -> Result<PutAck, PutError> {
        self.append_many(vec![event], options)
            .await
            .pop()
            .unwrap_or(Err(PutError::Shutdown))
    }

    /// Stores `event` under `key` at the default commit level.
    pub async fn put(&self, key: EventKey, event: Bytes) -> Result<PutAck, PutError> {
        self.put_with(key, event, PutOptions::default()).await
    }

    /// Stores `event` under `key`: first at the key's decider
    /// ([`Topology::decider`]), then, once the decider has stored these bytes
    /// or already held them, the local write and the peers the placement
    /// policy chose (`replication_factor` in all). Other bytes than the
    /// decider's are a [`PutError::Conflict`] before anything is written;
    /// a generated key no member made is [`PutError::UnknownOrigin`]. Answers as soon
    /// as the commit level is met or can no longer be met. The writes run in a
    /// task of their own, so dropping this future does not stop them.
    pub async fn put_with(
        &self,
        key: EventKey,
        event: Bytes,
        options: PutOptions,
    ) -> Result<PutAck, PutError> {
        self.put_many(vec![(key, event)], options)
            .await
            .pop()
            .unwrap_or(Err(PutError::Shutdown))
    }

    /// Gives each event a new key and stores them all, like
    /// [`Coordinator::put_many`], on the fast path of
    /// [`Coordinator::append_with`] (while at most `max_puts_in_flight` keys
    /// are reserved; beyond that decider first).
    pub async fn append_many(
        &self,
        events: Vec<Bytes>,
        options: PutOptions,
    ) -> Vec<Result<PutAck, PutError>> {
        self.append_many_keyed(events, options)
            .await
            .into_iter()
            .map(|(_, result)| result)
            .collect()
    }

    /// [`Coordinator::append_many`], each result with its event's key, so
    /// that an error after which the event may be stored can name it (the
    /// client retries with a put of that key and the same bytes).
    pub async fn append_many_keyed(
        &self,
        events: Vec<Bytes>,
        options: PutOptions,
    ) -> Vec<(EventKey, Result<PutAck, PutError>)> {
        // At RF 1 the decider's write is the only one: nothing to gain.
        let fast = self.inner.options.replication_factor > 1;
        let events = self.inner.guard.generate(events, fast);
        let keys: Vec<EventKey> = events.iter().map(|e| e.0).collect();
        keys.into_iter()
            .zip(self.put_events(events, options).await)
            .collect()
    }

    /// Stores many events at once, each with exactly the semantics of
    /// [`Coordinator::put_with`]: its own random placement, its own commit
    /// tracking, replacements and [`ReplicationReport`]. The writes are grouped
    /// per node: one [`Storage::put_many`](crate::Storage::put_many) for the
    /// local replicas and one
    /// [`PeerTransport::put_many`](crate::PeerTransport::put_many) per peer (replacements likewise), so a batch
    /// costs a few calls rather than a few per event.
    ///
    /// Returns one result per event, in order, once every event is answered
    /// (the batch shares one overall deadline). The writes run in a task of
    /// their own, so dropping this future does not stop them.
    pub async fn put_many(
        &self,
        events: Vec<(EventKey, Bytes)>,
        options: PutOptions,
    ) -> Vec<Result<PutAck, PutError>> {
        let events = events.into_iter().map(|(k, e)| (k, e, false)).collect();
        self.put_events(events, options).await
    }

    /// [`Coordinator::put_many`] of events each marked fast (a key reserved
    /// by `Guarded::generate`: every write starts at once) or not.
    async fn put_events(
        &self,
        events: Vec<(EventKey, Bytes, bool)>,
        options: PutOptions,
    ) -> Vec<Result<PutAck, PutError>> {
        let level = options
            .commit_level
            .unwrap_or(self.inner.options.commit_level);
        let topology = self.topology();
        // Events no member can decide are refused at once; the rest are placed.
        let mut refused: Vec<Option<PutError>> = Vec::with_capacity(events.len());
        let mut placeable = Vec::with_capacity(events.len());
        for (key, event, fast) in events {
            match topology.decider(&key) {
                Some(decider) => {
                    refused.push(None);
                    // A reserved key is this node's own; should the members
                    // say otherwise, it goes decider first.
                    let fast = fast
                        && (decider == *topology.local() || {
                            self.inner.guard.release(key);
                            false
                        });
                    placeable.push((key, event, decider, fast));
                }
                None => refused.push(Some(PutError::UnknownOrigin {
                    key,
                    tag: key.origin().unwrap_or_default(),
                })),
            }
        }
        // A decider catching up accepts no bytes for a key it may have
        // decided before and does not hold (see `crate::catch_up`).
        if self.catch_up().is_catching_up() {
            let mut kept = Vec::with_capacity(placeable.len());
            let mut slots = refused.iter_mut().filter(|r| r.is_none());
            for (key, event, decider, fast) in placeable {
                let slot = slots.next();
                if self.catch_up().guards(&topology, &key)
                    && !matches!(self.storage().get(key).await, Ok(Some(_)))
                {
                    if fast {
                        self.inner.guard.release(key);
                    }
                    if let Some(slot) = slot {
                        *slot = Some(PutError::CatchingUp { key, node: decider });
                    }
                    continue;
                }
                kept.push((key, event, decider, fast));
            }
            placeable = kept;
        }
        let failed_now = refused.iter().flatten().count();
        if failed_now > 0 {
            self.inner
                .stats
                .puts_failed
                .fetch_add(failed_now as u64, Ordering::Relaxed);
        }
        let mut placed = self
            .put_placed(&topology, level, placeable)
            .await
            .into_iter();
        refused
            .into_iter()
            .map(|r| match r {
                Some(error) => Err(error),
                None => placed.next().unwrap_or(Err(PutError::Shutdown)),
            })
            .collect()
    }

    /// [`Coordinator::put_many`] of events whose deciders are known.
    async fn put_placed(
        &self,
        topology: &Topology,
        level: CommitLevel,
        events: Vec<(EventKey, Bytes, NodeId, bool)>,
    ) -> Vec<Result<PutAck, PutError>> {
        if events.is_empty() {
            return Vec::new();
        }
        let n = events.len();
        // Reservations of events refused before anything is written go.
        let fast: Vec<EventKey> = events.iter().filter(|e| e.3).map(|e| e.0).collect();
        let release = || {
            for key in &fast {
                self.inner.guard.release(*key);
            }
        };
        let Placed {
            slots,
            groups,
            completions,
        } = match self.place_batch(topology, level, events) {
            Ok(placed) => placed,
            Err(error) => {
                release();
                self.inner
                    .stats
                    .puts_failed
                    .fetch_add(n as u64, Ordering::Relaxed);
                return (0..n).map(|_| Err(error.clone())).collect();
            }
        };
        // Admission: reserve room for the batch's events, or refuse it whole
        // before anything is written.
        let limit = self.inner.options.max_puts_in_flight;
        let mut in_flight = 0;
        let admitted = self.inner.running.send_if_modified(|r| {
            in_flight = *r;
            if *r + n <= limit {
                *r += n;
                true
            } else {
                false
            }
        });
        if !admitted {
            release();
            self.inner
                .stats
                .puts_failed
                .fetch_add(n as u64, Ordering::Relaxed);
            tracing::debug!(in_flight, limit, events = n, "put refused: overloaded");
            let error = PutError::Overloaded { in_flight, limit };
            return (0..n).map(|_| Err(error.clone())).collect();
        }
        let keys: Vec<EventKey> = slots.iter().map(Slot::key).collect();
        let (answer_tx, answer_rx) = oneshot::channel();
        let batch = Batch {
            coordinator: self.clone(),
            local: topology.local().clone(),
            level,
            slots,
        };
        tokio::spawn(batch.run(groups, answer_tx));
        let answers = answer_rx.await.unwrap_or_default();
        let mut acked = 0u64;
        let results: Vec<Result<PutAck, PutError>> = keys
            .into_iter()
            .zip(completions)
            .zip(
                answers
                    .into_iter()
                    .chain(std::iter::repeat_with(|| Err(PutError::Shutdown))),
            )
            .map(|((key, done_rx), answer)| {
                answer.map(|a| {
                    acked += 1;
                    PutAck {
                        key,
                        level,
                        required: a.required,
                        acked: a.acked,
                        created: a.created,
                        completion: Completion(done_rx),
                    }
                })
            })
            .collect();
        let stats = &self.inner.stats;
        stats.puts_acked.fetch_add(acked, Ordering::Relaxed);
        stats
            .puts_failed
            .fetch_add(n as u64 - acked, Ordering::Relaxed);
        results
    }

    /// Places each event of a batch: its decider write first, then the
    /// local write and the chosen peers (the decider takes the place of a
    /// chosen node when placement did not pick it); a fast event's writes all
    /// at once. The first writes are grouped per node, with the receivers of
    /// the events' reports. Fails (nothing written) when there are fewer nodes
    /// than the replication factor.
    fn place_batch(
        &self,
        topology: &Topology,
        level: CommitLevel,
        events: Vec<(EventKey, Bytes, NodeId, bool)>,
    ) -> Result<Placed, PutError> {
        let opts = &self.inner.options;
        let rf = opts.replication_factor;
        let required = level.required(rf);
        let policy = opts.policy();
        let local = topology.local();
        let mut slots = Vec::with_capacity(events.len());
        let mut completions = Vec::with_capacity(events.len());
        let mut groups = PeerGroups::default();
        // Graylisted peers are avoided while enough others exist; a peer out
        // of its cooldown takes one write, the probe, and is avoided again
        // until that answers.
        let Avoid {
            mut avoid,
            mut probe_ready,
        } = self.inner.scores.for_placement();
        // Members detected down (or gone) are avoided the same way.
        avoid.extend(topology.down_peers().cloned());
        self.with_rng(|rng| {
            for (i, (key, event, decider, fast)) in events.into_iter().enumerate() {
                let (peers, mut chosen) = placement::place_avoiding(
                    topology, &policy, &avoid, &mut *rng,
                )
                .map_err(|e| PutError::NotEnoughNodes {
                    replication_factor: e.replication_factor,
                    nodes: e.nodes,
                })?;
                for peer in &peers {
                    if probe_ready.remove(&peer.id) {
                        self.inner.scores.probing(&peer.id);
                        avoid.insert(peer.id.clone());
                    }
                }
                let mut targets: Vec<Target> = std::iter::once(Target::Local)
                    .chain(peers.into_iter().map(Target::Peer))
                    .collect();
                if !targets.iter().any(|t| t.id(local) == decider) {
                    let peer = topology
                        .peer(&decider)
                        .cloned()
                        .expect("a decider is a member: the local node or a peer");
                    chosen.record(&peer);
                    // Prefer giving up a chosen peer of the decider's own category.
                    let category = peer.locality.category();
                    let at = targets
                        .iter()
                        .rposition(
                            |t| matches!(t, Target::Peer(p) if p.locality.category() == category),
                        )
                        .or_else(|| targets.iter().rposition(|t| matches!(t, Target::Peer(_))))
                        .unwrap_or(0);
                    targets[at] = Target::Peer(peer);
                }
                let first = targets
                    .iter()
                    .position(|t| t.id(local) == decider)
                    .expect("the decider is a target");
                let (done_tx, done_rx) = oneshot::channel();
                completions.push(done_rx);
                let tracker = Tracker::new(rf, required, opts.max_replacements);
                if fast {
                    let ids: Vec<NodeId> = targets.iter().map(|t| t.id(local)).collect();
                    for target in targets {
                        groups.add(target, i);
                    }
                    slots.push(Slot::fast(
                        key, event, chosen, tracker, decider, ids, done_tx,
                    ));
                } else {
                    groups.add(targets.remove(first), i);
                    slots.push(Slot::new(
                        key, event, chosen, tracker, decider, targets, done_tx,
                    ));
                }
            }
            Ok(Placed {
                slots,
                groups,
                completions,
            })
        })
    }
}

/// A batch placed and ready to run.
struct Placed {
    slots: Vec<Slot>,
    groups: PeerGroups,
    /// Each event's report receiver, in order.
    completions: Vec<oneshot::Receiver<ReplicationReport>>,
}
