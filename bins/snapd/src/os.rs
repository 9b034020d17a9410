//! Small adapters between the OS's answers and berth's: errors from nix
//! and std, and the file type in a stat.

use berth_errdefs::Error;
use nix::errno::Errno;
use nix::sys::stat::{FileStat, SFlag};

/// A failed syscall as an error saying what was being done.
pub(crate) fn errno(what: impl std::fmt::Display, e: Errno) -> Error {
    Error::io(what, &std::io::Error::from(e))
}

/// For `map_err`: a failed std call as an error saying what was being done.
pub(crate) fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(what, &e)
}

pub(crate) fn file_type(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits())
}
