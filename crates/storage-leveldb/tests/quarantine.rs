//! A quarantined event stays out after a restart, and its interval counts
//! one event less.

use alldata_coordinator::Storage;
use alldata_coordinator::repair::value_hash;
use alldata_storage_leveldb::{LevelDbStorage, Options, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_event_stays_out_after_a_restart_and_leaves_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = LevelDbStorage::open(Options::new(dir.path()))
        .await
        .unwrap();
    let keys = conformance::keys_spread(conformance::now_ms(), 10, 3);
    for k in &keys {
        store.put(*k, conformance::event_for(k, 30)).await.unwrap();
    }
    let total = |states: Vec<alldata_storage_leveldb::IntervalState>| {
        states.iter().map(|s| s.events).sum::<u64>()
    };
    assert_eq!(total(store.intervals().await.unwrap()), 3);
    let loser = conformance::event_for(&keys[0], 30);
    assert!(store.quarantine(keys[0], value_hash(&loser)).await.unwrap());
    assert_eq!(total(store.intervals().await.unwrap()), 2);
    // A closed interval never changes.
    let old = alldata_coordinator::EventKey::min_for_ms(1_000);
    assert!(matches!(
        store.quarantine(old, 1).await,
        Err(alldata_coordinator::StorageError::Rejected(_))
    ));
    store.close().await;

    let store = LevelDbStorage::open(Options::new(dir.path()))
        .await
        .unwrap();
    assert_eq!(store.get(keys[0]).await.unwrap(), None);
    assert_eq!(total(store.intervals().await.unwrap()), 2);
    store.close().await;
}
