//! Copying a directory tree in-process, keeping what `cp -a` keeps: file
//! types (directories, regular files, symlinks, device nodes, fifos,
//! sockets), content with its holes, owners, modes (set-id bits
//! included), access and modification times, extended attributes, and
//! hardlinks within the tree. File content is shared where the filesystem
//! can (FICLONE: btrfs, xfs with reflink, bcachefs), else copied in the
//! kernel with copy_file_range, data segment by data segment.
//!
//! The source is walked by fds, never by paths: every directory is opened
//! with `O_NOFOLLOW | O_DIRECTORY` relative to its parent's fd, every other
//! entry is read or opened relative to its directory's fd without
//! following it, so a symlink in the tree is copied as a symlink and can
//! never lead the copy outside either tree. Only the innermost
//! [`FD_WINDOW`] directory levels keep their fds; deeper trees reopen an
//! ancestor through `..` of its child on the way back up and check that it
//! is the same directory (device and inode), so depth is not bounded by
//! the fd limit.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use berth_errdefs::{Error, Result};
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::Whence;

use crate::os::{errno, file_type};
use crate::xattr::Node;

/// How many of the innermost directory levels keep their fds open.
const FD_WINDOW: usize = 64;

const BYTE_COPY_CHUNK: usize = 1 << 20;

/// What a copy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Entries created (directories, files, links, nodes), the root not
    /// counted.
    pub entries: u64,
    /// Regular files whose content was shared with FICLONE.
    pub reflinked: u64,
    /// Bytes copied (not shared, holes excluded).
    pub bytes: u64,
}

fn identity(stat: &FileStat) -> (u64, u64) {
    (stat.st_dev, stat.st_ino)
}

/// Opens `name` in `dir` if it is a directory, never following a symlink.
pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Opens `rel` (relative, may be empty) under `root` without leaving it and
/// without following any symlink or crossing a mount.
pub(crate) fn open_beneath(root: BorrowedFd<'_>, rel: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    nix::fcntl::openat2(root, rel, how)
}

fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<FileStat> {
    nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
}

/// A directory being copied: its source (listed once) and its copy, the
/// fds dropped while it is more than [`FD_WINDOW`] levels up.
struct Level {
    name: OsString,
    stat: FileStat,
    copy_id: (u64, u64),
    source: Option<Dir>,
    copy: Option<OwnedFd>,
    pending: std::vec::IntoIter<OsString>,
}

impl Level {
    fn open(name: OsString, stat: FileStat, source: OwnedFd, copy: OwnedFd) -> Result<Level> {
        let copy_id = identity(
            &nix::sys::stat::fstat(&copy).map_err(|e| errno("stat of a copied directory", e))?,
        );
        let mut source = Dir::from_fd(source).map_err(|e| errno(format!("listing {name:?}"), e))?;
        let mut names = Vec::new();
        for entry in source.iter() {
            let entry = entry.map_err(|e| errno(format!("listing {name:?}"), e))?;
            let entry_name = entry.file_name().to_bytes();
            if entry_name != b"." && entry_name != b".." {
                names.push(OsStr::from_bytes(entry_name).to_owned());
            }
        }
        Ok(Level {
            name,
            stat,
            copy_id,
            source: Some(source),
            copy: Some(copy),
            pending: names.into_iter(),
        })
    }

    fn fds(&self) -> Result<(BorrowedFd<'_>, BorrowedFd<'_>)> {
        match (&self.source, &self.copy) {
            (Some(source), Some(copy)) => Ok((source.as_fd(), copy.as_fd())),
            _ => Err(Error::internal("copy: directory fds not open")),
        }
    }
}

/// Where the first copy of a multiply-linked inode went.
struct FirstLink {
    parent: Vec<OsString>,
    name: OsString,
    /// Links still to be seen.
    remaining: u64,
}

struct Copier {
    copy_root: OwnedFd,
    stack: Vec<Level>,
    links: HashMap<(u64, u64), FirstLink>,
    /// Cleared when the filesystem has no reflinks.
    ficlone: bool,
    /// Cleared at the first copy_file_range refusal: bytes go through
    /// read and write from then on.
    copy_file_range: bool,
    buffer: Vec<u8>,
    stats: CopyStats,
}

/// Copies the contents of `from` into the existing directory `to`, and
/// the metadata of `from` onto `to`, like `cp -a from/. to`.
pub fn copy_tree(from: &Path, to: &Path) -> Result<CopyStats> {
    let open_root = |path: &Path| {
        nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| errno(format!("opening {}", path.display()), e))
    };
    let source = open_root(from)?;
    let copy = open_root(to)?;
    let stat =
        nix::sys::stat::fstat(&source).map_err(|e| errno(format!("stat {}", from.display()), e))?;
    let copy_root = copy
        .try_clone()
        .map_err(|e| Error::io("duplicating an fd", &e))?;
    let mut copier = Copier {
        copy_root,
        stack: vec![Level::open(OsString::new(), stat, source, copy)?],
        links: HashMap::new(),
        ficlone: true,
        copy_file_range: true,
        buffer: Vec::new(),
        stats: CopyStats::default(),
    };
    copier.run()?;
    Ok(copier.stats)
}

impl Copier {
    fn run(&mut self) -> Result<()> {
        while let Some(top) = self.stack.last_mut() {
            match top.pending.next() {
                Some(name) => self.entry(name)?,
                None => self.leave()?,
            }
        }
        Ok(())
    }

    /// The path of the current directory below the root, for messages and
    /// hardlinks.
    fn here(&self) -> Vec<OsString> {
        self.stack.iter().skip(1).map(|l| l.name.clone()).collect()
    }

    fn describe(&self, name: &OsStr) -> String {
        let mut path = std::path::PathBuf::new();
        for part in self.here() {
            path.push(part);
        }
        path.push(name);
        path.display().to_string()
    }

    fn top(&self) -> Result<&Level> {
        self.stack
            .last()
            .ok_or_else(|| Error::internal("copy: empty stack"))
    }

    fn entry(&mut self, name: OsString) -> Result<()> {
        let stat = {
            let (source, _) = self.top()?.fds()?;
            lstat_at(source, &name)
                .map_err(|e| errno(format!("stat {}", self.describe(&name)), e))?
        };
        let kind = file_type(&stat);
        if kind == SFlag::S_IFDIR {
            return self.enter(name, stat);
        }
        if stat.st_nlink > 1 && self.link_again(&name, &stat)? {
            self.stats.entries += 1;
            return Ok(());
        }
        match kind {
            SFlag::S_IFREG => self.regular(&name, &stat)?,
            SFlag::S_IFLNK => self.symlink(&name, &stat)?,
            SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO | SFlag::S_IFSOCK => {
                self.node(&name, &stat, kind)?
            }
            _ => {
                return Err(Error::internal(format!(
                    "copy: {} has an unknown file type",
                    self.describe(&name)
                )))
            }
        }
        if stat.st_nlink > 1 {
            self.links.insert(
                identity(&stat),
                FirstLink {
                    parent: self.here(),
                    name,
                    remaining: stat.st_nlink - 1,
                },
            );
        }
        self.stats.entries += 1;
        Ok(())
    }

    fn symlink(&self, name: &OsStr, stat: &FileStat) -> Result<()> {
        let (source, copy) = self.top()?.fds()?;
        let target = nix::fcntl::readlinkat(source, name)
            .map_err(|e| errno(format!("reading symlink {}", self.describe(name)), e))?;
        nix::unistd::symlinkat(target.as_os_str(), copy, name)
            .map_err(|e| errno(format!("creating symlink {}", self.describe(name)), e))?;
        self.finish_at(name, stat, false)
    }

    /// A device node, fifo or socket.
    fn node(&self, name: &OsStr, stat: &FileStat, kind: SFlag) -> Result<()> {
        let (_, copy) = self.top()?.fds()?;
        nix::sys::stat::mknodat(
            copy,
            name,
            kind,
            Mode::from_bits_truncate(0o600),
            stat.st_rdev,
        )
        .map_err(|e| errno(format!("creating {}", self.describe(name)), e))?;
        self.finish_at(name, stat, true)
    }

    /// Links `name` to the copy of an inode seen before; false if this is
    /// its first link.
    fn link_again(&mut self, name: &OsStr, stat: &FileStat) -> Result<bool> {
        let key = identity(stat);
        let Some(first) = self.links.get_mut(&key) else {
            return Ok(false);
        };
        first.remaining = first.remaining.saturating_sub(1);
        let (parent, first_name) = (first.parent.clone(), first.name.clone());
        if first.remaining == 0 {
            self.links.remove(&key);
        }
        let top = self.top()?;
        let (_, copy) = top.fds()?;
        let link = |from: BorrowedFd<'_>| {
            nix::unistd::linkat(from, first_name.as_os_str(), copy, name, AtFlags::empty())
        };
        let linked = if parent == self.here() {
            link(copy)
        } else {
            let rel: std::path::PathBuf = parent.iter().collect();
            let dir = open_beneath(
                self.copy_root.as_fd(),
                &rel,
                OFlag::O_PATH | OFlag::O_DIRECTORY,
            )
            .map_err(|e| errno(format!("opening {}", rel.display()), e))?;
            link(dir.as_fd())
        };
        linked.map_err(|e| errno(format!("hardlinking {}", self.describe(name)), e))?;
        Ok(true)
    }

    fn enter(&mut self, name: OsString, stat: FileStat) -> Result<()> {
        let top = self.top()?;
        let (source, copy) = top.fds()?;
        let sub_source = open_dir_at(source, &name)
            .map_err(|e| errno(format!("opening {}", self.describe(&name)), e))?;
        nix::sys::stat::mkdirat(copy, name.as_os_str(), Mode::from_bits_truncate(0o700))
            .map_err(|e| errno(format!("creating {}", self.describe(&name)), e))?;
        let sub_copy = open_dir_at(copy, &name)
            .map_err(|e| errno(format!("opening {}", self.describe(&name)), e))?;
        self.stack
            .push(Level::open(name, stat, sub_source, sub_copy)?);
        self.stats.entries += 1;
        if let Some(far) = self.stack.len().checked_sub(FD_WINDOW + 1) {
            if let Some(level) = self.stack.get_mut(far) {
                level.source = None;
                level.copy = None;
            }
        }
        Ok(())
    }

    /// Finishes the current directory (its metadata last, after its
    /// children changed its times) and goes back to its parent.
    fn leave(&mut self) -> Result<()> {
        let Some(done) = self.stack.pop() else {
            return Ok(());
        };
        let (source, copy) = done.fds()?;
        apply_metadata(Node::Open(source), copy, &done.stat, MetadataOn::OpenFd)
            .map_err(|e| e.context(format!("copying metadata of {:?}", done.name)))?;
        if let Some(parent) = self.stack.last_mut() {
            if parent.source.is_none() || parent.copy.is_none() {
                let reopen = |child: BorrowedFd<'_>, want: (u64, u64)| -> Result<OwnedFd> {
                    let fd = open_dir_at(child, OsStr::new(".."))
                        .map_err(|e| errno("reopening a parent directory", e))?;
                    let got = nix::sys::stat::fstat(&fd)
                        .map_err(|e| errno("stat of a parent directory", e))?;
                    if identity(&got) != want {
                        return Err(Error::aborted("the tree changed while it was being copied"));
                    }
                    Ok(fd)
                };
                let source_fd = reopen(source, identity(&parent.stat))?;
                parent.source =
                    Some(Dir::from_fd(source_fd).map_err(|e| errno("reopening a directory", e))?);
                parent.copy = Some(reopen(copy, parent.copy_id)?);
            }
        }
        Ok(())
    }

    fn regular(&mut self, name: &OsStr, stat: &FileStat) -> Result<()> {
        let top = self.top()?;
        let (source_dir, copy_dir) = top.fds()?;
        let what = self.describe(name);
        let source = nix::fcntl::openat(
            source_dir,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| errno(format!("opening {what}"), e))?;
        let copy = nix::fcntl::openat(
            copy_dir,
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| errno(format!("creating {what}"), e))?;
        self.content(&source, &copy, stat.st_size as u64)
            .map_err(|e| e.context(format!("copying {what}")))?;
        apply_metadata(
            Node::Open(source.as_fd()),
            copy.as_fd(),
            stat,
            MetadataOn::OpenFd,
        )
        .map_err(|e| e.context(format!("copying metadata of {what}")))
    }

    /// Ownership, mode (`chmod`: not for symlinks), xattrs and times of
    /// `name`, just created in the current copy directory.
    fn finish_at(&self, name: &OsStr, stat: &FileStat, chmod: bool) -> Result<()> {
        let top = self.top()?;
        let (source, copy) = top.fds()?;
        apply_metadata(
            Node::At(source, name),
            copy,
            stat,
            MetadataOn::Name { name, chmod },
        )
        .map_err(|e| e.context(format!("copying metadata of {}", self.describe(name))))
    }

    fn content(&mut self, source: &OwnedFd, copy: &OwnedFd, size: u64) -> Result<()> {
        if size == 0 {
            return Ok(());
        }
        if self.ficlone {
            // SAFETY: FICLONE takes the source fd as its argument; both fds
            // are open for the call and no memory of ours is touched.
            let rc = unsafe { libc::ioctl(copy.as_raw_fd(), libc::FICLONE, source.as_raw_fd()) };
            if rc == 0 {
                self.stats.reflinked += 1;
                return Ok(());
            }
            // Not on this filesystem at all: stop asking.
            if matches!(
                Errno::last(),
                Errno::EOPNOTSUPP | Errno::ENOTTY | Errno::EXDEV | Errno::ENOSYS
            ) {
                self.ficlone = false;
            }
        }
        // No reflinks here (EOPNOTSUPP, EXDEV, EINVAL...): copy the data
        // segments only, so holes stay holes.
        let mut offset: i64 = 0;
        let end = i64::try_from(size).map_err(|_| Error::internal("file too large"))?;
        while offset < end {
            let data = match nix::unistd::lseek(source, offset, Whence::SeekData) {
                Ok(data) => data,
                Err(Errno::ENXIO) => break,
                // No SEEK_DATA on this filesystem: all of it is data.
                Err(Errno::EINVAL) => offset,
                Err(e) => return Err(errno("seeking data", e)),
            };
            let hole = match nix::unistd::lseek(source, data, Whence::SeekHole) {
                Ok(hole) => hole.min(end),
                Err(Errno::EINVAL) => end,
                Err(e) => return Err(errno("seeking a hole", e)),
            };
            self.range(source, copy, data, hole - data)?;
            offset = hole;
        }
        nix::unistd::ftruncate(copy, end).map_err(|e| errno("setting the size", e))
    }

    fn range(&mut self, source: &OwnedFd, copy: &OwnedFd, start: i64, len: i64) -> Result<()> {
        let (mut read_at, mut write_at) = (start, start);
        let stop = start + len;
        while read_at < stop {
            let want = usize::try_from(stop - read_at).unwrap_or(usize::MAX);
            if self.copy_file_range {
                // SAFETY: both offsets are live i64s the call updates; the
                // fds are open for its duration.
                let rc = unsafe {
                    libc::copy_file_range(
                        source.as_raw_fd(),
                        &mut read_at,
                        copy.as_raw_fd(),
                        &mut write_at,
                        want,
                        0,
                    )
                };
                match usize::try_from(rc).map_err(|_| Errno::last()) {
                    Ok(0) => return Err(Error::aborted("the file shrank while it was copied")),
                    Ok(n) => {
                        self.stats.bytes += n as u64;
                        continue;
                    }
                    Err(Errno::EXDEV | Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::EINVAL) => {
                        self.copy_file_range = false;
                    }
                    Err(e) => return Err(errno("copy_file_range", e)),
                }
            }
            if self.buffer.is_empty() {
                self.buffer = vec![0; BYTE_COPY_CHUNK];
            }
            let chunk = want.min(self.buffer.len());
            let n = nix::sys::uio::pread(source, &mut self.buffer[..chunk], read_at)
                .map_err(|e| errno("reading", e))?;
            if n == 0 {
                return Err(Error::aborted("the file shrank while it was copied"));
            }
            let mut written = 0;
            while written < n {
                written += nix::sys::uio::pwrite(
                    copy,
                    &self.buffer[written..n],
                    write_at + written as i64,
                )
                .map_err(|e| errno("writing", e))?;
            }
            read_at += n as i64;
            write_at += n as i64;
            self.stats.bytes += n as u64;
        }
        Ok(())
    }
}

/// How [`apply_metadata`] reaches the copy.
enum MetadataOn<'a> {
    /// The fd it is given is open on the copy itself.
    OpenFd,
    /// The copy is `name` in the directory fd it is given.
    Name { name: &'a OsStr, chmod: bool },
}

/// Owner, mode, xattrs and times of `stat` (read from `source`) onto the
/// copy, in that order: chown clears set-id bits and file capabilities,
/// and the times go last because the rest changes the ctime only.
fn apply_metadata(
    source: Node<'_>,
    copy: BorrowedFd<'_>,
    stat: &FileStat,
    on: MetadataOn<'_>,
) -> Result<()> {
    let uid = Some(nix::unistd::Uid::from_raw(stat.st_uid));
    let gid = Some(nix::unistd::Gid::from_raw(stat.st_gid));
    let mode = Mode::from_bits_truncate(stat.st_mode & 0o7777);
    let atime = TimeSpec::new(stat.st_atime, stat.st_atime_nsec);
    let mtime = TimeSpec::new(stat.st_mtime, stat.st_mtime_nsec);
    match on {
        MetadataOn::OpenFd => {
            nix::unistd::fchown(copy, uid, gid).map_err(|e| errno("chown", e))?;
            nix::sys::stat::fchmod(copy, mode).map_err(|e| errno("chmod", e))?;
            for (key, value) in source.xattrs()? {
                Node::Open(copy).set_xattr(&key, &value)?;
            }
            nix::sys::stat::futimens(copy, &atime, &mtime).map_err(|e| errno("setting times", e))
        }
        MetadataOn::Name { name, chmod } => {
            nix::unistd::fchownat(copy, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| errno("chown", e))?;
            if chmod {
                // Not a symlink: this copy just made it with mknod, in a
                // directory no one else writes to yet.
                nix::sys::stat::fchmodat(
                    copy,
                    name,
                    mode,
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                )
                .map_err(|e| errno("chmod", e))?;
            }
            for (key, value) in source.xattrs()? {
                Node::At(copy, name).set_xattr(&key, &value)?;
            }
            nix::sys::stat::utimensat(copy, name, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
                .map_err(|e| errno("setting times", e))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::ffi::CString;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    use super::*;

    fn set_times(path: &Path, secs: i64) {
        let atime = TimeSpec::new(secs - 100, 5);
        let mtime = TimeSpec::new(secs, 123_456_789);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &atime,
            &mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    fn user_xattrs_supported(dir: &Path) -> bool {
        let probe = dir.join(".probe");
        std::fs::write(&probe, b"").unwrap();
        let file = std::fs::File::open(&probe).unwrap();
        let key = CString::new("user.probe").unwrap();
        let ok = Node::Open(file.as_fd()).set_xattr(&key, b"1").is_ok();
        std::fs::remove_file(&probe).unwrap();
        ok
    }

    #[test]
    fn files_links_fifos_modes_times_and_xattrs_are_kept() {
        let top = tempfile::tempdir().unwrap();
        let (from, to) = (top.path().join("from"), top.path().join("to"));
        std::fs::create_dir(&from).unwrap();
        std::fs::create_dir(&to).unwrap();
        let xattrs = user_xattrs_supported(top.path());
        std::fs::create_dir_all(from.join("a/b")).unwrap();
        std::fs::write(from.join("a/b/file"), b"content").unwrap();
        std::fs::set_permissions(from.join("a/b/file"), PermissionsExt::from_mode(0o4751)).unwrap();
        std::fs::hard_link(from.join("a/b/file"), from.join("a/link")).unwrap();
        std::fs::hard_link(from.join("a/b/file"), from.join("top-link")).unwrap();
        symlink("/etc/passwd", from.join("a/abs")).unwrap();
        symlink("../../..", from.join("a/b/up")).unwrap();
        nix::unistd::mkfifo(&from.join("fifo"), Mode::from_bits_truncate(0o640)).unwrap();
        std::fs::write(from.join("empty"), b"").unwrap();
        std::fs::set_permissions(from.join("a"), PermissionsExt::from_mode(0o750)).unwrap();
        if xattrs {
            let f = std::fs::File::open(from.join("a/b/file")).unwrap();
            Node::Open(f.as_fd())
                .set_xattr(&CString::new("user.k").unwrap(), b"v\0binary")
                .unwrap();
            let d = std::fs::File::open(from.join("a")).unwrap();
            Node::Open(d.as_fd())
                .set_xattr(&CString::new("user.dir").unwrap(), b"d")
                .unwrap();
        }
        const TIMED: [&str; 6] = ["a/b/file", "a/abs", "fifo", "a/b", "a", "."];
        for (i, rel) in TIMED.iter().enumerate() {
            set_times(&from.join(rel), 1_000_000 + i as i64);
        }

        let stats = copy_tree(&from, &to).unwrap();
        // a, a/b, file, two more links to it, abs, up, fifo, empty.
        assert_eq!(stats.entries, 9);

        for rel in [
            ".", "a", "a/b", "a/b/file", "a/link", "a/abs", "a/b/up", "fifo", "empty",
        ] {
            let (s, c) = (
                std::fs::symlink_metadata(from.join(rel)).unwrap(),
                std::fs::symlink_metadata(to.join(rel)).unwrap(),
            );
            assert_eq!(s.file_type(), c.file_type(), "{rel}");
            assert_eq!(s.mode(), c.mode(), "{rel}");
            assert_eq!((s.uid(), s.gid()), (c.uid(), c.gid()), "{rel}");
            assert_eq!(
                (s.mtime(), s.mtime_nsec()),
                (c.mtime(), c.mtime_nsec()),
                "{rel}"
            );
            assert_eq!(s.size(), c.size(), "{rel}");
            assert_eq!(s.nlink(), c.nlink(), "{rel}");
        }
        // Access times as they were before the copy read the source.
        for (i, rel) in TIMED.iter().enumerate() {
            let c = std::fs::symlink_metadata(to.join(rel)).unwrap();
            assert_eq!(
                (c.atime(), c.atime_nsec()),
                (1_000_000 + i as i64 - 100, 5),
                "{rel}"
            );
        }
        assert_eq!(std::fs::read(to.join("a/b/file")).unwrap(), b"content");
        assert_eq!(
            std::fs::read_link(to.join("a/abs")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            std::fs::read_link(to.join("a/b/up")).unwrap(),
            Path::new("../../..")
        );
        // The three names are one inode in the copy, not the source's.
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&to.join("a/link")), ino(&to.join("a/b/file")));
        assert_eq!(ino(&to.join("top-link")), ino(&to.join("a/b/file")));
        assert_ne!(ino(&to.join("a/b/file")), ino(&from.join("a/b/file")));
        if xattrs {
            let f = std::fs::File::open(to.join("a/b/file")).unwrap();
            let got = Node::Open(f.as_fd()).xattrs().unwrap();
            assert!(got
                .iter()
                .any(|(k, v)| k.as_bytes() == b"user.k" && v == b"v\0binary"));
            let d = std::fs::File::open(to.join("a")).unwrap();
            let got = Node::Open(d.as_fd()).xattrs().unwrap();
            assert!(got
                .iter()
                .any(|(k, v)| k.as_bytes() == b"user.dir" && v == b"d"));
        }
    }

    #[test]
    fn holes_stay_holes() {
        let top = tempfile::tempdir().unwrap();
        let (from, to) = (top.path().join("from"), top.path().join("to"));
        std::fs::create_dir(&from).unwrap();
        std::fs::create_dir(&to).unwrap();
        let file = std::fs::File::create(from.join("sparse")).unwrap();
        let size: u64 = 256 << 20;
        use std::os::unix::fs::FileExt;
        file.write_all_at(b"start", 0).unwrap();
        file.write_all_at(b"middle", 64 << 20).unwrap();
        file.set_len(size).unwrap();
        drop(file);
        let source_blocks = std::fs::metadata(from.join("sparse")).unwrap().blocks();
        if source_blocks * 512 >= size {
            eprintln!("skipping: this filesystem does not keep holes");
            return;
        }
        copy_tree(&from, &to).unwrap();
        let copy = std::fs::metadata(to.join("sparse")).unwrap();
        assert_eq!(copy.len(), size);
        assert!(copy.blocks() * 512 < 4 << 20, "{} blocks", copy.blocks());
        let file = std::fs::File::open(to.join("sparse")).unwrap();
        let mut buf = [0u8; 6];
        file.read_exact_at(&mut buf, 64 << 20).unwrap();
        assert_eq!(&buf, b"middle");
        file.read_exact_at(&mut buf, size - 6).unwrap();
        assert_eq!(buf, [0; 6]);
    }

    #[test]
    fn symlinks_are_never_followed_out_of_either_tree() {
        let top = tempfile::tempdir().unwrap();
        let (from, to, outside) = (
            top.path().join("from"),
            top.path().join("to"),
            top.path().join("outside"),
        );
        for d in [&from, &to, &outside] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(outside.join("secret"), b"secret").unwrap();
        // A directory symlink and a file symlink pointing out: copied as
        // links, never descended into or read through.
        symlink(&outside, from.join("dir-out")).unwrap();
        symlink(outside.join("secret"), from.join("file-out")).unwrap();
        copy_tree(&from, &to).unwrap();
        assert!(std::fs::symlink_metadata(to.join("dir-out"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(std::fs::symlink_metadata(to.join("file-out"))
            .unwrap()
            .file_type()
            .is_symlink());
        let names: Vec<_> = std::fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["secret"]);
        // A root that is itself a symlink is refused.
        let link_root = top.path().join("link-root");
        symlink(&outside, &link_root).unwrap();
        let again = top.path().join("again");
        std::fs::create_dir(&again).unwrap();
        assert!(copy_tree(&link_root, &again).is_err());
        assert!(copy_tree(&from, &link_root).is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    }

    #[test]
    fn trees_deeper_than_the_fd_window_are_copied() {
        let top = tempfile::tempdir().unwrap();
        let (from, to) = (top.path().join("from"), top.path().join("to"));
        std::fs::create_dir(&from).unwrap();
        std::fs::create_dir(&to).unwrap();
        // Built with *at calls: the path is longer than PATH_MAX.
        let depth = FD_WINDOW * 4 + 3;
        let mut dir = nix::fcntl::open(&from, OFlag::O_RDONLY, Mode::empty()).unwrap();
        let long = "d".repeat(40);
        for i in 0..depth {
            let file = nix::fcntl::openat(
                &dir,
                format!("f{i}").as_str(),
                OFlag::O_CREAT | OFlag::O_WRONLY,
                Mode::from_bits_truncate(0o644),
            )
            .unwrap();
            nix::unistd::write(file, i.to_string().as_bytes()).unwrap();
            nix::sys::stat::mkdirat(&dir, long.as_str(), Mode::from_bits_truncate(0o755)).unwrap();
            dir = open_dir_at(dir.as_fd(), OsStr::new(&long)).unwrap();
        }
        let stats = copy_tree(&from, &to).unwrap();
        assert_eq!(stats.entries, 2 * depth as u64);
        let mut dir = nix::fcntl::open(&to, OFlag::O_RDONLY, Mode::empty()).unwrap();
        for i in 0..depth {
            let fd = nix::fcntl::openat(
                &dir,
                format!("f{i}").as_str(),
                OFlag::O_RDONLY,
                Mode::empty(),
            )
            .unwrap();
            let mut buf = [0u8; 8];
            let n = nix::unistd::read(&fd, &mut buf).unwrap();
            assert_eq!(&buf[..n], i.to_string().as_bytes());
            dir = open_dir_at(dir.as_fd(), OsStr::new(&long)).unwrap();
        }
        // Clean up through fds too: remove_dir_all copes with the depth.
        std::fs::remove_dir_all(&from).unwrap();
        std::fs::remove_dir_all(&to).unwrap();
    }
}
