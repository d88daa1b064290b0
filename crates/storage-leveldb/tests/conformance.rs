//! The shared storage conformance suite against the in-memory storage and
//! against LevelDB in both durability modes.

use std::sync::{Arc, Mutex};

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
