//! A fresh ext4 in an image file, loop-mounted, and what ext4 reports it
//! has written to its device (`/sys/fs/ext4/DEV/session_write_kbytes`):
//! what tests use to see a syncfs happen (a copy of the minimal logic of
//! bins/snapd/tests/common, which this crate cannot depend on).

use std::path::PathBuf;
use std::process::Command;

use crate::{is_root, on_path, require};

/// Unmounted (and its image removed) on drop: drop whatever uses it first.
#[derive(Debug)]
pub struct LoopMount {
    pub dir: PathBuf,
    device: String,
    _top: tempfile::TempDir,
}

impl LoopMount {
    /// A `size`-byte ext4, mounted. None (the test skips) when root or
    /// the tools are missing outside CI; under CI that fails.
    pub fn ext4(size: u64) -> Option<LoopMount> {
        if !require(is_root(), "loop mounts need root")
            || !require(
                ["mkfs.ext4", "mount", "umount", "findmnt"]
                    .iter()
                    .all(|t| on_path(t)),
                "mkfs.ext4, mount, umount and findmnt are needed",
            )
        {
            return None;
        }
        let top = tempfile::tempdir().unwrap();
        let image = top.path().join("fs.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(size)
            .unwrap();
        let status = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&image)
            .status()
            .unwrap();
        assert!(status.success(), "mkfs.ext4 failed");
        let dir = top.path().join("mnt");
        std::fs::create_dir(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "mounting the ext4 image failed");
        let out = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(&dir)
            .output()
            .unwrap();
        let source = String::from_utf8(out.stdout).unwrap();
        let mount = LoopMount {
            dir,
            device: source.trim().trim_start_matches("/dev/").to_string(),
            _top: top,
        };
        assert!(
            mount.counter().exists(),
            "{} is missing",
            mount.counter().display()
        );
        Some(mount)
    }

    fn counter(&self) -> PathBuf {
        PathBuf::from(format!("/sys/fs/ext4/{}/session_write_kbytes", self.device))
    }

    /// KiB written to the device since it was mounted.
    pub fn written_kib(&self) -> u64 {
        std::fs::read_to_string(self.counter())
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// KiB written to the device while `f` runs, after everything dirty
    /// before it was written back (sync).
    pub fn kib_written_by<T>(&self, f: impl FnOnce() -> T) -> (u64, T) {
        nix::unistd::sync();
        let before = self.written_kib();
        let out = f();
        (self.written_kib() - before, out)
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}
