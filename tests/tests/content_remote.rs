#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The content conformance suite across the socket: berth-contentd started
//! as a process, driven through berth-client.

use berth_client::RemoteContentStore;
use berth_e2e::Daemon;

async fn remote_store() -> (RemoteContentStore, (Daemon, tempfile::TempDir)) {
    let dir = tempfile::tempdir().expect("temp dir");
    let daemon = Daemon::contentd(dir.path());
    let store = RemoteContentStore::connect(&daemon.socket)
        .await
        .expect("connect to contentd");
    (store, (daemon, dir))
}

berth_content::content_suite!(remote_store);
