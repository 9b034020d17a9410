#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The native snapshotter's in-process copy against `cp -a`: a tree with
//! every kind of file and every kind of metadata (as root: owners, device
//! nodes, file capabilities, trusted xattrs) must come out of both the
//! same, and on a filesystem with reflinks the content must be shared.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_snapd::copy::copy_tree;
use berth_snapshot::loop_mount::LoopMount;
use nix::sys::stat::{makedev, Mode, SFlag};

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let cpath = CString::new(path.as_os_str().as_bytes()).unwrap();
    let cname = CString::new(name).unwrap();
    // SAFETY: both strings are NUL-terminated; value is a live slice of
    // the length given.
    let rc = unsafe {
        libc::lsetxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "{name} on {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let cpath = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    // SAFETY: cpath is NUL-terminated; names is a live writable buffer of
    // the length given.
    let n = unsafe { libc::llistxattr(cpath.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let n = usize::try_from(n).unwrap_or(0);
    let mut out = BTreeMap::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).unwrap();
        let mut value = vec![0u8; 4096];
        // SAFETY: as above.
        let len = unsafe {
            libc::lgetxattr(
                cpath.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        value.truncate(usize::try_from(len).unwrap());
        out.insert(name.to_vec(), value);
    }
    out
}

/// What `cp -a` keeps of one entry (atime aside: reading the source
/// changes it, so it is checked against the source as it was).
#[derive(Debug, PartialEq, Eq)]
struct Kept {
    kind: String,
    mode: u32,
    owner: (u32, u32),
    rdev: u64,
    size: u64,
    mtime: (i64, i64),
    nlink: u64,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    target: Option<PathBuf>,
    content: Option<Vec<u8>>,
}

fn kept(path: &Path) -> Kept {
    let meta = std::fs::symlink_metadata(path).unwrap();
    let ft = meta.file_type();
    Kept {
        kind: format!("{ft:?}"),
        mode: meta.mode(),
        owner: (meta.uid(), meta.gid()),
        rdev: meta.rdev(),
        size: if ft.is_dir() { 0 } else { meta.size() },
        mtime: (meta.mtime(), meta.mtime_nsec()),
        nlink: if ft.is_dir() { 0 } else { meta.nlink() },
        xattrs: xattrs(path),
        target: ft.is_symlink().then(|| std::fs::read_link(path).unwrap()),
        content: ft.is_file().then(|| std::fs::read(path).unwrap()),
    }
}

/// Every path below `root` (relative), the root itself included as "".
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::new()];
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(root.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let child = rel.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                stack.push(child.clone());
            }
            out.push(child);
        }
    }
    out.sort();
    out
}

/// Names grouped by inode: hardlinks must link the same names.
fn link_groups(root: &Path) -> Vec<Vec<PathBuf>> {
    let mut groups: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    for rel in walk(root) {
        let meta = std::fs::symlink_metadata(root.join(&rel)).unwrap();
        if !meta.is_dir() && meta.nlink() > 1 {
            groups.entry(meta.ino()).or_default().push(rel);
        }
    }
    let mut groups: Vec<_> = groups.into_values().collect();
    groups.sort();
    groups
}

fn set_times(path: &Path, atime: i64, mtime: i64) {
    let (a, m) = (
        nix::sys::time::TimeSpec::new(atime, 111),
        nix::sys::time::TimeSpec::new(mtime, 222_333_444),
    );
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &a,
        &m,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// A tree with every kind of entry and metadata a layer can carry.
fn build(src: &Path) {
    let p = |rel: &str| src.join(rel);
    for (dir, mode) in [
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("srv", 0o2750),
        ("a/b/c", 0o700),
    ] {
        std::fs::create_dir_all(p(dir)).unwrap();
        std::fs::set_permissions(p(dir), PermissionsExt::from_mode(mode)).unwrap();
    }
    std::fs::write(p("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
    std::fs::write(p("srv/owned"), b"owned").unwrap();
    std::os::unix::fs::chown(p("srv/owned"), Some(1000), Some(2000)).unwrap();
    std::os::unix::fs::chown(p("srv"), Some(33), Some(33)).unwrap();
    std::fs::write(p("ping"), vec![0x7f; 10_000]).unwrap();
    std::os::unix::fs::chown(p("ping"), Some(0), Some(0)).unwrap();
    std::fs::set_permissions(p("ping"), PermissionsExt::from_mode(0o4755)).unwrap();
    // cap_net_raw+ep, VFS_CAP_REVISION_2.
    let mut cap = Vec::new();
    for word in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
        cap.extend_from_slice(&word.to_le_bytes());
    }
    std::fs::write(p("capped"), b"c").unwrap();
    set_xattr(&p("capped"), "security.capability", &cap);
    set_xattr(&p("etc/passwd"), "trusted.berth", b"t\0rusted");
    set_xattr(&p("etc/passwd"), "user.berth", b"user");
    set_xattr(&p("tmp"), "trusted.dir", b"d");
    std::fs::hard_link(p("etc/passwd"), p("a/b/c/passwd-link")).unwrap();
    std::fs::hard_link(p("etc/passwd"), p("passwd-link")).unwrap();
    std::os::unix::fs::symlink("../../etc/passwd", p("a/b/rel")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", p("abs")).unwrap();
    std::os::unix::fs::lchown(p("abs"), Some(5), Some(6)).unwrap();
    std::fs::hard_link(p("abs"), p("abs-link")).unwrap();
    for (name, kind, dev, mode) in [
        ("null", SFlag::S_IFCHR, makedev(1, 3), 0o666),
        ("sda", SFlag::S_IFBLK, makedev(8, 0), 0o660),
        ("fifo", SFlag::S_IFIFO, 0, 0o620),
    ] {
        nix::sys::stat::mknod(&p(name), kind, Mode::from_bits_truncate(0o600), dev).unwrap();
        std::fs::set_permissions(p(name), PermissionsExt::from_mode(mode)).unwrap();
    }
    set_xattr(&p("null"), "trusted.node", b"n");
    drop(std::os::unix::net::UnixListener::bind(p("socket")).unwrap());
    let sparse = std::fs::File::create(p("sparse")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"tail", 100 << 20).unwrap();
    drop(sparse);
    // Access times after every other time and in the future: with
    // relatime, reading the tree (the copies do) leaves them alone.
    for (i, rel) in walk(src).iter().rev().enumerate() {
        set_times(
            &src.join(rel),
            4_000_000_000 + i as i64,
            2_000_000 + i as i64,
        );
    }
}

fn cp_a(from: &Path, to: &Path) {
    let mut source = from.as_os_str().to_owned();
    source.push("/.");
    let status = Command::new("cp")
        .arg("-a")
        .arg("--")
        .arg(source)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn the_copy_keeps_what_cp_a_keeps() {
    if !berth_snapshot::testsuite::require_root() {
        return;
    }
    let top = tempfile::tempdir().unwrap();
    let (src, ours, theirs) = (
        top.path().join("src"),
        top.path().join("ours"),
        top.path().join("theirs"),
    );
    for dir in [&src, &ours, &theirs] {
        std::fs::create_dir(dir).unwrap();
    }
    build(&src);
    let before: Vec<(PathBuf, Kept, (i64, i64), u64)> = walk(&src)
        .into_iter()
        .map(|rel| {
            let meta = std::fs::symlink_metadata(src.join(&rel)).unwrap();
            let kept = kept(&src.join(&rel));
            (rel, kept, (meta.atime(), meta.atime_nsec()), meta.blocks())
        })
        .collect();

    copy_tree(&src, &ours).unwrap();
    // Access times first, by lstat alone: reading the copy changes them.
    for (rel, _, atime, _) in &before {
        let meta = std::fs::symlink_metadata(ours.join(rel)).unwrap();
        assert_eq!(
            (meta.atime(), meta.atime_nsec()),
            *atime,
            "atime of {}",
            rel.display()
        );
    }
    cp_a(&src, &theirs);

    assert_eq!(walk(&ours), walk(&src));
    assert_eq!(walk(&theirs), walk(&src));
    for (rel, source, _, blocks) in &before {
        assert_eq!(&kept(&ours.join(rel)), source, "ours: {}", rel.display());
        assert_eq!(&kept(&theirs.join(rel)), source, "cp -a: {}", rel.display());
        let meta = std::fs::symlink_metadata(ours.join(rel)).unwrap();
        if meta.is_file() {
            // Holes stay holes (no more blocks than the source, give or
            // take the filesystem's rounding).
            assert!(meta.blocks() <= blocks + 8, "{}", rel.display());
        }
    }
    assert_eq!(link_groups(&ours), link_groups(&src));
    assert_eq!(link_groups(&theirs), link_groups(&src));
    assert_eq!(link_groups(&ours).len(), 2);
    assert!(std::fs::symlink_metadata(ours.join("socket"))
        .unwrap()
        .file_type()
        .is_socket());
}

#[test]
fn content_is_shared_where_the_filesystem_has_reflinks() {
    if !berth_snapshot::testsuite::require_root() {
        return;
    }
    let Some(mount) = LoopMount::new("mkfs.xfs", &["-q", "-m", "reflink=1"], 512 << 20) else {
        return;
    };
    let (src, to) = (mount.dir.join("src"), mount.dir.join("to"));
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::create_dir(&to).unwrap();
    let data: Vec<u8> = (0..(8u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(src.join("d/big"), &data).unwrap();
    std::fs::write(src.join("small"), b"s").unwrap();
    nix::unistd::sync();
    let free = || {
        nix::sys::statvfs::statvfs(&mount.dir)
            .unwrap()
            .blocks_free()
    };
    let free_before = free();

    let stats = copy_tree(&src, &to).unwrap();
    nix::unistd::sync();

    assert_eq!(stats.reflinked, 2, "{stats:?}");
    assert_eq!(stats.bytes, 0, "{stats:?}");
    assert_eq!(std::fs::read(to.join("d/big")).unwrap(), data);
    // 8 MiB shared, not copied: far less than 8 MiB of space went.
    let block = nix::sys::statvfs::statvfs(&mount.dir)
        .unwrap()
        .fragment_size();
    let used = (free_before - free()) * block;
    assert!(used < 4 << 20, "{used} bytes used by the copy");
    let filefrag = Command::new("filefrag")
        .arg("-v")
        .arg(to.join("d/big"))
        .output()
        .unwrap();
    if filefrag.status.success() {
        let report = String::from_utf8_lossy(&filefrag.stdout);
        assert!(report.contains("shared"), "{report}");
    }
    drop(mount);
}
