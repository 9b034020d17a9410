//! Network namespaces that live without a process: a new namespace is made
//! on a short-lived thread and bind-mounted onto a file, which keeps it
//! until the mount goes (as `ip netns add` and containerd do).

use std::path::{Path, PathBuf};

use berth_errdefs::{Error, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Creates a network namespace pinned at `dir/name` and returns that path.
/// Blocks: call it off the async runtime's workers.
pub fn create_netns(dir: &Path, name: &str) -> Result<PathBuf> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::invalid_argument(format!(
            "{name:?} is not a network namespace name"
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), &e))?;
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), &e))?;
    let target = path.clone();
    // A thread of its own: unshare moves only the calling thread into the
    // new namespace, and this one ends right after pinning it, so no other
    // work ever runs inside it.
    let pinned = std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::internal(format!("unshare(CLONE_NEWNET): {e}")))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| {
            Error::internal(format!(
                "pinning the namespace at {}: {e}",
                target.display()
            ))
        })
    })
    .join()
    .unwrap_or_else(|_| Err(Error::internal("the namespace thread panicked")));
    if let Err(e) = pinned {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Unpins and removes a namespace made by [`create_netns`]; one already
/// gone is fine.
pub fn remove_netns(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(Error::internal(format!(
                "unmounting {}: {e}",
                path.display()
            )))
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_slashes_are_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for name in ["", "a/b", "..", "."] {
            assert!(create_netns(dir.path(), name).is_err(), "{name:?}");
        }
        assert_eq!(
            std::fs::read_dir(dir.path())
                .map(|d| d.count())
                .unwrap_or(99),
            0
        );
    }

    #[test]
    fn a_namespace_is_pinned_and_removed() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = create_netns(dir.path(), "pod").unwrap_or_else(|e| panic!("{e}"));
        let ours = std::fs::metadata("/proc/self/ns/net").unwrap_or_else(|e| panic!("{e}"));
        // The bind mount shows the namespace's inode, not the file's.
        let pinned = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{e}"));
        use std::os::unix::fs::MetadataExt;
        assert_ne!(pinned.ino(), ours.ino());
        assert_eq!(pinned.dev(), ours.dev(), "an nsfs inode");
        remove_netns(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!path.exists());
        remove_netns(&path).unwrap_or_else(|e| panic!("removing twice: {e}"));
    }
}
