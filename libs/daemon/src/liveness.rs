//! Noticing that a caller hung up.
//!
//! ttrpc-rust keeps a streaming handler waiting for its next message after
//! the peer's connection is gone, so a crashed client would hold whatever
//! the stream holds (an ingest's ref, say) until the daemon restarts. Each
//! accepted connection therefore gets a [`ConnectionWatch`]: a task that
//! waits for the peer to hang up on a duplicate of the socket, and that
//! handlers can wait on with [`peer_hung_up`].

use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;

use tokio::io::unix::AsyncFd;
use tokio::io::{Interest, Ready};
use tokio::sync::watch;
use ttrpc::r#async::TtrpcContext;
use ttrpc::ConnectionDataExt;

/// The key of the watch in a connection's ttrpc data.
pub(crate) const KEY: &str = "berth.connection-watch";

/// Signals when the peer of one connection hangs up. Dropped with the
/// connection's data, which stops the watching task and closes its
/// duplicate descriptor.
#[derive(Debug)]
pub struct ConnectionWatch {
    closed: watch::Receiver<bool>,
    task: tokio::task::AbortHandle,
}

impl Drop for ConnectionWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConnectionWatch {
    /// Starts watching the connection on `fd` (borrowed for this call only).
    pub(crate) fn start(fd: RawFd) -> std::io::Result<Arc<ConnectionWatch>> {
        // SAFETY: the accept hook is handed the accepted connection's
        // descriptor, open for the duration of the call.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let duplicate: OwnedFd = borrowed.try_clone_to_owned()?;
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| std::io::Error::other(format!("no async runtime: {e}")))?;
        let (sender, closed) = watch::channel(false);
        let task = handle.spawn(async move {
            wait_for_hang_up(duplicate).await;
            let _ = sender.send(true);
        });
        Ok(Arc::new(ConnectionWatch {
            closed,
            task: task.abort_handle(),
        }))
    }

    async fn closed(&self) {
        let mut closed = self.closed.clone();
        let _ = closed.wait_for(|c| *c).await;
    }
}

async fn wait_for_hang_up(fd: OwnedFd) {
    // SAFETY: `fd` is an OwnedFd moved into the AsyncFd: it is open, and
    // stays the same descriptor of the same socket until the AsyncFd drops
    // it.
    let Ok(fd) = (unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }) else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable().await else {
            return;
        };
        if guard.ready().is_read_closed() {
            return;
        }
        // Ordinary traffic for ttrpc to read: wait for the next edge.
        guard.clear_ready_matching(Ready::READABLE);
    }
}

/// Resolves when the caller of this request has hung up. Never resolves for
/// a connection without a watch.
pub async fn peer_hung_up(ctx: &TtrpcContext) {
    match ctx.connection_data.get_typed::<Arc<ConnectionWatch>>(KEY) {
        Some(watch) => watch.closed().await,
        None => std::future::pending().await,
    }
}
