#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

//! A fresh filesystem in an image file, loop-mounted, for tests that need
//! a filesystem of a given kind or want to see what reaches its device
//! (ext4's `/sys/fs/ext4/DEV/session_write_kbytes`). Shared by snapd's
//! tests and the end-to-end tests (feature `testsuite`).

use std::path::PathBuf;
use std::process::Command;

/// Unmounted, and its image removed, on drop: drop whatever uses it first.
#[derive(Debug)]
pub struct LoopMount {
    pub dir: PathBuf,
    device: String,
    _top: tempfile::TempDir,
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).exists()))
}

impl LoopMount {
    /// `mkfs ARGS IMAGE` on a `size`-byte image, mounted. None (the test
    /// skips) when root or the tools are missing outside CI; under
    /// `CI=true` that fails.
    pub fn new(mkfs: &str, args: &[&str], size: u64) -> Option<LoopMount> {
        let tools = [mkfs, "mount", "umount", "findmnt"];
        if !crate::testsuite::require_root() {
            return None;
        }
        if let Some(missing) = tools.iter().find(|tool| !on_path(tool)) {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "{missing} is needed under CI"
            );
            eprintln!("skipping: no {missing}");
            return None;
        }
        let top = tempfile::tempdir().unwrap();
        let image = top.path().join("fs.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(size)
            .unwrap();
        let status = Command::new(mkfs).args(args).arg(&image).status().unwrap();
        assert!(status.success(), "{mkfs} failed");
        let dir = top.path().join("mnt");
        std::fs::create_dir(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "mounting the {mkfs} image failed");
        let out = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(&dir)
            .output()
            .unwrap();
        let source = String::from_utf8(out.stdout).unwrap();
        Some(LoopMount {
            dir,
            device: source.trim().trim_start_matches("/dev/").to_string(),
            _top: top,
        })
    }

    /// A fresh ext4 of `size` bytes.
    pub fn ext4(size: u64) -> Option<LoopMount> {
        let mount = LoopMount::new("mkfs.ext4", &["-q", "-F"], size)?;
        assert!(
            mount.ext4_counter().exists(),
            "{} is missing",
            mount.ext4_counter().display()
        );
        Some(mount)
    }

    /// The block device's name (`loop3`), as /sys names it.
    pub fn device_name(&self) -> &str {
        &self.device
    }

    fn ext4_counter(&self) -> PathBuf {
        PathBuf::from(format!("/sys/fs/ext4/{}/session_write_kbytes", self.device))
    }

    /// KiB an ext4 has written to its device since it was mounted.
    pub fn ext4_written_kib(&self) -> u64 {
        std::fs::read_to_string(self.ext4_counter())
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// KiB an ext4 writes to its device while `f` runs, after everything
    /// dirty before it was written back (sync).
    pub fn ext4_kib_written_by<T>(&self, f: impl FnOnce() -> T) -> (u64, T) {
        nix::unistd::sync();
        let before = self.ext4_written_kib();
        let out = f();
        (self.ext4_written_kib() - before, out)
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Busy: detach it now, so the image's removal does not delete
            // files inside a mounted filesystem, and say so.
            eprintln!(
                "{} was busy at the end of the test: detached lazily",
                self.dir.display()
            );
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}
