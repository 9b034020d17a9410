#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

//! The snapshotter conformance suite, after containerd's snapshotter
//! testsuite. Each case is a plain async function over `&dyn Snapshotter`
//! and a scratch directory for mount points; [`snapshot_suite!`]
//! (crate::snapshot_suite) turns them into `#[tokio::test]`s for one
//! implementation. The cases mount what the snapshotter returns, so they
//! need root: without it they skip, except under `CI=true`.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use berth_errdefs::{error_kind as kind, ErrorKind};

use crate::{Kind, Labels, Snapshotter};
use berth_mount::TempMount;

const NS: &str = "suite";

/// Whether the suite can run here: true as root; false (skip) otherwise,
/// except under `CI=true`, where a missing prerequisite fails.
pub fn require_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "the snapshot suite needs root under CI"
    );
    eprintln!("skipping: the snapshot suite needs root");
    false
}

fn no_labels() -> Labels {
    HashMap::new()
}

/// Mounts the snapshot `key`, runs `f` on the mount point, unmounts.
pub async fn with_mount<T>(
    sn: &dyn Snapshotter,
    key: &str,
    scratch: &Path,
    f: impl FnOnce(&Path) -> T,
) -> T {
    let mounts = sn.mounts(NS, key).await.unwrap();
    let mount = TempMount::new(&mounts, scratch).unwrap();
    f(mount.path())
}

/// Prepares `key` on `parent`, lets `f` change its files, commits `name`.
async fn layer(
    sn: &dyn Snapshotter,
    scratch: &Path,
    name: &str,
    parent: Option<&str>,
    f: impl FnOnce(&Path),
) {
    let key = format!("{name}-active");
    let mounts = sn.prepare(NS, &key, parent, no_labels()).await.unwrap();
    {
        let mount = TempMount::new(&mounts, scratch).unwrap();
        f(mount.path());
    }
    sn.commit(NS, name, &key, no_labels()).await.unwrap();
}

fn write(root: &Path, path: &str, data: &str) {
    let full = root.join(path);
    if let Some(parent) = full.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(full, data).unwrap();
}

fn read(root: &Path, path: &str) -> Option<String> {
    std::fs::read_to_string(root.join(path)).ok()
}

pub async fn basic_stacking(sn: &dyn Snapshotter, scratch: &Path) {
    layer(sn, scratch, "base", None, |p| {
        write(p, "a", "a1");
        write(p, "dir/b", "b1");
        write(p, "gone", "x");
    })
    .await;
    layer(sn, scratch, "top", Some("base"), |p| {
        assert_eq!(read(p, "a").as_deref(), Some("a1"));
        write(p, "a", "a2");
        write(p, "dir/c", "c2");
        std::fs::remove_file(p.join("gone")).unwrap();
    })
    .await;
    sn.view(NS, "look", Some("top"), no_labels()).await.unwrap();
    with_mount(sn, "look", scratch, |p| {
        assert_eq!(read(p, "a").as_deref(), Some("a2"));
        assert_eq!(read(p, "dir/b").as_deref(), Some("b1"));
        assert_eq!(read(p, "dir/c").as_deref(), Some("c2"));
        assert!(!p.join("gone").exists());
    })
    .await;
    // The base is unchanged.
    sn.view(NS, "look-base", Some("base"), no_labels())
        .await
        .unwrap();
    with_mount(sn, "look-base", scratch, |p| {
        assert_eq!(read(p, "a").as_deref(), Some("a1"));
        assert!(p.join("gone").exists());
        assert!(!p.join("dir/c").exists());
    })
    .await;
}

pub async fn stat_active_and_committed(sn: &dyn Snapshotter, scratch: &Path) {
    let labels: Labels = [("k".to_string(), "v".to_string())].into();
    sn.prepare(NS, "s-active", None, labels.clone())
        .await
        .unwrap();
    let info = sn.stat(NS, "s-active").await.unwrap();
    assert_eq!(info.kind, Kind::Active);
    assert_eq!(info.name, "s-active");
    assert_eq!(info.parent, None);
    assert_eq!(info.labels, labels);
    with_mount(sn, "s-active", scratch, |p| write(p, "f", "x")).await;
    sn.commit(NS, "s-committed", "s-active", no_labels())
        .await
        .unwrap();
    assert_eq!(kind(sn.stat(NS, "s-active").await), ErrorKind::NotFound);
    let info = sn.stat(NS, "s-committed").await.unwrap();
    assert_eq!(info.kind, Kind::Committed);
    sn.prepare(NS, "s-child", Some("s-committed"), no_labels())
        .await
        .unwrap();
    let child = sn.stat(NS, "s-child").await.unwrap();
    assert_eq!(child.parent.as_deref(), Some("s-committed"));
    // A committed snapshot cannot be committed again.
    assert!(sn
        .commit(NS, "again", "s-committed", no_labels())
        .await
        .is_err());
}

pub async fn transitivity(sn: &dyn Snapshotter, scratch: &Path) {
    layer(sn, scratch, "t1", None, |p| write(p, "one", "1")).await;
    layer(sn, scratch, "t2", Some("t1"), |p| write(p, "two", "2")).await;
    layer(sn, scratch, "t3", Some("t2"), |p| write(p, "three", "3")).await;
    sn.prepare(NS, "t4", Some("t3"), no_labels()).await.unwrap();
    with_mount(sn, "t4", scratch, |p| {
        assert_eq!(read(p, "one").as_deref(), Some("1"));
        assert_eq!(read(p, "two").as_deref(), Some("2"));
        assert_eq!(read(p, "three").as_deref(), Some("3"));
    })
    .await;
    assert_eq!(
        sn.stat(NS, "t3").await.unwrap().parent.as_deref(),
        Some("t2")
    );
    assert_eq!(
        sn.stat(NS, "t2").await.unwrap().parent.as_deref(),
        Some("t1")
    );
}

pub async fn view_is_read_only(sn: &dyn Snapshotter, scratch: &Path) {
    layer(sn, scratch, "ro-base", None, |p| write(p, "f", "x")).await;
    layer(sn, scratch, "ro-top", Some("ro-base"), |p| {
        write(p, "g", "y")
    })
    .await;
    for (key, parent) in [("view-1", "ro-base"), ("view-2", "ro-top")] {
        sn.view(NS, key, Some(parent), no_labels()).await.unwrap();
        assert_eq!(sn.stat(NS, key).await.unwrap().kind, Kind::View);
        with_mount(sn, key, scratch, |p| {
            assert_eq!(read(p, "f").as_deref(), Some("x"));
            let err = std::fs::write(p.join("new"), "z").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        })
        .await;
        // A view cannot be committed.
        assert!(sn.commit(NS, "from-view", key, no_labels()).await.is_err());
    }
}

pub async fn prepare_and_view_failures(sn: &dyn Snapshotter, _scratch: &Path) {
    assert_eq!(
        kind(sn.prepare(NS, "p", Some("missing"), no_labels()).await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(sn.view(NS, "v", Some("missing"), no_labels()).await),
        ErrorKind::NotFound
    );
    sn.prepare(NS, "dup", None, no_labels()).await.unwrap();
    assert_eq!(
        kind(sn.prepare(NS, "dup", None, no_labels()).await),
        ErrorKind::AlreadyExists
    );
    // An active snapshot is no parent.
    assert!(sn
        .prepare(NS, "on-active", Some("dup"), no_labels())
        .await
        .is_err());
    for bad in ["", "../x", "a/b", "x\0y"] {
        assert_eq!(
            kind(sn.prepare(NS, bad, None, no_labels()).await),
            ErrorKind::InvalidArgument,
            "{bad:?}"
        );
    }
    assert_eq!(
        kind(sn.prepare("bad/ns", "k", None, no_labels()).await),
        ErrorKind::InvalidArgument
    );
    assert_eq!(kind(sn.stat(NS, "nothing").await), ErrorKind::NotFound);
    assert_eq!(kind(sn.remove(NS, "nothing").await), ErrorKind::NotFound);
}

pub async fn remove_intermediate_is_refused(sn: &dyn Snapshotter, scratch: &Path) {
    layer(sn, scratch, "r1", None, |p| write(p, "f", "1")).await;
    layer(sn, scratch, "r2", Some("r1"), |p| write(p, "g", "2")).await;
    sn.prepare(NS, "r3", Some("r2"), no_labels()).await.unwrap();
    assert_eq!(
        kind(sn.remove(NS, "r1").await),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        kind(sn.remove(NS, "r2").await),
        ErrorKind::FailedPrecondition
    );
    sn.remove(NS, "r3").await.unwrap();
    sn.remove(NS, "r2").await.unwrap();
    sn.remove(NS, "r1").await.unwrap();
    assert_eq!(kind(sn.stat(NS, "r1").await), ErrorKind::NotFound);
    // A second remove finds nothing.
    assert_eq!(kind(sn.remove(NS, "r1").await), ErrorKind::NotFound);
}

pub async fn remove_if_unchanged_spares_a_touched_snapshot(sn: &dyn Snapshotter, scratch: &Path) {
    layer(sn, scratch, "u1", None, |p| write(p, "f", "1")).await;
    let seen = sn.stat(NS, "u1").await.unwrap();
    let mut labelled = seen.clone();
    labelled.labels = Labels::from([("berth.io/lease.l1".to_string(), "1".to_string())]);
    let touched = sn
        .update(NS, labelled, &["labels.berth.io/lease.l1".to_string()])
        .await
        .unwrap();
    assert_ne!(touched.updated_at, seen.updated_at);
    assert_eq!(
        kind(sn.remove_if_unchanged(NS, "u1", seen.updated_at).await),
        ErrorKind::FailedPrecondition
    );
    assert!(sn.stat(NS, "u1").await.is_ok());
    sn.remove_if_unchanged(NS, "u1", touched.updated_at)
        .await
        .unwrap();
    assert_eq!(kind(sn.stat(NS, "u1").await), ErrorKind::NotFound);
}

pub async fn deleted_files_in_child(sn: &dyn Snapshotter, scratch: &Path) {
    layer(sn, scratch, "d1", None, |p| {
        write(p, "keep", "k");
        write(p, "file", "f");
        write(p, "dir/inner", "i");
    })
    .await;
    layer(sn, scratch, "d2", Some("d1"), |p| {
        std::fs::remove_file(p.join("file")).unwrap();
        std::fs::remove_dir_all(p.join("dir")).unwrap();
    })
    .await;
    sn.view(NS, "d-view", Some("d2"), no_labels())
        .await
        .unwrap();
    with_mount(sn, "d-view", scratch, |p| {
        assert!(p.join("keep").exists());
        assert!(!p.join("file").exists());
        assert!(!p.join("dir").exists());
    })
    .await;
}

pub async fn move_file_from_lower_layer(sn: &dyn Snapshotter, scratch: &Path) {
    layer(sn, scratch, "m1", None, |p| {
        write(p, "dir/a", "a");
        write(p, "b", "b");
    })
    .await;
    layer(sn, scratch, "m2", Some("m1"), |p| {
        std::fs::rename(p.join("dir/a"), p.join("moved")).unwrap();
        std::fs::rename(p.join("b"), p.join("dir/b")).unwrap();
    })
    .await;
    sn.view(NS, "m-view", Some("m2"), no_labels())
        .await
        .unwrap();
    with_mount(sn, "m-view", scratch, |p| {
        assert_eq!(read(p, "moved").as_deref(), Some("a"));
        assert_eq!(read(p, "dir/b").as_deref(), Some("b"));
        assert!(!p.join("dir/a").exists());
        assert!(!p.join("b").exists());
    })
    .await;
}

pub async fn directory_permissions_on_commit(sn: &dyn Snapshotter, scratch: &Path) {
    layer(sn, scratch, "perm1", None, |p| {
        std::fs::create_dir(p.join("private")).unwrap();
        std::fs::set_permissions(p.join("private"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        std::fs::create_dir(p.join("odd")).unwrap();
        std::fs::set_permissions(p.join("odd"), std::fs::Permissions::from_mode(0o1751)).unwrap();
    })
    .await;
    layer(sn, scratch, "perm2", Some("perm1"), |p| {
        write(p, "private/x", "x")
    })
    .await;
    sn.view(NS, "perm-view", Some("perm2"), no_labels())
        .await
        .unwrap();
    with_mount(sn, "perm-view", scratch, |p| {
        let mode = |rel: &str| std::fs::metadata(p.join(rel)).unwrap().mode() & 0o7777;
        assert_eq!(mode("private"), 0o700);
        assert_eq!(mode("odd"), 0o1751);
        assert_eq!(mode("."), 0o755, "the root of a snapshot");
    })
    .await;
}

pub async fn chown_in_child(sn: &dyn Snapshotter, scratch: &Path) {
    layer(sn, scratch, "own1", None, |p| write(p, "file", "x")).await;
    layer(sn, scratch, "own2", Some("own1"), |p| {
        std::os::unix::fs::lchown(p.join("file"), Some(1234), Some(5678)).unwrap();
    })
    .await;
    sn.view(NS, "own-view", Some("own2"), no_labels())
        .await
        .unwrap();
    with_mount(sn, "own-view", scratch, |p| {
        let meta = std::fs::metadata(p.join("file")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
        assert_eq!(read(p, "file").as_deref(), Some("x"));
    })
    .await;
}

pub async fn rename_directory(sn: &dyn Snapshotter, scratch: &Path) {
    layer(sn, scratch, "ren1", None, |p| {
        write(p, "d1/d2/f", "deep");
    })
    .await;
    layer(sn, scratch, "ren2", Some("ren1"), |p| {
        // Without redirect_dir, overlayfs refuses to rename a directory
        // from a lower layer (EXDEV) and mv copies it instead, as
        // userspace does everywhere.
        let status = std::process::Command::new("mv")
            .arg(p.join("d1"))
            .arg(p.join("r1"))
            .status()
            .unwrap();
        assert!(status.success());
    })
    .await;
    sn.view(NS, "ren-view", Some("ren2"), no_labels())
        .await
        .unwrap();
    with_mount(sn, "ren-view", scratch, |p| {
        assert_eq!(read(p, "r1/d2/f").as_deref(), Some("deep"));
        assert!(!p.join("d1").exists());
    })
    .await;
}

pub async fn layers_128_mount(sn: &dyn Snapshotter, scratch: &Path) {
    let mut parent: Option<String> = None;
    for i in 0..128 {
        let name = format!("layer-{i}");
        layer(sn, scratch, &name, parent.as_deref(), |p| {
            write(p, &format!("f{i}"), &i.to_string());
            write(p, "top", &i.to_string());
        })
        .await;
        parent = Some(name);
    }
    sn.view(NS, "tall", parent.as_deref(), no_labels())
        .await
        .unwrap();
    with_mount(sn, "tall", scratch, |p| {
        for i in 0..128 {
            assert_eq!(read(p, &format!("f{i}")), Some(i.to_string()));
        }
        assert_eq!(read(p, "top").as_deref(), Some("127"));
    })
    .await;
    sn.prepare(NS, "tall-active", parent.as_deref(), no_labels())
        .await
        .unwrap();
    with_mount(sn, "tall-active", scratch, |p| {
        write(p, "new", "n");
        assert_eq!(read(p, "f0").as_deref(), Some("0"));
    })
    .await;
}

pub async fn labels_update_and_list(sn: &dyn Snapshotter, _scratch: &Path) {
    let labels: Labels = [("a".to_string(), "1".to_string())].into();
    sn.prepare(NS, "lab", None, labels).await.unwrap();
    sn.prepare(NS, "other", None, no_labels()).await.unwrap();
    let mut info = sn.stat(NS, "lab").await.unwrap();
    info.labels = [("b".to_string(), "2".to_string())].into();
    let updated = sn
        .update(NS, info.clone(), &["labels.b".to_string()])
        .await
        .unwrap();
    assert_eq!(updated.labels.get("a").map(String::as_str), Some("1"));
    assert_eq!(updated.labels.get("b").map(String::as_str), Some("2"));
    let replaced = sn.update(NS, info, &[]).await.unwrap();
    assert_eq!(replaced.labels.len(), 1);
    assert_eq!(replaced.labels.get("b").map(String::as_str), Some("2"));
    let found = sn.list(NS, &["labels.b==2".to_string()]).await.unwrap();
    assert_eq!(
        found.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        ["lab"]
    );
    let all = sn.list(NS, &[]).await.unwrap();
    assert_eq!(all.len(), 2);
    // Other namespaces see nothing.
    assert!(sn.list("elsewhere", &[]).await.unwrap().is_empty());
    assert_eq!(kind(sn.stat("elsewhere", "lab").await), ErrorKind::NotFound);
    // Only labels can change.
    let info = sn.stat(NS, "lab").await.unwrap();
    assert_eq!(
        kind(sn.update(NS, info, &["parent".to_string()]).await),
        ErrorKind::InvalidArgument
    );
}

pub async fn release_lease_unties_only_that_lease(sn: &dyn Snapshotter, _scratch: &Path) {
    let l1 = berth_api::labels::lease("l1");
    let l2 = berth_api::labels::lease("l2");
    let with = |pairs: &[(&str, &str)]| -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    sn.prepare(NS, "base-a", None, no_labels()).await.unwrap();
    sn.commit(NS, "held", "base-a", with(&[(&l1, "1"), ("keep", "me")]))
        .await
        .unwrap();
    sn.prepare(NS, "both", Some("held"), with(&[(&l1, "1"), (&l2, "1")]))
        .await
        .unwrap();
    sn.prepare(NS, "free", None, with(&[("other", "x")]))
        .await
        .unwrap();

    assert_eq!(sn.release_lease(NS, "l1").await.unwrap(), 2);
    let held = sn.stat(NS, "held").await.unwrap();
    assert_eq!(held.labels, with(&[("keep", "me")]));
    assert_eq!(
        sn.stat(NS, "both").await.unwrap().labels,
        with(&[(&l2, "1")])
    );
    assert_eq!(
        sn.stat(NS, "free").await.unwrap().labels,
        with(&[("other", "x")])
    );
    assert_eq!(sn.release_lease(NS, "l1").await.unwrap(), 0);
    assert_eq!(sn.release_lease("elsewhere", "l2").await.unwrap(), 0);
    assert_eq!(sn.release_lease(NS, "l2").await.unwrap(), 1);
    assert_eq!(
        kind(sn.release_lease("../bad", "l1").await),
        ErrorKind::InvalidArgument
    );
}

pub async fn usage_counts_own_files(sn: &dyn Snapshotter, scratch: &Path) {
    sn.prepare(NS, "use", None, no_labels()).await.unwrap();
    let empty = sn.usage(NS, "use").await.unwrap();
    with_mount(sn, "use", scratch, |p| {
        std::fs::write(p.join("big"), vec![7u8; 1 << 20]).unwrap();
        std::fs::create_dir(p.join("d")).unwrap();
        std::fs::write(p.join("d/small"), b"x").unwrap();
    })
    .await;
    let used = sn.usage(NS, "use").await.unwrap();
    assert!(used.size >= empty.size + (1 << 20), "{used:?} vs {empty:?}");
    assert_eq!(used.inodes, empty.inodes + 3, "{used:?} vs {empty:?}");
}

/// Reads the extended attribute `name` of `path` (not following it).
fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: path and name are NUL-terminated; buf is a live writable
    // slice of the length given.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: path and name are NUL-terminated; value is a live slice of
    // the length given.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

/// Everything a layer can hold reaches its children intact: set-id modes,
/// owners, mtimes, xattrs, symlinks, hardlinks, device nodes and fifos
/// (the native snapshotter copies them; overlayfs stacks them).
pub async fn special_files_reach_children(sn: &dyn Snapshotter, scratch: &Path) {
    use std::os::unix::fs::FileTypeExt;
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::new(1_234_567_890, 0);
    layer(sn, scratch, "sp1", None, |p| {
        write(p, "bin/tool", "#!/bin/sh\n");
        let tool = p.join("bin/tool");
        std::os::unix::fs::chown(&tool, Some(0), Some(42)).unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o4750)).unwrap();
        set_xattr(&tool, "trusted.berth-suite", b"t\0v");
        set_xattr(&tool, "user.berth-suite", b"u");
        std::fs::hard_link(&tool, p.join("bin/tool-link")).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&tool)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        std::os::unix::fs::symlink("tool", p.join("bin/alias")).unwrap();
        std::os::unix::fs::lchown(p.join("bin/alias"), Some(7), Some(8)).unwrap();
        nix::unistd::mkfifo(
            &p.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        std::fs::set_permissions(p.join("fifo"), std::fs::Permissions::from_mode(0o620)).unwrap();
        nix::sys::stat::mknod(
            &p.join("null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        std::fs::set_permissions(p.join("null"), std::fs::Permissions::from_mode(0o666)).unwrap();
    })
    .await;
    layer(sn, scratch, "sp2", Some("sp1"), |p| write(p, "other", "o")).await;
    sn.view(NS, "sp-view", Some("sp2"), no_labels())
        .await
        .unwrap();
    with_mount(sn, "sp-view", scratch, |p| {
        let tool = std::fs::symlink_metadata(p.join("bin/tool")).unwrap();
        assert_eq!(tool.mode() & 0o7777, 0o4750);
        assert_eq!((tool.uid(), tool.gid()), (0, 42));
        assert_eq!(tool.modified().unwrap(), mtime);
        assert_eq!(
            xattr(&p.join("bin/tool"), "trusted.berth-suite").as_deref(),
            Some(&b"t\0v"[..])
        );
        assert_eq!(
            xattr(&p.join("bin/tool"), "user.berth-suite").as_deref(),
            Some(&b"u"[..])
        );
        let link = std::fs::symlink_metadata(p.join("bin/tool-link")).unwrap();
        assert_eq!((link.dev(), link.ino()), (tool.dev(), tool.ino()));
        assert_eq!(tool.nlink(), 2);
        assert_eq!(
            std::fs::read_link(p.join("bin/alias")).unwrap(),
            Path::new("tool")
        );
        let alias = std::fs::symlink_metadata(p.join("bin/alias")).unwrap();
        assert_eq!((alias.uid(), alias.gid()), (7, 8));
        let fifo = std::fs::symlink_metadata(p.join("fifo")).unwrap();
        assert!(fifo.file_type().is_fifo());
        assert_eq!(fifo.mode() & 0o7777, 0o620);
        let null = std::fs::symlink_metadata(p.join("null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
        assert_eq!(read(p, "other").as_deref(), Some("o"));
    })
    .await;
}

/// Runs every case against one implementation: `$setup` is an async fn
/// returning `(snapshotter, scratch dir, guard)`.
#[macro_export]
macro_rules! snapshot_suite {
    ($setup:path) => {
        $crate::snapshot_suite!(@cases $setup;
            basic_stacking,
            stat_active_and_committed,
            transitivity,
            view_is_read_only,
            prepare_and_view_failures,
            remove_intermediate_is_refused,
            remove_if_unchanged_spares_a_touched_snapshot,
            deleted_files_in_child,
            move_file_from_lower_layer,
            directory_permissions_on_commit,
            chown_in_child,
            rename_directory,
            layers_128_mount,
            labels_update_and_list,
            release_lease_unties_only_that_lease,
            usage_counts_own_files,
            special_files_reach_children,
        );
    };
    (@cases $setup:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if !$crate::testsuite::require_root() {
                    return;
                }
                let (sn, scratch, _guard) = $setup().await;
                $crate::testsuite::$case(&sn, &scratch).await;
            }
        )*
    };
}
