//! One error kind for all of berth, in the spirit of containerd's `errdefs`.
//!
//! Every service edge converts [`Error`] into a ttrpc status (see
//! [`Error::into_ttrpc`]) and every client converts the status back (see
//! [`Error::from_ttrpc`]), so a `NotFound` raised by one daemon is still a
//! `NotFound` after it has crossed any number of hops.

use std::fmt;

use ttrpc::Code;

/// What went wrong, independent of where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    InvalidArgument,
    FailedPrecondition,
    Unavailable,
    Aborted,
    ResourceExhausted,
    Unimplemented,
    Internal,
}

impl ErrorKind {
    /// The ttrpc (gRPC) status code for this kind.
    pub fn code(self) -> Code {
        match self {
            ErrorKind::NotFound => Code::NOT_FOUND,
            ErrorKind::AlreadyExists => Code::ALREADY_EXISTS,
            ErrorKind::InvalidArgument => Code::INVALID_ARGUMENT,
            ErrorKind::FailedPrecondition => Code::FAILED_PRECONDITION,
            ErrorKind::Unavailable => Code::UNAVAILABLE,
            ErrorKind::Aborted => Code::ABORTED,
            ErrorKind::ResourceExhausted => Code::RESOURCE_EXHAUSTED,
            ErrorKind::Unimplemented => Code::UNIMPLEMENTED,
            ErrorKind::Internal => Code::INTERNAL,
        }
    }

    /// The kind a ttrpc status code stands for; codes berth never sends map
    /// to the nearest kind a caller can act on.
    pub fn from_code(code: Code) -> ErrorKind {
        match code {
            Code::NOT_FOUND => ErrorKind::NotFound,
            Code::ALREADY_EXISTS => ErrorKind::AlreadyExists,
            Code::INVALID_ARGUMENT | Code::OUT_OF_RANGE => ErrorKind::InvalidArgument,
            Code::FAILED_PRECONDITION => ErrorKind::FailedPrecondition,
            Code::UNAVAILABLE | Code::DEADLINE_EXCEEDED | Code::CANCELLED => ErrorKind::Unavailable,
            Code::ABORTED => ErrorKind::Aborted,
            Code::RESOURCE_EXHAUSTED => ErrorKind::ResourceExhausted,
            Code::UNIMPLEMENTED => ErrorKind::Unimplemented,
            _ => ErrorKind::Internal,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::FailedPrecondition => "failed precondition",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Aborted => "aborted",
            ErrorKind::ResourceExhausted => "resource exhausted",
            ErrorKind::Unimplemented => "not implemented",
            ErrorKind::Internal => "internal error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error of a known kind with a one-line message that says what and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The kind of `result`'s error, for conformance suites and tests: panics
/// if it succeeded.
pub fn error_kind<T: std::fmt::Debug>(result: Result<T>) -> ErrorKind {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.kind(),
    }
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        let mut message = message.into();
        // A status message is one line; never let a multi-line cause through.
        if message.contains('\n') {
            message = message.replace('\n', " ");
        }
        Error { kind, message }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn is(&self, kind: ErrorKind) -> bool {
        self.kind == kind
    }

    /// The same error with `context: ` in front of its message.
    pub fn context(self, context: impl fmt::Display) -> Error {
        Error {
            kind: self.kind,
            message: format!("{context}: {}", self.message),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotFound, message)
    }
    pub fn already_exists(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::AlreadyExists, message)
    }
    pub fn invalid_argument(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidArgument, message)
    }
    pub fn failed_precondition(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::FailedPrecondition, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unavailable, message)
    }
    pub fn aborted(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Aborted, message)
    }
    pub fn resource_exhausted(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::ResourceExhausted, message)
    }
    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Internal, message)
    }

    /// An I/O failure, classified by its OS error where that says more than
    /// "internal".
    pub fn io(context: impl fmt::Display, err: &std::io::Error) -> Error {
        use std::io::ErrorKind as Io;
        let kind = match err.kind() {
            Io::NotFound => ErrorKind::NotFound,
            Io::AlreadyExists => ErrorKind::AlreadyExists,
            Io::StorageFull | Io::QuotaExceeded | Io::OutOfMemory => ErrorKind::ResourceExhausted,
            Io::ConnectionRefused
            | Io::ConnectionReset
            | Io::ConnectionAborted
            | Io::NotConnected
            | Io::BrokenPipe => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        };
        Error::new(kind, format!("{context}: {err}"))
    }

    /// The status this error crosses the wire as.
    pub fn into_ttrpc(self) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(self.kind.code(), self.message))
    }

    /// The error a ttrpc call failed with, with its kind restored.
    pub fn from_ttrpc(err: ttrpc::Error) -> Error {
        match err {
            ttrpc::Error::RpcStatus(status) => {
                let kind = ErrorKind::from_code(status.code());
                Error::new(kind, status.message)
            }
            ttrpc::Error::Socket(msg) => Error::unavailable(format!("connection failed: {msg}")),
            ttrpc::Error::LocalClosed | ttrpc::Error::RemoteClosed => {
                Error::unavailable("connection closed")
            }
            ttrpc::Error::Eof => Error::unavailable("connection closed"),
            // What ttrpc's client says when its connection's writer is
            // gone: the daemon went away (e.g. restarted).
            ttrpc::Error::Others(msg)
                if msg.starts_with("reserve channel capacity failed")
                    || msg.starts_with("writer task dropped result channel")
                    || msg.starts_with("Writer task failed") =>
            {
                Error::unavailable(format!("connection closed: {msg}"))
            }
            other => Error::internal(other.to_string()),
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(err: Error) -> ttrpc::Error {
        err.into_ttrpc()
    }
}

impl From<ttrpc::Error> for Error {
    fn from(err: ttrpc::Error) -> Error {
        Error::from_ttrpc(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorKind; 9] = [
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::InvalidArgument,
        ErrorKind::FailedPrecondition,
        ErrorKind::Unavailable,
        ErrorKind::Aborted,
        ErrorKind::ResourceExhausted,
        ErrorKind::Unimplemented,
        ErrorKind::Internal,
    ];

    #[test]
    fn every_kind_survives_a_round_trip_through_ttrpc() {
        for kind in ALL {
            let sent = Error::new(kind, format!("thing {kind}"));
            let received = Error::from_ttrpc(sent.clone().into_ttrpc());
            assert_eq!(received, sent);
        }
    }

    #[test]
    fn kinds_map_to_distinct_codes() {
        let mut codes: Vec<i32> = ALL.iter().map(|k| k.code() as i32).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ALL.len());
    }

    #[test]
    fn messages_are_one_line() {
        let err = Error::internal("first\nsecond");
        assert_eq!(err.message(), "first second");
    }

    #[test]
    fn transport_failures_are_unavailable() {
        let err = Error::from_ttrpc(ttrpc::Error::Socket("refused".into()));
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert_eq!(
            err.context("info").to_string(),
            "info: connection failed: refused"
        );
        // ttrpc's client, once the daemon has gone away.
        let err = Error::from_ttrpc(ttrpc::Error::Others(
            "reserve channel capacity failed: channel closed".into(),
        ));
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        let err = Error::from_ttrpc(ttrpc::Error::Others(
            "writer task dropped result channel".into(),
        ));
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        let err = Error::from_ttrpc(ttrpc::Error::Others("something else".into()));
        assert_eq!(err.kind(), ErrorKind::Internal);
    }
}
