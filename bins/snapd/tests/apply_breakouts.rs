#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The adversarial layer corpus: each case applies a hostile tarball to a
//! snapshot root that has canaries next to it, and checks that nothing
//! outside the root changed (content, mode, mtime, existence, and no new
//! entries). After containerd's TestBreakouts and the tar-rs escapes:
//! CVE-2021-32760 (`hardlink_to_a_symlink_then_chmod`), tar-rs #129 and
//! #238 and GHSA-j4xf-2g29-59ph (the symlink and `..` cases), and
//! CVE-2025-62518 (`pax_size_that_disagrees_with_ustar`, and
//! `pax_size_entries_are_the_ones_gnu_tar_sees` against GNU tar).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use berth_snapd::apply::{apply, ApplyOptions, Host};

/// A tar archive written header by header, so that names tar's builder
/// would refuse (`..`, absolute) can be made.
struct RawTar(Vec<u8>);

impl RawTar {
    fn new() -> RawTar {
        RawTar(Vec::new())
    }

    fn entry(&mut self, name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8], mode: u32) {
        self.entry_owned(name, kind, link, data, mode, (0, 0));
    }

    fn entry_owned(
        &mut self,
        name: &[u8],
        kind: tar::EntryType,
        link: &[u8],
        data: &[u8],
        mode: u32,
        (uid, gid): (u64, u64),
    ) {
        let mut header = tar::Header::new_ustar();
        {
            let raw = header.as_old_mut();
            raw.name = [0; 100];
            raw.name[..name.len()].copy_from_slice(name);
            raw.linkname = [0; 100];
            raw.linkname[..link.len()].copy_from_slice(link);
        }
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_mtime(1_600_000_000);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_cksum();
        self.0.extend_from_slice(header.as_bytes());
        self.pad_data(data);
    }

    /// A regular file whose header `edit` changes last (the checksum is
    /// made after it).
    fn file_with_header(&mut self, name: &str, data: &[u8], edit: impl FnOnce(&mut tar::Header)) {
        let mut header = tar::Header::new_ustar();
        header.set_path(name).unwrap();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_mtime(1_600_000_000);
        header.set_uid(1000);
        header.set_gid(1000);
        edit(&mut header);
        header.set_cksum();
        self.0.extend_from_slice(header.as_bytes());
        self.pad_data(data);
    }

    fn pad_data(&mut self, data: &[u8]) {
        self.0.extend_from_slice(data);
        let rem = data.len() % 512;
        if rem != 0 {
            self.0.extend(std::iter::repeat_n(0u8, 512 - rem));
        }
    }

    /// A regular file whose name, longer than a ustar header holds, comes
    /// in a GNU long-name entry before it.
    fn gnu_long_name(&mut self, name: &[u8], data: &[u8]) {
        let mut long = name.to_vec();
        long.push(0);
        self.entry(
            b"././@LongLink",
            tar::EntryType::GNULongName,
            b"",
            &long,
            0o644,
        );
        self.entry(&name[..99], tar::EntryType::Regular, b"", data, 0o644);
    }

    fn file(&mut self, name: &str, data: &[u8]) {
        self.entry(name.as_bytes(), tar::EntryType::Regular, b"", data, 0o644);
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(
            name.as_bytes(),
            tar::EntryType::Symlink,
            target.as_bytes(),
            b"",
            0o777,
        );
    }

    fn hardlink(&mut self, name: &str, target: &str) {
        self.entry(
            name.as_bytes(),
            tar::EntryType::Link,
            target.as_bytes(),
            b"",
            0o644,
        );
    }

    fn dir(&mut self, name: &str, mode: u32) {
        self.entry(name.as_bytes(), tar::EntryType::Directory, b"", b"", mode);
    }

    fn pax(&mut self, records: &[(&str, &str)]) {
        let mut body = Vec::new();
        for (k, v) in records {
            let rest = format!(" {k}={v}\n");
            let mut len = rest.len() + 1;
            while format!("{len}{rest}").len() != len {
                len += 1;
            }
            body.extend_from_slice(format!("{len}{rest}").as_bytes());
        }
        self.entry(b"PaxHeader", tar::EntryType::XHeader, b"", &body, 0o644);
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend(std::iter::repeat_n(0u8, 1024));
        self.0
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Snapshot(Vec<(PathBuf, bool, Vec<u8>, u32, i64, u64)>);

/// Everything under `dir`: path, is-dir, content, mode, mtime, nlink.
fn snapshot(dir: &Path) -> Snapshot {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let content = if meta.is_file() {
            std::fs::read(&p).unwrap()
        } else {
            Vec::new()
        };
        out.push((
            p.clone(),
            meta.is_dir(),
            content,
            meta.mode(),
            meta.mtime(),
            meta.nlink(),
        ));
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    Snapshot(out)
}

struct Case {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("canary"), b"canary").unwrap();
        std::fs::set_permissions(
            outside.join("canary"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::fs::create_dir(outside.join("canary-dir")).unwrap();
        std::fs::write(outside.join("canary-dir/inner"), b"inner").unwrap();
        for p in ["canary", "canary-dir/inner", "canary-dir"] {
            let t = std::fs::FileTimes::new()
                .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000));
            std::fs::File::options()
                .read(true)
                .open(outside.join(p))
                .unwrap()
                .set_times(t)
                .unwrap();
        }
        Case {
            _dir: dir,
            root,
            outside,
        }
    }

    fn canary(&self) -> String {
        self.outside.join("canary").display().to_string()
    }

    /// Applies `layer` (overlay or native rules) and checks the canaries.
    /// Returns whether the apply succeeded.
    fn apply_checked(&self, layer: &[u8], overlay: bool) -> bool {
        let before = snapshot(&self.outside);
        let options = ApplyOptions {
            overlay,
            lowers: Vec::new(),
            lowers_pending: false,
            devices: false,
            sync_fs: false,
        };
        let result = apply(layer, &self.root, &options, &Host);
        let after = snapshot(&self.outside);
        assert_eq!(before, after, "something outside the root changed");
        result.is_ok()
    }
}

/// What one layer of an attack must come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Applied,
    Refused,
}

/// One layer of an attack, and what it must come to under overlay rules
/// and under native rules.
struct Step {
    layer: Vec<u8>,
    overlay: Outcome,
    native: Outcome,
}

impl Step {
    fn both(outcome: Outcome, build: impl FnOnce(&mut RawTar)) -> Step {
        Step::each(outcome, outcome, build)
    }

    fn each(overlay: Outcome, native: Outcome, build: impl FnOnce(&mut RawTar)) -> Step {
        let mut t = RawTar::new();
        build(&mut t);
        Step {
            layer: t.finish(),
            overlay,
            native,
        }
    }
}

/// Runs an attack twice, once with overlay rules and once with native
/// rules, each on a fresh root: the layers `steps` makes for that case are
/// applied in turn to the same root, the canaries are checked after every
/// layer, and each layer must come to its expected outcome. Hostile
/// entries get a layer each, so an entry refused early cannot keep the
/// ones after it from being tried. Returns the (overlay, native) cases so
/// the caller can look at where things landed.
fn attack(steps: impl Fn(&Case) -> Vec<Step>) -> (Case, Case) {
    let run = |overlay: bool| {
        let case = Case::new();
        for (i, step) in steps(&case).into_iter().enumerate() {
            let expected = if overlay { step.overlay } else { step.native };
            let applied = case.apply_checked(&step.layer, overlay);
            let outcome = if applied {
                Outcome::Applied
            } else {
                Outcome::Refused
            };
            assert_eq!(
                outcome,
                expected,
                "layer {i} with {} rules",
                if overlay { "overlay" } else { "native" }
            );
        }
        case
    };
    (run(true), run(false))
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
}

fn is_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_dir())
        .unwrap_or(false)
}

use Outcome::{Applied, Refused};

#[test]
fn dotdot_names_stay_inside() {
    let case = Case::new();
    let mut t = RawTar::new();
    t.file("../outside/canary", b"pwned");
    t.file("a/../../../outside/canary", b"pwned");
    t.dir("../outside/canary-dir", 0o777);
    let layer = t.finish();
    assert!(case.apply_checked(&layer, false));
    assert_eq!(
        std::fs::read(case.root.join("outside/canary")).unwrap(),
        b"pwned"
    );
}

#[test]
fn absolute_names_stay_inside() {
    let case = Case::new();
    let mut t = RawTar::new();
    let name = case.canary();
    t.file(&name, b"pwned");
    let layer = t.finish();
    assert!(case.apply_checked(&layer, false));
    assert_eq!(
        std::fs::read(case.root.join(name.trim_start_matches('/'))).unwrap(),
        b"pwned"
    );
}

#[test]
fn symlink_then_write_through() {
    let (overlay, native) = attack(|case| {
        let outside = case.outside.display().to_string();
        vec![
            Step::both(Applied, |t| t.symlink("link", &outside)),
            // `link` resolves inside the root, where its target is not.
            Step::both(Refused, |t| t.file("link/canary", b"pwned")),
            Step::both(Refused, |t| t.dir("link/canary-dir", 0o777)),
            Step::both(Refused, |t| t.file("link/canary-dir/inner", b"pwned")),
            // A directory entry over the symlink replaces it; it never
            // follows it to chmod the directory outside.
            Step::both(Applied, |t| t.dir("link", 0o777)),
            Step::both(Applied, |t| t.file("link/canary", b"inside")),
        ]
    });
    for case in [overlay, native] {
        assert!(is_dir(&case.root.join("link")));
        assert_eq!(
            std::fs::read(case.root.join("link/canary")).unwrap(),
            b"inside"
        );
    }
}

#[test]
fn symlink_up_and_out() {
    let (overlay, native) = attack(|_| {
        vec![
            Step::both(Applied, |t| {
                t.symlink("up", "../../../../../../../../outside")
            }),
            Step::both(Applied, |t| t.symlink("deep/up2", "../../outside")),
            // Both resolve to `/outside` of the root, which is not there.
            Step::both(Refused, |t| t.file("up/canary", b"pwned")),
            Step::both(Refused, |t| t.file("deep/up2/canary", b"pwned")),
            Step::both(Refused, |t| t.dir("up/canary-dir", 0o777)),
            // Once the root has an `/outside`, the same entries land there.
            Step::both(Applied, |t| t.dir("outside", 0o755)),
            Step::both(Applied, |t| t.file("up/canary", b"up")),
            Step::both(Applied, |t| t.file("deep/up2/canary2", b"up2")),
            // A file entry over a symlink to the canary replaces the link.
            Step::both(Applied, |t| t.symlink("file-link", "../outside/canary")),
            Step::both(Applied, |t| t.file("file-link", b"pwned")),
        ]
    });
    for case in [overlay, native] {
        let root = &case.root;
        assert_eq!(std::fs::read(root.join("outside/canary")).unwrap(), b"up");
        assert_eq!(std::fs::read(root.join("outside/canary2")).unwrap(), b"up2");
        assert!(!is_symlink(&root.join("file-link")));
        assert_eq!(std::fs::read(root.join("file-link")).unwrap(), b"pwned");
    }
}

#[test]
fn symlink_planted_in_a_lower_layer() {
    let (overlay, native) = attack(|case| {
        let outside = case.outside.display().to_string();
        vec![
            Step::both(Applied, |t| t.symlink("etc", &outside)),
            Step::both(Refused, |t| t.file("etc/canary", b"pwned")),
            Step::both(Refused, |t| t.hardlink("etc/canary-link", "etc/canary")),
            Step::both(Refused, |t| t.symlink("etc/canary", "/x")),
            Step::both(Refused, |t| t.dir("etc/canary-dir", 0o777)),
            // The planted link is replaced, never followed.
            Step::both(Applied, |t| t.dir("etc", 0o777)),
            Step::both(Applied, |t| t.file("etc/new", b"x")),
        ]
    });
    for case in [overlay, native] {
        assert!(is_dir(&case.root.join("etc")));
        let mode = std::fs::metadata(case.root.join("etc")).unwrap().mode();
        assert_eq!(mode & 0o7777, 0o777);
        assert_eq!(std::fs::read(case.root.join("etc/new")).unwrap(), b"x");
    }
}

#[test]
fn hardlink_down_and_out() {
    let (overlay, native) = attack(|case| {
        let canary = case.canary();
        vec![
            // Link targets resolve inside the root, where there is no
            // canary to link to.
            Step::both(Refused, |t| t.hardlink("hl", "../outside/canary")),
            Step::both(Refused, |t| t.hardlink("hl-abs", &canary)),
            Step::both(Applied, |t| t.file("hl", b"pwned")),
            // A symlink inside the root that points out is linked itself,
            // never followed.
            Step::both(Applied, |t| t.symlink("sym", &canary)),
            Step::both(Applied, |t| t.hardlink("hl-sym", "sym")),
            Step::both(Applied, |t| t.file("hl-sym", b"pwned")),
        ]
    });
    for case in [overlay, native] {
        let canary = std::fs::metadata(case.outside.join("canary")).unwrap();
        assert_eq!(canary.nlink(), 1);
        assert_eq!(std::fs::read(case.root.join("hl")).unwrap(), b"pwned");
        assert!(is_symlink(&case.root.join("sym")));
        assert!(!is_symlink(&case.root.join("hl-sym")));
    }
}

#[test]
fn hardlink_to_a_symlink_then_chmod() {
    let (overlay, native) = attack(|case| {
        let canary = case.canary();
        vec![
            Step::both(Applied, |t| t.symlink("sym", &canary)),
            Step::both(Applied, |t| t.hardlink("hl", "sym")),
            Step::both(Applied, |t| {
                t.entry(b"hl", tar::EntryType::Regular, b"", b"pwned", 0o777)
            }),
            Step::both(Applied, |t| t.symlink("sym2", &canary)),
            Step::both(Applied, |t| t.hardlink("hl2", "sym2")),
            Step::both(Applied, |t| t.dir("hl2", 0o777)),
        ]
    });
    for case in [overlay, native] {
        assert_eq!(std::fs::read(case.root.join("hl")).unwrap(), b"pwned");
        assert!(is_dir(&case.root.join("hl2")));
        assert!(is_symlink(&case.root.join("sym2")));
    }
}

#[test]
fn whiteout_of_dotdot_and_through_symlinks() {
    let (overlay, native) = attack(|case| {
        let outside = case.outside.display().to_string();
        vec![
            Step::both(Refused, |t| t.file(".wh...", b"")),
            Step::both(Refused, |t| t.file("a/.wh...", b"")),
            Step::both(Refused, |t| t.file(".wh..", b"")),
            Step::both(Applied, |t| t.symlink("w", &outside)),
            // Through the symlink: resolved inside the root, where the
            // target is not.
            Step::each(Refused, Applied, |t| t.file("w/.wh.canary", b"")),
            Step::each(Refused, Applied, |t| {
                t.file("w/canary-dir/.wh..wh..opq", b"")
            }),
            // `..` is cleaned away: this names `outside/` of the root.
            Step::both(Applied, |t| t.file("../outside/.wh.canary", b"")),
            Step::both(Applied, |t| t.file("../outside/.wh..wh..opq", b"")),
        ]
    });
    assert!(
        std::fs::symlink_metadata(overlay.root.join("outside/canary"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    assert!(!native.root.join("outside").exists());
}

#[test]
fn device_nodes_where_not_allowed() {
    let case = Case::new();
    let mut t = RawTar::new();
    t.entry(b"dev/evil", tar::EntryType::Block, b"", b"", 0o666);
    t.entry(b"dev/chr", tar::EntryType::Char, b"", b"", 0o666);
    assert!(case.apply_checked(&t.finish(), false));
    assert!(!case.root.join("dev/evil").exists());
    assert!(!case.root.join("dev/chr").exists());
}

/// CVE-2025-62518 ("TARmageddon"): a PAX size that disagrees with the
/// ustar header made tokio-tar see other entries than other parsers.
#[test]
fn pax_size_that_disagrees_with_ustar() {
    // The PAX record claims no data; the ustar header claims 1024 bytes,
    // which hold a hidden header for an escaping file. Whatever a parser
    // makes of it, nothing may land outside.
    let (overlay, native) = attack(|_| {
        let mut hidden = RawTar::new();
        hidden.file("../outside/canary", b"pwned");
        let hidden = hidden.0;
        vec![
            Step::both(Applied, |t| {
                t.pax(&[("size", "0")]);
                t.entry(b"smuggler", tar::EntryType::Regular, b"", &hidden, 0o644);
                t.file("after", b"after");
            }),
            Step::both(Refused, |t| {
                t.pax(&[("size", "99999999")]);
                t.file("short", b"x");
            }),
        ]
    });
    for case in [overlay, native] {
        // The PAX size wins: the hidden header is read as an entry of its
        // own, and lands inside the root.
        assert_eq!(
            std::fs::metadata(case.root.join("smuggler")).unwrap().len(),
            0
        );
        assert_eq!(
            std::fs::read(case.root.join("outside/canary")).unwrap(),
            b"pwned"
        );
        assert_eq!(std::fs::read(case.root.join("after")).unwrap(), b"after");
    }
}

#[test]
fn deep_paths() {
    let deep = "d/".repeat(1500) + "file";
    let climb = "../".repeat(1500) + "outside/canary";
    // Apply holds a descriptor per directory level; the daemons raise
    // their soft open-file limit to the hard one at start, and so does
    // this test.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    for overlay in [true, false] {
        let case = Case::new();
        let mut t = RawTar::new();
        t.gnu_long_name(deep.as_bytes(), b"deep");
        assert!(case.apply_checked(&t.finish(), overlay));
        assert_eq!(std::fs::read(case.root.join(&deep)).unwrap(), b"deep");
        // `..` is cleaned away, whatever the depth.
        let mut t = RawTar::new();
        t.gnu_long_name(climb.as_bytes(), b"pwned");
        assert!(case.apply_checked(&t.finish(), overlay));
        assert_eq!(
            std::fs::read(case.root.join("outside/canary")).unwrap(),
            b"pwned"
        );
    }
}

#[test]
fn a_normal_layer_applies_faithfully() {
    let case = Case::new();
    let mut t = RawTar::new();
    t.dir("etc", 0o755);
    t.entry(
        b"etc/secret",
        tar::EntryType::Regular,
        b"",
        b"s3cret",
        0o600,
    );
    t.entry(
        b"bin/tool",
        tar::EntryType::Regular,
        b"",
        b"#!/bin/sh\n",
        0o4755,
    );
    t.symlink("bin/sh", "busybox");
    t.file("bin/busybox", b"bb");
    t.hardlink("bin/ls", "bin/busybox");
    t.entry(b"run/fifo", tar::EntryType::Fifo, b"", b"", 0o620);
    t.dir("private", 0o700);
    t.pax(&[
        ("SCHILY.xattr.user.note", "hello"),
        ("mtime", "1234567890.5"),
    ]);
    t.file("noted", b"n");
    let layer = t.finish();
    assert!(case.apply_checked(&layer, false));
    let r = &case.root;
    let mode = |p: &str| std::fs::symlink_metadata(r.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(std::fs::read(r.join("etc/secret")).unwrap(), b"s3cret");
    assert_eq!(mode("etc/secret"), 0o600);
    assert_eq!(mode("bin/tool"), 0o4755);
    assert_eq!(mode("private"), 0o700);
    assert_eq!(
        std::fs::read_link(r.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let bb = std::fs::metadata(r.join("bin/busybox")).unwrap();
    let ls = std::fs::metadata(r.join("bin/ls")).unwrap();
    assert_eq!(bb.ino(), ls.ino());
    assert!(std::fs::symlink_metadata(r.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(mode("run/fifo"), 0o620);
    assert_eq!(
        std::fs::metadata(r.join("etc/secret")).unwrap().mtime(),
        1_600_000_000
    );
    assert_eq!(
        std::fs::metadata(r.join("etc")).unwrap().mtime(),
        1_600_000_000
    );
    let noted = std::fs::metadata(r.join("noted")).unwrap();
    assert_eq!(
        (noted.mtime(), noted.mtime_nsec()),
        (1_234_567_890, 500_000_000)
    );
    let mut value = [0u8; 16];
    let path = std::ffi::CString::new(r.join("noted").display().to_string()).unwrap();
    // SAFETY: path is NUL-terminated, value is a live buffer of its length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"user.note".as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    // tmpfs and most filesystems keep user xattrs; where not, skip the check.
    if n >= 0 {
        assert_eq!(&value[..n as usize], b"hello");
    }
}

#[test]
fn whiteouts_become_overlay_whiteouts_or_deletions() {
    let mut lower = RawTar::new();
    lower.file("gone", b"x");
    lower.file("dir/old", b"o");
    lower.file("keep", b"k");
    let lower = lower.finish();
    let mut upper = RawTar::new();
    upper.file(".wh.gone", b"");
    upper.dir("dir", 0o755);
    upper.file("dir/.wh..wh..opq", b"");
    upper.file("dir/new", b"n");
    let upper = upper.finish();

    // Native: one directory, deletions.
    let case = Case::new();
    assert!(case.apply_checked(&lower, false));
    assert!(case.apply_checked(&upper, false));
    assert!(!case.root.join("gone").exists());
    assert!(!case.root.join("dir/old").exists());
    assert!(case.root.join("dir/new").exists());
    assert!(case.root.join("keep").exists());

    // Overlay: the upper directory gets a 0/0 char device and the opaque
    // xattr.
    let case = Case::new();
    assert!(case.apply_checked(&upper, true));
    let wh = std::fs::symlink_metadata(case.root.join("gone")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    let path = std::ffi::CString::new(case.root.join("dir").display().to_string()).unwrap();
    let mut value = [0u8; 4];
    // SAFETY: path is NUL-terminated, value is a live buffer of its length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    assert_eq!(n, 1, "{}", std::io::Error::last_os_error());
    assert_eq!(value[0], b'y');
}

#[test]
fn hardlink_to_a_file_of_a_lower_layer_is_copied_up_on_overlay() {
    let lower = Case::new();
    let mut t = RawTar::new();
    t.entry(b"bin/busybox", tar::EntryType::Regular, b"", b"bb", 0o755);
    assert!(lower.apply_checked(&t.finish(), true));
    let upper = Case::new();
    let mut t = RawTar::new();
    t.hardlink("bin/ls", "bin/busybox");
    let before = snapshot(&lower.root);
    let options = ApplyOptions {
        overlay: true,
        lowers: vec![lower.root.clone()],
        lowers_pending: false,
        devices: false,
        sync_fs: false,
    };
    apply(&t.finish()[..], &upper.root, &options, &Host).unwrap();
    let ls = std::fs::metadata(upper.root.join("bin/ls")).unwrap();
    let bb = std::fs::metadata(upper.root.join("bin/busybox")).unwrap();
    assert_eq!(ls.ino(), bb.ino());
    assert_eq!(ls.mode() & 0o7777, 0o755);
    assert_eq!(std::fs::read(upper.root.join("bin/ls")).unwrap(), b"bb");
    // The lower layer is never written.
    assert_eq!(before, snapshot(&lower.root));
    // Without the lower layer the link has no target.
    let alone = Case::new();
    let mut t = RawTar::new();
    t.hardlink("bin/ls", "bin/busybox");
    assert!(!alone.apply_checked(&t.finish(), true));
}

#[test]
fn hardlink_to_a_lower_file_while_the_lowers_are_pending_asks_to_apply_again() {
    // A layer applied alongside the layers below it (lowers pending): a
    // link to a file it does not hold itself cannot be resolved yet, and
    // says so with its own kind of error, not as bad input.
    let case = Case::new();
    let mut t = RawTar::new();
    t.hardlink("bin/ls", "bin/busybox");
    let options = ApplyOptions {
        overlay: true,
        lowers_pending: true,
        ..ApplyOptions::default()
    };
    let err = apply(&t.finish()[..], &case.root, &options, &Host).unwrap_err();
    assert_eq!(err.kind(), berth_errdefs::ErrorKind::Aborted, "{err}");
    // A link within the layer itself needs nothing below it.
    let within = Case::new();
    let mut t = RawTar::new();
    t.entry(b"bin/busybox", tar::EntryType::Regular, b"", b"bb", 0o755);
    t.hardlink("bin/ls", "bin/busybox");
    apply(&t.finish()[..], &within.root, &options, &Host).unwrap();
    let ls = std::fs::metadata(within.root.join("bin/ls")).unwrap();
    let bb = std::fs::metadata(within.root.join("bin/busybox")).unwrap();
    assert_eq!(ls.ino(), bb.ino());
}

#[test]
fn unprivileged_apply_keeps_files_and_refuses_whiteout_devices() {
    use berth_snapd::apply::Unprivileged;
    let case = Case::new();
    let mut t = RawTar::new();
    t.entry(b"owned", tar::EntryType::Regular, b"", b"x", 0o640);
    let layer = t.finish();
    let options = ApplyOptions::default();
    apply(&layer[..], &case.root, &options, &Unprivileged).unwrap();
    assert_eq!(std::fs::read(case.root.join("owned")).unwrap(), b"x");
    let mut t = RawTar::new();
    t.file(".wh.owned", b"");
    let overlay = ApplyOptions {
        overlay: true,
        ..Default::default()
    };
    let err = apply(&t.finish()[..], &case.root, &overlay, &Unprivileged).unwrap_err();
    assert_eq!(err.kind(), berth_errdefs::ErrorKind::FailedPrecondition);
}

#[test]
fn owners_are_exact_under_a_set_gid_directory() {
    // A new inode takes a set-gid directory's group: a file owned 0:0 in
    // the layer must still end up 0:0 there.
    let case = Case::new();
    let mut t = RawTar::new();
    let regular = tar::EntryType::Regular;
    t.entry_owned(b"g", tar::EntryType::Directory, b"", b"", 0o2775, (0, 1234));
    t.entry_owned(b"g/root-file", regular, b"", b"x", 0o644, (0, 0));
    t.entry_owned(b"g/group-file", regular, b"", b"x", 0o644, (5, 1234));
    t.entry_owned(b"g/sub", tar::EntryType::Directory, b"", b"", 0o755, (0, 0));
    t.entry_owned(b"g/sub/deeper", regular, b"", b"x", 0o600, (0, 0));
    t.entry_owned(
        b"g/link",
        tar::EntryType::Symlink,
        b"root-file",
        b"",
        0o777,
        (0, 0),
    );
    t.entry_owned(b"top", regular, b"", b"x", 0o644, (0, 0));
    t.entry_owned(b"other", regular, b"", b"x", 0o644, (7, 8));
    assert!(case.apply_checked(&t.finish(), true));
    let owner = |p: &str| {
        let m = std::fs::symlink_metadata(case.root.join(p)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner("g"), (0, 1234));
    let mode = std::fs::metadata(case.root.join("g")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o2775);
    assert_eq!(owner("g/root-file"), (0, 0));
    assert_eq!(owner("g/group-file"), (5, 1234));
    assert_eq!(owner("g/sub"), (0, 0));
    assert_eq!(owner("g/sub/deeper"), (0, 0));
    assert_eq!(owner("g/link"), (0, 0));
    assert_eq!(owner("top"), (0, 0));
    assert_eq!(owner("other"), (7, 8));
}

#[test]
fn owners_are_exact_for_ids_near_the_creators() {
    // Apply skips chown where a new inode already has the entry's owner:
    // owners that differ from snapd's (root's) in only the uid or only the
    // gid, in directories of either group, must still be set.
    let case = Case::new();
    let mut t = RawTar::new();
    let regular = tar::EntryType::Regular;
    let owners = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 1)];
    for (uid, gid) in owners {
        let dir = format!("d{uid}{gid}");
        t.entry_owned(
            dir.as_bytes(),
            tar::EntryType::Directory,
            b"",
            b"",
            0o755,
            (uid, gid),
        );
        for (file_uid, file_gid) in owners {
            let name = format!("{dir}/f{file_uid}{file_gid}");
            t.entry_owned(
                name.as_bytes(),
                regular,
                b"",
                b"x",
                0o644,
                (file_uid, file_gid),
            );
        }
    }
    assert!(case.apply_checked(&t.finish(), true));
    for (uid, gid) in owners {
        let dir = format!("d{uid}{gid}");
        for (file_uid, file_gid) in owners {
            let path = case.root.join(format!("{dir}/f{file_uid}{file_gid}"));
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert_eq!(
                (meta.uid(), meta.gid()),
                (file_uid as u32, file_gid as u32),
                "{}",
                path.display()
            );
        }
        let meta = std::fs::metadata(case.root.join(&dir)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid as u32, gid as u32), "{dir}");
    }
}

#[test]
fn a_directory_removed_later_in_its_layer_stays_removed() {
    // Directory times are set at the end of a layer; setting them must not
    // bring back a directory that a later whiteout (native: a deletion)
    // removed.
    let case = Case::new();
    let mut t = RawTar::new();
    t.dir("a", 0o755);
    t.dir("a/b", 0o755);
    t.file("a/b/f", b"f");
    t.file(".wh.a", b"");
    assert!(case.apply_checked(&t.finish(), false));
    assert!(!case.root.join("a").exists());
}

#[test]
fn a_directory_replaced_by_a_symlink_redirects_later_entries() {
    // Entries after the replacement must resolve the new symlink (inside
    // the root), not the directory that was there before.
    let case = Case::new();
    let mut t = RawTar::new();
    t.dir("a", 0o755);
    t.file("a/x", b"x");
    t.dir("b", 0o755);
    t.symlink("a", "b");
    t.file("a/y", b"y");
    t.dir("c", 0o755);
    t.file("c/z", b"z");
    t.symlink("c", "../../outside");
    t.file("c/canary", b"pwned");
    assert!(!case.apply_checked(&t.finish(), false));
    assert!(std::fs::symlink_metadata(case.root.join("a"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(case.root.join("b/y")).unwrap(), b"y");
    assert!(!case.root.join("b/x").exists());
    // `c` now points at `/outside` inside the root, which is not there.
    assert!(!case.root.join("outside").exists());

    // The same layer without the escape applies whole.
    let case = Case::new();
    let mut t = RawTar::new();
    t.dir("a", 0o755);
    t.file("a/x", b"x");
    t.dir("b", 0o755);
    t.symlink("a", "b");
    t.file("a/y", b"y");
    t.file("a/z", b"z");
    assert!(case.apply_checked(&t.finish(), true));
    assert_eq!(std::fs::read(case.root.join("b/y")).unwrap(), b"y");
    assert_eq!(std::fs::read(case.root.join("b/z")).unwrap(), b"z");

    // A whiteout (native: a deletion) of a directory that later entries
    // recreate.
    {
        let case = Case::new();
        let mut t = RawTar::new();
        t.dir("d", 0o755);
        t.dir("d/x", 0o755);
        t.file("d/x/old", b"old");
        t.file("d/.wh.x", b"");
        t.file("d/x/new", b"new");
        assert!(case.apply_checked(&t.finish(), false));
        assert_eq!(std::fs::read(case.root.join("d/x/new")).unwrap(), b"new");
        assert!(!case.root.join("d/x/old").exists());
    }
}

/// CVE-2025-62518, the differential half: from an archive whose PAX size
/// disagrees with its ustar header, berth applies the entries GNU tar
/// lists from the same bytes, no more and no fewer.
#[test]
fn pax_size_entries_are_the_ones_gnu_tar_sees() {
    let gnu = std::process::Command::new("tar")
        .arg("--version")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).contains("GNU tar"))
        .unwrap_or(false);
    let in_ci = std::env::var_os("CI").is_some_and(|v| v == "true");
    if !gnu {
        assert!(!in_ci, "GNU tar is needed");
        eprintln!("skipped: GNU tar is needed");
        return;
    }
    let mut hidden = RawTar::new();
    hidden.file("hidden", b"hidden data");
    let hidden = hidden.0;
    let mut t = RawTar::new();
    t.pax(&[("size", "0")]);
    t.entry(b"smuggler", tar::EntryType::Regular, b"", &hidden, 0o644);
    t.file("after", b"after");
    let archive = t.finish();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("layer.tar");
    std::fs::write(&file, &archive).unwrap();
    let listed = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&file)
        .output()
        .unwrap();
    assert!(listed.status.success(), "{listed:?}");
    let mut gnu_names: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    gnu_names.sort();

    let case = Case::new();
    assert!(case.apply_checked(&archive, false));
    let mut applied: Vec<String> = std::fs::read_dir(&case.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    applied.sort();
    assert_eq!(applied, gnu_names);
    assert_eq!(applied, vec!["after", "hidden", "smuggler"]);
}

#[test]
fn a_refused_entry_is_named_in_its_error() {
    // An operator reading the error must learn which entry of the layer
    // was refused and where the walk stopped: here at `/up`, a symlink
    // out of the root to a directory the root does not have.
    let case = Case::new();
    let mut t = RawTar::new();
    t.symlink("up", "../../outside");
    assert!(case.apply_checked(&t.finish(), true));
    let mut t = RawTar::new();
    t.file("up/canary", b"pwned");
    let options = ApplyOptions {
        overlay: true,
        ..Default::default()
    };
    let err = apply(&t.finish()[..], &case.root, &options, &Host).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("/up"), "{message}");
    // Nested deeper: the path down to the component that failed.
    let mut t = RawTar::new();
    t.dir("a", 0o755);
    t.file("a/file", b"x");
    assert!(case.apply_checked(&t.finish(), true));
    let mut t = RawTar::new();
    t.file("a/file/below", b"x");
    let err = apply(&t.finish()[..], &case.root, &options, &Host).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("/a/file"), "{message}");
}

#[test]
fn a_directory_that_replaces_a_file_leaves_later_entries_where_they_belong() {
    // The applier keeps the directories it last opened; replacing a file
    // by a directory drops them. An entry after that, at another path
    // whose last name is the same (`d/x` after `p/d/`), must land at its
    // own path, not in the directory just made.
    for overlay in [true, false] {
        let case = Case::new();
        let mut t = RawTar::new();
        t.dir("p", 0o755);
        t.file("p/d", b"a file first");
        t.dir("p/d", 0o755);
        t.file("d/x", b"x");
        assert!(case.apply_checked(&t.finish(), overlay));
        let root = &case.root;
        assert!(is_dir(&root.join("p/d")), "overlay {overlay}");
        assert_eq!(
            std::fs::read_dir(root.join("p/d")).unwrap().count(),
            0,
            "overlay {overlay}: p/d holds what belongs to d"
        );
        assert_eq!(std::fs::read(root.join("d/x")).unwrap(), b"x");
    }
}

#[test]
fn a_directory_entry_for_a_directory_already_there_keeps_what_it_holds() {
    // Layers often name a directory again (every layer that adds to /etc
    // carries an `etc/` entry): its owner and mode are set again, and
    // what it holds (from earlier in the layer, or a lower layer in
    // native snapshots) stays.
    for overlay in [true, false] {
        let case = Case::new();
        let mut t = RawTar::new();
        t.dir("etc", 0o755);
        t.file("etc/first", b"1");
        t.dir("etc", 0o750);
        t.file("etc/second", b"2");
        assert!(case.apply_checked(&t.finish(), overlay));
        let etc = case.root.join("etc");
        assert_eq!(
            std::fs::read(etc.join("first")).unwrap(),
            b"1",
            "overlay {overlay}"
        );
        assert_eq!(std::fs::read(etc.join("second")).unwrap(), b"2");
        let mode = std::fs::metadata(&etc).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o750, "the later entry's mode");
        if !overlay {
            // The next layer of a native snapshot is applied on this one.
            let mut t = RawTar::new();
            t.dir("etc", 0o755);
            t.file("etc/third", b"3");
            assert!(case.apply_checked(&t.finish(), overlay));
            for name in ["first", "second", "third"] {
                assert!(etc.join(name).exists(), "{name} after the next layer");
            }
        }
    }
}

#[test]
fn a_hardlink_to_a_directory_is_refused_as_such() {
    let case = Case::new();
    let mut t = RawTar::new();
    t.dir("dir", 0o755);
    assert!(case.apply_checked(&t.finish(), true));
    let mut t = RawTar::new();
    t.hardlink("link", "dir");
    let options = ApplyOptions {
        overlay: true,
        ..Default::default()
    };
    let err = apply(&t.finish()[..], &case.root, &options, &Host).unwrap_err();
    assert_eq!(
        err.kind(),
        berth_errdefs::ErrorKind::InvalidArgument,
        "{err}"
    );
    assert!(err.to_string().contains("hardlink to directory"), "{err}");
    assert!(!case.root.join("link").exists());
}

#[test]
fn numeric_header_fields_are_numbers_or_empty() {
    // An empty numeric field (NULs or spaces, as some writers leave one)
    // means 0; anything else that is not a number is refused, never read
    // as 0 (an owner of 0 is root).
    let case = Case::new();
    let options = ApplyOptions {
        overlay: true,
        ..Default::default()
    };
    let mut t = RawTar::new();
    t.file_with_header("spaces", b"x", |h| h.as_old_mut().uid = *b"       \0");
    t.file_with_header("nuls", b"x", |h| h.as_old_mut().gid = [0; 8]);
    assert!(case.apply_checked(&t.finish(), true));
    let owner = |p: &str| {
        let m = std::fs::symlink_metadata(case.root.join(p)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner("spaces"), (0, 1000));
    assert_eq!(owner("nuls"), (1000, 0));
    for (field, garbage) in [("uid", *b"zzzzzzz\0"), ("gid", *b"12 4x  \0")] {
        let mut t = RawTar::new();
        t.file_with_header("garbage", b"x", |h| {
            let old = h.as_old_mut();
            match field {
                "uid" => old.uid = garbage,
                _ => old.gid = garbage,
            }
        });
        let err = apply(&t.finish()[..], &case.root, &options, &Host).unwrap_err();
        assert_eq!(
            err.kind(),
            berth_errdefs::ErrorKind::InvalidArgument,
            "{err}"
        );
        assert!(err.to_string().contains(field), "{field}: {err}");
        assert!(!case.root.join("garbage").exists());
    }
}

#[test]
fn device_nodes_where_allowed_are_made_as_their_kind() {
    use std::os::unix::fs::FileTypeExt;
    let case = Case::new();
    let mut t = RawTar::new();
    t.dir("dev", 0o755);
    // A later entry replaces an earlier one of another kind.
    t.file("dev/null", b"a file first");
    for (name, kind, major, minor) in [
        ("dev/null", tar::EntryType::Char, 1, 3),
        ("dev/loop7", tar::EntryType::Block, 7, 7),
    ] {
        t.file_with_header(name, b"", |h| {
            h.set_entry_type(kind);
            h.set_mode(0o660);
            h.set_device_major(major).unwrap();
            h.set_device_minor(minor).unwrap();
        });
    }
    let options = ApplyOptions {
        overlay: true,
        devices: true,
        ..Default::default()
    };
    let stats = apply(&t.finish()[..], &case.root, &options, &Host).unwrap();
    assert_eq!(stats.entries, 4);
    let null = std::fs::symlink_metadata(case.root.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
    assert_eq!(null.mode() & 0o7777, 0o660);
    let block = std::fs::symlink_metadata(case.root.join("dev/loop7")).unwrap();
    assert!(block.file_type().is_block_device());
    assert_eq!(block.rdev(), nix::sys::stat::makedev(7, 7));
}

#[test]
fn a_native_opaque_directory_keeps_what_its_own_layer_wrote_before_it() {
    // Whiteouts hide what lower layers hold, never what their own layer
    // adds, wherever in the layer the marker comes (OCI image spec).
    let case = Case::new();
    let mut t = RawTar::new();
    t.dir("d", 0o755);
    t.file("d/old", b"lower");
    assert!(case.apply_checked(&t.finish(), false));
    let mut t = RawTar::new();
    t.dir("d", 0o755);
    t.file("d/new", b"this layer");
    t.file("d/.wh..wh..opq", b"");
    t.file("d/after", b"this layer too");
    let options = ApplyOptions::default();
    let stats = apply(&t.finish()[..], &case.root, &options, &Host).unwrap();
    assert_eq!(stats.entries, 4);
    assert_eq!(stats.bytes, 24);
    let d = case.root.join("d");
    assert!(!d.join("old").exists(), "the lower layer's file is hidden");
    assert_eq!(std::fs::read(d.join("new")).unwrap(), b"this layer");
    assert_eq!(std::fs::read(d.join("after")).unwrap(), b"this layer too");
}

#[test]
fn files_with_holes_keep_their_size_and_bytes() {
    // All-zero stretches become holes; a file that ends in one must still
    // have its full size.
    let case = Case::new();
    let mut data = vec![7u8; 4096];
    data.resize(4096 + 3 * 1024 * 1024, 0);
    let mut middle = vec![0u8; 2 * 1024 * 1024];
    middle.extend_from_slice(b"end");
    let mut t = RawTar::new();
    t.file("trailing-hole", &data);
    t.file("leading-hole", &middle);
    t.file("zeros", &[0u8; 8192]);
    assert!(case.apply_checked(&t.finish(), true));
    for (name, want) in [
        ("trailing-hole", &data[..]),
        ("leading-hole", &middle[..]),
        ("zeros", &[0u8; 8192][..]),
    ] {
        let got = std::fs::read(case.root.join(name)).unwrap();
        assert_eq!(got.len(), want.len(), "{name}: size");
        assert!(got == want, "{name}: bytes");
    }
}

#[test]
fn a_hardlink_whose_target_directory_is_only_in_a_lower_layer_is_copied_up() {
    let lower = Case::new();
    let mut t = RawTar::new();
    t.entry(
        b"usr/bin/busybox",
        tar::EntryType::Regular,
        b"",
        b"bb",
        0o755,
    );
    assert!(lower.apply_checked(&t.finish(), true));
    let upper = Case::new();
    let mut t = RawTar::new();
    t.hardlink("bin/ls", "usr/bin/busybox");
    let options = ApplyOptions {
        overlay: true,
        lowers: vec![lower.root.clone()],
        lowers_pending: false,
        devices: false,
        sync_fs: false,
    };
    apply(&t.finish()[..], &upper.root, &options, &Host).unwrap();
    let ls = std::fs::metadata(upper.root.join("bin/ls")).unwrap();
    let bb = std::fs::metadata(upper.root.join("usr/bin/busybox")).unwrap();
    assert_eq!(ls.ino(), bb.ino());
    assert_eq!(std::fs::read(upper.root.join("bin/ls")).unwrap(), b"bb");
}

#[test]
fn an_invalid_whiteout_is_refused_before_it_removes_anything() {
    // `.wh.` names nothing and `.wh..` the directory itself: both are
    // refused, and what the directory holds stays.
    for overlay in [true, false] {
        for bad in ["d/.wh.", "d/.wh.."] {
            let case = Case::new();
            let mut t = RawTar::new();
            t.dir("d", 0o755);
            t.file("d/keep", b"keep");
            assert!(case.apply_checked(&t.finish(), overlay));
            let mut t = RawTar::new();
            t.file(bad, b"");
            assert!(
                !case.apply_checked(&t.finish(), overlay),
                "{bad} (overlay {overlay}) applied"
            );
            assert_eq!(
                std::fs::read(case.root.join("d/keep")).unwrap(),
                b"keep",
                "{bad} (overlay {overlay}) removed what the directory holds"
            );
        }
    }
}
