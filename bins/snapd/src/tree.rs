//! A snapshot's tree read through an fd on its root, never by joined
//! paths: every directory and file opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`. One side of a diff, or a tree
//! being measured for Usage.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use berth_errdefs::{Error, Result};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};

use crate::copy::open_beneath;
use crate::os::{errno, file_type, io};
use crate::xattr::Node;

/// A snapshot tree (one side of a diff, or one being measured), read
/// through an fd on its root.
pub(crate) struct Tree {
    root: OwnedFd,
}

impl Tree {
    pub(crate) fn open(path: &Path) -> Result<Tree> {
        let root = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| errno(format!("opening {}", path.display()), e))?;
        Ok(Tree { root })
    }

    fn open_beneath(&self, rel: &Path, flags: OFlag) -> Result<OwnedFd> {
        open_beneath(self.root.as_fd(), rel, flags)
            .map_err(|e| errno(format!("opening {}", rel.display()), e))
    }

    pub(crate) fn root_stat(&self) -> Result<FileStat> {
        nix::sys::stat::fstat(&self.root).map_err(|e| errno("stat of the root", e))
    }

    /// Every entry below the root, by relative path, not following
    /// symlinks.
    pub(crate) fn listing(&self) -> Result<BTreeMap<PathBuf, FileStat>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let fd = self.open_beneath(&rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
            let names: Vec<PathBuf> = {
                let mut dir = nix::dir::Dir::from_fd(
                    fd.try_clone()
                        .map_err(io(format!("duplicating the fd of {}", rel.display())))?,
                )
                .map_err(|e| errno(format!("reading {}", rel.display()), e))?;
                let mut names = Vec::new();
                for entry in dir.iter() {
                    let entry =
                        entry.map_err(|e| errno(format!("reading {}", rel.display()), e))?;
                    let name = entry.file_name().to_bytes();
                    if name != b"." && name != b".." {
                        names.push(PathBuf::from(OsStr::from_bytes(name)));
                    }
                }
                names
            };
            for name in names {
                let stat = nix::sys::stat::fstatat(&fd, &name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|e| errno(format!("stat {}", rel.join(&name).display()), e))?;
                let child = rel.join(&name);
                if file_type(&stat) == SFlag::S_IFDIR {
                    stack.push(child.clone());
                }
                out.insert(child, stat);
            }
        }
        Ok(out)
    }

    /// The regular file `rel`, which must still be the inode `listed`
    /// describes.
    pub(crate) fn open_file(&self, rel: &Path, listed: &FileStat) -> Result<std::fs::File> {
        let file = std::fs::File::from(self.open_beneath(rel, OFlag::O_RDONLY)?);
        let now = nix::sys::stat::fstat(&file)
            .map_err(|e| errno(format!("stat {}", rel.display()), e))?;
        if (now.st_dev, now.st_ino) != (listed.st_dev, listed.st_ino) {
            return Err(Error::aborted(format!(
                "{} changed while the diff read it",
                rel.display()
            )));
        }
        Ok(file)
    }

    /// The extended attributes of `rel` that belong in a layer: not
    /// overlayfs' own (`trusted.overlay.*`) nor the host's SELinux label.
    pub(crate) fn xattrs(&self, rel: &Path) -> Result<Vec<(CString, Vec<u8>)>> {
        let (parent, name) = self.parent_of(rel)?;
        let mut xattrs = Node::At(parent.as_fd(), name)
            .xattrs()
            .map_err(|e| e.context(rel.display().to_string()))?;
        xattrs.retain(|(key, _)| {
            let key = key.as_bytes();
            !key.starts_with(b"trusted.overlay.") && key != b"security.selinux"
        });
        xattrs.sort();
        Ok(xattrs)
    }

    /// The directory `rel` is in (opened beneath the root) and its name.
    fn parent_of<'a>(&self, rel: &'a Path) -> Result<(OwnedFd, &'a OsStr)> {
        let name = rel
            .file_name()
            .ok_or_else(|| Error::internal(format!("{} has no name", rel.display())))?;
        let parent = self.open_beneath(
            rel.parent().unwrap_or(Path::new("")),
            OFlag::O_PATH | OFlag::O_DIRECTORY,
        )?;
        Ok((parent, name))
    }

    pub(crate) fn read_link(&self, rel: &Path) -> Result<std::ffi::OsString> {
        let (parent, name) = self.parent_of(rel)?;
        nix::fcntl::readlinkat(&parent, name)
            .map_err(|e| errno(format!("reading {}", rel.display()), e))
    }
}
