//! A minimal logger writing lines to the `log` fifo containerd reads from.
//!
//! Writes are non-blocking and their errors ignored: a shim must never stall
//! or die because containerd stopped reading its log (e.g. while restarting).

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static SINK: OnceLock<File> = OnceLock::new();
static DEBUG: AtomicBool = AtomicBool::new(false);

/// Sends log lines to `file` from now on; `debug` enables debug lines.
pub fn init(file: File, debug: bool) {
    DEBUG.store(debug, Ordering::Relaxed);
    let _ = SINK.set(file);
}

pub fn debug_enabled() -> bool {
    DEBUG.load(Ordering::Relaxed)
}

pub fn write(level: &str, message: std::fmt::Arguments<'_>) {
    if let Some(mut file) = SINK.get() {
        let line = format!("level={level} msg=\"{message}\" runtime=io.containerd.berth.v2\n");
        let _ = file.write_all(line.as_bytes());
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
