//! Committed snapshots whose files are on disk, not only in the page cache.
//!
//! A commit's record is durable when the commit returns; the snapshot's
//! files are written back by the kernel up to half a minute later (ext4's
//! delayed allocation). A power cut in between leaves a snapshot recorded
//! as committed with empty or missing files, which a pull again would never
//! repair: it finds the chain committed and skips it (containerd has the
//! same flaw, and only an opt-in syncfs per layer against it). berth
//! records each commit's [`WrittenIn`] with it, writes the files back with
//! one syncfs of the snapshotter's filesystem soon after, and then drops
//! the marks. At start, a snapshot still marked from another boot or
//! another mount of the filesystem may have lost files, and is discarded
//! with everything built on it, so the next pull or unpack applies its
//! layer again; one marked in this very mount (only the daemon died) is
//! written back then.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Weak};
use std::time::Duration;

use berth_errdefs::{Error, Result};

use crate::records::{Records, StoredKind, Unsynced, WrittenIn};

/// How long the writer waits after a commit for more to come, so that an
/// unpack of several layers takes one syncfs (`write_back_delay` in
/// snapd.toml sets another).
pub const DEFAULT_WRITE_BACK_DELAY: Duration = Duration::from_millis(500);

/// Where files written now under `dir` are: this boot, this mount.
pub fn written_in(dir: &Path) -> Result<WrittenIn> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map_err(|e| Error::io("reading the boot id", &e))?
        .trim()
        .to_string();
    Ok(WrittenIn {
        boot_id,
        mount_id: mount_id(dir)?,
    })
}

/// The id of the mount `dir` is on (statx's STATX_MNT_ID; 0 where the
/// kernel does not give it, and then the boot id alone tells).
fn mount_id(dir: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| Error::invalid_argument(format!("{} has a NUL byte", dir.display())))?;
    // SAFETY: statx is plain old data; zeroes are a valid value.
    let mut stat: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `stat` a writable
    // statx, both alive for the call.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_MNT_ID,
            &mut stat,
        )
    };
    if rc != 0 {
        return Err(Error::io(
            format!("statx of {}", dir.display()),
            &std::io::Error::last_os_error(),
        ));
    }
    Ok(if stat.stx_mask & libc::STATX_MNT_ID != 0 {
        stat.stx_mnt_id
    } else {
        0
    })
}

/// Writes back everything of the filesystem `dir` is on.
pub fn sync_fs(dir: &Path) -> Result<()> {
    let fd = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::io(format!("opening {}", dir.display()), &e.into()))?;
    nix::unistd::syncfs(&fd)
        .map_err(|e| Error::io(format!("syncfs of {}", dir.display()), &e.into()))
}

/// One snapshotter's marks and the filesystem its snapshots are on.
#[derive(Debug, Clone)]
pub(crate) struct Marks {
    pub records: Weak<Records>,
    pub snapshotter: &'static str,
    pub dir: PathBuf,
    /// Where this process writes the snapshotter's files.
    pub written_in: WrittenIn,
}

impl Marks {
    fn records(&self) -> Result<Arc<Records>> {
        self.records
            .upgrade()
            .ok_or_else(|| Error::unavailable("the snapshotter is closed"))
    }

    /// One syncfs, then the marks it covered go; returns how many.
    pub fn write_back(&self) -> Result<usize> {
        let records = self.records()?;
        let marks = records.unsynced(self.snapshotter)?;
        if marks.is_empty() {
            return Ok(0);
        }
        sync_fs(&self.dir)?;
        records.written_back(self.snapshotter, &marks)?;
        Ok(marks.len())
    }

    /// Drops the mark of one snapshot whose files were written back before
    /// its commit (an unpack with sync_fs).
    pub fn written_back_before_commit(&self, namespace: &str, name: &str) -> Result<()> {
        let records = self.records()?;
        let mark: Vec<Unsynced> = records
            .unsynced(self.snapshotter)?
            .into_iter()
            .filter(|m| m.namespace == namespace && m.name == name)
            .collect();
        records.written_back(self.snapshotter, &mark)
    }

    /// What to discard at start: the snapshots marked from another boot or
    /// mount, and every snapshot whose parent chain reaches one, as
    /// (namespace, key), children before parents.
    pub fn lost(&self) -> Result<Vec<(String, String)>> {
        let records = self.records()?;
        let mut doomed: HashSet<(String, String)> = records
            .unsynced(self.snapshotter)?
            .into_iter()
            .filter(|m| m.mark.written_in != self.written_in)
            .map(|m| (m.namespace, m.name))
            .collect();
        if doomed.is_empty() {
            return Ok(Vec::new());
        }
        let all = records.all(self.snapshotter)?;
        // Descendants, to a fixed point (chains are at most a few hundred
        // deep, records a few thousand).
        loop {
            let before = doomed.len();
            for (namespace, key, record) in &all {
                if let Some(parent) = &record.parent {
                    if doomed.contains(&(namespace.clone(), parent.clone())) {
                        doomed.insert((namespace.clone(), key.clone()));
                    }
                }
            }
            if doomed.len() == before {
                break;
            }
        }
        // Children first: a snapshot goes once nothing doomed names it as
        // parent.
        let mut order = Vec::new();
        let mut left: Vec<(String, String, Option<String>, StoredKind)> = all
            .into_iter()
            .filter(|(namespace, key, _)| doomed.contains(&(namespace.clone(), key.clone())))
            .map(|(namespace, key, record)| (namespace, key, record.parent, record.kind))
            .collect();
        while !left.is_empty() {
            let parents: HashSet<(String, String)> = left
                .iter()
                .filter_map(|(namespace, _, parent, _)| {
                    parent.as_ref().map(|p| (namespace.clone(), p.clone()))
                })
                .collect();
            let (leaves, rest): (Vec<_>, Vec<_>) =
                left.into_iter().partition(|(namespace, key, _, _)| {
                    !parents.contains(&(namespace.clone(), key.clone()))
                });
            if leaves.is_empty() {
                return Err(Error::internal("snapshot records form a cycle"));
            }
            order.extend(
                leaves
                    .into_iter()
                    .map(|(namespace, key, _, _)| (namespace, key)),
            );
            left = rest;
        }
        Ok(order)
    }
}

/// The writer thread of one snapshotter: a commit asks, and `delay`
/// later one syncfs writes back it and whatever else was committed
/// meanwhile.
#[derive(Debug, Clone)]
pub(crate) struct WriteBack {
    asks: mpsc::Sender<()>,
}

impl WriteBack {
    pub fn start(marks: Marks, delay: Duration) -> Result<WriteBack> {
        let (asks, asked) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("snapshot-write-back".to_string())
            .spawn(move || {
                // Ends when every snapshotter handle is gone.
                while asked.recv().is_ok() {
                    std::thread::sleep(delay);
                    while asked.try_recv().is_ok() {}
                    if marks.records.strong_count() == 0 {
                        break; // closed meanwhile
                    }
                    if let Err(e) = marks.write_back() {
                        tracing::warn!(
                            snapshotter = marks.snapshotter,
                            error = %e,
                            "writing committed snapshots back to disk"
                        );
                    }
                }
            })
            .map_err(|e| Error::io("starting the write-back thread", &e))?;
        Ok(WriteBack { asks })
    }

    /// Asks for a write-back soon.
    pub fn ask(&self) {
        let _ = self.asks.send(());
    }
}
