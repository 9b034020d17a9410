#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Work done under a lease (`containerd-lease` metadata) is tied to it in
//! berth-snapd: the snapshots it prepares and commits, and the diffs it
//! stores in berth-contentd — including a diff that was already stored.

use berth_client::{RemoteContentStore, RemoteSnapshotter};
use berth_content::ContentStore;
use berth_e2e::{is_root, require, Daemon};
use berth_snapshot::Snapshotter;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_and_diffs_join_the_callers_lease() {
    if !require(is_root(), "berth-snapd needs root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let contentd = Daemon::contentd(&dir.path().join("contentd"));
    let snapd = Daemon::snapd(&dir.path().join("snapd"), &contentd);
    let plain = RemoteSnapshotter::connect(&snapd.socket, "overlayfs")
        .await
        .unwrap();
    let first = plain.clone().with_lease("lease-one");
    let second = plain.clone().with_lease("lease-two");
    let one = berth_api::lease_label("lease-one");
    let two = berth_api::lease_label("lease-two");

    first
        .prepare("default", "work", None, Default::default())
        .await
        .unwrap();
    assert!(plain
        .stat("default", "work")
        .await
        .unwrap()
        .labels
        .contains_key(&one));
    first
        .commit("default", "layer", "work", Default::default())
        .await
        .unwrap();
    let committed = plain.stat("default", "layer").await.unwrap();
    assert!(
        committed.labels.contains_key(&one),
        "{:?}",
        committed.labels
    );
    // Without a lease, nothing is labelled.
    plain
        .prepare("default", "bare", None, Default::default())
        .await
        .unwrap();
    assert!(!plain
        .stat("default", "bare")
        .await
        .unwrap()
        .labels
        .keys()
        .any(|k| k.starts_with(berth_api::LEASE_LABEL_PREFIX)));

    let content = RemoteContentStore::connect(&contentd.socket).await.unwrap();
    let diff = first
        .diff("default", None, "layer", "", Default::default())
        .await
        .unwrap()
        .descriptor;
    let labels = content.info("default", &diff.digest).await.unwrap().labels;
    assert!(labels.contains_key(&one), "{labels:?}");
    assert!(!labels.contains_key(&two));
    // The same diff again under another lease: stored already, but now
    // held by that lease too.
    let again = second
        .diff("default", None, "layer", "", Default::default())
        .await
        .unwrap()
        .descriptor;
    assert_eq!(again.digest, diff.digest);
    let labels = content.info("default", &diff.digest).await.unwrap().labels;
    assert!(
        labels.contains_key(&one) && labels.contains_key(&two),
        "{labels:?}"
    );
}
