#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The metadata conformance suite against metad's store, in-process.

use berth_metad::store::MetaStore;
use berth_metadata::testsuite::Stores;

async fn local_store() -> (Stores, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = MetaStore::open_standalone(dir.path()).expect("open store");
    (Stores::of(store), dir)
}

berth_metadata::metadata_suite!(local_store);
