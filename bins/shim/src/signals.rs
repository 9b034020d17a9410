//! The signals the serving shim acts on (SIGCHLD, SIGTERM, SIGINT),
//! delivered without tokio's signal driver: a handler writes the signal's
//! number into a pipe that the server reads. tokio's driver keeps a table
//! for every signal number for the life of the process; an idle shim is
//! counted in KiB, one per container on the host.

use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::fcntl::OFlag;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use tokio::io::unix::AsyncFd;

use crate::error::{Result, ShimError};
use crate::stdio::async_fd;

/// The pipe's write end, for the handler (-1 until installed).
static WRITE_END: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signal: libc::c_int) {
    let byte = signal as u8;
    // SAFETY: only async-signal-safe calls: write(2) of one byte from a
    // local to a descriptor that stays open for the process's life, with
    // errno saved and restored around it for the interrupted code.
    unsafe {
        let errno = libc::__errno_location();
        let saved = *errno;
        libc::write(
            WRITE_END.load(Ordering::Relaxed),
            std::ptr::addr_of!(byte).cast(),
            1,
        );
        *errno = saved;
    }
}

/// The signals installed by [`Signals::install`], as they arrive. Several
/// of one kind may arrive as one (as the kernel may merge them anyway).
#[derive(Debug)]
pub struct Signals {
    read: AsyncFd<OwnedFd>,
}

impl Signals {
    /// Routes `signals` to this stream; call once per process.
    pub fn install(signals: &[Signal]) -> Result<Signals> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .map_err(|e| ShimError::sys("creating the signal pipe", e))?;
        // The write end lives as long as the process: the handler may run
        // at any time.
        WRITE_END.store(write.into_raw_fd(), Ordering::Relaxed);
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for &signal in signals {
            // SAFETY: the handler only does async-signal-safe work (above).
            unsafe { sigaction(signal, &action) }
                .map_err(|e| ShimError::sys(format!("handling {signal}"), e))?;
        }
        let read = async_fd(read).map_err(|e| ShimError::io("watching the signal pipe", e))?;
        Ok(Signals { read })
    }

    /// The next signal.
    pub async fn next(&mut self) -> Result<Signal> {
        loop {
            let mut ready = self
                .read
                .readable()
                .await
                .map_err(|e| ShimError::io("waiting for signals", e))?;
            let mut byte = [0u8; 1];
            let read = ready.try_io(|fd| {
                // SAFETY: `byte` is valid for one byte of writes.
                let n = unsafe { libc::read(fd.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n)
                }
            });
            match read {
                Ok(Ok(1)) => {
                    if let Ok(signal) = Signal::try_from(i32::from(byte[0])) {
                        return Ok(signal);
                    }
                }
                Ok(Ok(_)) => {
                    return Err(ShimError::io(
                        "reading the signal pipe",
                        std::io::ErrorKind::UnexpectedEof.into(),
                    ))
                }
                Ok(Err(e)) => return Err(ShimError::io("reading the signal pipe", e)),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signal raised at the process reaches the stream. (SIGURG: nothing
    /// else in the test binary cares about it, and its default is to
    /// ignore it, so a stray one is harmless.)
    #[tokio::test(flavor = "current_thread")]
    async fn a_raised_signal_arrives() {
        let mut signals = Signals::install(&[Signal::SIGURG]).unwrap();
        nix::sys::signal::raise(Signal::SIGURG).unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), signals.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, Signal::SIGURG);
    }
}
