//! The per-peer batcher: a queue per peer and a sender task that packs whatever
//! is queued into one request, with a bounded number of requests in flight.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use alldata_coordinator::{EventKey, PutStatus, TransportError};
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::{Shared, wire};

/// One caller's event waiting to be sent, and where its result goes.
pub(crate) struct Job {
    pub(crate) key: EventKey,
    pub(crate) event: Bytes,
    /// When the caller stops waiting.
    pub(crate) deadline: Instant,
    pub(crate) reply: oneshot::Sender<Result<PutStatus, TransportError>>,
    /// The event's share of the peer's queued-bytes budget, released when the
    /// job is done (answered or dropped).
    pub(crate) _bytes: OwnedSemaphorePermit,
}

/// Starts the sender task of the peer whose batch URL is `url`; events sent
/// into the returned queue travel to it. The task ends when every sender of
/// the queue is dropped.
pub(crate) fn spawn_peer(shared: Arc<Shared>, url: Arc<str>) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel(shared.config.queue_capacity);
    tokio::spawn(run_peer(shared, url, rx));
    tx
}

async fn run_peer(shared: Arc<Shared>, url: Arc<str>, mut rx: mpsc::Receiver<Job>) {
    let in_flight = Arc::new(Semaphore::new(shared.config.max_in_flight));
    let max_events = shared.config.max_batch_events;
    let max_bytes = shared.config.max_batch_bytes;
    // A job that did not fit into the previous batch opens the next one.
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => break,
            },
        };
        // Wait for a free request slot; events queued meanwhile join this batch.
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            break;
        };
        let mut size = wire::HEADER_LEN + wire::frame_len(&first.event);
        let mut batch = vec![first];
        while batch.len() < max_events {
            let Ok(job) = rx.try_recv() else { break };
            if job.reply.is_closed() {
                shared.stats.abandoned.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let len = wire::frame_len(&job.event);
            if size + len > max_bytes {
                carried = Some(job);
                break;
            }
            size += len;
            batch.push(job);
        }
        // Callers that gave up (their deadline passed) are not sent.
        let before = batch.len();
        batch.retain(|job| !job.reply.is_closed());
        shared
            .stats
            .abandoned
            .fetch_add((before - batch.len()) as u64, Ordering::Relaxed);
        if batch.is_empty() {
            continue;
        }
        tokio::spawn(send_batch(
            Arc::clone(&shared),
            Arc::clone(&url),
            batch,
            permit,
        ));
    }
}

async fn send_batch(
    shared: Arc<Shared>,
    url: Arc<str>,
    batch: Vec<Job>,
    permit: OwnedSemaphorePermit,
) {
    let body = wire::encode_request(batch.iter().map(|job| (&job.key, &job.event)));
    // Nobody waits past the latest caller's deadline, so neither does the request.
    let deadline = batch
        .iter()
        .map(|job| job.deadline)
        .max()
        .unwrap_or_else(Instant::now);
    let timeout = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    let outcome = shared.post_batch(&url, body, batch.len(), timeout).await;
    drop(permit);
    match outcome {
        Ok(results) => {
            for (job, result) in batch.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
        }
        Err(error) => {
            for job in batch {
                let _ = job.reply.send(Err(error.clone()));
            }
        }
    }
}
