//! berth's error kinds as gRPC status codes (the numbers are the same).

use berth_errdefs::Error;

pub fn status(err: Error) -> tonic::Status {
    let code = tonic::Code::from_i32(err.kind().code() as i32);
    tonic::Status::new(code, err.message().to_string())
}

/// The result type of the gRPC handlers.
pub type GrpcResult<T> = Result<tonic::Response<T>, tonic::Status>;

/// Turns a berth result into a gRPC reply (and, as every daemon's replies
/// do, asks for the allocator's free memory back once requests quieten).
pub fn reply<T>(result: berth_errdefs::Result<T>) -> GrpcResult<T> {
    berth_daemon::memory::release_soon();
    result.map(tonic::Response::new).map_err(|e| {
        tracing::debug!(error = %e, "request failed");
        status(e)
    })
}
