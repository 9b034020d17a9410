//! The shim's error type, mapped to ttrpc status codes at the service edge.

use berth_errdefs::{Error as StatusError, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{command}: {message}")]
    Runtime { command: String, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Protobuf {
        context: String,
        #[source]
        source: protobuf::Error,
    },
    /// An error of one of berth's libraries (mounting, ids), its kind kept.
    #[error("{0}")]
    Status(#[from] StatusError),
    #[error("{context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T, E = ShimError> = std::result::Result<T, E>;

impl ShimError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> ShimError {
        ShimError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn sys(context: impl Into<String>, errno: nix::Error) -> ShimError {
        ShimError::io(context, std::io::Error::from(errno))
    }

    pub fn json(context: impl Into<String>, source: serde_json::Error) -> ShimError {
        ShimError::Json {
            context: context.into(),
            source,
        }
    }

    pub fn protobuf(context: impl Into<String>, source: protobuf::Error) -> ShimError {
        ShimError::Protobuf {
            context: context.into(),
            source,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            ShimError::NotFound(_) => ErrorKind::NotFound,
            ShimError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            ShimError::InvalidArgument(_) | ShimError::Json { .. } | ShimError::Protobuf { .. } => {
                ErrorKind::InvalidArgument
            }
            ShimError::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            ShimError::Unimplemented(_) => ErrorKind::Unimplemented,
            ShimError::Runtime { .. } => ErrorKind::Internal,
            ShimError::Io { source, .. } => StatusError::io("", source).kind(),
            ShimError::Status(e) => e.kind(),
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(err: ShimError) -> ttrpc::Error {
        StatusError::new(err.kind(), err.to_string()).into_ttrpc()
    }
}

impl From<berth_ids::ValidationError> for ShimError {
    fn from(err: berth_ids::ValidationError) -> ShimError {
        ShimError::InvalidArgument(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_cross_the_wire_as_their_codes() {
        let cases = [
            (ShimError::NotFound("x".into()), ttrpc::Code::NOT_FOUND),
            (
                ShimError::AlreadyExists("x".into()),
                ttrpc::Code::ALREADY_EXISTS,
            ),
            (
                ShimError::FailedPrecondition("x".into()),
                ttrpc::Code::FAILED_PRECONDITION,
            ),
            (
                ShimError::Unimplemented("x".into()),
                ttrpc::Code::UNIMPLEMENTED,
            ),
            (
                ShimError::io("open", std::io::Error::from(std::io::ErrorKind::NotFound)),
                ttrpc::Code::NOT_FOUND,
            ),
        ];
        for (err, code) in cases {
            match ttrpc::Error::from(err) {
                ttrpc::Error::RpcStatus(status) => assert_eq!(status.code(), code),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}
