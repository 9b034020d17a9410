#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Commits not yet known to be on disk: marked until one syncfs writes them
//! back; at start, those marked in another boot or mount (a power cut may
//! have taken their files) are discarded with everything built on them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_snapd::local::{Backend, LocalSnapshotter};
use berth_snapd::records::{Records, WrittenIn};
use berth_snapd::write_back::written_in;
use berth_snapshot::Snapshotter;

const NS: &str = "default";

fn committed_names(records: &Records) -> Vec<String> {
    let mut names: Vec<String> = records
        .list("overlayfs", NS)
        .unwrap()
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    names.sort();
    names
}

/// An overlay snapshotter whose writer waits an hour after a commit: the
/// test, not the writer, decides when marks are written back.
fn writer_held_off(root: &std::path::Path, records: &Records) -> LocalSnapshotter {
    LocalSnapshotter::open_writing_back_after(
        root,
        Backend::Overlay,
        records.clone(),
        Duration::from_secs(3600),
    )
    .unwrap()
}

#[tokio::test]
async fn marks_from_another_boot_discard_the_snapshot_and_its_descendants_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let records = Records::open(&root.join("meta")).unwrap();
    // The writer waits an hour: the recovery below, not the writer (which
    // takes every mark), is what meets the marks here.
    let sn = writer_held_off(&root, &records);
    let here = written_in(&root).unwrap();
    let before_the_cut = WrittenIn {
        boot_id: "an-earlier-boot".to_string(),
        mount_id: here.mount_id,
    };

    // lost: committed in an earlier boot and never written back.
    sn.prepare(NS, "lost-work", None, HashMap::new())
        .await
        .unwrap();
    std::fs::write(sn.own_dir(NS, "lost-work").unwrap().join("f"), b"x").unwrap();
    records
        .commit(
            "overlayfs",
            NS,
            "lost",
            "lost-work",
            HashMap::new(),
            &before_the_cut,
            None,
        )
        .unwrap();
    // child: committed on it (in this boot); grandchild: a container's
    // writable layer on that.
    sn.prepare(NS, "child-work", Some("lost"), HashMap::new())
        .await
        .unwrap();
    sn.commit(NS, "child", "child-work", HashMap::new())
        .await
        .unwrap();
    sn.prepare(NS, "grandchild", Some("child"), HashMap::new())
        .await
        .unwrap();
    // kept: unrelated, committed in this boot.
    sn.prepare(NS, "kept-work", None, HashMap::new())
        .await
        .unwrap();
    sn.commit(NS, "kept", "kept-work", HashMap::new())
        .await
        .unwrap();
    let lost_dir = sn.own_dir(NS, "lost").unwrap();

    let (discarded, written_back) = sn.recover_write_back().unwrap();
    assert_eq!(discarded, 3, "lost, child and grandchild");
    assert_eq!(written_back, 1, "kept");
    assert_eq!(committed_names(&records), vec!["kept".to_string()]);
    assert!(records.unsynced("overlayfs").unwrap().is_empty());
    let give_up = Instant::now() + Duration::from_secs(60);
    while lost_dir.exists() {
        assert!(
            Instant::now() < give_up,
            "the discarded snapshot's files stay"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test]
async fn a_commit_is_written_back_and_unmarked_soon_after() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let records = Records::open(&root.join("meta")).unwrap();
    // The writer waits an hour: the mark is read after the commit, and
    // goes with the write-back asked for here, on any machine.
    let sn = writer_held_off(&root, &records);
    sn.prepare(NS, "work", None, HashMap::new()).await.unwrap();
    sn.commit(NS, "layer", "work", HashMap::new())
        .await
        .unwrap();
    let marks = records.unsynced("overlayfs").unwrap();
    assert_eq!(marks.len(), 1);
    assert_eq!(marks[0].name, "layer");
    assert_eq!(marks[0].mark.written_in, written_in(&root).unwrap());
    assert_eq!(sn.write_back_now().unwrap(), 1);
    assert!(records.unsynced("overlayfs").unwrap().is_empty());
    // Marked in this very mount (only the daemon died): written back at
    // start, nothing discarded.
    sn.prepare(NS, "work2", None, HashMap::new()).await.unwrap();
    sn.commit(NS, "layer2", "work2", HashMap::new())
        .await
        .unwrap();
    let (discarded, _) = sn.recover_write_back().unwrap();
    assert_eq!(discarded, 0);
    assert!(records.unsynced("overlayfs").unwrap().is_empty());
    assert_eq!(
        committed_names(&records),
        vec!["layer".to_string(), "layer2".to_string()]
    );
}

/// The writer, on its own, writes a commit back soon after it (the default
/// half second; the ceiling only turns a hang into a failure).
#[tokio::test]
async fn the_writer_unmarks_a_commit_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let records = Records::open(&root.join("meta")).unwrap();
    let sn = LocalSnapshotter::open(&root, Backend::Overlay, records.clone()).unwrap();
    sn.prepare(NS, "work", None, HashMap::new()).await.unwrap();
    sn.commit(NS, "layer", "work", HashMap::new())
        .await
        .unwrap();
    let give_up = Instant::now() + Duration::from_secs(60);
    while !records.unsynced("overlayfs").unwrap().is_empty() {
        assert!(Instant::now() < give_up, "the commit stays marked");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(committed_names(&records), vec!["layer".to_string()]);
}
