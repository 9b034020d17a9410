use crate::{init_logging, prepare_dirs, DaemonConfig, DaemonError, DaemonFlags, Defaults};

/// What every daemon does before it builds its store: a private umask
/// (nothing a daemon creates is for other users; the socket is opened up
/// to 0660 explicitly), the configuration from flags, file and defaults,
/// logging, the root and state directories, and the async runtime (two
/// workers: the machines berth targets are small, and the stores' blocking
/// work runs on tokio's blocking pool).
pub fn start(
    flags: &DaemonFlags,
    defaults: Defaults,
) -> Result<(DaemonConfig, tokio::runtime::Runtime), DaemonError> {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let config = DaemonConfig::resolve(flags, defaults)?;
    init_logging(&config)?;
    prepare_dirs(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| DaemonError::Server(format!("starting the async runtime: {e}")))?;
    Ok((config, runtime))
}
