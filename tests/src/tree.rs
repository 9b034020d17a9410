//! A directory tree as a comparable value: every entry's type, mode, owner
//! and content (or link target, or device), by path relative to the root,
//! so that a snapshot can be compared with a clean unpack or with itself
//! before a fault.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use berth_ids::Digest;

/// Entries by path relative to the root (the root itself is `""`).
pub type Tree = BTreeMap<PathBuf, String>;

/// The tree under `root`. The root's own mode is left out (a snapshot's
/// directory is made by snapd, not by its layer).
pub fn tree_of(root: &Path) -> Tree {
    let mut tree = Tree::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let path = root.join(&relative);
        let meta = std::fs::symlink_metadata(&path).expect("an entry of the tree");
        let kind = meta.file_type();
        let what = if kind.is_dir() {
            for entry in std::fs::read_dir(&path).expect("a directory of the tree") {
                pending.push(relative.join(entry.expect("a directory entry").file_name()));
            }
            "dir".to_string()
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&path).expect("a symlink of the tree");
            format!("link {}", target.display())
        } else if kind.is_file() {
            let data = std::fs::read(&path).expect("a file of the tree");
            format!("file {} {}", data.len(), Digest::of(&data))
        } else if kind.is_char_device() || kind.is_block_device() {
            format!("device {}", meta.rdev())
        } else {
            "other".to_string()
        };
        let mode = if relative.as_os_str().is_empty() {
            0
        } else {
            meta.mode()
        };
        tree.insert(
            relative,
            format!("{what} mode {mode:o} owner {}:{}", meta.uid(), meta.gid()),
        );
    }
    tree
}

/// The directory holding a committed snapshot's own files, from the mounts
/// of a view of it (a bind mount's source, or overlayfs' top lowerdir).
pub fn own_dir_of_view(mounts: &serde_json::Value) -> PathBuf {
    let mount = &mounts[0];
    if mount["type"] == "bind" {
        return PathBuf::from(mount["source"].as_str().expect("a bind source"));
    }
    let lower = mount["options"]
        .as_array()
        .expect("mount options")
        .iter()
        .find_map(|o| o.as_str().and_then(|o| o.strip_prefix("lowerdir=")))
        .unwrap_or_else(|| panic!("no lowerdir in {mounts}"));
    PathBuf::from(lower.split(':').next().unwrap_or(lower))
}
