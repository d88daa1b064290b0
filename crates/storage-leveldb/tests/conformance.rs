//! The shared storage conformance suite against the in-memory storage,
//! against LevelDB in both durability modes, and against each wrapper a node
//! puts in front of its storage (and the whole stack).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use alldata_coordinator::digest_index::DigestIndex;
use alldata_coordinator::feed::{DEFAULT_FEED_CAPACITY, Feed};
use alldata_coordinator::{MemStorage, Storage};
use alldata_storage_leveldb::{Durability, LevelDbStorage, Options, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_storage_conforms() {
    conformance::run_all(|| async { Arc::new(MemStorage::new()) as Arc<dyn Storage> }).await;
}

async fn leveldb_conforms(durability: Durability) {
    let dirs: Arc<Mutex<Vec<tempfile::TempDir>>> = Arc::default();
    conformance::run_all(|| {
        let dirs = dirs.clone();
        async move {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = LevelDbStorage::open(Options::new(dir.path()).durability(durability))
                .await
                .expect("open");
            dirs.lock().unwrap().push(dir);
            Arc::new(store) as Arc<dyn Storage>
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leveldb_buffered_conforms() {
    leveldb_conforms(Durability::Buffered).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leveldb_sync_conforms() {
    leveldb_conforms(Durability::Sync).await;
}

// The wrappers a node puts in front of its storage each forward every
// `Storage` method; one that forgot one (quarantine once) would fail here.

/// `inner` behind the coordinator's guard (`Coordinator::storage`); the
/// coordinator is kept in `keep`, since the guard asks it for its members.
fn guarded(
    inner: Arc<dyn Storage>,
    keep: &Mutex<Vec<alldata_coordinator::Coordinator>>,
) -> Arc<dyn Storage> {
    let options = alldata_coordinator::Options {
        replication_factor: 1,
        ..alldata_coordinator::Options::default()
    };
    let coordinator = alldata_coordinator::Coordinator::new(
        "conformance".into(),
        alldata_coordinator::Location::new("eu", "a"),
        options,
        inner,
        Arc::new(alldata_coordinator::NoPeers),
    )
    .expect("coordinator");
    let storage = Arc::clone(coordinator.storage());
    keep.lock().unwrap().push(coordinator);
    storage
}

fn indexed(inner: Arc<dyn Storage>) -> Arc<dyn Storage> {
    DigestIndex::new(Duration::from_secs(3600)).wrap(inner)
}

fn fed(inner: Arc<dyn Storage>) -> Arc<dyn Storage> {
    Feed::wrap(inner, DEFAULT_FEED_CAPACITY).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_digest_index_wrapper_conforms() {
    conformance::run_all(|| async { indexed(Arc::new(MemStorage::new())) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_wrapper_conforms() {
    conformance::run_all(|| async { fed(Arc::new(MemStorage::new())) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_guard_conforms() {
    let keep = Arc::new(Mutex::new(Vec::new()));
    conformance::run_all(|| {
        let keep = Arc::clone(&keep);
        async move { guarded(Arc::new(MemStorage::new()), &keep) }
    })
    .await;
}

/// The whole stack of a node, in its order: guard, feed, digest index, LevelDB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_storage_stack_on_leveldb_conforms() {
    let dirs: Arc<Mutex<Vec<tempfile::TempDir>>> = Arc::default();
    let keep = Arc::new(Mutex::new(Vec::new()));
    conformance::run_all(|| {
        let (dirs, keep) = (Arc::clone(&dirs), Arc::clone(&keep));
        async move {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = LevelDbStorage::open(Options::new(dir.path()))
                .await
                .expect("open");
            dirs.lock().unwrap().push(dir);
            guarded(fed(indexed(Arc::new(store))), &keep)
        }
    })
    .await;
}
