use std::path::Path;

use berth_errdefs::{Error, Result};
use ttrpc::context::Context;
use ttrpc::r#async::transport::Socket;
use ttrpc::r#async::Client;

/// Connects to a daemon's socket (a filesystem path).
pub async fn connect(socket: &Path) -> Result<Client> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| Error::io(format!("connecting to {}", socket.display()), &e))
        .map_err(|e| {
            if e.kind() == berth_errdefs::ErrorKind::NotFound {
                Error::unavailable(e.message())
            } else {
                e
            }
        })?;
    Ok(Client::new(Socket::from(stream)))
}

/// The context of one request in `namespace`.
pub fn request_context(namespace: &str) -> Context {
    let mut ctx = ttrpc::context::with_timeout(0);
    ctx.add(berth_api::NAMESPACE_KEY.to_string(), namespace.to_string());
    ctx
}

/// The context of one request in `namespace`, working under `lease` if any.
pub fn request_context_leased(namespace: &str, lease: Option<&str>) -> Context {
    let mut ctx = request_context(namespace);
    if let Some(lease) = lease {
        ctx.add(berth_api::LEASE_KEY.to_string(), lease.to_string());
    }
    ctx
}
