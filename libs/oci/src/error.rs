//! The errors of building a spec.

/// Why a spec could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// A bad option: a malformed user, an id out of range, a bad mount, a
    /// bad seccomp profile, an unknown capability, an image without a
    /// command...
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A user or group named by the image or the caller is absent from the
    /// image's `/etc/passwd` or `/etc/group`.
    #[error("not found: {0}")]
    NotFound(String),
    /// Reading a file of the root filesystem failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An `oci-spec` builder refused its input.
    #[error("building the spec: {0}")]
    Build(String),
}

/// The result of this crate's functions.
pub type Result<T> = std::result::Result<T, OciError>;

impl OciError {
    pub(crate) fn invalid(message: impl Into<String>) -> OciError {
        OciError::InvalidArgument(message.into())
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> OciError {
        OciError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<oci_spec::OciSpecError> for OciError {
    fn from(e: oci_spec::OciSpecError) -> OciError {
        OciError::Build(e.to_string())
    }
}
