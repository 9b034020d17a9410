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
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

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

impl HostRootfs {
    /// `path_in_root` resolved inside the root and opened `O_PATH`; `None`
    /// when it does not exist.
    fn open_in_root(&self, path_in_root: &str) -> Result<Option<OwnedFd>> {
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
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        match nix::fcntl::openat2(root.as_fd(), relative, how) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
            Err(e) => Err(OciError::io(
                format!("opening {path_in_root} in {}", self.root.display()),
                e.into(),
            )),
        }
    }

    /// Copies the directory tree at `path_in_root` (resolved inside the
    /// root) into `dest`, an empty directory of the host, keeping modes and
    /// owners: the copy-up of an image volume. Below the resolved
    /// directory nothing is followed: symlinks are copied as symlinks and
    /// every entry is opened relative to its parent with `O_NOFOLLOW`, so
    /// no path of the image leads out of it; device nodes, FIFOs and
    /// sockets are skipped. Returns where the path led inside the root
    /// (absolute; `/` when it is the root itself), or None (and copies
    /// nothing) when it does not exist in the root or is not a directory.
    pub fn copy_dir(&self, path_in_root: &str, dest: &Path) -> Result<Option<String>> {
        let Some(path) = self.open_in_root(path_in_root)? else {
            return Ok(None);
        };
        let context = || format!("copying {path_in_root} of {}", self.root.display());
        let stat =
            nix::sys::stat::fstat(path.as_fd()).map_err(|e| OciError::io(context(), e.into()))?;
        if stat.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Ok(None);
        }
        let root = std::fs::canonicalize(&self.root).map_err(|e| OciError::io(context(), e))?;
        let resolved = std::fs::read_link(format!("/proc/self/fd/{}", path.as_raw_fd()))
            .map_err(|e| OciError::io(context(), e))?;
        let inside = resolved.strip_prefix(&root).map_err(|_| {
            OciError::invalid(format!(
                "{path_in_root} resolved outside the root filesystem"
            ))
        })?;
        let inside = format!("/{}", inside.display());
        // Reopen the directory the O_PATH descriptor holds, for reading.
        let dir = nix::fcntl::open(
            format!("/proc/self/fd/{}", path.as_raw_fd()).as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| OciError::io(context(), e.into()))?;
        copy_tree(dir, dest, 0).map_err(|e| OciError::io(context(), e))?;
        apply_owner_and_mode(dest, &stat).map_err(|e| OciError::io(context(), e))?;
        Ok(Some(inside))
    }
}

/// How deep a copied tree may nest (a bound for hostile images).
const MAX_COPY_DEPTH: usize = 128;

/// Copies the entries of the open directory `dir` into `dest` (which
/// exists).
fn copy_tree(dir: OwnedFd, dest: &Path, depth: usize) -> std::io::Result<()> {
    use nix::fcntl::AtFlags;
    if depth > MAX_COPY_DEPTH {
        return Err(std::io::Error::other(format!(
            "more than {MAX_COPY_DEPTH} directories deep"
        )));
    }
    // The listing gets a duplicate; the *at calls below use `dir` itself.
    let mut entries = nix::dir::Dir::from_fd(dir.try_clone()?)?;
    let parent = dir.as_fd();
    let names: Vec<std::ffi::CString> = entries
        .iter()
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_owned())
        .filter(|name| name.as_bytes() != b"." && name.as_bytes() != b"..")
        .collect();
    for name in names {
        let target = dest.join(std::ffi::OsStr::from_bytes(name.as_bytes()));
        let stat = nix::sys::stat::fstatat(parent, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
        match stat.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                let child = nix::fcntl::openat(
                    parent,
                    name.as_c_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                std::fs::create_dir(&target)?;
                copy_tree(child, &target, depth + 1)?;
                apply_owner_and_mode(&target, &stat)?;
            }
            libc::S_IFREG => {
                let source = nix::fcntl::openat(
                    parent,
                    name.as_c_str(),
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                let mut source = File::from(source);
                let mut copy = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)?;
                std::io::copy(&mut source, &mut copy)?;
                apply_owner_and_mode(&target, &stat)?;
            }
            libc::S_IFLNK => {
                let link = nix::fcntl::readlinkat(parent, name.as_c_str())?;
                std::os::unix::fs::symlink(link, &target)?;
                std::os::unix::fs::lchown(&target, Some(stat.st_uid), Some(stat.st_gid))?;
            }
            // Devices, FIFOs and sockets are not copied up.
            _ => {}
        }
    }
    Ok(())
}

/// Gives a copied file or directory its source's owner and mode (set-id
/// bits included, after the chown that would clear them).
fn apply_owner_and_mode(path: &Path, stat: &nix::sys::stat::FileStat) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::lchown(path, Some(stat.st_uid), Some(stat.st_gid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(stat.st_mode & 0o7777))
}

impl RootfsFiles for HostRootfs {
    fn read(&self, path_in_root: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let context = || format!("opening {path_in_root} in {}", self.root.display());
        let Some(path) = self.open_in_root(path_in_root)? else {
            return Ok(None);
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

    #[test]
    fn copy_dir_copies_a_tree_with_modes_and_links() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("var/data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::write(data.join("sub/file"), b"seed").unwrap();
        std::fs::set_permissions(
            data.join("sub/file"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o1777)).unwrap();
        symlink("/etc/passwd", data.join("link")).unwrap();
        nix::unistd::mkfifo(&data.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let dest = tempfile::tempdir().unwrap();
        let files = HostRootfs::new(root.path());
        assert_eq!(
            files.copy_dir("/var/data", dest.path()).unwrap().as_deref(),
            Some("/var/data")
        );
        assert_eq!(
            std::fs::read(dest.path().join("sub/file")).unwrap(),
            b"seed"
        );
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dest.path().join("sub/file")), 0o640);
        assert_eq!(mode(dest.path()), 0o1777);
        assert_eq!(
            std::fs::read_link(dest.path().join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert!(!dest.path().join("fifo").exists(), "a FIFO was copied");
        // Absent, or not a directory: nothing to copy.
        let other = tempfile::tempdir().unwrap();
        assert!(files.copy_dir("/nothing", other.path()).unwrap().is_none());
        assert!(files
            .copy_dir("/var/data/sub/file", other.path())
            .unwrap()
            .is_none());
        assert_eq!(std::fs::read_dir(other.path()).unwrap().count(), 0);
    }

    #[test]
    fn copy_dir_never_leaves_the_root() {
        // CVE-2022-23648: a volume path with `..`, or one that is a symlink
        // out of the root, must copy the image's content, not the host's.
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("canary"), b"host").unwrap();
        let root = tempfile::tempdir().unwrap();
        symlink(host.path(), root.path().join("escape")).unwrap();
        let dots = format!("{}{}", "/..".repeat(16), host.path().display());
        let files = HostRootfs::new(root.path());
        for path in ["/escape", dots.as_str()] {
            let dest = tempfile::tempdir().unwrap();
            assert!(
                files.copy_dir(path, dest.path()).unwrap().is_none(),
                "{path}"
            );
            assert!(
                !dest.path().join("canary").exists(),
                "{path}: host file copied"
            );
        }
        // A symlink inside the copied tree is copied as a link, never read.
        std::fs::create_dir(root.path().join("vol")).unwrap();
        symlink(host.path().join("canary"), root.path().join("vol/c")).unwrap();
        let dest = tempfile::tempdir().unwrap();
        assert_eq!(
            files.copy_dir("/vol", dest.path()).unwrap().as_deref(),
            Some("/vol")
        );
        let copied = std::fs::symlink_metadata(dest.path().join("c")).unwrap();
        assert!(copied.file_type().is_symlink());
        // A symlink to `/` leads to the root itself, which is said.
        symlink("/", root.path().join("top")).unwrap();
        let dest = tempfile::tempdir().unwrap();
        assert_eq!(
            files.copy_dir("/top", dest.path()).unwrap().as_deref(),
            Some("/")
        );
    }
}
