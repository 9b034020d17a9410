#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A layer applied before its lower layers are there: prepared with no
//! parent, committed onto its parent once that is committed (overlayfs
//! only, where a snapshot's directory holds its own layer alone).

use std::collections::HashMap;

use berth_errdefs::ErrorKind;
use berth_snapd::local::{Backend, LocalSnapshotter};
use berth_snapd::records::Records;
use berth_snapshot::Snapshotter;

fn open(root: &std::path::Path, backend: Backend) -> LocalSnapshotter {
    let records = Records::open(&root.join("meta")).unwrap();
    LocalSnapshotter::open(root, backend, records).unwrap()
}

#[tokio::test]
async fn an_overlay_snapshot_prepared_alone_is_committed_onto_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let sn = open(&dir.path().join("root"), Backend::Overlay);
    let ns = "default";
    assert!(sn.can_rebase());
    sn.prepare(ns, "bottom-work", None, HashMap::new())
        .await
        .unwrap();
    sn.prepare(ns, "top-work", None, HashMap::new())
        .await
        .unwrap();
    std::fs::write(sn.own_dir(ns, "top-work").unwrap().join("top"), b"t").unwrap();

    // Not onto a parent that is not committed yet (or not there at all).
    let err = sn
        .commit_rebased(ns, "top", "top-work", Some("bottom-work"), HashMap::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    let err = sn
        .commit_rebased(ns, "top", "top-work", Some("nothing"), HashMap::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    // Neither refusal changed the active snapshot.
    let info = sn.stat(ns, "top-work").await.unwrap();
    assert_eq!(info.kind, berth_snapshot::Kind::Active);
    assert_eq!(info.parent, None);

    sn.commit(ns, "bottom", "bottom-work", HashMap::new())
        .await
        .unwrap();
    sn.commit_rebased(ns, "top", "top-work", Some("bottom"), HashMap::new())
        .await
        .unwrap();
    let info = sn.stat(ns, "top").await.unwrap();
    assert_eq!(info.kind, berth_snapshot::Kind::Committed);
    assert_eq!(info.parent.as_deref(), Some("bottom"));
    // Its file is where it was written, and the parent cannot go while
    // the child needs it.
    assert_eq!(
        std::fs::read(sn.own_dir(ns, "top").unwrap().join("top")).unwrap(),
        b"t"
    );
    let err = sn.remove(ns, "bottom").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    // A container on top sees both layers, top first.
    sn.prepare(ns, "rw", Some("top"), HashMap::new())
        .await
        .unwrap();
    let mounts = sn.mounts(ns, "rw").await.unwrap();
    let lower = mounts[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap();
    let dirs: Vec<&str> = lower.split(':').collect();
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    assert_eq!(
        std::path::Path::new(dirs[0]),
        sn.own_dir(ns, "top").unwrap()
    );
    assert_eq!(
        std::path::Path::new(dirs[1]),
        sn.own_dir(ns, "bottom").unwrap()
    );
}

#[tokio::test]
async fn a_snapshot_with_a_parent_is_never_rebased_and_native_never_rebases() {
    let dir = tempfile::tempdir().unwrap();
    let sn = open(&dir.path().join("root"), Backend::Overlay);
    let ns = "default";
    sn.prepare(ns, "a-work", None, HashMap::new())
        .await
        .unwrap();
    sn.commit(ns, "a", "a-work", HashMap::new()).await.unwrap();
    sn.prepare(ns, "b-work", None, HashMap::new())
        .await
        .unwrap();
    sn.commit(ns, "b", "b-work", HashMap::new()).await.unwrap();
    sn.prepare(ns, "c-work", Some("a"), HashMap::new())
        .await
        .unwrap();
    let err = sn
        .commit_rebased(ns, "c", "c-work", Some("b"), HashMap::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert_eq!(
        sn.stat(ns, "c-work").await.unwrap().parent.as_deref(),
        Some("a")
    );

    let native = open(&dir.path().join("native"), Backend::Native);
    assert!(!native.can_rebase());
    native
        .prepare(ns, "a-work", None, HashMap::new())
        .await
        .unwrap();
    native
        .commit(ns, "a", "a-work", HashMap::new())
        .await
        .unwrap();
    native
        .prepare(ns, "b-work", None, HashMap::new())
        .await
        .unwrap();
    let err = native
        .commit_rebased(ns, "b", "b-work", Some("a"), HashMap::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert_eq!(
        native.stat(ns, "b-work").await.unwrap().kind,
        berth_snapshot::Kind::Active
    );
}
