//! Giving memory back after large work.
//!
//! glibc's allocator keeps freed memory in its arenas, one arena per thread
//! that allocated at the same time as another, up to eight per core; a
//! daemon whose blocking pool streamed a layer through a dozen threads then
//! sits on tens of MiB it will not use again until the next pull. berth's
//! daemons use one arena, and once a burst of requests has passed the free
//! memory goes back to the kernel.
//!
//! One, not two: `malloc_trim` gives back the free pages inside every
//! arena, but the free space at the top of an arena other than the main
//! one only goes when a `free` finds it above the trim threshold, which
//! glibc raises to twice the largest mmap'd block freed so far (MiBs after
//! a layer's 1 MiB writes). After a pull, contentd's second arena kept
//! about 3.1 MiB of free top resident for good, with 0.2 MiB of it in use.
//! The main arena's top is trimmed by `malloc_trim` itself. The daemons'
//! allocations are a few per MiB of data and per request, so the two
//! async workers and the blocking pool sharing one arena's lock costs
//! nothing measurable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::Notify;

/// How long after the last request a trim waits, so a burst of requests
/// (the chunks of one ingest) trims once, after it.
const QUIET: Duration = Duration::from_millis(500);

static PENDING: AtomicBool = AtomicBool::new(false);

fn wake() -> &'static Notify {
    static WAKE: OnceLock<Notify> = OnceLock::new();
    WAKE.get_or_init(Notify::new)
}

/// Keeps glibc to its main arena. Call before any thread but the main one
/// exists (arenas are created as threads first allocate).
pub(crate) fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes a tunable of the allocator; it is called
    // before the runtime starts other threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Asks for the allocator's free memory to go back to the kernel once the
/// daemon has been quiet for a moment. Cheap: every reply calls it.
pub fn release_soon() {
    if !PENDING.swap(true, Ordering::Relaxed) {
        wake().notify_one();
    }
}

/// Returns the allocator's free memory to the kernel now.
pub fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it
    // takes the arenas' locks itself.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The task that trims after each burst of work; runs for the daemon's
/// life.
pub(crate) async fn trimmer() {
    loop {
        wake().notified().await;
        // Let the burst finish: every request in it sets PENDING again.
        loop {
            tokio::time::sleep(QUIET).await;
            if !PENDING.swap(false, Ordering::Relaxed) {
                break;
            }
        }
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}
