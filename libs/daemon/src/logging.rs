use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::{DaemonConfig, DaemonError, LogFormat};

/// Logs to stderr (the journal under systemd) at the configured level and
/// format.
pub fn init_logging(config: &DaemonConfig) -> Result<(), DaemonError> {
    let filter = EnvFilter::try_new(&config.log_level).map_err(|e| {
        DaemonError::InvalidSetting(format!("log level {:?}: {e}", config.log_level))
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match config.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // A second call (tests that start several daemons in one process) keeps
    // the first subscriber.
    let _ = result;
    Ok(())
}
