use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use berth_errdefs::{Error, Result};
use ttrpc::context::Context;
use ttrpc::r#async::transport::Socket;
use ttrpc::r#async::Client;

/// Connects to a daemon's socket (a filesystem path).
pub async fn connect(socket: &Path) -> Result<Client> {
    Ok(Client::new(Socket::from(open(socket).await?)))
}

/// Connects to a daemon's socket with a [`FileOutbox`]: files put in it go
/// to the daemon with the next bytes the connection writes.
pub async fn connect_passing_files(socket: &Path) -> Result<(Client, FileOutbox)> {
    let outbox = FileOutbox::default();
    let stream = PassingStream {
        stream: open(socket).await?,
        outbox: outbox.clone(),
    };
    Ok((Client::new(Socket::new(stream)), outbox))
}

async fn open(socket: &Path) -> Result<tokio::net::UnixStream> {
    tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| Error::io(format!("connecting to {}", socket.display()), &e))
        .map_err(|e| {
            if e.kind() == berth_errdefs::ErrorKind::NotFound {
                Error::unavailable(e.message())
            } else {
                e
            }
        })
}

/// Files waiting to go to the daemon over one connection (SCM_RIGHTS, with
/// the next bytes written), and the turn of whoever passes one: a request
/// that names a passed file holds [`FileOutbox::turn`] until it has its
/// answer, so the daemon never has two of this caller's files to tell
/// apart.
#[derive(Clone, Debug, Default)]
pub struct FileOutbox {
    queue: Arc<Mutex<Vec<OwnedFd>>>,
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl FileOutbox {
    /// Waits for the turn to pass a file.
    pub async fn turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.turn.lock().await
    }

    /// Queues a duplicate of `file` to go with the next bytes written.
    pub fn pass(&self, file: BorrowedFd<'_>) -> Result<()> {
        let fd = file
            .try_clone_to_owned()
            .map_err(|e| Error::io("duplicating a file to pass", &e))?;
        self.queue
            .lock()
            .map_err(|_| Error::internal("the file outbox is poisoned"))?
            .push(fd);
        Ok(())
    }

    /// Closes whatever was queued and not sent.
    pub fn clear(&self) {
        drop(self.take());
    }

    fn take(&self) -> Vec<OwnedFd> {
        self.queue
            .lock()
            .map(|mut queue| std::mem::take(&mut *queue))
            .unwrap_or_default()
    }

    fn put_back(&self, mut fds: Vec<OwnedFd>) {
        if let Ok(mut queue) = self.queue.lock() {
            fds.append(&mut queue);
            *queue = fds;
        }
    }
}

/// A connection that writes the files queued in its [`FileOutbox`] along
/// with the next bytes (the kernel copies them into the message; ours
/// close once sent).
struct PassingStream {
    stream: tokio::net::UnixStream,
    outbox: FileOutbox,
}

impl AsyncRead for PassingStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PassingStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let fds = if data.is_empty() {
            Vec::new()
        } else {
            this.outbox.take()
        };
        if fds.is_empty() {
            return Pin::new(&mut this.stream).poll_write(cx, data);
        }
        let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        loop {
            match this.stream.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    this.outbox.put_back(fds);
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    this.outbox.put_back(fds);
                    return Poll::Pending;
                }
            }
            let socket = this.stream.as_raw_fd();
            let sent = this.stream.try_io(Interest::WRITABLE, || {
                let control = [ControlMessage::ScmRights(&raw)];
                sendmsg::<()>(
                    socket,
                    &[IoSlice::new(data)],
                    &control,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(std::io::Error::from)
            });
            match sent {
                // The files went with the first of these bytes.
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    this.outbox.put_back(fds);
                    return Poll::Ready(Err(e));
                }
            }
        }
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
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
