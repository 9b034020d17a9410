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
pub fn init(bundle: PathBuf, debug: bool) {
    DEBUG.store(debug, Ordering::Relaxed);
    if let Ok(file) = open_fifo(&bundle) {
        if let Ok(mut sink) = SINK.lock() {
            *sink = Some(Sink { file, bundle });
        }
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
    for bundle in staying {
        if let Ok(file) = open_fifo(bundle) {
            let bundle = std::fs::canonicalize(bundle).unwrap_or_else(|_| bundle.to_path_buf());
            let _ = std::env::set_current_dir(&bundle);
            *sink = Some(Sink { file, bundle });
            return;
        }
    }
}

/// Moves the log (and the working directory) to `bundle` if the bundle
/// it is in has been removed, or it has none.
pub fn adopt_if_homeless(bundle: &Path) {
    let Ok(mut sink) = SINK.lock() else {
        return;
    };
    if sink.as_ref().is_some_and(|s| s.bundle.exists()) {
        return;
    }
    if let Ok(file) = open_fifo(bundle) {
        let bundle = std::fs::canonicalize(bundle).unwrap_or_else(|_| bundle.to_path_buf());
        let _ = std::env::set_current_dir(&bundle);
        *sink = Some(Sink { file, bundle });
    }
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
