#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The overlay mount path of kernels without `lowerdir+` (before 6.8):
//! mount(2) with every directory as `/proc/self/fd/N`. Forced for this
//! whole test binary (its own process), so the conformance suite, 128
//! stacked layers included, runs through it on any kernel.

use std::path::{Path, PathBuf};

use berth_mount::TempMount;
use berth_snapd::local::{Backend, LocalSnapshotter};
use berth_snapd::records::Records;
use berth_snapshot::{Labels, Snapshotter};

/// An overlay snapshotter under `<tmp>/<prefix>root`.
fn open(prefix: &str) -> (LocalSnapshotter, PathBuf, tempfile::TempDir) {
    berth_mount::force_overlay_mount_data();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join(format!("{prefix}root"));
    let records = Records::open(&root.join("meta")).unwrap();
    let sn = LocalSnapshotter::open(&root, Backend::Overlay, records).unwrap();
    let scratch = dir.path().join("mnt");
    std::fs::create_dir(&scratch).unwrap();
    (sn, scratch, dir)
}

async fn setup() -> (LocalSnapshotter, PathBuf, tempfile::TempDir) {
    open("")
}

berth_snapshot::snapshot_suite!(setup);

/// The mount options of the mount at `target`, from mountinfo.
fn super_options(target: &Path) -> String {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let target = target.display().to_string();
    mountinfo
        .lines()
        .find(|line| line.split(' ').nth(4) == Some(target.as_str()))
        .and_then(|line| line.rsplit(' ').next())
        .unwrap_or_else(|| panic!("{target} is not mounted"))
        .to_string()
}

/// 128 layers under a root with a long path, so that the paths cannot fit
/// one page and only the fd form does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_with_long_paths_mount_through_fds() {
    if !berth_snapshot::testsuite::require_root() {
        return;
    }
    let (sn, scratch, _dir) = open(&"l".repeat(200));
    let mut parent: Option<String> = None;
    for i in 0..128 {
        let key = format!("long-{i}-active");
        let mounts = sn
            .prepare("ns", &key, parent.as_deref(), Labels::new())
            .await
            .unwrap();
        {
            let mount = TempMount::new(&mounts, &scratch).unwrap();
            std::fs::write(mount.path().join(format!("f{i}")), i.to_string()).unwrap();
        }
        let name = format!("long-{i}");
        sn.commit("ns", &name, &key, Labels::new()).await.unwrap();
        parent = Some(name);
    }
    let mounts = sn
        .prepare("ns", "top", parent.as_deref(), Labels::new())
        .await
        .unwrap();
    // The options name every layer by its long path.
    let lowerdir = mounts[0]
        .options
        .iter()
        .find(|o| o.starts_with("lowerdir="))
        .unwrap();
    assert!(lowerdir.len() > 4096, "{} bytes", lowerdir.len());
    let mount = TempMount::new(&mounts, &scratch).unwrap();
    let options = super_options(mount.path());
    assert!(
        options.contains("lowerdir=/proc/self/fd/"),
        "not mounted through fds: {options}"
    );
    for i in 0..128 {
        let got = std::fs::read_to_string(mount.path().join(format!("f{i}"))).unwrap();
        assert_eq!(got, i.to_string());
    }
    std::fs::write(mount.path().join("new"), "n").unwrap();
    drop(mount);
    let own = sn.own_dir("ns", "top").unwrap();
    assert_eq!(std::fs::read_to_string(own.join("new")).unwrap(), "n");
}
