//! The [`Runtime`] the shim really uses: a typed wrapper over the runc
//! command line (and crun, runsc, or any runtime with the same CLI). Every
//! command is waited for through the reaper, never with `Child::wait`,
//! which would race the global reaper. Starting a runc container and
//! deleting a stopped one are done without a runc process where runc's
//! own work is that small ([`release_init`], [`destroy_stopped`]).

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::unix::AsyncFd;

use crate::container::SpecFacts;
use crate::error::{Result, ShimError};
use crate::reaper::Reaper;
use crate::runtime::Runtime;
pub use crate::runtime::{CreateOptions, ProcessStdio, RuntimeConfig};
use crate::stdio::nix_read;

#[derive(Debug, Clone)]
pub struct Runc {
    config: RuntimeConfig,
    /// What the container's spec says (None: it could not be read, and no
    /// shortcut is taken).
    spec: Option<SpecFacts>,
    log: PathBuf,
    reaper: Arc<Reaper>,
}

impl Runc {
    /// A runtime whose JSON log goes to `<bundle>/log.json`.
    pub fn new(
        config: RuntimeConfig,
        bundle: &Path,
        spec: Option<SpecFacts>,
        reaper: Arc<Reaper>,
    ) -> Runc {
        Runc {
            config,
            spec,
            log: bundle.join("log.json"),
            reaper,
        }
    }

    /// Whether `start` may release the init through runc's exec fifo
    /// itself rather than run `runc start`: only for runc (whose state
    /// directory layout this relies on) and only when the spec has no
    /// poststart hooks, which newer runc runs at `runc start`.
    fn starts_through_exec_fifo(&self) -> bool {
        self.is_runc() && self.spec.is_some_and(|spec| !spec.poststart_hooks)
    }

    /// Whether `delete_stopped` may remove a stopped runc container's
    /// cgroups and state itself rather than run `runc delete`: what runc
    /// does then is only that, unless the container has poststop hooks,
    /// shares a pid namespace (runc kills what is left in its cgroup), or
    /// has its cgroups made by systemd (runc stops the unit).
    fn destroys_stopped_containers_itself(&self) -> bool {
        self.is_runc()
            && !self.config.systemd_cgroup
            && self
                .spec
                .is_some_and(|spec| !spec.poststop_hooks && !spec.shares_host_pid_ns)
    }

    fn is_runc(&self) -> bool {
        is_runc(&self.config)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.config.binary);
        // A shim started by a Type=notify service (containerd's, taskd's)
        // may inherit its NOTIFY_SOCKET; runc would pass it into the
        // container and make `runc start` wait for the container's own
        // READY=1, that is, block until it exits.
        cmd.env_remove("NOTIFY_SOCKET");
        cmd.arg("--root")
            .arg(&self.config.root)
            .arg("--log")
            .arg(&self.log)
            .args(["--log-format", "json"]);
        if self.config.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        if let Some(criu) = &self.config.criu {
            cmd.arg("--criu").arg(criu);
        }
        cmd.args(args);
        cmd
    }

    /// Runs `cmd` to completion; returns its stdout. With `stdio` the child
    /// gets those descriptors (and its errors come from the JSON log).
    async fn run(
        &self,
        mut cmd: Command,
        stdio: Option<ProcessStdio>,
        stdin_data: Option<&[u8]>,
    ) -> Result<Vec<u8>> {
        let name = format!(
            "{} {}",
            self.config.binary,
            cmd.get_args()
                .map(|a| a.to_string_lossy())
                .find(|a| !(a.starts_with('-') || a.contains('/') || a == "json"))
                .unwrap_or_default()
        );
        let capture = stdio.is_none();
        match stdio {
            Some(stdio) => {
                cmd.stdin(Stdio::from(stdio.stdin))
                    .stdout(Stdio::from(stdio.stdout))
                    .stderr(Stdio::from(stdio.stderr));
            }
            None => {
                cmd.stdin(if stdin_data.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            }
        }
        let log_start = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let mut child = cmd.spawn().map_err(|e| ShimError::Runtime {
            command: name.clone(),
            message: format!("cannot start {}: {e}", self.config.binary),
        })?;
        let exited = self.reaper.watch_command(child.id());
        if let (Some(data), Some(mut stdin)) = (stdin_data, child.stdin.take()) {
            use std::io::Write;
            let _ = stdin.write_all(data);
        }
        let (stdout, stderr) = if capture {
            let out = child.stdout.take().map(OwnedFd::from);
            let err = child.stderr.take().map(OwnedFd::from);
            tokio::join!(read_all(out), read_all(err))
        } else {
            (Vec::new(), Vec::new())
        };
        let status = exited.await.map_err(|_| ShimError::Runtime {
            command: name.clone(),
            message: "exit status lost".into(),
        })?;
        if status != 0 {
            let mut message = last_log_error(&self.log, log_start).unwrap_or_default();
            if message.is_empty() {
                message = String::from_utf8_lossy(&stderr).trim().to_string();
            }
            if message.is_empty() {
                message = format!("exit status {status}");
            }
            return Err(ShimError::Runtime {
                command: name,
                message,
            });
        }
        Ok(stdout)
    }
}

#[async_trait]
impl Runtime for Runc {
    fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    async fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        options: &CreateOptions<'_>,
        stdio: Option<ProcessStdio>,
    ) -> Result<()> {
        let mut cmd = self.command(&["create", "--bundle"]);
        cmd.arg(bundle).arg("--pid-file").arg(pid_file);
        if let Some(socket) = options.console_socket {
            cmd.arg("--console-socket").arg(socket);
        }
        if options.no_pivot {
            cmd.arg("--no-pivot");
        }
        if options.no_new_keyring {
            cmd.arg("--no-new-keyring");
        }
        cmd.arg(id);
        let stdio = match stdio {
            Some(stdio) => stdio,
            None => null_stdio()?,
        };
        self.run(cmd, Some(stdio), None).await.map(drop)
    }

    async fn start(&self, id: &str, init_pid: u32) -> Result<()> {
        if self.starts_through_exec_fifo() {
            // Everything that can fail comes before the fifo is opened:
            // opening it lets the init go on, and from then on only this
            // shim's reading of it stands between the init and its exec.
            if let Some(exited) = watch_init(init_pid) {
                let path = self.config.root.join(id).join(EXEC_FIFO);
                if let Some(fifo) = open_exec_fifo(&path) {
                    return release_init(fifo, &path, exited).await;
                }
            }
            // No way to watch the init (it is gone, or the kernel has no
            // pidfds), or no fifo (the container is not in the created
            // state): `runc start` does the work or says what is wrong.
        }
        self.run(self.command(&["start", id]), None, None)
            .await
            .map(drop)
    }

    async fn exec(
        &self,
        id: &str,
        process_json: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        stdio: Option<ProcessStdio>,
    ) -> Result<()> {
        let mut cmd = self.command(&["exec", "--process"]);
        cmd.arg(process_json)
            .arg("--detach")
            .arg("--pid-file")
            .arg(pid_file);
        if let Some(socket) = console_socket {
            cmd.arg("--console-socket").arg(socket);
        }
        cmd.arg(id);
        let stdio = match stdio {
            Some(stdio) => stdio,
            None => null_stdio()?,
        };
        self.run(cmd, Some(stdio), None).await.map(drop)
    }

    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let signal = signal.to_string();
        let args: Vec<&str> = if all {
            vec!["kill", "--all", id, &signal]
        } else {
            vec!["kill", id, &signal]
        };
        self.run(self.command(&args), None, None).await.map(drop)
    }

    async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let args: Vec<&str> = if force {
            vec!["delete", "--force", id]
        } else {
            vec!["delete", id]
        };
        match self.run(self.command(&args), None, None).await {
            Err(ShimError::Runtime { message, .. }) if message.contains("does not exist") => Ok(()),
            other => other.map(drop),
        }
    }

    async fn delete_stopped(&self, id: &str) -> Result<()> {
        if self.destroys_stopped_containers_itself() {
            let dir = self.config.root.join(id);
            if let Some(cgroups) = stopped_container_cgroups(&dir, Path::new(CGROUP_ROOT)) {
                match destroy_stopped(&dir, &cgroups).await {
                    Ok(()) => return Ok(()),
                    // The installed runc decides (runc 1.1 removes the
                    // state even when a cgroup stays; later ones do not).
                    Err(e) => crate::log_warn!("deleting {id} without runc: {e}; asking runc"),
                }
            }
            // No state runc's delete would act on alone: let it.
        }
        self.delete(id, true).await
    }

    async fn pause(&self, id: &str) -> Result<()> {
        self.run(self.command(&["pause", id]), None, None)
            .await
            .map(drop)
    }

    async fn resume(&self, id: &str) -> Result<()> {
        self.run(self.command(&["resume", id]), None, None)
            .await
            .map(drop)
    }

    async fn ps(&self, id: &str) -> Result<Vec<u32>> {
        let out = self
            .run(self.command(&["ps", "--format", "json", id]), None, None)
            .await?;
        let pids: Option<Vec<u32>> =
            serde_json::from_slice(&out).map_err(|e| ShimError::json("runc ps output", e))?;
        Ok(pids.unwrap_or_default())
    }

    // `update --resources -` with the JSON LinuxResources on stdin.
    async fn update(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        self.run(
            self.command(&["update", "--resources", "-", id]),
            None,
            Some(resources_json),
        )
        .await
        .map(drop)
    }

    async fn checkpoint(
        &self,
        id: &str,
        image_path: &Path,
        work_path: Option<&Path>,
        leave_running: bool,
    ) -> Result<()> {
        let mut cmd = self.command(&["checkpoint", "--image-path"]);
        cmd.arg(image_path);
        if let Some(work) = work_path {
            cmd.arg("--work-path").arg(work);
        }
        if leave_running {
            cmd.arg("--leave-running");
        }
        cmd.arg(id);
        self.run(cmd, None, None).await.map(drop)
    }
}

/// Whether the runtime is runc, whose state directory layout (below) the
/// shim relies on to do some of its work without a runc process.
fn is_runc(config: &RuntimeConfig) -> bool {
    Path::new(&config.binary).file_name() == Some("runc".as_ref())
}

/// Whether `runc delete` of `id` would have nothing to do: runc keeps
/// nothing of a container outside its state directory that it could find
/// without it.
pub fn runc_knows_nothing_of(config: &RuntimeConfig, id: &str) -> bool {
    is_runc(config)
        && matches!(
            std::fs::symlink_metadata(config.root.join(id)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound
        )
}

/// The fifo in runc's state directory (`<root>/<id>/exec.fifo`) that a
/// created container's init blocks on: it opens the fifo for writing,
/// writes one byte once a reader comes, and then execs the user's process.
/// Its presence is what makes runc report the container as created.
const EXEC_FIFO: &str = "exec.fifo";

/// Opens a created container's exec fifo for reading, without blocking
/// (which lets the init, blocked opening it for writing, go on);
/// `None` if there is no fifo there.
fn open_exec_fifo(path: &Path) -> Option<OwnedFd> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let is_fifo = file.metadata().ok()?.file_type().is_fifo();
    is_fifo.then(|| OwnedFd::from(file))
}

/// What `runc start` does for a created container, without starting a
/// runc process for it (about 5 ms of a container's start): reads the
/// init's byte from the exec fifo, waits for the init to exec (its end of
/// the fifo closes then) or to die, and removes the fifo, so that runc
/// sees the container as running from then on. An init that dies before it
/// wrote its byte is an error, as with `runc start`.
async fn release_init(fifo: OwnedFd, path: &Path, exited: AsyncFd<OwnedFd>) -> Result<()> {
    let fail = |message: String| ShimError::Runtime {
        command: "runc start".into(),
        message,
    };
    // Only registering the fifo can fail now; the init then finds no
    // reader when it writes and dies, and Start fails with it.
    let fifo = crate::stdio::async_fd(fifo)
        .map_err(|e| fail(format!("watching {}: {e}", path.display())))?;
    let mut signalled = false;
    let mut buf = [0u8; 16];
    loop {
        // The init's exit ends the wait even if it never opens the fifo.
        // A fifo's reader sees no hang-up before a writer has come, so the
        // fifo turns readable with the init's byte, or when its end closes
        // (at its exec) after one.
        tokio::select! {
            ready = fifo.readable() => {
                let mut guard =
                    ready.map_err(|e| fail(format!("waiting on {}: {e}", path.display())))?;
                match guard.try_io(|fifo| nix_read(fifo.as_raw_fd(), &mut buf)) {
                    Ok(Ok(0)) => break,
                    Ok(Ok(_)) => signalled = true,
                    Ok(Err(e)) => return Err(fail(format!("reading {}: {e}", path.display()))),
                    Err(_would_block) => {}
                }
            }
            _ = exited.readable() => {
                while let Ok(1..) = nix_read(fifo.as_raw_fd(), &mut buf) {
                    signalled = true;
                }
                break;
            }
        }
    }
    if !signalled {
        return Err(fail("container process is already dead".into()));
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(fail(format!("removing {}: {e}", path.display())))
        }
        _ => Ok(()),
    }
}

/// A pidfd for the created container's init `pid`, registered to turn
/// readable when the init exits; `None` if it cannot be had: the kernel
/// has no pidfds (before 5.3) or `waitid` on them (5.4), or the pid is no
/// longer this shim's child (the init was reaped, and the pid may be
/// another process's by now).
fn watch_init(pid: u32) -> Option<AsyncFd<OwnedFd>> {
    let pidfd = pidfd_open(pid)?;
    // The init is the shim's child (the shim is its subreaper) until the
    // shim reaps it, and a pid is not reused before that: a pidfd of a
    // process that is still this shim's child is the init's.
    let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::zeroed();
    // SAFETY: waitid writes a siginfo_t into `info`, which is valid for
    // it; WNOWAIT leaves the child waitable (the reaper reaps it), WNOHANG
    // returns at once.
    let child = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            info.as_mut_ptr(),
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if child != 0 {
        return None;
    }
    crate::stdio::async_fd(pidfd).ok()
}

/// A pidfd for `pid`; `None` if it is gone (or the kernel has no pidfds).
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    let pid = libc::pid_t::try_from(pid).ok().filter(|p| *p > 0)?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
    // no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the syscall returned a new descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Where every cgroup hierarchy is mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The cgroups runc recorded for a container in its `state.json`, if they
/// are all it would remove: `None` when the state cannot be read, names an
/// Intel RDT group, or holds a path that is not a directory under
/// `cgroup_root` (then `runc delete` does the work).
fn stopped_container_cgroups(state_dir: &Path, cgroup_root: &Path) -> Option<Vec<PathBuf>> {
    /// The part of runc's state this needs; the rest (its copy of the
    /// config) is skipped unparsed.
    #[derive(serde::Deserialize)]
    struct State {
        #[serde(default)]
        cgroup_paths: std::collections::HashMap<String, String>,
        #[serde(default)]
        intel_rdt_path: Option<String>,
    }
    let text = std::fs::read(state_dir.join("state.json")).ok()?;
    let state: State = serde_json::from_slice(&text).ok()?;
    if state.intel_rdt_path.is_some_and(|path| !path.is_empty()) {
        return None;
    }
    let mut paths: Vec<PathBuf> = Vec::with_capacity(state.cgroup_paths.len());
    for path in state.cgroup_paths.into_values() {
        let path = PathBuf::from(path);
        let below = path.strip_prefix(cgroup_root).ok()?;
        let plain = below
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        // A hierarchy's root itself (`/sys/fs/cgroup/memory`) is never a
        // container's.
        if !plain || below.components().count() < 2 {
            return None;
        }
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    Some(paths)
}

/// What `runc delete` does for a stopped container with a private pid
/// namespace, no poststop hooks and cgroupfs cgroups, without starting a
/// runc process for it (about 6 ms): removes its cgroups, then its state
/// directory. A cgroup that stays busy fails this and leaves the state;
/// the caller then asks runc.
async fn destroy_stopped(state_dir: &Path, cgroups: &[PathBuf]) -> Result<()> {
    for cgroup in cgroups {
        remove_cgroup(cgroup)
            .await
            .map_err(|e| ShimError::Runtime {
                command: "runc delete".into(),
                message: format!(
                    "unable to remove container's cgroup {}: {e}",
                    cgroup.display()
                ),
            })?;
    }
    match std::fs::remove_dir_all(state_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ShimError::Runtime {
            command: "runc delete".into(),
            message: format!(
                "unable to remove container state dir {}: {e}",
                state_dir.display()
            ),
        }),
        _ => Ok(()),
    }
}

/// Removes a cgroup and any cgroups below it (a container may have made
/// some), deepest first. Its files go with the directory; a cgroup still
/// busy a moment after its last process left is tried again, with a
/// doubling pause, as runc does.
async fn remove_cgroup(path: &Path) -> std::io::Result<()> {
    // Mostly it is one empty cgroup: removed without reading it first.
    match std::fs::remove_dir(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        // Cgroups below it (EBUSY for a cgroup, ENOTEMPTY for a plain
        // directory), or a moment's wait for its last process: below.
        Err(_) => {}
    }
    let mut dirs = vec![path.to_path_buf()];
    let mut next = 0;
    while next < dirs.len() {
        let entries = match std::fs::read_dir(&dirs[next]) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            entries => entries?.collect::<std::io::Result<Vec<_>>>()?,
        };
        for entry in entries {
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
        }
        next += 1;
    }
    for dir in dirs.iter().rev() {
        let mut pause = std::time::Duration::from_millis(1);
        let mut tries = 10;
        loop {
            match std::fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries > 0 => {
                    tries -= 1;
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

fn null_stdio() -> Result<ProcessStdio> {
    let open = || -> Result<OwnedFd> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| ShimError::io("opening /dev/null", e))
    };
    Ok(ProcessStdio {
        stdin: open()?,
        stdout: open()?,
        stderr: open()?,
    })
}

async fn read_all(fd: Option<OwnedFd>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let Some(fd) = fd else {
        return Vec::new();
    };
    let mut buf = Vec::new();
    match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(mut pipe) => {
            let _ = pipe.read_to_end(&mut buf).await;
        }
        Err(_) => buf.clear(),
    }
    buf
}

/// The message of the last error runc wrote to its JSON log.
fn last_log_error(log: &Path, from: u64) -> Option<String> {
    use std::io::{Seek, SeekFrom};
    let mut text = String::new();
    let mut file = std::fs::File::open(log).ok()?;
    file.seek(SeekFrom::Start(from)).ok()?;
    file.read_to_string(&mut text).ok()?;
    #[derive(serde::Deserialize)]
    struct Entry {
        level: String,
        msg: String,
    }
    text.lines().rev().find_map(|line| {
        let entry: Entry = serde_json::from_str(line).ok()?;
        (entry.level == "error").then_some(entry.msg)
    })
}

/// Reads the pid a runtime wrote to `path`.
pub fn read_pid_file(path: &Path) -> Result<u32> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ShimError::io(format!("reading {}", path.display()), e))?;
    text.trim().parse().map_err(|_| ShimError::Runtime {
        command: "pid file".into(),
        message: format!("{} holds no pid: {text:?}", path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_last_error_in_a_json_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.json");
        std::fs::write(
            &log,
            "{\"level\":\"error\",\"msg\":\"first\"}\n{\"level\":\"info\",\"msg\":\"x\"}\n{\"level\":\"error\",\"msg\":\"container does not exist\"}\n{\"level\":\"warning\",\"msg\":\"w\"}\n",
        )
        .unwrap();
        assert_eq!(
            last_log_error(&log, 0).as_deref(),
            Some("container does not exist")
        );
        assert_eq!(last_log_error(&log, 1000), None);
        assert_eq!(last_log_error(&dir.path().join("missing"), 0), None);
    }

    /// A fifo standing in for runc's exec fifo, and a process playing the
    /// created init's part on it.
    struct Init {
        _dir: tempfile::TempDir,
        fifo: PathBuf,
        child: std::process::Child,
    }

    impl Init {
        /// `script` runs with `$0` naming the fifo.
        fn spawn(script: &str) -> Init {
            let dir = tempfile::tempdir().unwrap();
            let fifo = dir.path().join(EXEC_FIFO);
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            let child = Command::new("sh")
                .args(["-c", script])
                .arg(&fifo)
                .spawn()
                .unwrap();
            Init {
                _dir: dir,
                fifo,
                child,
            }
        }

        /// What `start` does: watch the init, open the fifo, release it.
        async fn release(&mut self) -> Result<()> {
            let exited = watch_init(self.child.id()).expect("a child is watched");
            let reader = open_exec_fifo(&self.fifo).expect("the fifo opens");
            // A guard against a hang, not a measure of speed.
            tokio::time::timeout(
                std::time::Duration::from_secs(60),
                release_init(reader, &self.fifo, exited),
            )
            .await
            .expect("release_init returned")
        }
    }

    impl Drop for Init {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn start_returns_once_the_init_has_signalled_and_closed_the_fifo() {
        // The init writes its byte, closes the fifo and goes on running
        // (as it does once it execs the user's process).
        let mut init = Init::spawn("printf 0 > \"$0\"; exec sleep 600");
        init.release().await.unwrap();
        assert!(
            init.child.try_wait().unwrap().is_none(),
            "start waited for the process to exit"
        );
        assert!(
            !init.fifo.exists(),
            "the fifo is removed, so runc sees the container running"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_init_that_exits_without_signalling_fails_the_start() {
        let mut init = Init::spawn("exit 0");
        let error = init.release().await.unwrap_err().to_string();
        assert!(error.contains("already dead"), "{error}");
        assert!(init.fifo.exists(), "a failed start changes nothing");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_init_that_closes_the_fifo_without_its_byte_fails_the_start() {
        let mut init = Init::spawn(": > \"$0\"; exec sleep 600");
        let error = init.release().await.unwrap_err().to_string();
        assert!(error.contains("already dead"), "{error}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_init_that_writes_and_exits_at_once_is_released() {
        let mut init = Init::spawn("printf 0 > \"$0\"");
        init.release().await.unwrap();
        assert!(init.child.wait().unwrap().success());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn only_a_child_not_yet_reaped_is_watched() {
        let mut live = Init::spawn("exec sleep 600");
        assert!(watch_init(live.child.id()).is_some());
        let mut reaped = Init::spawn("exit 0");
        let pid = reaped.child.id();
        assert!(reaped.child.wait().unwrap().success());
        assert!(watch_init(pid).is_none(), "a reaped pid may be another's");
        assert!(watch_init(1).is_none(), "pid 1 is not the shim's child");
        let _ = live.child.kill();
        let _ = live.child.wait();
    }

    #[test]
    fn a_stopped_runc_container_is_destroyed_by_the_shim_only_when_runc_would_do_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = |binary: &str, systemd_cgroup: bool| {
            let config = RuntimeConfig {
                binary: binary.into(),
                root: dir.path().join("root"),
                systemd_cgroup,
                criu: None,
            };
            Runc::new(
                config,
                dir.path(),
                SpecFacts::read(dir.path()),
                Arc::new(Reaper::new().0),
            )
        };
        let spec = dir.path().join("config.json");
        let private_pid = r#""linux":{"namespaces":[{"type":"pid"},{"type":"mount"}]}"#;
        assert!(!runtime("runc", false).destroys_stopped_containers_itself());
        std::fs::write(&spec, format!("{{{private_pid}}}")).unwrap();
        assert!(runtime("runc", false).destroys_stopped_containers_itself());
        assert!(!runtime("runc", true).destroys_stopped_containers_itself());
        assert!(!runtime("crun", false).destroys_stopped_containers_itself());
        std::fs::write(
            &spec,
            format!(r#"{{{private_pid},"hooks":{{"poststop":[{{"path":"/bin/true"}}]}}}}"#),
        )
        .unwrap();
        assert!(!runtime("runc", false).destroys_stopped_containers_itself());
        std::fs::write(&spec, r#"{"linux":{"namespaces":[{"type":"mount"}]}}"#).unwrap();
        assert!(
            !runtime("runc", false).destroys_stopped_containers_itself(),
            "a shared pid namespace may leave processes runc kills"
        );
    }

    #[test]
    fn runc_knows_nothing_of_a_container_without_its_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let config = |binary: &str| RuntimeConfig {
            binary: binary.into(),
            root: dir.path().to_path_buf(),
            systemd_cgroup: false,
            criu: None,
        };
        assert!(runc_knows_nothing_of(&config("runc"), "c1"));
        std::fs::create_dir(dir.path().join("c1")).unwrap();
        assert!(!runc_knows_nothing_of(&config("/usr/sbin/runc"), "c1"));
        assert!(
            !runc_knows_nothing_of(&config("crun"), "c2"),
            "another runtime may keep its state elsewhere"
        );
    }

    #[test]
    fn only_plain_cgroup_paths_from_runcs_state_are_removed_by_the_shim() {
        let dir = tempfile::tempdir().unwrap();
        let cgroups = dir.path().join("cgroup");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let with = |paths: &str, rdt: &str| {
            std::fs::write(
                state.join("state.json"),
                format!(
                    r#"{{"id":"c1","config":{{"hooks":{{}}}},"cgroup_paths":{{{paths}}},"intel_rdt_path":"{rdt}"}}"#
                ),
            )
            .unwrap();
            stopped_container_cgroups(&state, &cgroups)
        };
        let root = cgroups.display();
        let found = with(
            &format!(
                r#""":"{root}/unified/c1","cpu":"{root}/cpu/pod/c1","cpuacct":"{root}/cpu/pod/c1""#
            ),
            "",
        )
        .expect("plain paths are the shim's to remove");
        let mut found: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
        found.sort();
        assert_eq!(
            found,
            [format!("{root}/cpu/pod/c1"), format!("{root}/unified/c1")]
        );
        assert_eq!(with("", ""), Some(Vec::new()));
        for refused in [
            r#""pids":"/etc/c1""#.to_string(),
            format!(r#""pids":"{root}/pids/../../../etc""#),
            format!(r#""pids":"{root}/pids""#),
            format!(r#""pids":"{root}""#),
            r#""pids":"relative/c1""#.to_string(),
        ] {
            assert_eq!(with(&refused, ""), None, "{refused}");
        }
        assert_eq!(
            with(&format!(r#""pids":"{root}/pids/c1""#), "/sys/fs/resctrl/c1"),
            None,
            "an Intel RDT group is runc's to remove"
        );
        std::fs::write(state.join("state.json"), "{not json").unwrap();
        assert_eq!(stopped_container_cgroups(&state, &cgroups), None);
        assert_eq!(
            stopped_container_cgroups(&dir.path().join("gone"), &cgroups),
            None
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn destroying_removes_cgroups_below_and_then_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let cgroup = dir.path().join("pids").join("c1");
        std::fs::create_dir_all(cgroup.join("made-inside").join("deeper")).unwrap();
        std::fs::create_dir_all(cgroup.join("another")).unwrap();
        let state = dir.path().join("state").join("c1");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("state.json"), "{}").unwrap();
        let gone = dir.path().join("pids").join("never-made");
        destroy_stopped(&state, &[cgroup.clone(), gone])
            .await
            .unwrap();
        assert!(!cgroup.exists());
        assert!(dir.path().join("pids").exists());
        assert!(!state.exists());

        // A cgroup that cannot go keeps the state for another try.
        let stuck = dir.path().join("pids").join("c2");
        std::fs::create_dir_all(&stuck).unwrap();
        std::fs::write(stuck.join("not-a-cgroup-file"), "x").unwrap();
        std::fs::create_dir_all(&state).unwrap();
        let error = destroy_stopped(&state, std::slice::from_ref(&stuck))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("unable to remove"), "{error}");
        assert!(state.exists());
    }

    #[test]
    fn only_runc_without_poststart_hooks_is_started_through_its_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = |binary: &str| {
            let config = RuntimeConfig {
                binary: binary.into(),
                root: dir.path().join("root"),
                systemd_cgroup: false,
                criu: None,
            };
            Runc::new(
                config,
                dir.path(),
                SpecFacts::read(dir.path()),
                Arc::new(Reaper::new().0),
            )
        };
        let spec = dir.path().join("config.json");
        assert!(
            !runtime("runc").starts_through_exec_fifo(),
            "an unreadable spec may have hooks"
        );
        std::fs::write(
            &spec,
            r#"{"ociVersion":"1.0.2","hooks":{"prestart":[{"path":"/x"}]}}"#,
        )
        .unwrap();
        assert!(runtime("runc").starts_through_exec_fifo());
        assert!(runtime("/usr/local/sbin/runc").starts_through_exec_fifo());
        assert!(!runtime("crun").starts_through_exec_fifo());
        assert!(!runtime("/opt/runc-wrapper").starts_through_exec_fifo());
        std::fs::write(&spec, r#"{"hooks":{"poststart":[{"path":"/bin/true"}]}}"#).unwrap();
        assert!(!runtime("runc").starts_through_exec_fifo());
        std::fs::write(&spec, r#"{"hooks":{"poststart":[]}}"#).unwrap();
        assert!(runtime("runc").starts_through_exec_fifo());
    }

    #[test]
    fn pid_files_must_hold_a_number() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.pid");
        std::fs::write(&good, "4242").unwrap();
        assert_eq!(read_pid_file(&good).unwrap(), 4242);
        let bad = dir.path().join("bad.pid");
        std::fs::write(&bad, "x").unwrap();
        assert!(read_pid_file(&bad).is_err());
    }
}
