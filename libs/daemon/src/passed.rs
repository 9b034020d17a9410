//! Files a caller passes along with a request (SCM_RIGHTS).
//!
//! A caller on the same host can hand a daemon an open file instead of its
//! bytes: the daemon then reads the file itself, and the bytes cross no
//! socket. The descriptor travels on the request's own connection, attached
//! to bytes at or before the request's frame, so it has arrived by the time
//! the request's handler runs. The connection's reader keeps what arrives
//! (a few at most: more are closed at once) until a handler takes one with
//! [`take_passed_file`]; the rest close with the connection.
//!
//! Which descriptor belongs to which request is not told by the socket:
//! the request names its file (device and inode, say) and the handler takes
//! the first held descriptor that is that file, closing any it passes over.

use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::task::{ready, Context, Poll};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::io::Interest;
use tokio::net::UnixStream;
use ttrpc::r#async::TtrpcContext;

/// How many passed descriptors one connection may hold that no handler
/// has taken: a caller passes one per request that names a file, and takes
/// its turn for the next.
pub(crate) const MAX_HELD: usize = 4;

/// The descriptors one connection holds, oldest first.
#[derive(Debug, Default)]
pub(crate) struct PassedFiles {
    held: Mutex<VecDeque<OwnedFd>>,
}

impl PassedFiles {
    /// Keeps `fd` for a handler if it is a regular file and the connection
    /// holds fewer than [`MAX_HELD`]; closes it otherwise. Only regular
    /// files are ever read for a caller, and anything else could hold on
    /// to what should go: a caller that passed the daemon its own end of
    /// this connection would keep the connection open after it left.
    pub(crate) fn hold(&self, fd: OwnedFd) {
        use nix::sys::stat::{fstat, SFlag};
        let regular = fstat(&fd).is_ok_and(|st| {
            SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
        });
        if !regular {
            tracing::debug!("a caller passed a descriptor that is not a regular file: closed");
            return;
        }
        let Ok(mut held) = self.held.lock() else {
            return;
        };
        if held.len() >= MAX_HELD {
            tracing::debug!("a caller passed more descriptors than it used: closed one");
            return;
        }
        held.push_back(fd);
    }

    /// The oldest held descriptor `wanted` accepts; the ones before it are
    /// closed (a request that failed before taking its file left it).
    pub(crate) fn take(&self, wanted: impl Fn(&OwnedFd) -> bool) -> Option<OwnedFd> {
        let mut held = self.held.lock().ok()?;
        while let Some(fd) = held.pop_front() {
            if wanted(&fd) {
                return Some(fd);
            }
        }
        None
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.held.lock().map(|h| h.len()).unwrap_or(0)
    }
}

/// The file passed with the request `ctx` belongs to: the oldest descriptor
/// its connection holds that `wanted` accepts. None when the caller passed
/// none (or not that one), or the connection keeps no passed files.
pub fn take_passed_file(ctx: &TtrpcContext, wanted: impl Fn(&OwnedFd) -> bool) -> Option<OwnedFd> {
    crate::liveness::watch_of(ctx)?.passed.take(wanted)
}

/// The most descriptors the kernel sends in one message (SCM_MAX_FD).
const MAX_PER_MESSAGE: usize = 253;

/// Room for the most descriptors one message can carry: a smaller buffer
/// would be truncated (MSG_CTRUNC), and the descriptors that did fit would
/// be installed in the daemon's table without a parseable record of them.
type ControlSpace = [RawFd; MAX_PER_MESSAGE];

/// A control-message buffer for [`poll_receive`], made once per connection.
pub(crate) fn control_buffer() -> Vec<u8> {
    nix::cmsg_space!(ControlSpace)
}

/// Reads from the caller's socket as read(2) would, and hands each
/// descriptor that came with the bytes to `keep` (received close-on-exec).
pub(crate) fn poll_receive(
    stream: &UnixStream,
    cx: &mut Context<'_>,
    into: &mut [u8],
    control: &mut Vec<u8>,
    mut keep: impl FnMut(OwnedFd),
) -> Poll<io::Result<usize>> {
    if into.is_empty() {
        return Poll::Ready(Ok(0));
    }
    loop {
        ready!(stream.poll_read_ready(cx))?;
        let fd = stream.as_raw_fd();
        let received = stream.try_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(into)];
            let message = recvmsg::<()>(
                fd,
                &mut iov,
                Some(&mut *control),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(io::Error::from)?;
            let passed: Vec<RawFd> = message
                .cmsgs()
                .map_err(io::Error::from)?
                .filter_map(|cmsg| match cmsg {
                    ControlMessageOwned::ScmRights(fds) => Some(fds),
                    _ => None,
                })
                .flatten()
                .collect();
            Ok((message.bytes, passed))
        });
        match received {
            Ok((n, passed)) => {
                for raw in passed {
                    // SAFETY: the kernel installed `raw` in our table for
                    // this message; nothing else knows of it, and the
                    // OwnedFd is its only owner from here.
                    keep(unsafe { OwnedFd::from_raw_fd(raw) });
                }
                return Poll::Ready(Ok(n));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{IoSlice, Write};
    use std::os::fd::AsFd;

    use nix::sys::socket::{sendmsg, ControlMessage};

    fn send_with(socket: &std::os::unix::net::UnixStream, bytes: &[u8], fds: &[RawFd]) {
        let control = [ControlMessage::ScmRights(fds)];
        let control: &[ControlMessage] = if fds.is_empty() { &[] } else { &control };
        sendmsg::<()>(
            socket.as_raw_fd(),
            &[IoSlice::new(bytes)],
            control,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
    }

    #[tokio::test]
    async fn descriptors_sent_with_bytes_are_kept_and_the_bytes_read() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let ours = UnixStream::from_std(ours).unwrap();
        let file = tempfile::tempfile().unwrap();
        send_with(&theirs, b"frame", &[file.as_raw_fd()]);
        (&theirs).write_all(b" more").unwrap();

        let passed = PassedFiles::default();
        let mut buf = [0u8; 64];
        let mut control = control_buffer();
        let n = std::future::poll_fn(|cx| {
            poll_receive(&ours, cx, &mut buf, &mut control, |fd| passed.hold(fd))
        })
        .await
        .unwrap();
        assert_eq!(
            &buf[..n],
            b"frame",
            "a read stops where the descriptor's bytes end"
        );
        assert_eq!(passed.len(), 1);
        let n = std::future::poll_fn(|cx| {
            poll_receive(&ours, cx, &mut buf, &mut control, |fd| passed.hold(fd))
        })
        .await
        .unwrap();
        assert_eq!(&buf[..n], b" more");
        assert_eq!(passed.len(), 1);

        let ino = |fd: &OwnedFd| nix::sys::stat::fstat(fd.as_fd()).map(|s| s.st_ino).ok();
        let wanted = ino(&file.as_fd().try_clone_to_owned().unwrap());
        let taken = passed.take(|fd| ino(fd) == wanted).unwrap();
        assert_eq!(ino(&taken), wanted);
        let flags = nix::fcntl::fcntl(&taken, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0, "received close-on-exec");
        assert_eq!(passed.len(), 0);
    }

    #[tokio::test]
    async fn a_connection_holds_few_descriptors_and_a_taker_skips_stale_ones() {
        let passed = PassedFiles::default();
        let files: Vec<std::fs::File> = (0..MAX_HELD + 2)
            .map(|_| tempfile::tempfile().unwrap())
            .collect();
        for file in &files {
            passed.hold(file.as_fd().try_clone_to_owned().unwrap());
        }
        assert_eq!(passed.len(), MAX_HELD, "the ones over the limit are closed");
        let ino = |fd: &OwnedFd| nix::sys::stat::fstat(fd.as_fd()).map(|s| s.st_ino).ok();
        let third = ino(&files[2].as_fd().try_clone_to_owned().unwrap());
        assert!(passed.take(|fd| ino(fd) == third).is_some());
        assert_eq!(passed.len(), MAX_HELD - 3, "the two before it were closed");
        let first = ino(&files[0].as_fd().try_clone_to_owned().unwrap());
        assert!(passed.take(|fd| ino(fd) == first).is_none());
        assert_eq!(passed.len(), 0, "a taker that finds nothing leaves nothing");
    }

    /// Descriptors in this process's table.
    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    #[tokio::test]
    async fn many_descriptors_in_one_message_and_ones_that_are_not_files_are_closed() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let ours = UnixStream::from_std(ours).unwrap();
        let files: Vec<std::fs::File> = (0..10).map(|_| tempfile::tempfile().unwrap()).collect();
        let (socket, _other_end) = std::os::unix::net::UnixStream::pair().unwrap();
        let passed = PassedFiles::default();
        let mut control = control_buffer();
        let mut buf = [0u8; 64];
        let baseline = open_fds();

        // Ten files in one message: four held, six closed, none lost.
        let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        send_with(&theirs, b"many", &raw);
        let n = std::future::poll_fn(|cx| {
            poll_receive(&ours, cx, &mut buf, &mut control, |fd| passed.hold(fd))
        })
        .await
        .unwrap();
        assert_eq!(&buf[..n], b"many");
        assert_eq!(passed.len(), MAX_HELD);
        assert_eq!(open_fds(), baseline + MAX_HELD);

        // A socket (here the daemon's own kind of connection) is never held.
        drop(passed.take(|_| false));
        send_with(&theirs, b"sock", &[socket.as_raw_fd()]);
        let n = std::future::poll_fn(|cx| {
            poll_receive(&ours, cx, &mut buf, &mut control, |fd| passed.hold(fd))
        })
        .await
        .unwrap();
        assert_eq!(&buf[..n], b"sock");
        assert_eq!(passed.len(), 0);
        assert_eq!(open_fds(), baseline);
    }
}
