//! A container's standard streams on the client side: the fifos the shim
//! opens (as ctr makes them), copied to and from this terminal.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use berth_tasks::Stdio;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// A directory of fifos for one process; removed on drop.
#[derive(Debug)]
pub struct Fifos {
    dir: PathBuf,
    pub stdio: Stdio,
    /// Left in place on drop (a detached task's, for `tasks attach`).
    kept: bool,
}

fn make_fifo(path: &Path) -> Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes()).context("a fifo path with NUL")?;
    // SAFETY: mkfifo reads a NUL-terminated path that lives across the call.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("creating the fifo {}", path.display()));
    }
    Ok(())
}

impl Fifos {
    /// Makes stdout and stderr fifos (stdin too with `stdin`; with
    /// `terminal`, one stream carries both outputs, so no stderr).
    pub fn new(root: &Path, id: &str, stdin: bool, terminal: bool) -> Result<Fifos> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .with_context(|| format!("creating {}", root.display()))?;
        let mut random = [0u8; 8];
        getrandom(&mut random)?;
        let dir = root.join(format!("{id}-{}", hex(&random)));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let fifos = Fifos {
            stdio: Stdio {
                stdin: if stdin {
                    dir.join("stdin").to_string_lossy().into_owned()
                } else {
                    String::new()
                },
                stdout: dir.join("stdout").to_string_lossy().into_owned(),
                stderr: if terminal {
                    String::new()
                } else {
                    dir.join("stderr").to_string_lossy().into_owned()
                },
                terminal,
            },
            dir,
            kept: false,
        };
        for path in [&fifos.stdio.stdin, &fifos.stdio.stdout, &fifos.stdio.stderr] {
            if !path.is_empty() {
                make_fifo(Path::new(path))?;
            }
        }
        Ok(fifos)
    }

    /// Opens the client's ends and starts copying: the container's output
    /// to ours, our stdin to the container's (then `on_stdin_eof`). The
    /// read ends are open before this returns, so the shim's
    /// non-blocking opens find a reader.
    pub fn attach(&self) -> Result<Attached> {
        attach(&self.stdio)
    }

    /// Leaves the fifos in place for the task that holds them: they go
    /// when it is removed (see [`remove_kept`]).
    pub fn keep(mut self) {
        self.kept = true;
    }
}

/// A task's fifos under `fifo_root` (kept by [`Fifos::keep`]), removed.
/// Anything else (a log file, fifos of another client) is left alone.
pub fn remove_kept(fifo_root: &Path, stdio: &Stdio) {
    let Some(dir) = Path::new(&stdio.stdout).parent() else {
        return;
    };
    if !stdio.stdout.is_empty() && dir.parent() == Some(fifo_root) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Opens the client's ends of a process's fifos and starts copying: its
/// output to ours, and (with [`Attached::forward_stdin`]) our stdin to its.
pub fn attach(stdio: &Stdio) -> Result<Attached> {
    let mut outputs = Vec::new();
    for (path, to_stderr) in [(&stdio.stdout, false), (&stdio.stderr, true)] {
        if path.is_empty() {
            continue;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .with_context(|| format!("opening {path}"))?;
        let pipe = tokio::net::unix::pipe::Receiver::from_file(file)
            .with_context(|| format!("watching {path}"))?;
        outputs.push(tokio::spawn(copy_out(pipe, to_stderr)));
    }
    Ok(Attached {
        outputs,
        stdin_path: (!stdio.stdin.is_empty()).then(|| PathBuf::from(&stdio.stdin)),
    })
}

impl Drop for Fifos {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The copies running for one process.
#[derive(Debug)]
pub struct Attached {
    outputs: Vec<JoinHandle<()>>,
    stdin_path: Option<PathBuf>,
}

impl Attached {
    /// Starts forwarding our stdin once the shim has opened its end;
    /// returns a task that ends at our stdin's EOF.
    pub fn forward_stdin(&mut self) -> Option<JoinHandle<()>> {
        self.forward_stdin_until_detached(Vec::new(), None)
    }

    /// As [`Attached::forward_stdin`], watching for the `detach` key
    /// sequence (none: never): when it is typed, forwarding stops and
    /// `detached` fires.
    pub fn forward_stdin_until_detached(
        &mut self,
        detach: Vec<u8>,
        detached: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Option<JoinHandle<()>> {
        let path = self.stdin_path.take()?;
        let mut watch = crate::detach::DetachWatch::new(detach);
        let mut detached = detached;
        Some(tokio::spawn(async move {
            // Blocks until the shim holds the read end, which it does
            // from Create on.
            let Ok(Ok(file)) = tokio::task::spawn_blocking(move || {
                std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(&path)
            })
            .await
            else {
                return;
            };
            let mut pipe = tokio::fs::File::from_std(file);
            let mut stdin = tokio::io::stdin();
            let mut buffer = vec![0u8; 32 * 1024];
            loop {
                match stdin.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let (bytes, detach) = match watch.feed(&buffer[..n]) {
                            crate::detach::Watched::Forward(bytes) => (bytes, false),
                            crate::detach::Watched::Detach(bytes) => (bytes, true),
                        };
                        if pipe.write_all(&bytes).await.is_err() {
                            break;
                        }
                        let _ = pipe.flush().await;
                        if detach {
                            if let Some(detached) = detached.take() {
                                let _ = detached.send(());
                            }
                            break;
                        }
                    }
                }
            }
        }))
    }

    /// Waits until the outputs have ended (the shim closed its ends), at
    /// most `limit`: a process left behind may hold them open.
    pub async fn drain(&mut self, limit: std::time::Duration) {
        let outputs = std::mem::take(&mut self.outputs);
        let all = futures::future::join_all(outputs);
        let _ = tokio::time::timeout(limit, all).await;
    }
}

async fn copy_out(mut pipe: tokio::net::unix::pipe::Receiver, to_stderr: bool) {
    let mut buffer = vec![0u8; 32 * 1024];
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = if to_stderr {
        Box::new(tokio::io::stderr())
    } else {
        Box::new(tokio::io::stdout())
    };
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
                let _ = out.flush().await;
            }
        }
    }
}

fn getrandom(buffer: &mut [u8]) -> Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buffer))
        .context("reading /dev/urandom")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh container id: 16 random hex digits.
pub fn new_id() -> Result<String> {
    let mut random = [0u8; 8];
    getrandom(&mut random)?;
    Ok(hex(&random))
}

/// This terminal's size (columns, rows), if stdin or stdout is one.
pub fn terminal_size() -> Option<(u16, u16)> {
    for fd in [libc::STDIN_FILENO, libc::STDOUT_FILENO] {
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize into the struct we own; fd
        // is one of the standard descriptors, valid for the whole process.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) };
        if rc == 0 && size.ws_col > 0 {
            return Some((size.ws_col, size.ws_row));
        }
    }
    None
}

/// Our terminal in raw mode (keys go to the container as they are typed,
/// ^C included) until dropped.
pub struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl std::fmt::Debug for RawMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawMode").finish_non_exhaustive()
    }
}

impl RawMode {
    /// None when stdin is not a terminal.
    pub fn enter() -> Option<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}
