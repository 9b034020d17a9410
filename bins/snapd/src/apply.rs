//! Applying a layer tarball to a snapshot directory, without trusting it.
//!
//! Entries are parsed with `tar::Archive::entries` and written here, fd by
//! fd: every directory an entry lands in is opened with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` on the snapshot root,
//! so `..`, absolute names and symlinks (planted by this layer or a lower
//! one) all resolve inside the root; the last component is then created or
//! changed with `*at` calls that never follow it. Names are cleaned
//! lexically first (`..` cannot climb above the root).
//!
//! OCI whiteouts become overlay whiteouts (a 0/0 character device) and
//! opaque directories (`trusted.overlay.opaque=y`) when applying into an
//! overlayfs upper directory, and deletions otherwise.
//!
//! The privileged calls (mknod, chown, setxattr) go through [`Privileged`],
//! so the logic runs without root against [`Unprivileged`].

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::os::errno;
use berth_errdefs::{Error, Result};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::UnlinkatFlags;

/// How a layer is applied.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Whiteouts become overlay whiteouts (the target is an upper dir).
    pub overlay: bool,
    /// Directories below the target, nearest first: where hardlinks to
    /// files of lower layers find their targets (overlayfs only).
    pub lowers: Vec<PathBuf>,
    /// The lower layers are not there yet (the layer is applied alongside
    /// them): a hardlink to a file of a lower layer then fails with
    /// [`ErrorKind::Aborted`](berth_errdefs::ErrorKind::Aborted), and the
    /// layer is to be applied again once they are.
    pub lowers_pending: bool,
    /// Whether device nodes may be created; skipped otherwise.
    pub devices: bool,
    /// Whether to syncfs the target's filesystem once the layer is applied.
    pub sync_fs: bool,
}

/// What an apply did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub entries: u64,
    /// Bytes of file content written (holes excluded).
    pub bytes: u64,
}

/// The privileged calls an apply makes.
pub trait Privileged: Send + Sync {
    fn mknod(&self, dir: BorrowedFd<'_>, name: &OsStr, kind: SFlag, dev: u64) -> Result<()>;
    fn chown(&self, dir: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> Result<()>;
    fn set_xattr(&self, fd: BorrowedFd<'_>, name: &str, value: &[u8]) -> Result<()>;
    /// The owner (uid, gid) a file this process creates gets in a
    /// directory of that same group, when `chown` really changes owners;
    /// then a chown to exactly that owner can be skipped.
    fn creator(&self) -> Option<(u32, u32)> {
        None
    }
}

/// The real calls (needs root, or the matching capabilities).
#[derive(Debug, Default, Clone, Copy)]
pub struct Host;

impl Privileged for Host {
    fn mknod(&self, dir: BorrowedFd<'_>, name: &OsStr, kind: SFlag, dev: u64) -> Result<()> {
        nix::sys::stat::mknodat(dir, name, kind, Mode::from_bits_truncate(0o600), dev)
            .map_err(|e| errno(format!("mknod {}", name.to_string_lossy()), e))
    }

    fn chown(&self, dir: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> Result<()> {
        nix::unistd::fchownat(
            dir,
            name,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| errno(format!("chown {}", name.to_string_lossy()), e))
    }

    fn set_xattr(&self, fd: BorrowedFd<'_>, name: &str, value: &[u8]) -> Result<()> {
        let name = std::ffi::CString::new(name)
            .map_err(|_| Error::invalid_argument("xattr name contains NUL"))?;
        crate::xattr::Node::Open(fd).set_xattr(&name, value)
    }

    fn creator(&self) -> Option<(u32, u32)> {
        Some((
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        ))
    }
}

/// For running without privileges: ownership and xattrs are dropped,
/// device nodes refused.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unprivileged;

impl Privileged for Unprivileged {
    fn mknod(&self, _dir: BorrowedFd<'_>, name: &OsStr, _kind: SFlag, _dev: u64) -> Result<()> {
        Err(Error::failed_precondition(format!(
            "cannot create device {} without privileges",
            name.to_string_lossy()
        )))
    }

    fn chown(&self, _dir: BorrowedFd<'_>, _name: &OsStr, _uid: u32, _gid: u32) -> Result<()> {
        Ok(())
    }

    fn set_xattr(&self, _fd: BorrowedFd<'_>, _name: &str, _value: &[u8]) -> Result<()> {
        Ok(())
    }
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
const BUFFER: usize = 1 << 20;

/// A name cleaned lexically: components without `.`, `..` applied but
/// never above the root.
fn clean(name: &[u8]) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    for part in name.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            other => out.push(OsString::from_vec(other.to_vec())),
        }
    }
    out
}

fn join(components: &[OsString]) -> OsString {
    let mut path = OsString::from(".");
    for c in components {
        path.push("/");
        path.push(c);
    }
    path
}

fn display(components: &[OsString]) -> String {
    join(components).to_string_lossy().into_owned()
}

/// Opens `components` under `root`, resolved inside it.
fn resolve(root: &OwnedFd, components: &[OsString], flags: OFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    nix::fcntl::openat2(root.as_fd(), join(components).as_os_str(), how)
}

/// Opens an existing directory of the root, or creates it (and its
/// parents) when `create`.
fn open_dir(root: &OwnedFd, components: &[OsString], create: bool) -> Result<OwnedFd> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
    match resolve(root, components, flags) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) if create => {}
        Err(e) => return Err(errno(format!("opening {}", display(components)), e)),
    }
    let mut dir = resolve(root, &[], flags).map_err(|e| errno("opening the root", e))?;
    for i in 0..components.len() {
        match resolve(root, &components[..=i], flags) {
            Ok(fd) => dir = fd,
            Err(Errno::ENOENT) => {
                // Below a directory this call made, nothing exists yet:
                // the rest are made one inside the other, without
                // resolving each from the root again.
                for j in i..components.len() {
                    dir = match make_dir_at(dir.as_fd(), components[j].as_os_str()) {
                        Ok(fd) => fd,
                        // Made by someone else meanwhile: resolve it.
                        Err(Errno::EEXIST) => {
                            resolve(root, &components[..=j], flags).map_err(|e| {
                                errno(format!("opening {}", display(&components[..=j])), e)
                            })?
                        }
                        Err(e) => {
                            return Err(errno(
                                format!("creating {}", display(&components[..=j])),
                                e,
                            ))
                        }
                    };
                }
                return Ok(dir);
            }
            Err(e) => return Err(errno(format!("opening {}", display(&components[..=i])), e)),
        }
    }
    Ok(dir)
}

/// Makes directory `name` in `dir`, mode exactly 0755 whatever the umask,
/// and opens it (never through a symlink). EEXIST if something is there.
fn make_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<OwnedFd> {
    nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(0o755))?;
    let fd = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o755))?;
    Ok(fd)
}

/// The directories along the path of the last entry, open, so that the
/// entries of one directory do not each resolve their parent from the
/// root again. Each step is opened from the one above with `O_NOFOLLOW`
/// (names are cleaned, so there is no `..`); a step that is a symlink
/// falls back to [`open_dir`]'s resolution inside the root. An fd stays
/// valid for its path until something is removed, and every removal
/// clears the cache.
struct DirCache {
    root: Rc<OwnedFd>,
    root_gid: u32,
    /// (name, directory, its group) from below the root down.
    chain: Vec<(OsString, Rc<OwnedFd>, u32)>,
}

impl DirCache {
    fn new(root: OwnedFd) -> Result<DirCache> {
        let stat = nix::sys::stat::fstat(&root).map_err(|e| errno("reading the root", e))?;
        Ok(DirCache {
            root: Rc::new(root),
            root_gid: stat.st_gid,
            chain: Vec::new(),
        })
    }

    fn clear(&mut self) {
        self.chain.clear();
    }

    /// The group of the directory the chain ends in.
    fn gid(&self) -> u32 {
        self.chain.last().map_or(self.root_gid, |(_, _, gid)| *gid)
    }

    /// Opens (or with `create`, makes) `components` under `root`; the chain
    /// then ends in it.
    fn open(&mut self, components: &[OsString], create: bool) -> Result<Rc<OwnedFd>> {
        let root = self.root.clone();
        let common = self
            .chain
            .iter()
            .zip(components)
            .take_while(|((name, _, _), component)| name == *component)
            .count();
        self.chain.truncate(common);
        for i in common..components.len() {
            let base = match self.chain.last() {
                Some((_, fd, _)) => fd.as_fd(),
                None => self.root.as_fd(),
            };
            let name = components[i].as_os_str();
            let step = nix::fcntl::openat(
                base,
                name,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            );
            let fd = match step {
                Ok(fd) => fd,
                // Missing: made right here, in a directory the chain
                // holds open, so a deep path costs one mkdir per level
                // rather than a resolution from the root per level.
                Err(Errno::ENOENT) if create => match make_dir_at(base, name) {
                    Ok(fd) => fd,
                    Err(Errno::EEXIST) => open_dir(&root, &components[..=i], create)?,
                    Err(e) => {
                        return Err(errno(format!("creating {}", display(&components[..=i])), e))
                    }
                },
                // Missing, a symlink, or not a directory: the full
                // resolution inside the root decides (and creates).
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => {
                    open_dir(&root, &components[..=i], create)?
                }
                Err(e) => return Err(errno(format!("opening {}", display(&components[..=i])), e)),
            };
            let stat = nix::sys::stat::fstat(&fd)
                .map_err(|e| errno(format!("reading {}", display(&components[..=i])), e))?;
            self.chain
                .push((components[i].clone(), Rc::new(fd), stat.st_gid));
        }
        Ok(self.chain.last().map_or(root, |(_, fd, _)| fd.clone()))
    }

    /// Extends the chain by a directory just opened in `parent`, if the
    /// chain still ends there.
    fn push_below(&mut self, parent: &[OsString], name: OsString, fd: OwnedFd, gid: u32) {
        let ends_in_parent = self.chain.len() == parent.len()
            && self
                .chain
                .iter()
                .zip(parent)
                .all(|((step, _, _), component)| step == component);
        if ends_in_parent {
            self.chain.push((name, Rc::new(fd), gid));
        }
    }
}

fn lstat_at(dir: &OwnedFd, name: &OsStr) -> nix::Result<nix::sys::stat::FileStat> {
    nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
}

fn is_dir(stat: &nix::sys::stat::FileStat) -> bool {
    stat.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Removes `name` in `dir` and, if it is a directory, everything under it,
/// never following a symlink.
pub fn remove_all_at(dir: &OwnedFd, name: &OsStr) -> Result<()> {
    match nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR) | Err(Errno::EPERM) => {}
        Err(e) => return Err(errno(format!("removing {}", name.to_string_lossy()), e)),
    }
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let names: Vec<OsString> = {
        let mut listing = nix::dir::Dir::openat(dir, name, flags, Mode::empty())
            .map_err(|e| errno(format!("reading {}", name.to_string_lossy()), e))?;
        listing
            .iter()
            .filter_map(|e| e.ok())
            .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_owned())
            .filter(|n| n != "." && n != "..")
            .collect()
    };
    let sub = nix::fcntl::openat(dir, name, flags, Mode::empty())
        .map_err(|e| errno(format!("opening {}", name.to_string_lossy()), e))?;
    for child in names {
        remove_all_at(&sub, &child)?;
    }
    match nix::unistd::unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(errno(format!("removing {}", name.to_string_lossy()), e)),
    }
}

/// Entry metadata, with PAX records taking precedence over the ustar
/// fields.
#[derive(Debug, Default)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    xattrs: Vec<(String, Vec<u8>)>,
}

fn parse_pax_time(value: &str) -> Option<(i64, i64)> {
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nanos: i64 = digits.parse().ok()?;
    Some((secs, nanos))
}

fn meta_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Meta> {
    let header = entry.header();
    let bad = |what: &str, e: std::io::Error| Error::invalid_argument(format!("tar {what}: {e}"));
    // An empty numeric field (all NUL or spaces) means 0; anything else
    // that does not parse is refused.
    let empty = |field: &[u8]| field.iter().all(|b| *b == 0 || *b == b' ');
    let old = header.as_old();
    let number = |what: &str, field: &[u8], value: std::io::Result<u64>| match value {
        Ok(v) => Ok(v),
        Err(_) if empty(field) => Ok(0),
        Err(e) => Err(bad(what, e)),
    };
    let id = |what: &str, value: u64| {
        u32::try_from(value)
            .map_err(|_| Error::invalid_argument(format!("tar {what} out of range")))
    };
    let mut meta = Meta {
        mode: number("mode", &old.mode, header.mode().map(u64::from))? as u32 & 0o7777,
        uid: id("uid", number("uid", &old.uid, header.uid())?)?,
        gid: id("gid", number("gid", &old.gid, header.gid())?)?,
        mtime: (number("mtime", &old.mtime, header.mtime())? as i64, 0),
        xattrs: Vec::new(),
    };
    if let Some(pax) = entry.pax_extensions().map_err(|e| bad("pax header", e))? {
        for ext in pax {
            let ext = ext.map_err(|e| bad("pax record", e))?;
            let Ok(key) = ext.key() else { continue };
            let value = ext.value_bytes();
            let text = std::str::from_utf8(value).unwrap_or("");
            match key {
                "uid" => {
                    meta.uid = text
                        .parse()
                        .map_err(|_| Error::invalid_argument("pax uid"))?
                }
                "gid" => {
                    meta.gid = text
                        .parse()
                        .map_err(|_| Error::invalid_argument("pax gid"))?
                }
                "mtime" => {
                    if let Some(t) = parse_pax_time(text) {
                        meta.mtime = t;
                    }
                }
                k => {
                    if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                        meta.xattrs.push((name.to_string(), value.to_vec()));
                    }
                }
            }
        }
    }
    Ok(meta)
}

struct Applier<'a> {
    dirs: DirCache,
    options: &'a ApplyOptions,
    privileged: &'a dyn Privileged,
    /// Whose a file this process creates is, when that can be known.
    creator: Option<(u32, u32)>,
    /// The group of the directory the current entry is created in.
    parent_gid: u32,
    /// Paths this layer wrote (for opaque directories on native).
    written: HashSet<Vec<OsString>>,
    /// Directory mtimes, set last (their children change them).
    dir_times: Vec<(Vec<OsString>, (i64, i64))>,
    buffer: Vec<u8>,
    stats: ApplyStats,
}

/// Applies the uncompressed layer tarball `reader` to `root`.
pub fn apply(
    reader: impl Read,
    root: &Path,
    options: &ApplyOptions,
    privileged: &dyn Privileged,
) -> Result<ApplyStats> {
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| errno(format!("opening {}", root.display()), e))?;
    let mut applier = Applier {
        dirs: DirCache::new(root_fd)?,
        options,
        privileged,
        creator: privileged.creator(),
        parent_gid: 0,
        written: HashSet::new(),
        dir_times: Vec::new(),
        buffer: vec![0; BUFFER],
        stats: ApplyStats::default(),
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| Error::invalid_argument(format!("reading the layer: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| Error::invalid_argument(format!("reading the layer: {e}")))?;
        applier.entry(&mut entry)?;
        applier.stats.entries += 1;
    }
    for (components, mtime) in std::mem::take(&mut applier.dir_times).into_iter().rev() {
        let Some((name, parent)) = components.split_last() else {
            continue;
        };
        if let Ok(dir) = applier.dirs.open(parent, false) {
            let _ = set_times(&dir, name, mtime);
        }
    }
    Ok(applier.stats)
}

fn set_times(dir: &OwnedFd, name: &OsStr, (secs, nanos): (i64, i64)) -> Result<()> {
    let t = TimeSpec::new(secs, nanos);
    nix::sys::stat::utimensat(dir, name, &t, &t, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| errno(format!("setting times of {}", name.to_string_lossy()), e))
}

/// Creates the regular file `name` in `dir` for writing (never through a
/// symlink, never an existing file), private until its mode is set.
fn create_file(dir: &OwnedFd, name: &OsStr) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(
        dir,
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
}

/// Runs `create` for `name` in `dir`; if something is in its way, removes
/// that (and all under it) and runs it once more. The first try needs no
/// lookup: in a fresh layer nothing is ever in the way.
fn create_replacing<T>(
    dirs: &mut DirCache,
    dir: &OwnedFd,
    name: &OsStr,
    what: &str,
    mut create: impl FnMut() -> nix::Result<T>,
) -> Result<T> {
    match create() {
        Err(Errno::EEXIST) => {
            remove_all_at(dir, name)?;
            dirs.clear();
            create()
        }
        other => other,
    }
    .map_err(|e| errno(format!("{what} {}", name.to_string_lossy()), e))
}

impl Applier<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let components = clean(&entry.path_bytes());
        let Some((name, parent)) = components.split_last() else {
            // The root itself: its metadata belongs to the snapshot.
            return Ok(());
        };
        let name = name.as_os_str();
        if name.as_bytes().starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(parent, name);
        }
        let meta = meta_of(entry)?;
        let dir = self.dirs.open(parent, true)?;
        self.parent_gid = self.dirs.gid();
        if !self.options.overlay {
            self.written.insert(components.clone());
        }
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.regular(entry, &dir, name, &meta)?;
            }
            tar::EntryType::Directory => self.directory(&dir, &components, &meta)?,
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Error::invalid_argument("symlink without a target"))?;
                create_replacing(&mut self.dirs, &dir, name, "symlink", || {
                    nix::unistd::symlinkat(OsStr::from_bytes(&target), &dir, name)
                })?;
                self.chown(&dir, name, &meta)?;
                set_times(&dir, name, meta.mtime)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Error::invalid_argument("hardlink without a target"))?;
                self.hardlink(&clean(&target), &dir, name)?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                if !self.options.devices {
                    let path = display(&components);
                    tracing::warn!(%path, "skipping a device node");
                    return Ok(());
                }
                let header = entry.header();
                let major = header.device_major().ok().flatten().unwrap_or(0) as u64;
                let minor = header.device_minor().ok().flatten().unwrap_or(0) as u64;
                let sflag = if kind == tar::EntryType::Char {
                    SFlag::S_IFCHR
                } else {
                    SFlag::S_IFBLK
                };
                self.replace(&dir, name)?;
                self.privileged.mknod(
                    dir.as_fd(),
                    name,
                    sflag,
                    nix::sys::stat::makedev(major, minor),
                )?;
                self.finish_special(&dir, name, &meta)?;
            }
            tar::EntryType::Fifo => {
                create_replacing(&mut self.dirs, &dir, name, "mkfifo", || {
                    nix::unistd::mkfifoat(&dir, name, Mode::from_bits_truncate(0o600))
                })?;
                self.finish_special(&dir, name, &meta)?;
            }
            other => {
                return Err(Error::invalid_argument(format!(
                    "unsupported tar entry type {other:?} for {}",
                    display(&components)
                )))
            }
        }
        Ok(())
    }

    /// Removes whatever is at `name` in `dir`.
    fn replace(&mut self, dir: &OwnedFd, name: &OsStr) -> Result<()> {
        if lstat_at(dir, name).is_ok() {
            remove_all_at(dir, name)?;
            self.dirs.clear();
        }
        Ok(())
    }

    /// Gives `name`, just created in the current entry's directory `dir`,
    /// its owner, unless it was created with that owner already.
    fn chown(&self, dir: &OwnedFd, name: &OsStr, meta: &Meta) -> Result<()> {
        if self.creator == Some((meta.uid, meta.gid)) && self.parent_gid == meta.gid {
            // New files get the creator's uid, and the creator's gid or
            // the directory's (set-gid or `grpid`): the same gid here.
            return Ok(());
        }
        self.privileged.chown(dir.as_fd(), name, meta.uid, meta.gid)
    }

    /// A directory entry: made (or kept, if one is there already) with the
    /// entry's owner, mode and xattrs; its times are set at the end.
    fn directory(&mut self, dir: &OwnedFd, components: &[OsString], meta: &Meta) -> Result<()> {
        let Some(name) = components.last() else {
            return Ok(());
        };
        let made =
            match nix::sys::stat::mkdirat(dir, name.as_os_str(), Mode::from_bits_truncate(0o700)) {
                Ok(()) => true,
                Err(Errno::EEXIST) => match lstat_at(dir, name) {
                    Ok(stat) if is_dir(&stat) => false,
                    _ => {
                        remove_all_at(dir, name)?;
                        self.dirs.clear();
                        nix::sys::stat::mkdirat(
                            dir,
                            name.as_os_str(),
                            Mode::from_bits_truncate(0o700),
                        )
                        .map_err(|e| errno(format!("creating {}", display(components)), e))?;
                        true
                    }
                },
                Err(e) => return Err(errno(format!("creating {}", display(components)), e)),
            };
        let fd = nix::fcntl::openat(
            dir,
            name.as_os_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| errno(format!("opening {}", display(components)), e))?;
        if made {
            self.chown(dir, name, meta)?;
        } else {
            self.privileged
                .chown(dir.as_fd(), name, meta.uid, meta.gid)?;
        }
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(meta.mode))
            .map_err(|e| errno(format!("chmod {}", display(components)), e))?;
        for (key, value) in &meta.xattrs {
            self.privileged.set_xattr(fd.as_fd(), key, value)?;
        }
        self.dir_times.push((components.to_vec(), meta.mtime));
        // The entries that follow are most likely inside it. (The chain
        // ends in `dir`: the cache opened it for this entry.)
        self.dirs.push_below(
            &components[..components.len() - 1],
            name.clone(),
            fd,
            meta.gid,
        );
        Ok(())
    }

    /// Ownership, mode and times of a device or fifo just created in `dir`
    /// (a plain name, not a symlink: this apply made it).
    fn finish_special(&self, dir: &OwnedFd, name: &OsStr, meta: &Meta) -> Result<()> {
        self.chown(dir, name, meta)?;
        nix::sys::stat::fchmodat(
            dir,
            name,
            Mode::from_bits_truncate(meta.mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| errno(format!("chmod {}", name.to_string_lossy()), e))?;
        set_times(dir, name, meta.mtime)
    }

    fn regular<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        dir: &OwnedFd,
        name: &OsStr,
        meta: &Meta,
    ) -> Result<()> {
        let fd = create_replacing(&mut self.dirs, dir, name, "creating", || {
            create_file(dir, name)
        })?;
        let file = std::fs::File::from(fd);
        let mut offset: u64 = 0;
        let mut written_to: u64 = 0;
        loop {
            let n = entry
                .read(&mut self.buffer)
                .map_err(|e| Error::invalid_argument(format!("reading the layer: {e}")))?;
            if n == 0 {
                break;
            }
            let chunk = &self.buffer[..n];
            // All-zero chunks become holes.
            if chunk.iter().any(|b| *b != 0) {
                file.write_all_at(chunk, offset)
                    .map_err(|e| Error::io(format!("writing {}", name.to_string_lossy()), &e))?;
                self.stats.bytes += n as u64;
                written_to = offset + n as u64;
            }
            offset += n as u64;
        }
        if written_to != offset {
            // It ends in a hole.
            file.set_len(offset)
                .map_err(|e| Error::io(format!("sizing {}", name.to_string_lossy()), &e))?;
        }
        self.chown(dir, name, meta)?;
        // After chown, which clears set-id bits.
        nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(meta.mode))
            .map_err(|e| errno(format!("chmod {}", name.to_string_lossy()), e))?;
        for (key, value) in &meta.xattrs {
            self.privileged.set_xattr(file.as_fd(), key, value)?;
        }
        let t = TimeSpec::new(meta.mtime.0, meta.mtime.1);
        nix::sys::stat::futimens(&file, &t, &t)
            .map_err(|e| errno(format!("setting times of {}", name.to_string_lossy()), e))?;
        Ok(())
    }

    fn hardlink(&mut self, target: &[OsString], dir: &OwnedFd, name: &OsStr) -> Result<()> {
        let Some((target_name, target_parent)) = target.split_last() else {
            return Err(Error::invalid_argument("hardlink to the root"));
        };
        let found = match open_dir(&self.dirs.root, target_parent, false) {
            Ok(d) => lstat_at(&d, target_name).ok().map(|stat| (d, stat)),
            Err(e) if e.kind() == berth_errdefs::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let target_dir = match found {
            Some((d, stat)) => {
                if is_dir(&stat) {
                    return Err(Error::invalid_argument(format!(
                        "hardlink to directory {}",
                        display(target)
                    )));
                }
                d
            }
            None => {
                // On overlayfs the target may be in a lower layer: copy it
                // up into this layer first.
                self.copy_up(target)?;
                open_dir(&self.dirs.root, target_parent, false)?
            }
        };
        // Flags 0: a symlink target is linked itself, never followed.
        create_replacing(&mut self.dirs, dir, name, "hardlink", || {
            nix::unistd::linkat(
                &target_dir,
                target_name.as_os_str(),
                dir,
                name,
                AtFlags::empty(),
            )
        })
        .map_err(|e| e.context(format!("to {}", display(target))))
    }

    fn copy_up(&mut self, target: &[OsString]) -> Result<()> {
        let (target_name, target_parent) = target
            .split_last()
            .ok_or_else(|| Error::invalid_argument("hardlink to the root"))?;
        for lower in &self.options.lowers {
            let lower_root = nix::fcntl::open(
                lower.as_path(),
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| errno(format!("opening {}", lower.display()), e))?;
            let Ok(lower_dir) = resolve(
                &lower_root,
                target_parent,
                OFlag::O_PATH | OFlag::O_DIRECTORY,
            ) else {
                continue;
            };
            let Ok(stat) = lstat_at(&lower_dir, target_name) else {
                continue;
            };
            if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Err(Error::invalid_argument(format!(
                    "hardlink to {} in a lower layer, which is not a regular file",
                    display(target)
                )));
            }
            let source = nix::fcntl::openat(
                &lower_dir,
                target_name.as_os_str(),
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| errno(format!("opening lower {}", display(target)), e))?;
            let mut source = std::fs::File::from(source);
            let upper_dir = open_dir(&self.dirs.root, target_parent, true)?;
            let fd = create_file(&upper_dir, target_name)
                .map_err(|e| errno(format!("copying up {}", display(target)), e))?;
            let mut dest = std::fs::File::from(fd);
            std::io::copy(&mut source, &mut dest)
                .map_err(|e| Error::io(format!("copying up {}", display(target)), &e))?;
            self.privileged
                .chown(upper_dir.as_fd(), target_name, stat.st_uid, stat.st_gid)?;
            nix::sys::stat::fchmod(&dest, Mode::from_bits_truncate(stat.st_mode & 0o7777))
                .map_err(|e| errno("chmod", e))?;
            let mtime = TimeSpec::new(stat.st_mtime, stat.st_mtime_nsec);
            let _ = nix::sys::stat::futimens(&dest, &mtime, &mtime);
            return Ok(());
        }
        if self.options.lowers_pending {
            return Err(Error::aborted(format!(
                "hardlink target {} is not in this layer; the layers below are not applied yet",
                display(target)
            )));
        }
        Err(Error::invalid_argument(format!(
            "hardlink target {} not found",
            display(target)
        )))
    }

    fn whiteout(&mut self, parent: &[OsString], name: &OsStr) -> Result<()> {
        if name.as_bytes() == OPAQUE {
            return self.opaque(parent);
        }
        let target = &name.as_bytes()[WHITEOUT_PREFIX.len()..];
        if target.is_empty() || target == b"." || target == b".." {
            return Err(Error::invalid_argument(format!(
                "invalid whiteout {}",
                name.to_string_lossy()
            )));
        }
        let target = OsStr::from_bytes(target);
        // Whatever the whiteout removes may be on the cache's path.
        self.dirs.clear();
        let root = self.dirs.root.clone();
        if self.options.overlay {
            let dir = open_dir(&root, parent, true)?;
            remove_all_at(&dir, target)?;
            self.privileged.mknod(
                dir.as_fd(),
                target,
                SFlag::S_IFCHR,
                nix::sys::stat::makedev(0, 0),
            )?;
        } else {
            match open_dir(&root, parent, false) {
                Ok(dir) => remove_all_at(&dir, target)?,
                Err(e) if e.kind() == berth_errdefs::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn opaque(&mut self, parent: &[OsString]) -> Result<()> {
        self.dirs.clear();
        let root = self.dirs.root.clone();
        if self.options.overlay {
            let path = open_dir(&root, parent, true)?;
            drop(path);
            let fd = resolve(&root, parent, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                .map_err(|e| errno(format!("opening {}", display(parent)), e))?;
            return self
                .privileged
                .set_xattr(fd.as_fd(), "trusted.overlay.opaque", b"y");
        }
        let dir = match open_dir(&root, parent, false) {
            Ok(dir) => dir,
            Err(e) if e.kind() == berth_errdefs::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let listing_fd = resolve(&root, parent, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
            .map_err(|e| errno(format!("opening {}", display(parent)), e))?;
        let mut listing = nix::dir::Dir::from_fd(listing_fd)
            .map_err(|e| errno(format!("reading {}", display(parent)), e))?;
        let names: Vec<OsString> = listing
            .iter()
            .filter_map(|e| e.ok())
            .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_owned())
            .filter(|n| n != "." && n != "..")
            .collect();
        for child in names {
            let mut path = parent.to_vec();
            path.push(child.clone());
            if !self.written.contains(&path) {
                remove_all_at(&dir, &child)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(path: &str) -> Vec<String> {
        clean(path.as_bytes())
            .into_iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn names_are_cleaned_and_never_climb_above_the_root() {
        assert_eq!(names("./a/b/"), ["a", "b"]);
        assert_eq!(names("/etc/passwd"), ["etc", "passwd"]);
        assert_eq!(names("../../etc/passwd"), ["etc", "passwd"]);
        assert_eq!(names("a/../../b"), ["b"]);
        assert_eq!(names("a//./b/.."), ["a"]);
        assert!(names("..").is_empty());
        assert!(names("./").is_empty());
    }

    #[test]
    fn pax_times_keep_nanoseconds() {
        assert_eq!(parse_pax_time("12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_pax_time("12"), Some((12, 0)));
        assert_eq!(parse_pax_time("1.1234567891"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time("x"), None);
    }
}
