//! An id-mapped overlay on the real kernel: the lower layers' files show
//! their owners shifted by the mapping, what is written lands in the upper
//! layer unmapped, and nothing of the staging is left mounted.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use berth_mount::{mount_all, unmount_all, Mount};

fn mounted_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4).map(str::to_string))
        .filter(|point| point.starts_with(&prefix))
        .collect()
}

#[test]
fn lower_files_show_mapped_owners_and_the_staging_is_gone() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "needs root (mounts, user namespaces)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (lower, upper, work, target) = (
        dir.path().join("lower"),
        dir.path().join("upper"),
        dir.path().join("work"),
        dir.path().join("rootfs"),
    );
    for d in [&lower, &upper, &work, &target] {
        std::fs::create_dir(d).unwrap_or_else(|e| panic!("{e}"));
    }
    std::fs::write(lower.join("root-owned"), "x").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(lower.join("owned-by-7"), "x").unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::chown(lower.join("owned-by-7"), Some(7), Some(8))
        .unwrap_or_else(|e| panic!("{e}"));
    // The snapshotter gives the upper layer's root to the mapped root.
    std::os::unix::fs::chown(&upper, Some(100_000), Some(200_000))
        .unwrap_or_else(|e| panic!("{e}"));
    let mount = Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        options: vec![
            format!("workdir={}", work.display()),
            format!("upperdir={}", upper.display()),
            format!("lowerdir={}", lower.display()),
            "uidmap=0:100000:65536".into(),
            "gidmap=0:200000:65536".into(),
        ],
    };
    mount_all(&[mount], &target).unwrap_or_else(|e| panic!("{e}"));
    let owner = |name: &str| {
        let meta = std::fs::metadata(target.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        (meta.uid(), meta.gid())
    };
    let seen = (owner("root-owned"), owner("owned-by-7"), owner("."));
    std::fs::write(target.join("new"), "y").unwrap_or_else(|e| panic!("{e}"));
    let staging_left = mounted_under(dir.path());
    unmount_all(&target).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(seen.0, (100_000, 200_000), "a root-owned lower file");
    assert_eq!(seen.1, (100_007, 200_008), "a lower file of uid 7");
    assert_eq!(seen.2, (100_000, 200_000), "the root: the upper layer's");
    assert_eq!(
        staging_left,
        [target.display().to_string()],
        "only the overlay is mounted"
    );
    // Written by this (host root) process: root-owned in the upper layer,
    // where a container's root would have written as 100000.
    let new = std::fs::metadata(upper.join("new")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(new.uid(), 0);
    // The lower layer itself is untouched.
    assert_eq!(
        std::fs::metadata(lower.join("root-owned"))
            .map(|m| m.uid())
            .unwrap_or(99),
        0
    );
    let entries: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("idmapped"))
        .collect();
    assert!(entries.is_empty(), "{entries:?}");
}
