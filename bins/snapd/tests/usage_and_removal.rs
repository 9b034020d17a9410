#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Usage: an active snapshot is measured on every call, a committed one
//! once (its tree never changes), and the measure survives a restart.
//! Removal: the record goes before Remove returns, the tree after.

use std::collections::HashMap;

use berth_snapd::local::{Backend, LocalSnapshotter};
use berth_snapd::records::Records;
use berth_snapshot::Snapshotter;

fn open(root: &std::path::Path) -> LocalSnapshotter {
    let records = Records::open(&root.join("meta")).unwrap();
    LocalSnapshotter::open(root, Backend::Overlay, records).unwrap()
}

#[tokio::test]
async fn committed_usage_is_measured_once_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let ns = "default";
    let sn = open(&root);
    sn.prepare(ns, "work", None, HashMap::new()).await.unwrap();
    let own = sn.own_dir(ns, "work").unwrap();
    let empty = sn.usage(ns, "work").await.unwrap();
    std::fs::write(own.join("a"), vec![1u8; 64 * 1024]).unwrap();
    let one = sn.usage(ns, "work").await.unwrap();
    assert_eq!(one.inodes, empty.inodes + 1);
    assert!(one.size >= empty.size + 64 * 1024);

    sn.commit(ns, "layer", "work", HashMap::new())
        .await
        .unwrap();
    let committed = sn.usage(ns, "layer").await.unwrap();
    assert_eq!(committed, one);
    // Written behind snapd's back: a committed snapshot is not measured
    // again.
    let own = sn.own_dir(ns, "layer").unwrap();
    std::fs::write(own.join("b"), vec![1u8; 64 * 1024]).unwrap();
    assert_eq!(sn.usage(ns, "layer").await.unwrap(), committed);
    drop(sn);

    let sn = open(&root);
    assert_eq!(sn.usage(ns, "layer").await.unwrap(), committed);
    // An active child is measured each time.
    sn.prepare(ns, "child", Some("layer"), HashMap::new())
        .await
        .unwrap();
    let child = sn.own_dir(ns, "child").unwrap();
    let before = sn.usage(ns, "child").await.unwrap();
    std::fs::write(child.join("c"), b"c").unwrap();
    assert_eq!(
        sn.usage(ns, "child").await.unwrap().inodes,
        before.inodes + 1
    );
}

#[tokio::test]
async fn remove_returns_with_the_record_gone_and_the_tree_follows() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let ns = "default";
    let sn = open(&root);
    sn.prepare(ns, "big", None, HashMap::new()).await.unwrap();
    let own = sn.own_dir(ns, "big").unwrap();
    for i in 0..2000 {
        let sub = own.join(format!("d{}", i % 50));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("f{i}")), b"x").unwrap();
    }
    let snapshot_dir = own.parent().unwrap().to_path_buf();
    sn.remove(ns, "big").await.unwrap();
    let err = sn.stat(ns, "big").await.unwrap_err();
    assert_eq!(err.kind(), berth_errdefs::ErrorKind::NotFound);
    // The directory goes on the removal thread; a new snapshot meanwhile
    // is unaffected.
    sn.prepare(ns, "next", None, HashMap::new()).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while snapshot_dir.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never removed",
            snapshot_dir.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(sn.own_dir(ns, "next").unwrap().is_dir());
}

/// The id in a snapshot's directory path (`.../snapshots/ID/fs`).
fn id_of(sn: &LocalSnapshotter, key: &str) -> u64 {
    let own = sn.own_dir("default", key).unwrap();
    let id = own.parent().unwrap().file_name().unwrap().to_str().unwrap();
    id.parse().unwrap()
}

/// Ids are handed out in memory and recorded with their snapshots: one
/// is never handed out twice, not after the highest was removed and
/// snapd restarted, nor after a crash left a directory without a record.
#[tokio::test]
async fn snapshot_ids_are_never_handed_out_twice_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let ns = "default";
    let sn = open(&root);
    sn.prepare(ns, "a", None, HashMap::new()).await.unwrap();
    sn.prepare(ns, "b", None, HashMap::new()).await.unwrap();
    let (a, b) = (id_of(&sn, "a"), id_of(&sn, "b"));
    assert!(b > a);
    sn.remove(ns, "b").await.unwrap();
    drop(sn);

    let sn = open(&root);
    sn.prepare(ns, "c", None, HashMap::new()).await.unwrap();
    let c = id_of(&sn, "c");
    assert!(c > b, "id {c} handed out again after {b} was removed");
    drop(sn);

    // A crash between making a snapshot's directory and recording it.
    let orphan = c + 5;
    let snapshots = sn_dir(&root);
    std::fs::create_dir_all(snapshots.join(orphan.to_string()).join("fs")).unwrap();
    let sn = open(&root);
    sn.prepare(ns, "d", None, HashMap::new()).await.unwrap();
    assert!(id_of(&sn, "d") > orphan);
}

fn sn_dir(root: &std::path::Path) -> std::path::PathBuf {
    root.join(Backend::Overlay.name()).join("snapshots")
}
