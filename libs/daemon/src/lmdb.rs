//! Opening a daemon's LMDB environment, and what its errors mean to callers.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_errdefs::Error;

/// Reader slots: more than the threads a daemon's runtime may run (512
/// blocking, its workers, a few of its own).
const MAX_READERS: u32 = 1024;

/// The operator's size limit for this process's metadata store, in MiB
/// (`metadata_max_mib`), set once at start.
static MAP_SIZE_MIB: OnceLock<u64> = OnceLock::new();

/// Makes every environment this process opens map `mib` MiB instead of its
/// daemon's default. Called by [`crate::start`]; the first call wins.
pub fn set_map_size_mib(mib: u64) {
    let _ = MAP_SIZE_MIB.set(mib);
}

/// Opens (creating if needed) the LMDB environment in `dir`, with room for
/// `max_dbs` named databases and a map of at most `map_size` bytes (LMDB
/// maps it sparsely), or what the operator set instead. Each daemon opens
/// its environment once, at start.
pub fn open_env(dir: &Path, map_size: usize, max_dbs: u32) -> Result<heed::Env, Error> {
    let map_size = match MAP_SIZE_MIB.get() {
        Some(mib) => usize::try_from(mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX),
        None => map_size,
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), &e))?;
    let mut options = heed::EnvOpenOptions::new();
    // A read transaction holds a reader slot for the life of the thread
    // that opened it, and reads run on tokio's blocking pool (up to 512
    // threads): LMDB's default of 126 slots ran out under 64 concurrent
    // callers (MDB_READERS_FULL). A slot is 64 bytes of the lock file.
    options
        .map_size(map_size)
        .max_dbs(max_dbs)
        .max_readers(MAX_READERS);
    // SAFETY: NO_READ_AHEAD is not among the flags heed calls unsafe
    // (NO_SYNC, NO_META_SYNC, NO_LOCK): it only stops the kernel reading
    // (and mapping) pages around each one the records touch, which kept
    // a daemon's map pages resident long after a burst of work.
    unsafe {
        options.flags(heed::EnvFlags::NO_READ_AHEAD);
    }
    // SAFETY: heed requires that an environment is opened at most once per
    // process. Each berth daemon opens the `meta` directory of its own root
    // once, during start-up, and refuses to start twice on one socket;
    // LMDB's own lock file guards against other processes.
    unsafe { options.open(dir) }.map_err(db_error)
}

/// Nanoseconds since the epoch, the form records store times in.
pub fn now_nanos() -> u64 {
    nanos_of(SystemTime::now())
}

/// A time as stored: nanoseconds since the epoch (0 before it).
pub fn nanos_of(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A stored time back as a `SystemTime`.
pub fn to_system_time(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

/// A metadata store failure as the error kind callers act on.
pub fn db_error(err: heed::Error) -> Error {
    match err {
        heed::Error::Mdb(heed::MdbError::MapFull) => {
            Error::resource_exhausted("metadata store is full")
        }
        // A full disk is ResourceExhausted, as for any other write.
        heed::Error::Io(e) => Error::io("metadata store", &e),
        other => Error::internal(format!("metadata store: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_errdefs::ErrorKind;

    #[test]
    fn a_full_disk_or_map_is_resource_exhausted() {
        let full = db_error(heed::Error::Io(std::io::Error::from_raw_os_error(
            libc::ENOSPC,
        )));
        assert_eq!(full.kind(), ErrorKind::ResourceExhausted);
        assert_eq!(
            full.to_string(),
            "metadata store: No space left on device (os error 28)"
        );
        let map = db_error(heed::Error::Mdb(heed::MdbError::MapFull));
        assert_eq!(map.kind(), ErrorKind::ResourceExhausted);
        let other = db_error(heed::Error::Mdb(heed::MdbError::Corrupted));
        assert_eq!(other.kind(), ErrorKind::Internal);
    }
}
