//! Reading files of a container's root filesystem without leaving it.
//!
//! An image is untrusted: its `/etc/passwd` may be a symlink to
//! `/etc/shadow` of the host, to `../../..`, to a FIFO that blocks forever or
//! to a device node. [`HostRootfs`] resolves every path with `openat2(2)`
//! and `RESOLVE_IN_ROOT`, so absolute symlinks and `..` stay inside the
//! root, opens the result with `O_PATH` (which never opens a device or
//! blocks on a FIFO) and reads it only when it is a regular file.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use crate::error::{OciError, Result};

/// Read access to files of a container's root filesystem.
pub trait RootfsFiles {
    /// The content of `path_in_root` (absolute or relative to the root),
    /// resolved inside the root; `Ok(None)` when it does not exist. A file
    /// larger than `limit` bytes, or one that is not a regular file, is an
    /// error.
    fn read(&self, path_in_root: &str, limit: u64) -> Result<Option<Vec<u8>>>;
}

/// The files of a root filesystem mounted (or unpacked) at a host
/// directory.
#[derive(Debug)]
pub struct HostRootfs {
    root: PathBuf,
}

impl HostRootfs {
    /// The root filesystem at `root`.
    pub fn new(root: impl Into<PathBuf>) -> HostRootfs {
        HostRootfs { root: root.into() }
    }
}

impl RootfsFiles for HostRootfs {
    fn read(&self, path_in_root: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let relative = path_in_root.trim_start_matches('/');
        if relative.is_empty() || relative.contains('\0') {
            return Err(OciError::invalid(format!(
                "{path_in_root:?} does not name a file of the root filesystem"
            )));
        }
        let root = nix::fcntl::open(
            &self.root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            OciError::io(
                format!("opening the root filesystem {}", self.root.display()),
                e.into(),
            )
        })?;
        let context = || format!("opening {path_in_root} in {}", self.root.display());
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let path: OwnedFd = match nix::fcntl::openat2(root.as_fd(), relative, how) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(None),
            Err(e) => return Err(OciError::io(context(), e.into())),
        };
        let stat =
            nix::sys::stat::fstat(path.as_fd()).map_err(|e| OciError::io(context(), e.into()))?;
        if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(OciError::invalid(format!(
                "{path_in_root} of the root filesystem is not a regular file"
            )));
        }
        // Reopen the very inode the O_PATH descriptor holds for reading,
        // through our own descriptor table: no second path resolution.
        let file = File::open(format!("/proc/self/fd/{}", path.as_raw_fd()))
            .map_err(|e| OciError::io(context(), e))?;
        let mut content = Vec::new();
        file.take(limit.saturating_add(1))
            .read_to_end(&mut content)
            .map_err(|e| OciError::io(format!("reading {path_in_root}"), e))?;
        if content.len() as u64 > limit {
            return Err(OciError::invalid(format!(
                "{path_in_root} of the root filesystem is larger than {limit} bytes"
            )));
        }
        Ok(Some(content))
    }
}

/// A root filesystem with no files: names cannot be resolved (they fail
/// with [`OciError::NotFound`]), numeric ids work.
#[derive(Debug)]
pub struct NoRootfsFiles;

impl RootfsFiles for NoRootfsFiles {
    fn read(&self, _path_in_root: &str, _limit: u64) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn reads_a_file_in_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            b"root:x:0:0::/root:/bin/sh\n",
        )
        .unwrap();
        let files = HostRootfs::new(dir.path());
        let content = files.read("/etc/passwd", 1024).unwrap().unwrap();
        assert_eq!(content, b"root:x:0:0::/root:/bin/sh\n");
        assert_eq!(files.read("etc/passwd", 1024).unwrap().unwrap(), content);
    }

    #[test]
    fn absent_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let files = HostRootfs::new(dir.path());
        assert!(files.read("/etc/passwd", 1024).unwrap().is_none());
        // /etc being a file is "absent" too.
        std::fs::write(dir.path().join("etc"), b"").unwrap();
        assert!(files.read("/etc/passwd", 1024).unwrap().is_none());
    }

    #[test]
    fn over_the_limit_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![b'x'; 101]).unwrap();
        let files = HostRootfs::new(dir.path());
        assert!(matches!(
            files.read("/big", 100),
            Err(OciError::InvalidArgument(_))
        ));
        assert_eq!(files.read("/big", 101).unwrap().unwrap().len(), 101);
    }

    #[test]
    fn a_directory_or_fifo_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        nix::unistd::mkfifo(&dir.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let files = HostRootfs::new(dir.path());
        assert!(matches!(
            files.read("/d", 100),
            Err(OciError::InvalidArgument(_))
        ));
        // Would block forever if it were opened for reading.
        assert!(matches!(
            files.read("/fifo", 100),
            Err(OciError::InvalidArgument(_))
        ));
    }

    #[test]
    fn absolute_symlinks_and_dotdot_stay_in_the_root() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("secret"), b"host").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        // Absolute: resolved as <root>/<host path>, which does not exist.
        symlink(host.path().join("secret"), root.path().join("etc/abs")).unwrap();
        // Relative with more `..` than depth: clamped at the root.
        let dots = "../".repeat(64);
        let rel = format!("{dots}{}", host.path().join("secret").display());
        symlink(&rel, root.path().join("etc/rel")).unwrap();
        let files = HostRootfs::new(root.path());
        assert!(files.read("/etc/abs", 100).unwrap().is_none());
        assert!(files.read("/etc/rel", 100).unwrap().is_none());
        assert!(files
            .read(
                &format!("/../../..{}", host.path().join("secret").display()),
                100
            )
            .unwrap()
            .is_none());
        // And the same host path, created inside the root, is what is read.
        let inner = root.path().join(host.path().strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::write(inner.join("secret"), b"inside").unwrap();
        assert_eq!(files.read("/etc/abs", 100).unwrap().unwrap(), b"inside");
        assert_eq!(files.read("/etc/rel", 100).unwrap().unwrap(), b"inside");
    }

    #[test]
    fn no_rootfs_files_has_nothing() {
        assert!(NoRootfsFiles.read("/etc/passwd", 10).unwrap().is_none());
    }
}
