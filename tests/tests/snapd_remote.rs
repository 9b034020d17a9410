#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The snapshot conformance suite across the socket: berth-snapd started as
//! a process, driven through berth-client, for both snapshotters.

use std::path::PathBuf;

use berth_client::RemoteSnapshotter;
use berth_e2e::Daemon;

async fn remote(name: &str) -> (RemoteSnapshotter, PathBuf, (Daemon, tempfile::TempDir)) {
    let dir = tempfile::tempdir().expect("temp dir");
    let daemon = Daemon::start("berth-snapd", &dir.path().join("snapd"));
    let sn = RemoteSnapshotter::connect(&daemon.socket, name)
        .await
        .expect("connect to snapd");
    let scratch = dir.path().join("mnt");
    std::fs::create_dir(&scratch).unwrap();
    (sn, scratch, (daemon, dir))
}

mod overlay {
    use super::*;
    async fn setup() -> (RemoteSnapshotter, PathBuf, (Daemon, tempfile::TempDir)) {
        remote("overlayfs").await
    }
    berth_snapshot::snapshot_suite!(setup);
}

mod native {
    use super::*;
    async fn setup() -> (RemoteSnapshotter, PathBuf, (Daemon, tempfile::TempDir)) {
        remote("native").await
    }
    berth_snapshot::snapshot_suite!(setup);
}

#[tokio::test]
async fn unknown_snapshotter_is_invalid_argument() {
    if !berth_e2e::require(berth_e2e::is_root(), "berth-snapd needs root") {
        return;
    }
    let (sn, _scratch, _guard) = remote("zfs-of-dreams").await;
    use berth_snapshot::Snapshotter;
    let err = sn.list("default", &[]).await.unwrap_err();
    assert_eq!(err.kind(), berth_errdefs::ErrorKind::InvalidArgument);
}

#[tokio::test]
async fn cleanup_removes_orphaned_directories_and_keeps_owned_ones() {
    if !berth_e2e::require(berth_e2e::is_root(), "berth-snapd needs root") {
        return;
    }
    use berth_snapshot::Snapshotter;
    let (sn, _scratch, (mut daemon, dir)) = remote("overlayfs").await;
    sn.prepare("default", "kept", None, Default::default())
        .await
        .unwrap();
    // A directory whose record never got written (a crash between the two).
    let snapshots = daemon.root.join("overlayfs/snapshots");
    let orphan = snapshots.join("999999");
    std::fs::create_dir_all(orphan.join("fs/deep")).unwrap();
    std::fs::write(orphan.join("fs/deep/file"), b"x").unwrap();
    sn.cleanup().await.unwrap();
    assert!(!orphan.exists());
    assert!(sn.stat("default", "kept").await.is_ok());
    let kept: Vec<_> = std::fs::read_dir(&snapshots).unwrap().collect();
    assert_eq!(kept.len(), 1);
    // Directories under the root are private.
    use std::os::unix::fs::MetadataExt;
    for d in [
        daemon.root.clone(),
        daemon.root.join("overlayfs"),
        snapshots.clone(),
    ] {
        assert_eq!(
            std::fs::metadata(&d).unwrap().mode() & 0o777,
            0o700,
            "{}",
            d.display()
        );
    }
    // A restart cleans up by itself too.
    std::fs::create_dir_all(snapshots.join("424242/fs")).unwrap();
    daemon.kill();
    daemon.restart();
    assert!(!snapshots.join("424242").exists());
    drop(dir);
}
