#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The content conformance suite against the local store, in-process.

use berth_contentd::store::LocalStore;

async fn local_store() -> (LocalStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, _) = LocalStore::open(dir.path()).expect("open store");
    (store, dir)
}

berth_content::content_suite!(local_store);
