#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Snapshots for a container in a user namespace (containerd's
//! `containerd.io/snapshot/uidmapping` and `gidmapping` labels): the new
//! layer belongs to the mapped root, the parents are mounted id-mapped, and
//! every malformed request is refused with nothing made.

use std::os::unix::fs::MetadataExt;

use berth_api::labels::{SNAPSHOT_GID_MAPPING, SNAPSHOT_UID_MAPPING};
use berth_errdefs::ErrorKind;
use berth_mount::TempMount;
use berth_snapd::local::{Backend, LocalSnapshotter};
use berth_snapd::records::Records;
use berth_snapshot::{Labels, Snapshotter};

fn labels(uids: &str, gids: &str) -> Labels {
    Labels::from([
        (SNAPSHOT_UID_MAPPING.to_string(), uids.to_string()),
        (SNAPSHOT_GID_MAPPING.to_string(), gids.to_string()),
    ])
}

fn open(backend: Backend) -> (LocalSnapshotter, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let records = Records::open(&root.join("meta")).unwrap();
    (
        LocalSnapshotter::open(&root, backend, records).unwrap(),
        dir,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_snapshot_belongs_to_the_mapped_root_and_sees_its_parents_mapped() {
    if !berth_snapshot::testsuite::require_root() {
        return;
    }
    let (sn, dir) = open(Backend::Overlay);
    let scratch = dir.path().join("mnt");
    std::fs::create_dir(&scratch).unwrap();
    let base = sn
        .prepare("ns", "base-a", None, Labels::new())
        .await
        .unwrap();
    {
        let m = TempMount::new(&base, &scratch).unwrap();
        std::fs::write(m.path().join("etc-file"), "x").unwrap();
    }
    sn.commit("ns", "base", "base-a", Labels::new())
        .await
        .unwrap();

    let mounts = sn
        .prepare(
            "ns",
            "ctr",
            Some("base"),
            labels("0:300000:65536", "0:310000:65536"),
        )
        .await
        .unwrap();
    let options = &mounts[0].options;
    assert!(
        options.contains(&"uidmap=0:300000:65536".to_string()),
        "{options:?}"
    );
    assert!(
        options.contains(&"gidmap=0:310000:65536".to_string()),
        "{options:?}"
    );
    let own = sn.own_dir("ns", "ctr").unwrap();
    let meta = std::fs::metadata(&own).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (300000, 310000));
    // The mounts as the shim makes them: the parent's root-owned file is
    // the mapped root's.
    let m = TempMount::new(&mounts, &scratch).unwrap();
    let file = std::fs::metadata(m.path().join("etc-file")).unwrap();
    assert_eq!((file.uid(), file.gid()), (300000, 310000));
    drop(m);
    // The parent is untouched.
    let base_own = sn.own_dir("ns", "base").unwrap();
    assert_eq!(
        std::fs::metadata(base_own.join("etc-file")).unwrap().uid(),
        0
    );

    // Without a parent the layer is a plain bind of the mapped root's
    // directory: nothing to map.
    let alone = sn
        .prepare(
            "ns",
            "alone",
            None,
            labels("0:300000:65536", "0:310000:65536"),
        )
        .await
        .unwrap();
    assert_eq!(alone[0].kind, "bind");
    assert!(!alone[0].options.iter().any(|o| o.starts_with("uidmap")));
    let meta = std::fs::metadata(sn.own_dir("ns", "alone").unwrap()).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (300000, 310000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_mappings_are_refused_with_nothing_made() {
    let (sn, _dir) = open(Backend::Overlay);
    sn.prepare("ns", "base-a", None, Labels::new())
        .await
        .unwrap();
    sn.commit("ns", "base", "base-a", Labels::new())
        .await
        .unwrap();
    let only_uid = Labels::from([(SNAPSHOT_UID_MAPPING.to_string(), "0:1000:10".to_string())]);
    for (key, labels) in [
        ("one-label", only_uid),
        ("no-root", labels("1:1000:10", "0:1000:10")),
        ("zero-size", labels("0:1000:0", "0:1000:10")),
        ("garbage", labels("0:1000:10", "root")),
    ] {
        let err = sn
            .prepare("ns", key, Some("base"), labels)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{key}: {err}");
        assert!(sn.stat("ns", key).await.is_err(), "{key} was made");
    }
    let err = sn
        .view(
            "ns",
            "mapped-view",
            Some("base"),
            labels("0:1000:10", "0:1000:10"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");

    let (native, _dir) = open(Backend::Native);
    let err = native
        .prepare("ns", "n", None, labels("0:1000:10", "0:1000:10"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
}
