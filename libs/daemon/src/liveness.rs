//! Noticing that a caller hung up.
//!
//! ttrpc-rust keeps a streaming handler waiting for its next message after
//! the peer's connection is gone, so a crashed client would hold whatever
//! the stream holds (an ingest's ref, say) until the daemon restarts. Each
//! accepted connection therefore gets a [`ConnectionWatch`]: a task that
//! waits for the peer to hang up on a duplicate of the socket, and that
//! handlers can wait on with [`peer_hung_up`].

use std::collections::HashMap;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use tokio::io::unix::AsyncFd;
use tokio::io::{Interest, Ready};
use tokio::sync::watch;
use ttrpc::r#async::{Service, StreamHandler, StreamInner, TtrpcContext};

use crate::connection::CONNECTION_KEY;
use crate::passed::PassedFiles;

/// Signals when the peer of one connection hangs up. Dropped with the
/// last reference (the connection's registration, handlers waiting on it),
/// which stops the watching task and closes its duplicate descriptor.
#[derive(Debug)]
pub struct ConnectionWatch {
    closed: watch::Receiver<bool>,
    /// Files the caller passed that no handler has taken yet.
    pub(crate) passed: PassedFiles,
    hung_up: Arc<HungUp>,
    task: tokio::task::AbortHandle,
}

/// The hang-up as a flag and a waker, for the connection's own reader.
#[derive(Debug, Default)]
struct HungUp {
    flag: AtomicBool,
    reader: AtomicWaker,
}

impl Drop for ConnectionWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConnectionWatch {
    /// Starts watching the connection on `socket`.
    pub(crate) fn start(socket: BorrowedFd<'_>) -> std::io::Result<Arc<ConnectionWatch>> {
        let duplicate: OwnedFd = socket.try_clone_to_owned()?;
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| std::io::Error::other(format!("no async runtime: {e}")))?;
        let (sender, closed) = watch::channel(false);
        let hung_up = Arc::new(HungUp::default());
        let signal = hung_up.clone();
        let task = handle.spawn(async move {
            wait_for_hang_up(duplicate).await;
            signal.flag.store(true, Ordering::Release);
            signal.reader.wake();
            let _ = sender.send(true);
        });
        Ok(Arc::new(ConnectionWatch {
            closed,
            passed: PassedFiles::default(),
            hung_up,
            task: task.abort_handle(),
        }))
    }

    async fn closed(&self) {
        let mut closed = self.closed.clone();
        let _ = closed.wait_for(|c| *c).await;
    }

    fn poll_hung_up(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.hung_up.flag.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.hung_up.reader.register(cx.waker());
        if self.hung_up.flag.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// The watches of the open connections, by connection id.
pub(crate) fn registry() -> &'static Mutex<HashMap<u64, Arc<ConnectionWatch>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<u64, Arc<ConnectionWatch>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// A connection's entry in the registry, removed when the connection goes.
#[derive(Debug)]
pub(crate) struct Registration {
    id: u64,
    watch: Arc<ConnectionWatch>,
}

impl Registration {
    pub(crate) fn new(id: u64, watch: Arc<ConnectionWatch>) -> Registration {
        if let Ok(mut registry) = registry().lock() {
            registry.insert(id, watch.clone());
        }
        Registration { id, watch }
    }

    /// Where the connection's reader keeps the files its caller passes.
    pub(crate) fn passed(&self) -> &PassedFiles {
        &self.watch.passed
    }

    /// Ready once the peer has hung up.
    pub(crate) fn poll_hung_up(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.watch.poll_hung_up(cx)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut registry) = registry().lock() {
            registry.remove(&self.id);
        }
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
    match watch_of(ctx) {
        Some(watch) => watch.closed().await,
        None => std::future::pending().await,
    }
}

/// The watch of the connection `ctx`'s request came on, if it has one.
pub(crate) fn watch_of(ctx: &TtrpcContext) -> Option<Arc<ConnectionWatch>> {
    // The guard appends the connection's id after whatever the caller sent
    // under the same key: the last value is the daemon's.
    let id = ctx
        .metadata
        .get(CONNECTION_KEY)
        .and_then(|values| values.last())
        .and_then(|id| id.parse::<u64>().ok())?;
    registry().lock().ok()?.get(&id).cloned()
}

/// Wraps every stream handler of `services` so that it ends when its
/// caller hangs up. ttrpc runs a stream's handler as a task of its own that
/// the connection's end does not stop, and a handler waiting for the
/// caller's first message (a stream request flagged as carrying no data,
/// then nothing) would wait for ever, holding its stream: a caller could
/// leave one such task behind per connection it opens and drops.
pub(crate) fn end_streams_when_callers_hang_up(
    services: HashMap<String, Service>,
) -> HashMap<String, Service> {
    services
        .into_iter()
        .map(|(name, service)| {
            let streams = service
                .streams
                .into_iter()
                .map(|(method, inner)| {
                    let handler: Arc<dyn StreamHandler + Send + Sync> =
                        Arc::new(EndsOnHangUp { inner });
                    (method, handler)
                })
                .collect();
            (
                name,
                Service {
                    methods: service.methods,
                    streams,
                },
            )
        })
        .collect()
}

struct EndsOnHangUp {
    inner: Arc<dyn StreamHandler + Send + Sync>,
}

#[async_trait::async_trait]
impl StreamHandler for EndsOnHangUp {
    async fn handler(
        &self,
        ctx: TtrpcContext,
        stream: StreamInner,
    ) -> ttrpc::Result<Option<ttrpc::Response>> {
        let Some(watch) = watch_of(&ctx) else {
            return self.inner.handler(ctx, stream).await;
        };
        tokio::select! {
            result = self.inner.handler(ctx, stream) => result,
            // Dropping the handler drops its stream, which leaves the
            // connection's table of streams.
            () = watch.closed() => Err(ttrpc::Error::Others("the caller hung up".to_string())),
        }
    }
}
