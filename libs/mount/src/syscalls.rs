//! The mount syscalls behind a trait: [`Host`] makes them (the only place
//! in this crate that does), and the unit tests of [`super`] drive the
//! option building, the overlay fallback and the cleanup against a fake.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use crate::idmap::{IdMapping, NamespaceHolder};

/// Per-mount attributes of [`MountSyscalls::fsmount`] (`MOUNT_ATTR_*`).
pub type MountAttrs = u32;
pub const MOUNT_ATTR_RDONLY: MountAttrs = 0x1;
pub const MOUNT_ATTR_NOSUID: MountAttrs = 0x2;
pub const MOUNT_ATTR_NODEV: MountAttrs = 0x4;
pub const MOUNT_ATTR_NOEXEC: MountAttrs = 0x8;

/// mount(2), umount2(2) and the new mount API (fsopen, fsconfig, fsmount,
/// move_mount), each failing with the kernel's errno.
pub trait MountSyscalls {
    /// An open filesystem context (from `fsopen`).
    type Context;
    /// A detached mount (from `fsmount`), not yet attached anywhere.
    type Detached;

    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno>;
    fn umount(&self, target: &Path, flags: MntFlags) -> Result<(), Errno>;
    fn fsopen(&self, fstype: &str) -> Result<Self::Context, Errno>;
    fn fsconfig_string(&self, fs: &Self::Context, key: &str, value: &str) -> Result<(), Errno>;
    fn fsconfig_flag(&self, fs: &Self::Context, key: &str) -> Result<(), Errno>;
    /// `FSCONFIG_CMD_CREATE`: the filesystem instance is made from the
    /// parameters set so far.
    fn fsconfig_create(&self, fs: &Self::Context) -> Result<(), Errno>;
    fn fsmount(&self, fs: &Self::Context, attrs: MountAttrs) -> Result<Self::Detached, Errno>;
    fn move_mount(&self, mount: &Self::Detached, target: &Path) -> Result<(), Errno>;

    /// A user namespace with these mappings, held open.
    type Userns;
    fn userns(&self, uids: &[IdMapping], gids: &[IdMapping]) -> Result<Self::Userns, Errno>;
    /// `open_tree(OPEN_TREE_CLONE)`: a detached copy of the mount at
    /// `path` (its submounts not included).
    fn open_tree_clone(&self, path: &Path) -> Result<Self::Detached, Errno>;
    /// `mount_setattr(MOUNT_ATTR_IDMAP)`: files on the detached mount show
    /// their owners through the namespace's mapping.
    fn set_idmap(&self, mount: &Self::Detached, userns: &Self::Userns) -> Result<(), Errno>;
}

// From linux/mount.h (stable ABI; not all in the libc crate).
const FSOPEN_CLOEXEC: libc::c_ulong = 0x1;
const FSCONFIG_SET_FLAG: libc::c_ulong = 0;
const FSCONFIG_SET_STRING: libc::c_ulong = 1;
const FSCONFIG_CMD_CREATE: libc::c_ulong = 6;
const FSMOUNT_CLOEXEC: libc::c_ulong = 0x1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_ulong = 0x4;
const OPEN_TREE_CLONE: libc::c_ulong = 0x1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` of linux/mount.h (version 0, 32 bytes).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// The kernel's calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct Host;

/// A string for the kernel; one with a NUL in it is EINVAL, as the kernel
/// would say of a name it cannot take.
fn c(value: &str) -> Result<CString, Errno> {
    CString::new(value).map_err(|_| Errno::EINVAL)
}

fn c_path(path: &Path) -> Result<CString, Errno> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

/// The fd a syscall returned, or its errno.
fn owned_fd(rc: libc::c_long) -> Result<OwnedFd, Errno> {
    if rc < 0 {
        return Err(Errno::last());
    }
    let fd = i32::try_from(rc).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fsconfig(
    fs: &OwnedFd,
    cmd: libc::c_ulong,
    key: Option<&CString>,
    value: Option<&CString>,
) -> Result<(), Errno> {
    let key_ptr = key.map_or(std::ptr::null(), |k| k.as_ptr());
    let value_ptr = value.map_or(std::ptr::null(), |v| v.as_ptr());
    // SAFETY: key and value are NULL or NUL-terminated strings that outlive
    // the call; fs is an open fs context fd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            cmd,
            key_ptr,
            value_ptr,
            0 as libc::c_ulong,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

impl MountSyscalls for Host {
    type Context = OwnedFd;
    type Detached = OwnedFd;

    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> Result<(), Errno> {
        nix::mount::umount2(target, flags)
    }

    fn fsopen(&self, fstype: &str) -> Result<OwnedFd, Errno> {
        let name = c(fstype)?;
        // SAFETY: fsopen reads the NUL-terminated name and returns a new fd
        // or -1; it touches no other memory of ours.
        owned_fd(unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) })
    }

    fn fsconfig_string(&self, fs: &OwnedFd, key: &str, value: &str) -> Result<(), Errno> {
        fsconfig(fs, FSCONFIG_SET_STRING, Some(&c(key)?), Some(&c(value)?))
    }

    fn fsconfig_flag(&self, fs: &OwnedFd, key: &str) -> Result<(), Errno> {
        fsconfig(fs, FSCONFIG_SET_FLAG, Some(&c(key)?), None)
    }

    fn fsconfig_create(&self, fs: &OwnedFd) -> Result<(), Errno> {
        fsconfig(fs, FSCONFIG_CMD_CREATE, None, None)
    }

    fn fsmount(&self, fs: &OwnedFd, attrs: MountAttrs) -> Result<OwnedFd, Errno> {
        // SAFETY: fsmount takes the configured fs context fd and two flag
        // words, and returns a new fd or -1.
        owned_fd(unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                fs.as_raw_fd(),
                FSMOUNT_CLOEXEC,
                libc::c_ulong::from(attrs),
            )
        })
    }

    fn move_mount(&self, mount: &OwnedFd, target: &Path) -> Result<(), Errno> {
        let target = c_path(target)?;
        // SAFETY: both paths are NUL-terminated strings that outlive the
        // call; the mount fd is open for its duration.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                mount.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if rc < 0 {
            return Err(Errno::last());
        }
        Ok(())
    }

    type Userns = OwnedFd;

    fn userns(&self, uids: &[IdMapping], gids: &[IdMapping]) -> Result<OwnedFd, Errno> {
        // The fd keeps the namespace once its process is gone.
        NamespaceHolder::spawn(uids, gids, nix::sched::CloneFlags::empty())?.open_userns()
    }

    fn open_tree_clone(&self, path: &Path) -> Result<OwnedFd, Errno> {
        let path = c_path(path)?;
        // SAFETY: open_tree reads the NUL-terminated path, which outlives
        // the call, and returns a new fd or -1.
        owned_fd(unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                path.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_ulong,
            )
        })
    }

    fn set_idmap(&self, mount: &OwnedFd, userns: &OwnedFd) -> Result<(), Errno> {
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_IDMAP,
            attr_clr: 0,
            propagation: 0,
            userns_fd: userns.as_raw_fd() as u64,
        };
        // SAFETY: the kernel reads `size_of::<MountAttr>()` bytes of `attr`,
        // which lives across the call; the path is an empty C string.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                mount.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                &raw const attr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if rc < 0 {
            return Err(Errno::last());
        }
        Ok(())
    }
}
