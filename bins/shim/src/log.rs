//! A minimal logger writing lines to the `log` fifo containerd reads from.
//!
//! Writes are non-blocking and their errors ignored: a shim must never stall
//! or die because containerd stopped reading its log (e.g. while restarting).
//!
//! The fifo is the one in the bundle the shim was started in. A shim that
//! serves a group (a pod's containers) can outlive that bundle: when its
//! container is deleted, the log moves to the fifo of another container
//! the shim still serves (see [`follow_bundle_away`]), and the working
//! directory with it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The fifo lines go to, and the bundle it is in.
struct Sink {
    file: File,
    bundle: PathBuf,
    /// Its bundle's container was deleted with no other to move to: the
    /// next container created takes the log.
    homeless: bool,
}

static SINK: Mutex<Option<Sink>> = Mutex::new(None);
static DEBUG: AtomicBool = AtomicBool::new(false);

/// Opens `bundle`'s log fifo for writing without blocking (it fails when
/// no one reads it).
fn open_fifo(bundle: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(bundle.join("log"))
}

/// Sends log lines to the log fifo of `bundle` (the working directory)
/// from now on, when someone reads it; `debug` enables debug lines.
pub fn init(bundle: &Path, debug: bool) {
    DEBUG.store(debug, Ordering::Relaxed);
    if let Ok(mut sink) = SINK.lock() {
        move_to(&mut sink, bundle);
    }
}

/// `leaving` is about to go (its container was deleted): if the log is
/// there, it moves to the first of `staying` whose fifo opens, and the
/// working directory with it, so the shim neither loses its log nor keeps
/// a removed directory as its own. With nowhere to go, the log stays.
pub fn follow_bundle_away<'a>(leaving: &Path, staying: impl IntoIterator<Item = &'a Path>) {
    let Ok(mut sink) = SINK.lock() else {
        return;
    };
    let leaving = std::fs::canonicalize(leaving).unwrap_or_else(|_| leaving.to_path_buf());
    if sink.as_ref().is_some_and(|s| s.bundle != leaving) {
        return;
    }
    if staying.into_iter().any(|bundle| move_to(&mut sink, bundle)) {
        return;
    }
    // Nowhere yet (a container still being created is not among them).
    if let Some(sink) = sink.as_mut() {
        sink.homeless = true;
    }
}

/// Moves the log (and the working directory) to `bundle` if the
/// container whose bundle it is in was deleted with nowhere to move to,
/// or that bundle is gone, or there is no log.
pub fn adopt_if_homeless(bundle: &Path) {
    let Ok(mut sink) = SINK.lock() else {
        return;
    };
    if sink
        .as_ref()
        .is_some_and(|s| !s.homeless && s.bundle.exists())
    {
        return;
    }
    move_to(&mut sink, bundle);
}

/// Points `sink` (and the working directory) at `bundle`'s log fifo, if
/// it opens; says whether it did.
fn move_to(sink: &mut Option<Sink>, bundle: &Path) -> bool {
    let Ok(file) = open_fifo(bundle) else {
        return false;
    };
    let bundle = std::fs::canonicalize(bundle).unwrap_or_else(|_| bundle.to_path_buf());
    let _ = std::env::set_current_dir(&bundle);
    *sink = Some(Sink {
        file,
        bundle,
        homeless: false,
    });
    true
}

pub fn debug_enabled() -> bool {
    DEBUG.load(Ordering::Relaxed)
}

pub fn write(level: &str, message: std::fmt::Arguments<'_>) {
    let line = format!("level={level} msg=\"{message}\" runtime=io.containerd.berth.v2\n");
    if let Ok(mut sink) = SINK.lock() {
        if let Some(sink) = sink.as_mut() {
            let _ = sink.file.write_all(line.as_bytes());
        }
    }
}

#[macro_export]
macro_rules! log_error {
    ($($arg:tt)*) => { $crate::log::write("error", format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)*) => { $crate::log::write("warning", format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! log_debug {
    ($($arg:tt)*) => {
        if $crate::log::debug_enabled() {
            $crate::log::write("debug", format_args!($($arg)*))
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A bundle with its log fifo, and a reader of it (as taskd holds).
    fn bundle(dir: &Path, name: &str) -> (PathBuf, File) {
        let bundle = dir.join(name);
        std::fs::create_dir(&bundle).unwrap();
        nix::unistd::mkfifo(
            &bundle.join("log"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(bundle.join("log"))
            .unwrap();
        (std::fs::canonicalize(&bundle).unwrap(), reader)
    }

    fn drained(reader: &mut File) -> String {
        let mut text = String::new();
        let _ = reader.read_to_string(&mut text);
        text
    }

    /// The log and the working directory follow the shim's containers:
    /// away from a deleted one's bundle to another's; when there is none,
    /// to the next created, even while the old bundle is still on disk.
    /// (The log and the working directory are the process's: the test
    /// runs again in a process of its own.)
    #[test]
    fn the_log_moves_with_the_containers_bundles() {
        if !crate::in_a_process_of_its_own("log::tests::the_log_moves_with_the_containers_bundles")
        {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (a, mut from_a) = bundle(dir.path(), "a");
        let (b, mut from_b) = bundle(dir.path(), "b");
        let (c, mut from_c) = bundle(dir.path(), "c");
        init(&a, false);
        crate::log_warn!("one");
        assert!(drained(&mut from_a).contains("msg=\"one\""));
        // A container created while the log's bundle is there: no move.
        adopt_if_homeless(&b);
        crate::log_warn!("two");
        assert!(drained(&mut from_a).contains("msg=\"two\""));
        // Its container deleted: the log goes to another's.
        follow_bundle_away(&a, [b.as_path()]);
        crate::log_warn!("three");
        assert!(drained(&mut from_b).contains("msg=\"three\""));
        assert_eq!(std::env::current_dir().unwrap(), b);
        // Deleted with no other (one is still being created): the next
        // created takes it, though b is still on disk.
        follow_bundle_away(&b, []);
        adopt_if_homeless(&c);
        crate::log_warn!("four");
        assert!(drained(&mut from_c).contains("msg=\"four\""));
        assert_eq!(std::env::current_dir().unwrap(), c);
        assert_eq!(drained(&mut from_a) + &drained(&mut from_b), "");
    }
}
