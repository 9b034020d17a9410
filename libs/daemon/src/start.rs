use crate::{init_logging, prepare_dirs, DaemonConfig, DaemonError, DaemonFlags, Defaults};

/// How a daemon's async tasks share threads. Work that blocks (files,
/// LMDB transactions, inflating and applying a layer) goes to tokio's
/// blocking pool either way; what a task does between awaits (snapd
/// hashing a 1 MiB chunk of a blob as it reads it, about half a
/// millisecond) holds up the daemon's other tasks on one thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    /// Every task on the daemon's main thread: for daemons whose requests
    /// are short. A request then wakes no second thread; in a VM each such
    /// wake-up is an interprocessor interrupt, and with two workers they
    /// were about a sixth of the four daemons' CPU time per container run
    /// (docs/benchmarks.md).
    MainThread,
    /// Tasks spread over this many worker threads: for a daemon that does
    /// longer work in its tasks (crid copies container output into logs).
    Workers(usize),
}

/// What every daemon does before it builds its store: a private umask
/// (nothing a daemon creates is for other users; the socket is opened up
/// to 0660 explicitly), one allocator arena and a trim after each burst
/// of work (see [`crate::memory`]), the open-file limit raised to its hard
/// limit, the configuration from flags, file and defaults, logging, the
/// root and state directories, and the async runtime as `scheduler` says.
pub fn start(
    flags: &DaemonFlags,
    defaults: Defaults,
    scheduler: Scheduler,
) -> Result<(DaemonConfig, tokio::runtime::Runtime), DaemonError> {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    crate::memory::limit_arenas();
    let config = DaemonConfig::resolve(flags, defaults)?;
    if let Some(mib) = config.metadata_max_mib {
        crate::lmdb::set_map_size_mib(mib);
    }
    init_logging(&config)?;
    raise_open_file_limit();
    prepare_dirs(&config)?;
    let mut builder = match scheduler {
        Scheduler::MainThread => tokio::runtime::Builder::new_current_thread(),
        Scheduler::Workers(workers) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers.max(1));
            builder
        }
    };
    let runtime = builder
        // A burst of blocking work (a layer streamed in 1 MiB writes) grows
        // the blocking pool; its idle threads go after 2 s instead of 10,
        // and their stacks with them.
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .enable_all()
        .build()
        .map_err(|e| DaemonError::Server(format!("starting the async runtime: {e}")))?;
    runtime.spawn(crate::memory::trimmer());
    Ok((config, runtime))
}

/// Raises the soft RLIMIT_NOFILE to the hard limit, as Go's runtime does for
/// containerd: systemd's default soft limit is 1024, and snapd's apply holds
/// one descriptor per directory level of the path it writes (a path may be
/// 2048 levels deep), contentd one per open ingest.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}
