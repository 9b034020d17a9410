use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{0}")]
    InvalidSetting(String),
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is in use by a running daemon")]
    AddressInUse(PathBuf),
    #[error("socket activation: {0}")]
    Activation(String),
    #[error("ttrpc server: {0}")]
    Server(String),
}

impl DaemonError {
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> DaemonError {
        DaemonError::Io {
            context,
            path: path.into(),
            source,
        }
    }
}
