//! Performing the mounts a snapshotter returns: bind mounts with mount(2),
//! overlay mounts with the new mount API (fsopen/fsconfig), where every
//! lower directory is its own `lowerdir+` parameter, so that the page-sized
//! limit on mount option strings never caps how many layers stack.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use berth_errdefs::{Error, Result};
use nix::mount::{MntFlags, MsFlags};

use crate::Mount;

// From linux/mount.h (stable ABI; not all in the libc crate).
const FSOPEN_CLOEXEC: libc::c_uint = 0x1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 0x1;
const MOUNT_ATTR_RDONLY: libc::c_uint = 0x1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

fn cstring(what: &str, value: &str) -> Result<CString> {
    CString::new(value).map_err(|_| Error::invalid_argument(format!("{what} contains NUL")))
}

fn os_error(what: impl std::fmt::Display) -> Error {
    Error::io(what, &std::io::Error::last_os_error())
}

/// Mounts `mounts` on `target`, in order.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    for mount in mounts {
        match mount.kind.as_str() {
            "bind" => bind(mount, target)?,
            "overlay" => overlay(mount, target)?,
            other => {
                return Err(Error::invalid_argument(format!(
                    "unsupported mount type {other:?}"
                )))
            }
        }
    }
    Ok(())
}

/// Unmounts `target` (detaching if busy).
pub fn unmount(target: &Path) -> Result<()> {
    nix::mount::umount2(target, MntFlags::empty())
        .or_else(|_| nix::mount::umount2(target, MntFlags::MNT_DETACH))
        .map_err(|e| Error::internal(format!("unmounting {}: {e}", target.display())))
}

fn bind(mount: &Mount, target: &Path) -> Result<()> {
    let ro = mount.options.iter().any(|o| o == "ro");
    let mut flags = MsFlags::MS_BIND;
    if mount.options.iter().any(|o| o == "rbind") {
        flags |= MsFlags::MS_REC;
    }
    nix::mount::mount(
        Some(mount.source.as_str()),
        target,
        None::<&str>,
        flags,
        None::<&str>,
    )
    .map_err(|e| Error::internal(format!("bind mounting {}: {e}", mount.source)))?;
    if ro {
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| Error::internal(format!("making {} read-only: {e}", target.display())))?;
    }
    Ok(())
}

fn overlay(mount: &Mount, target: &Path) -> Result<()> {
    // SAFETY: fsopen takes a NUL-terminated name and flags; it returns a new
    // fd or -1, touching no memory of ours beyond the name.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_fsopen,
            c"overlay".as_ptr(),
            FSOPEN_CLOEXEC as libc::c_ulong,
        )
    };
    if fd < 0 {
        return Err(os_error("fsopen overlay"));
    }
    // SAFETY: fd was just returned by fsopen and is owned by nobody else.
    let fs = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut ro = false;
    for option in &mount.options {
        let (key, value) = match option.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (option.as_str(), None),
        };
        match (key, value) {
            ("ro", None) => ro = true,
            ("rw", None) => {}
            ("lowerdir", Some(dirs)) => {
                for dir in dirs.split(':') {
                    set_string(&fs, "lowerdir+", dir)?;
                }
            }
            (key, Some(value)) => set_string(&fs, key, value)?,
            (key, None) => set_flag(&fs, key)?,
        }
    }
    fsconfig(&fs, FSCONFIG_CMD_CREATE, None, None)
        .map_err(|e| e.context(format!("creating the overlay for {}", target.display())))?;
    let attrs = if ro { MOUNT_ATTR_RDONLY } else { 0 };
    // SAFETY: fsmount takes the configured fs context fd and flag words.
    let mfd = unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            FSMOUNT_CLOEXEC as libc::c_ulong,
            attrs as libc::c_ulong,
        )
    };
    if mfd < 0 {
        return Err(os_error("fsmount overlay"));
    }
    // SAFETY: mfd was just returned by fsmount and is owned by nobody else.
    let mnt = unsafe { OwnedFd::from_raw_fd(mfd as i32) };
    let target_c = cstring("target", &target.to_string_lossy())?;
    // SAFETY: both path arguments are valid NUL-terminated strings; the fds
    // are open for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH as libc::c_ulong,
        )
    };
    if rc < 0 {
        return Err(os_error(format!(
            "moving the overlay to {}",
            target.display()
        )));
    }
    Ok(())
}

fn set_string(fs: &OwnedFd, key: &str, value: &str) -> Result<()> {
    let key_c = cstring("mount option", key)?;
    let value_c = cstring("mount option", value)?;
    fsconfig(fs, FSCONFIG_SET_STRING, Some(&key_c), Some(&value_c))
        .map_err(|e| e.context(format!("overlay option {key}={value}")))
}

fn set_flag(fs: &OwnedFd, key: &str) -> Result<()> {
    let key_c = cstring("mount option", key)?;
    fsconfig(fs, FSCONFIG_SET_FLAG, Some(&key_c), None)
        .map_err(|e| e.context(format!("overlay option {key}")))
}

fn fsconfig(
    fs: &OwnedFd,
    cmd: libc::c_uint,
    key: Option<&CString>,
    value: Option<&CString>,
) -> Result<()> {
    let key_ptr = key.map_or(std::ptr::null(), |k| k.as_ptr());
    let value_ptr = value.map_or(std::ptr::null(), |v| v.as_ptr());
    // SAFETY: key and value are NULL or NUL-terminated strings that outlive
    // the call; fs is an open fs context fd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            cmd as libc::c_ulong,
            key_ptr,
            value_ptr,
            0 as libc::c_ulong,
        )
    };
    if rc < 0 {
        return Err(os_error("fsconfig"));
    }
    Ok(())
}

/// A temporary mount that is unmounted (and its directory removed) on drop.
#[derive(Debug)]
pub struct TempMount {
    dir: std::path::PathBuf,
    mounted: bool,
}

impl TempMount {
    /// Mounts `mounts` on a new directory under `parent`.
    pub fn new(mounts: &[Mount], parent: &Path) -> Result<TempMount> {
        let dir = parent.join(format!(
            "mnt-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), &e))?;
        let mut temp = TempMount {
            dir,
            mounted: false,
        };
        mount_all(mounts, &temp.dir)?;
        temp.mounted = true;
        Ok(temp)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Drop for TempMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = unmount(&self.dir);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
