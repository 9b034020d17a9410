#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The snapshot conformance suite in-process, against both snapshotters.

use std::path::PathBuf;

use berth_snapd::local::{Backend, LocalSnapshotter};
use berth_snapd::records::Records;

async fn open(backend: Backend) -> (LocalSnapshotter, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let records = Records::open(&root.join("meta")).unwrap();
    let sn = LocalSnapshotter::open(&root, backend, records).unwrap();
    let scratch = dir.path().join("mnt");
    std::fs::create_dir(&scratch).unwrap();
    (sn, scratch, dir)
}

mod overlay {
    async fn setup() -> (
        berth_snapd::local::LocalSnapshotter,
        std::path::PathBuf,
        tempfile::TempDir,
    ) {
        super::open(berth_snapd::local::Backend::Overlay).await
    }
    berth_snapshot::snapshot_suite!(setup);
}

mod native {
    async fn setup() -> (
        berth_snapd::local::LocalSnapshotter,
        std::path::PathBuf,
        tempfile::TempDir,
    ) {
        super::open(berth_snapd::local::Backend::Native).await
    }
    berth_snapshot::snapshot_suite!(setup);
}
