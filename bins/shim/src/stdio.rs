//! A process's stdio as containerd describes it: fifos created by the
//! client, `file://` and `binary://` log URIs, or nothing (/dev/null).
//!
//! Without a terminal the container gets the fifos (or files, or logger
//! pipes) directly, so the shim copies nothing. Output fifos are opened
//! read-write, so a container never gets SIGPIPE when its client goes away.
//! The shim keeps its own write end of the stdin fifo until CloseIO, so the
//! container does not see EOF when a client detaches.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use crate::error::{Result, ShimError};
use crate::reaper::Reaper;
use crate::runtime::ProcessStdio;

/// The stdio a client asked for, reported back verbatim by State.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Where an output stream goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Null,
    Fifo(PathBuf),
    File(PathBuf),
    Binary { path: PathBuf, args: Vec<String> },
}

impl Sink {
    pub fn parse(uri: &str) -> Result<Sink> {
        if uri.is_empty() {
            return Ok(Sink::Null);
        }
        if let Some(rest) = uri.strip_prefix("file://") {
            return absolute(rest).map(Sink::File);
        }
        if let Some(rest) = uri.strip_prefix("binary://") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let mut args = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                args.push(percent_decode(key));
                if !value.is_empty() {
                    args.push(percent_decode(value));
                }
            }
            return Ok(Sink::Binary {
                path: absolute(path)?,
                args,
            });
        }
        if let Some(rest) = uri.strip_prefix("fifo://") {
            return absolute(rest).map(Sink::Fifo);
        }
        if uri.contains("://") {
            return Err(ShimError::InvalidArgument(format!(
                "unknown STDIO scheme in {uri:?}"
            )));
        }
        absolute(uri).map(Sink::Fifo)
    }
}

fn absolute(path: &str) -> Result<PathBuf> {
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err(ShimError::InvalidArgument(format!(
            "stdio path {} is not absolute",
            path.display()
        )));
    }
    Ok(path.to_path_buf())
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            // Decode from the bytes: slicing the str at i+1..i+3 would
            // panic inside a multi-byte character.
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the shim holds for a process's stdio while it runs.
#[derive(Debug, Default)]
pub struct ProcessIo {
    /// Our write end of the stdin fifo; dropped by CloseIO.
    stdin_writer: Option<OwnedFd>,
    /// The terminal's master, once runc sent it.
    console: Option<Arc<OwnedFd>>,
    /// Fires when the terminal output copy has finished (output drained).
    output_done: Option<oneshot::Receiver<()>>,
    /// Terminal mode: the stdin fifo to copy into the master.
    console_stdin: Option<OwnedFd>,
    /// Terminal mode: where the master's output goes.
    console_stdout: Option<OwnedFd>,
}

impl ProcessIo {
    pub fn close_stdin(&mut self) {
        self.stdin_writer = None;
    }

    pub fn console(&self) -> Option<&Arc<OwnedFd>> {
        self.console.as_ref()
    }

    /// The wait for output to drain, taken once by the exit handler.
    pub fn take_output_done(&mut self) -> Option<oneshot::Receiver<()>> {
        self.output_done.take()
    }

    /// Connects a terminal master: copies stdin into it and its output out.
    pub fn attach_console(&mut self, master: OwnedFd) -> Result<()> {
        set_nonblocking(master.as_raw_fd(), true)?;
        let master = Arc::new(master);
        if let Some(stdin) = self.console_stdin.take() {
            let dst = master
                .try_clone()
                .map_err(|e| ShimError::io("duplicating the console", e))?;
            tokio::spawn(async move {
                let _ = copy(stdin, dst).await;
            });
        }
        if let Some(stdout) = self.console_stdout.take() {
            let src = master
                .try_clone()
                .map_err(|e| ShimError::io("duplicating the console", e))?;
            let (done_tx, done_rx) = oneshot::channel();
            self.output_done = Some(done_rx);
            tokio::spawn(async move {
                let _ = copy(src, stdout).await;
                let _ = done_tx.send(());
            });
        }
        self.console = Some(master);
        Ok(())
    }
}

/// Opens the stdio for a process. Returns what the shim keeps and, without
/// a terminal, the descriptors the container gets.
pub async fn open(
    paths: &StdioPaths,
    id: &str,
    namespace: &str,
    reaper: &Reaper,
    owner: IoOwner,
) -> Result<(ProcessIo, Option<ProcessStdio>)> {
    let mut io = ProcessIo::default();
    let stdin = if paths.stdin.is_empty() {
        None
    } else {
        let path = absolute(&paths.stdin)?;
        let reader = open_fifo(&path, OFlag::O_RDONLY | OFlag::O_NONBLOCK)?;
        io.stdin_writer = Some(open_fifo(&path, OFlag::O_WRONLY | OFlag::O_NONBLOCK)?);
        Some(reader)
    };

    let stdout_sink = Sink::parse(&paths.stdout)?;
    let stderr_sink = Sink::parse(&paths.stderr)?;
    let (stdout, stderr) = match (&stdout_sink, &stderr_sink) {
        (Sink::Binary { path, args }, _) => {
            let (out, err) = start_logger(path, args, id, namespace, reaper).await?;
            (out, err)
        }
        (Sink::File(a), Sink::File(b)) if a == b => {
            let file = open_sink(&stdout_sink)?;
            let dup = file
                .try_clone()
                .map_err(|e| ShimError::io("duplicating the log file", e))?;
            (file, dup)
        }
        _ => (open_sink(&stdout_sink)?, open_sink(&stderr_sink)?),
    };

    if paths.terminal {
        io.console_stdin = stdin;
        io.console_stdout = Some(stdout);
        return Ok((io, None));
    }
    let stdin = match stdin {
        Some(reader) => {
            set_nonblocking(reader.as_raw_fd(), false)?;
            owner.give(&reader)?;
            reader
        }
        None => dev_null()?,
    };
    for (fd, sink) in [(&stdout, &stdout_sink), (&stderr, &stderr_sink)] {
        if matches!(sink, Sink::Fifo(_)) {
            owner.give(fd)?;
        }
    }
    Ok((
        io,
        Some(ProcessStdio {
            stdin,
            stdout,
            stderr,
        }),
    ))
}

/// Who owns the fifos a container's processes write to and read from
/// (`io_uid`/`io_gid` of the runtime options). A process whose root is
/// mapped to another user reopens its stdio through `/proc/self/fd`
/// (`/dev/stdout`), which checks the fifo's owner and mode; containerd
/// creates the fifos as root with mode 0700.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoOwner {
    pub uid: u32,
    pub gid: u32,
}

impl IoOwner {
    /// Hands `fd` to the owner; nothing to do when that is root.
    fn give(self, fd: &OwnedFd) -> Result<()> {
        if self == IoOwner::default() {
            return Ok(());
        }
        nix::unistd::fchown(
            fd,
            Some(nix::unistd::Uid::from_raw(self.uid)),
            Some(nix::unistd::Gid::from_raw(self.gid)),
        )
        .map_err(|e| ShimError::sys("giving the stdio fifo to the io owner", e))
    }
}

fn open_fifo(path: &Path, flags: OFlag) -> Result<OwnedFd> {
    let mut options = OpenOptions::new();
    options.custom_flags((flags & !OFlag::O_ACCMODE).bits() | libc::O_CLOEXEC);
    match flags & OFlag::O_ACCMODE {
        OFlag::O_RDONLY => options.read(true),
        OFlag::O_WRONLY => options.write(true),
        _ => options.read(true).write(true),
    };
    options
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| ShimError::io(format!("opening {}", path.display()), e))
}

fn open_sink(sink: &Sink) -> Result<OwnedFd> {
    match sink {
        Sink::Null | Sink::Binary { .. } => dev_null(),
        Sink::Fifo(path) => open_fifo(path, OFlag::O_RDWR),
        Sink::File(path) => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| ShimError::io(format!("creating {}", parent.display()), e))?;
            }
            OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o640)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
                .map(OwnedFd::from)
                .map_err(|e| ShimError::io(format!("opening {}", path.display()), e))
        }
    }
}

fn dev_null() -> Result<OwnedFd> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| ShimError::io("opening /dev/null", e))
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| ShimError::sys("creating a pipe", e))
}

/// Starts a `binary://` logger: fd 3 is the container's stdout, fd 4 its
/// stderr, and the logger closes fd 5 when it is ready.
async fn start_logger(
    path: &Path,
    args: &[String],
    id: &str,
    namespace: &str,
    reaper: &Reaper,
) -> Result<(OwnedFd, OwnedFd)> {
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = Command::new(path);
    cmd.args(args)
        .env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only
    // calls dup2, which is async-signal-safe; the source descriptors stay
    // open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            for (target, fd) in (3..).zip(fds) {
                if libc::dup2(fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| ShimError::io(format!("starting logger {}", path.display()), e))?;
    // The logger is reaped like any other child; its exit is of no interest.
    drop(reaper.watch_command(child.id()));
    drop((out_r, err_r, ready_w));
    let mut ready = tokio::net::unix::pipe::Receiver::from_owned_fd(ready_r)
        .map_err(|e| ShimError::io("watching the logger", e))?;
    let mut byte = [0u8; 1];
    use tokio::io::AsyncReadExt;
    let _ = ready.read(&mut byte).await;
    Ok((out_w, err_w))
}

pub fn set_nonblocking(fd: RawFd, nonblocking: bool) -> Result<()> {
    // SAFETY: the caller passes a descriptor it owns for the whole call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let flags = fcntl(borrowed, FcntlArg::F_GETFL).map_err(|e| ShimError::sys("F_GETFL", e))?;
    let mut flags = OFlag::from_bits_truncate(flags);
    flags.set(OFlag::O_NONBLOCK, nonblocking);
    fcntl(borrowed, FcntlArg::F_SETFL(flags)).map_err(|e| ShimError::sys("F_SETFL", e))?;
    Ok(())
}

/// Copies `src` to `dst` until EOF (or EIO, a terminal whose other side is
/// gone). Regular files are written with plain blocking writes.
async fn copy(src: OwnedFd, dst: OwnedFd) -> std::io::Result<()> {
    set_nonblocking(src.as_raw_fd(), true).map_err(std::io::Error::other)?;
    let src = async_fd(File::from(src))?;
    let dst_is_file = File::from(dst.try_clone()?)
        .metadata()
        .map(|m| m.file_type().is_file())
        .unwrap_or(false);
    let dst_async = if dst_is_file {
        None
    } else {
        set_nonblocking(dst.as_raw_fd(), true).map_err(std::io::Error::other)?;
        Some(async_fd(File::from(dst.try_clone()?))?)
    };
    let mut dst_file = File::from(dst);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = {
            let mut guard = src.readable().await?;
            match guard.try_io(|inner| nix_read(inner.get_ref().as_fd().as_raw_fd(), &mut buf)) {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(n)) => n,
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        };
        let mut written = 0;
        while written < n {
            match &dst_async {
                None => {
                    use std::io::Write;
                    dst_file.write_all(&buf[written..n])?;
                    written = n;
                }
                Some(dst) => {
                    let mut guard = dst.writable().await?;
                    match guard
                        .try_io(|inner| nix_write(inner.get_ref().as_raw_fd(), &buf[written..n]))
                    {
                        Ok(Ok(w)) => written += w,
                        Ok(Err(e)) => return Err(e),
                        Err(_would_block) => continue,
                    }
                }
            }
        }
    }
}

/// Registers a descriptor the caller owns with the runtime's reactor.
pub fn async_fd<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its descriptor, and the AsyncFd owns `inner`, so
    // the descriptor stays open (and is not replaced) while registered.
    unsafe { AsyncFd::register(inner) }.map_err(|e| e.into_parts().1)
}

/// read(2) into `buf`.
pub fn nix_read(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes of writes for the call.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn nix_write(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes of reads for the call.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A temporary unix socket runc sends a terminal master to.
#[derive(Debug)]
pub struct ConsoleSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: tokio::net::UnixListener,
}

impl ConsoleSocket {
    pub fn new() -> Result<ConsoleSocket> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "berth-console-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| ShimError::io(format!("creating {}", dir.display()), e))?;
        let path = dir.join("console.sock");
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| ShimError::io(format!("binding {}", path.display()), e))?;
        Ok(ConsoleSocket {
            dir,
            path,
            listener,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts runc's connection and receives the master over SCM_RIGHTS.
    pub async fn receive_master(&self) -> Result<OwnedFd> {
        let (stream, _) = self
            .listener
            .accept()
            .await
            .map_err(|e| ShimError::io("accepting on the console socket", e))?;
        loop {
            stream
                .readable()
                .await
                .map_err(|e| ShimError::io("reading the console socket", e))?;
            match stream.try_io(tokio::io::Interest::READABLE, || {
                receive_fd(stream.as_raw_fd())
            }) {
                Ok(Some(fd)) => return Ok(fd),
                Ok(None) => {
                    return Err(ShimError::Runtime {
                        command: "console socket".into(),
                        message: "runtime sent no terminal".into(),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(ShimError::io("receiving the terminal", e)),
            }
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn receive_fd(socket: RawFd) -> std::io::Result<Option<OwnedFd>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::io::IoSliceMut;
    use std::os::fd::FromRawFd;
    let mut data = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut data)];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let msg = recvmsg::<()>(
        socket,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let mut received = None;
    for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: the kernel just installed this descriptor in our
                // table for us; nothing else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if received.is_none() {
                    received = Some(owned);
                }
            }
        }
    }
    Ok(received)
}

/// Sets a terminal's window size.
pub fn resize(console: &OwnedFd, width: u32, height: u32) -> Result<()> {
    let size = libc::winsize {
        ws_row: height as u16,
        ws_col: width as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct that lives for the call.
    let rc = unsafe { libc::ioctl(console.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    if rc < 0 {
        return Err(ShimError::io(
            "resizing the terminal",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Whether `path` is a fifo (used by tests and cleanup checks).
pub fn is_fifo(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_never_splits_a_character() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("%41%4a"), "AJ");
        // A '%' before a multi-byte character is kept as it is.
        assert_eq!(percent_decode("k=%a\u{e9}"), "k=%a\u{e9}");
        assert_eq!(percent_decode("%\u{e9}\u{e9}"), "%\u{e9}\u{e9}");
        assert_eq!(percent_decode("50%"), "50%");
    }

    #[test]
    fn parses_every_stdio_form() {
        assert_eq!(Sink::parse("").unwrap(), Sink::Null);
        assert_eq!(
            Sink::parse("/run/fifo/x-stdout").unwrap(),
            Sink::Fifo("/run/fifo/x-stdout".into())
        );
        assert_eq!(
            Sink::parse("file:///var/log/c.log").unwrap(),
            Sink::File("/var/log/c.log".into())
        );
        assert_eq!(
            Sink::parse("binary:///usr/bin/logger?tag=a%20b&debug").unwrap(),
            Sink::Binary {
                path: "/usr/bin/logger".into(),
                args: vec!["tag".into(), "a b".into(), "debug".into()],
            }
        );
        assert!(Sink::parse("http://x/y").is_err());
        assert!(Sink::parse("relative/path").is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn fifo_stdio_goes_straight_to_the_container_and_stdin_stays_open() {
        let dir = tempfile::tempdir().unwrap();
        let stdin = dir.path().join("in");
        let stdout = dir.path().join("out");
        for p in [&stdin, &stdout] {
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        }
        // The client's ends, opened as containerd's client opens them.
        let client_out = open_fifo(&stdout, OFlag::O_RDONLY | OFlag::O_NONBLOCK).unwrap();
        let (reaper, _exits) = Reaper::new();
        let paths = StdioPaths {
            stdin: stdin.display().to_string(),
            stdout: stdout.display().to_string(),
            stderr: String::new(),
            terminal: false,
        };
        let (mut io, container) = open(&paths, "c", "ns", &reaper, IoOwner::default())
            .await
            .unwrap();
        let container = container.unwrap();
        nix_write(container.stdout.as_raw_fd(), b"hello").unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(nix_read(client_out.as_raw_fd(), &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        // No client writer, but the shim's write end keeps stdin from EOF.
        set_nonblocking(container.stdin.as_raw_fd(), true).unwrap();
        let err = nix_read(container.stdin.as_raw_fd(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
        io.close_stdin();
        assert_eq!(nix_read(container.stdin.as_raw_fd(), &mut buf).unwrap(), 0);
    }

    /// With an io owner (a container whose root is another user on the
    /// host) the fifos the container gets are that user's, so it can
    /// reopen them through /proc/self/fd; a file log stays as it was.
    #[tokio::test(flavor = "current_thread")]
    async fn an_io_owner_gets_the_containers_fifos() {
        if !nix::unistd::Uid::effective().is_root() {
            assert!(
                std::env::var("CI").is_err(),
                "CI runs the unit tests as root"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (stdin, stdout, log) = (
            dir.path().join("in"),
            dir.path().join("out"),
            dir.path().join("log"),
        );
        for p in [&stdin, &stdout] {
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o700)).unwrap();
        }
        let _client_out = open_fifo(&stdout, OFlag::O_RDONLY | OFlag::O_NONBLOCK).unwrap();
        let (reaper, _exits) = Reaper::new();
        let paths = StdioPaths {
            stdin: stdin.display().to_string(),
            stdout: stdout.display().to_string(),
            stderr: format!("file://{}", log.display()),
            terminal: false,
        };
        let owner = IoOwner {
            uid: 100_000,
            gid: 100_001,
        };
        let (_io, container) = open(&paths, "c", "ns", &reaper, owner).await.unwrap();
        assert!(container.is_some());
        use std::os::unix::fs::MetadataExt;
        for fifo in [&stdin, &stdout] {
            let meta = std::fs::metadata(fifo).unwrap();
            assert_eq!(
                (meta.uid(), meta.gid()),
                (100_000, 100_001),
                "{}",
                fifo.display()
            );
        }
        let meta = std::fs::metadata(&log).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (0, 0),
            "the log file keeps its owner"
        );
    }
}
