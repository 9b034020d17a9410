//! Extended attributes of an inode, read and written without following
//! symlinks: what native copies and diffs carry along.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use crate::os::errno;
use berth_errdefs::{Error, Result};
use nix::errno::Errno;

/// An inode whose extended attributes are read or written: through an fd
/// it is open on, or (symlinks, devices, fifos, sockets, which must not be
/// opened) as `name` in a directory fd, through `/proc/self/fd/DIR/name`
/// with the l* calls, which follow the directory's fd but never `name`.
#[derive(Clone, Copy)]
pub(crate) enum Node<'a> {
    Open(BorrowedFd<'a>),
    At(BorrowedFd<'a>, &'a OsStr),
}

impl Node<'_> {
    fn proc_path(dir: BorrowedFd<'_>, name: &OsStr) -> Result<CString> {
        let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
        path.extend_from_slice(name.as_bytes());
        CString::new(path).map_err(|_| Error::invalid_argument("file name contains NUL"))
    }

    /// listxattr into `buf` (empty: the size needed).
    fn list_raw(self, buf: &mut [u8]) -> std::result::Result<usize, Errno> {
        let ptr = if buf.is_empty() {
            std::ptr::null_mut()
        } else {
            buf.as_mut_ptr().cast()
        };
        let rc = match self {
            // SAFETY: buf is a live, writable slice of the length given
            // (or NULL with 0); the fd is open for the call.
            Node::Open(fd) => unsafe { libc::flistxattr(fd.as_raw_fd(), ptr, buf.len()) },
            Node::At(dir, name) => {
                let path = Node::proc_path(dir, name).map_err(|_| Errno::EINVAL)?;
                // SAFETY: as above; path is NUL-terminated and outlives
                // the call.
                unsafe { libc::llistxattr(path.as_ptr(), ptr, buf.len()) }
            }
        };
        usize::try_from(rc).map_err(|_| Errno::last())
    }

    /// getxattr of `key` into `buf` (empty: the size needed).
    fn get_raw(self, key: &CString, buf: &mut [u8]) -> std::result::Result<usize, Errno> {
        let ptr = if buf.is_empty() {
            std::ptr::null_mut()
        } else {
            buf.as_mut_ptr().cast()
        };
        let rc = match self {
            // SAFETY: key is NUL-terminated, buf a live writable slice of
            // the length given (or NULL with 0); the fd is open.
            Node::Open(fd) => unsafe {
                libc::fgetxattr(fd.as_raw_fd(), key.as_ptr(), ptr, buf.len())
            },
            Node::At(dir, name) => {
                let path = Node::proc_path(dir, name).map_err(|_| Errno::EINVAL)?;
                // SAFETY: as above; path is NUL-terminated.
                unsafe { libc::lgetxattr(path.as_ptr(), key.as_ptr(), ptr, buf.len()) }
            }
        };
        usize::try_from(rc).map_err(|_| Errno::last())
    }

    /// Calls `raw` with a buffer of the size it asks for, again if the
    /// value grew in between.
    fn sized(
        mut raw: impl FnMut(&mut [u8]) -> std::result::Result<usize, Errno>,
    ) -> std::result::Result<Vec<u8>, Errno> {
        loop {
            let mut buf = vec![0u8; raw(&mut [])?];
            if buf.is_empty() {
                return Ok(buf);
            }
            match raw(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Err(Errno::ERANGE) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Every extended attribute this process can read.
    pub(crate) fn xattrs(self) -> Result<Vec<(CString, Vec<u8>)>> {
        let names = match Node::sized(|buf| self.list_raw(buf)) {
            Ok(names) => names,
            Err(Errno::EOPNOTSUPP) => return Ok(Vec::new()),
            Err(e) => return Err(errno("listing xattrs", e)),
        };
        let mut out = Vec::new();
        for key in names.split(|b| *b == 0).filter(|k| !k.is_empty()) {
            let key = CString::new(key).map_err(|_| Error::internal("xattr name with NUL"))?;
            match Node::sized(|buf| self.get_raw(&key, buf)) {
                Ok(value) => out.push((key, value)),
                // Removed since it was listed: nothing to copy.
                Err(Errno::ENODATA) => {}
                Err(e) => return Err(errno(format!("reading xattr {}", key.to_string_lossy()), e)),
            }
        }
        Ok(out)
    }

    pub(crate) fn set_xattr(self, key: &CString, value: &[u8]) -> Result<()> {
        let rc = match self {
            // SAFETY: key is NUL-terminated and value a live slice of the
            // length given; the fd is open for the call.
            Node::Open(fd) => unsafe {
                libc::fsetxattr(
                    fd.as_raw_fd(),
                    key.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            },
            Node::At(dir, name) => {
                let path = Node::proc_path(dir, name)?;
                // SAFETY: as above; path is NUL-terminated.
                unsafe {
                    libc::lsetxattr(
                        path.as_ptr(),
                        key.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        0,
                    )
                }
            }
        };
        if rc != 0 {
            return Err(Error::io(
                format!("setting xattr {}", key.to_string_lossy()),
                &std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}
