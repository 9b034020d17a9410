//! Helpers shared by snapd's integration tests.

use std::path::PathBuf;
use std::process::Command;

/// A fresh filesystem in an image file, loop-mounted; unmounted (and the
/// image removed) on drop.
pub struct LoopMount {
    pub dir: PathBuf,
    _top: tempfile::TempDir,
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).exists()))
}

impl LoopMount {
    /// `mkfs ARGS IMAGE` on a `size`-byte image, mounted. None (the test
    /// skips) when `mkfs` is missing outside CI; under CI that fails.
    pub fn new(mkfs: &str, args: &[&str], size: u64) -> Option<LoopMount> {
        if !on_path(mkfs) {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "{mkfs} is needed under CI"
            );
            eprintln!("skipping: no {mkfs}");
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
        Some(LoopMount { dir, _top: top })
    }

    /// The block device's name (`loop3`), as /sys names it.
    #[allow(dead_code)]
    pub fn device_name(&self) -> String {
        let out = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(&self.dir)
            .output()
            .unwrap();
        let source = String::from_utf8(out.stdout).unwrap();
        source.trim().trim_start_matches("/dev/").to_string()
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}
