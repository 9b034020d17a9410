//! berth's four daemons as background processes on this machine, for hosts
//! without systemd: what `berth up` and `berth down` do.
//!
//! Where everything lives ([`Layout`]): with a root DIR,
//!
//! | what | path |
//! |---|---|
//! | each daemon's store (`--root`) | `DIR/content`, `DIR/snapshots`, `DIR/meta`, `DIR/tasks` |
//! | each daemon's state (`--state`) | `DIR/run/content`, ... |
//! | sockets and pid files | `DIR/run/contentd.sock`, `DIR/run/contentd.pid`, ... |
//! | the daemons' output | `DIR/log/contentd.log`, ... |
//! | detached containers' output | `DIR/log/containers/NAMESPACE/ID.log` |
//!
//! Without one, the daemons' own defaults (`/var/lib/berth/<store>`,
//! `/run/berth/<store>`, `/run/berth/<daemon>.sock`), pid files beside the
//! sockets and output in `/var/log/berth`.
//!
//! A pid file is trusted only while its process is the daemon it names,
//! serving the socket it names (its executable and command line are
//! checked), so a reused pid is never signalled.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_content::ContentStore;
use berth_errdefs::{Error, ErrorKind, Result};
use berth_metadata::NamespaceStore;
use berth_snapshot::Snapshotter;
use berth_tasks::Tasks;

use crate::{RemoteContentStore, RemoteNamespaces, RemoteSnapshotter, RemoteTasks};

/// One of berth's daemons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    Contentd,
    Snapd,
    Metad,
    Taskd,
    /// The CRI server: started by `up` only when asked for.
    Crid,
}

impl Daemon {
    /// berth's core daemons, in start order: each daemon's peers start
    /// before it.
    pub const ALL: [Daemon; 4] = [
        Daemon::Contentd,
        Daemon::Snapd,
        Daemon::Metad,
        Daemon::Taskd,
    ];

    /// The core daemons and then the CRI server, in start order.
    pub const WITH_CRI: [Daemon; 5] = [
        Daemon::Contentd,
        Daemon::Snapd,
        Daemon::Metad,
        Daemon::Taskd,
        Daemon::Crid,
    ];

    /// Its short name, as in its socket's name (`contentd`).
    pub fn name(self) -> &'static str {
        match self {
            Daemon::Contentd => "contentd",
            Daemon::Snapd => "snapd",
            Daemon::Metad => "metad",
            Daemon::Taskd => "taskd",
            Daemon::Crid => "crid",
        }
    }

    /// Its executable's name.
    pub fn binary(self) -> String {
        format!("berth-{}", self.name())
    }

    /// The directory name of its store (as in its default `--root`).
    fn store(self) -> &'static str {
        match self {
            Daemon::Contentd => "content",
            Daemon::Snapd => "snapshots",
            Daemon::Metad => "meta",
            Daemon::Taskd => "tasks",
            Daemon::Crid => "cri",
        }
    }

    /// The daemons it calls, each given with its own flag (`--contentd
    /// SOCKET`).
    pub fn peers(self) -> &'static [Daemon] {
        match self {
            Daemon::Contentd => &[],
            Daemon::Snapd => &[Daemon::Contentd],
            Daemon::Metad => &[Daemon::Contentd, Daemon::Snapd],
            Daemon::Taskd => &[Daemon::Metad, Daemon::Snapd],
            Daemon::Crid => &[
                Daemon::Contentd,
                Daemon::Snapd,
                Daemon::Metad,
                Daemon::Taskd,
            ],
        }
    }
}

/// Where the daemons keep their stores, state, sockets, pid files and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: Option<PathBuf>,
}

impl Layout {
    /// Everything under `root`, or the system-wide defaults without one.
    pub fn new(root: Option<PathBuf>) -> Layout {
        Layout { root }
    }

    /// Sockets, pid files, and the CLI's fifos: `BERTH_RUN_DIR` points the
    /// CLI here.
    pub fn run_dir(&self) -> PathBuf {
        match &self.root {
            Some(root) => root.join("run"),
            None => PathBuf::from(berth_api::sockets::RUN_DIR),
        }
    }

    /// The daemons' output.
    pub fn log_dir(&self) -> PathBuf {
        match &self.root {
            Some(root) => root.join("log"),
            None => PathBuf::from("/var/log/berth"),
        }
    }

    /// Detached containers' output, when the layout has a root (without
    /// one, the CLI's own default applies).
    pub fn container_log_dir(&self) -> Option<PathBuf> {
        self.root
            .as_ref()
            .map(|root| root.join("log").join("containers"))
    }

    /// `<name>.sock`, except the CRI server's `cri.sock` (as its package
    /// and `berth_api::sockets::CRI` name it).
    pub fn socket(&self, daemon: Daemon) -> PathBuf {
        let name = match daemon {
            Daemon::Crid => "cri",
            other => other.name(),
        };
        self.run_dir().join(format!("{name}.sock"))
    }

    pub fn pid_file(&self, daemon: Daemon) -> PathBuf {
        self.run_dir().join(format!("{}.pid", daemon.name()))
    }

    pub fn log_file(&self, daemon: Daemon) -> PathBuf {
        self.log_dir().join(format!("{}.log", daemon.name()))
    }

    fn store_dir(&self, daemon: Daemon) -> PathBuf {
        match &self.root {
            Some(root) => root.join(daemon.store()),
            None => Path::new("/var/lib/berth").join(daemon.store()),
        }
    }

    fn state_dir(&self, daemon: Daemon) -> PathBuf {
        self.run_dir().join(daemon.store())
    }
}

/// How `up` starts daemons.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Where the `berth-*` executables are.
    pub binaries: PathBuf,
    /// How long each daemon may take to answer.
    pub ready_timeout: Duration,
    /// `--log-level` for every daemon, if set.
    pub log_level: Option<String>,
    /// Start berth-crid (the CRI server) too, after the others.
    pub cri: bool,
}

/// What `up` found or did for one daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpState {
    /// Started now.
    Started { pid: u32 },
    /// Already running from an earlier `up`.
    Running { pid: u32 },
    /// Its socket answers, but no process of ours serves it (a systemd
    /// unit, or a daemon started by hand): left alone.
    ServedElsewhere,
}

/// What `down` did for one daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownState {
    /// Asked to stop, and stopped.
    Stopped { pid: u32 },
    /// Did not stop when asked within the timeout: killed.
    Killed { pid: u32 },
    /// Not running (a stale pid file or socket was removed, if any).
    NotRunning,
}

/// Starts every daemon that is not running yet, each after its peers, and
/// waits until each answers. Running twice is harmless; a socket left by a
/// killed daemon is replaced.
pub async fn up(layout: &Layout, options: &UpOptions) -> Result<Vec<(Daemon, UpState)>> {
    let mut states = Vec::new();
    let daemons: &[Daemon] = if options.cri {
        &Daemon::WITH_CRI
    } else {
        &Daemon::ALL
    };
    for &daemon in daemons {
        let state = up_one(layout, options, daemon).await?;
        states.push((daemon, state));
    }
    Ok(states)
}

async fn up_one(layout: &Layout, options: &UpOptions, daemon: Daemon) -> Result<UpState> {
    let socket = layout.socket(daemon);
    if let Some(pid) = running_pid(layout, daemon) {
        wait_until_answering(daemon, &socket, options.ready_timeout, None).await?;
        return Ok(UpState::Running { pid });
    }
    if probe(daemon, &socket).await.is_ok() {
        return Ok(UpState::ServedElsewhere);
    }
    let binary = options.binaries.join(daemon.binary());
    if !binary.is_file() {
        return Err(Error::not_found(format!(
            "{} is not built or installed (looked for {})",
            daemon.binary(),
            binary.display()
        )));
    }
    // Private, as the daemons' own directories: the logs say what runs.
    for dir in [layout.run_dir(), layout.log_dir()] {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), &e))?;
    }
    let log_path = layout.log_file(daemon);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Error::io(format!("opening {}", log_path.display()), &e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| Error::io(format!("opening {}", log_path.display()), &e))?;
    let mut command = Command::new(&binary);
    command
        .arg("--root")
        .arg(layout.store_dir(daemon))
        .arg("--state")
        .arg(layout.state_dir(daemon))
        .arg("--address")
        .arg(&socket);
    for peer in daemon.peers() {
        command
            .arg(format!("--{}", peer.name()))
            .arg(layout.socket(*peer));
    }
    if let Some(level) = &options.log_level {
        command.arg("--log-level").arg(level);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    // SAFETY: setsid is async-signal-safe and touches no memory; it runs in
    // the child between fork and exec. The daemon leaves this terminal's
    // session, so closing the terminal (SIGHUP) or ^C does not reach it.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| Error::io(format!("starting {}", binary.display()), &e))?;
    let pid = child.id();
    if let Err(e) = write_pid_file(&layout.pid_file(daemon), pid) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    match wait_until_answering(daemon, &socket, options.ready_timeout, Some(&mut child)).await {
        Ok(()) => Ok(UpState::Started { pid }),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(layout.pid_file(daemon));
            Err(e.context(format!(
                "{} did not come up; its log ({}) ends with:\n{}",
                daemon.binary(),
                log_path.display(),
                log_tail(&log_path)
            )))
        }
    }
}

/// Stops every daemon `up` started, the last started first. With
/// `stop_containers`, every task in every namespace is killed and deleted
/// first; without it, containers keep running (their shims outlive taskd)
/// and the next `up` finds them again.
pub async fn down(
    layout: &Layout,
    stop_containers: bool,
    stop_timeout: Duration,
) -> Result<(usize, Vec<(Daemon, DownState)>)> {
    let stopped_tasks = if stop_containers {
        stop_all_tasks(layout).await?
    } else {
        0
    };
    let mut states = Vec::new();
    // The CRI server first (whether or not `up` was asked for it), then the
    // others, the last started first.
    for daemon in Daemon::WITH_CRI.into_iter().rev() {
        let state = down_one(layout, daemon, stop_timeout).await?;
        // The CRI server is optional: reported only when it ran.
        if daemon != Daemon::Crid || state != DownState::NotRunning {
            states.push((daemon, state));
        }
    }
    Ok((stopped_tasks, states))
}

async fn down_one(layout: &Layout, daemon: Daemon, timeout: Duration) -> Result<DownState> {
    let pid_file = layout.pid_file(daemon);
    let Some(pid) = running_pid(layout, daemon) else {
        // Nothing of ours runs: a pid file or socket left by a killed
        // daemon goes (a socket someone else serves stays).
        let _ = std::fs::remove_file(&pid_file);
        let socket = layout.socket(daemon);
        if socket.exists() && probe(daemon, &socket).await.is_err() {
            let _ = std::fs::remove_file(&socket);
        }
        return Ok(DownState::NotRunning);
    };
    let target = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM);
    let state = if wait_gone(pid, timeout).await {
        DownState::Stopped { pid }
    } else {
        let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
        if !wait_gone(pid, Duration::from_secs(5)).await {
            return Err(Error::internal(format!(
                "{} (pid {pid}) survived SIGKILL",
                daemon.binary()
            )));
        }
        DownState::Killed { pid }
    };
    let _ = std::fs::remove_file(&pid_file);
    // A daemon that stops cleanly removes its socket; a killed one leaves
    // it behind.
    let _ = std::fs::remove_file(layout.socket(daemon));
    Ok(state)
}

/// Kills and deletes every task in every namespace; returns how many.
async fn stop_all_tasks(layout: &Layout) -> Result<usize> {
    let taskd = layout.socket(Daemon::Taskd);
    if probe(Daemon::Taskd, &taskd).await.is_err() {
        // No taskd answers: nothing can be asked to stop (containers left
        // running are found again by the next taskd).
        return Ok(0);
    }
    let namespaces = RemoteNamespaces::connect(&layout.socket(Daemon::Metad))
        .await
        .map_err(|e| e.context("listing namespaces to stop their containers (berth-metad)"))?
        .list(&[])
        .await?;
    let tasks = RemoteTasks::connect(&taskd).await?;
    let mut stopped = 0;
    for namespace in namespaces {
        for task in tasks.list(&namespace.name, &[]).await? {
            berth_tasks::kill_all_and_wait(&tasks, &namespace.name, &task.container_id, KILL_WAIT)
                .await;
            match tasks.delete(&namespace.name, &task.container_id).await {
                Ok(_) => stopped += 1,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e.context(format!(
                        "deleting the task of {} in {}",
                        task.container_id, namespace.name
                    )))
                }
            }
        }
    }
    Ok(stopped)
}

/// How long a killed task may take to be reported stopped.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// The pid in the daemon's pid file, if that process is alive and is that
/// daemon serving that socket.
pub fn running_pid(layout: &Layout, daemon: Daemon) -> Option<u32> {
    let text = std::fs::read_to_string(layout.pid_file(daemon)).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    is_daemon_process(pid, daemon, &layout.socket(daemon)).then_some(pid)
}

fn is_daemon_process(pid: u32, daemon: Daemon, socket: &Path) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if is_zombie(&proc_dir).unwrap_or(true) {
        return false;
    }
    let Ok(exe) = std::fs::read_link(proc_dir.join("exe")) else {
        return false;
    };
    // An executable replaced on disk (an upgrade) reads "NAME (deleted)".
    let exe_name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if exe_name.trim_end_matches(" (deleted)") != daemon.binary() {
        return false;
    }
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    let socket = socket.as_os_str().as_encoded_bytes();
    cmdline.split(|b| *b == 0).any(|arg| arg == socket)
}

/// Whether the process is a zombie (exited, not yet reaped: gone for our
/// purposes); None if it does not exist.
fn is_zombie(proc_dir: &Path) -> Option<bool> {
    let stat = std::fs::read_to_string(proc_dir.join("stat")).ok()?;
    // The state follows the command name, which is in parentheses and may
    // itself contain spaces or parentheses.
    let after_name = &stat[stat.rfind(')')? + 1..];
    Some(after_name.trim_start().starts_with('Z'))
}

async fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    loop {
        if is_zombie(&proc_dir).unwrap_or(true) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn write_pid_file(path: &Path, pid: u32) -> Result<()> {
    let temp = path.with_extension("pid.tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        writeln!(file, "{pid}")?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    };
    write().map_err(|e| Error::io(format!("writing {}", path.display()), &e))
}

/// Waits until the daemon answers a request on its socket; fails early if
/// `child` (the daemon just started) exits first.
async fn wait_until_answering(
    daemon: Daemon,
    socket: &Path,
    timeout: Duration,
    mut child: Option<&mut Child>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(child) = child.as_deref_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Error::unavailable(format!(
                    "{} exited ({status})",
                    daemon.binary()
                )));
            }
        }
        let last = match probe(daemon, socket).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(Error::unavailable(format!(
                "{} did not answer on {} within {timeout:?}: {}",
                daemon.binary(),
                socket.display(),
                last.message()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long one readiness request may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One cheap request of the daemon's own API: Ok if it answered (a
/// NotFound is an answer).
pub async fn probe(daemon: Daemon, socket: &Path) -> Result<()> {
    let request = async {
        let answer = match daemon {
            Daemon::Contentd => RemoteContentStore::connect(socket)
                .await?
                .list_statuses(berth_ids::DEFAULT_NAMESPACE, &[])
                .await
                .map(drop),
            Daemon::Snapd => RemoteSnapshotter::connect(socket, "overlayfs")
                .await?
                .stat(berth_ids::DEFAULT_NAMESPACE, "berth-up-probe")
                .await
                .map(drop),
            Daemon::Metad => RemoteNamespaces::connect(socket)
                .await?
                .list(&[])
                .await
                .map(drop),
            Daemon::Taskd => RemoteTasks::connect(socket)
                .await?
                .list(berth_ids::DEFAULT_NAMESPACE, &[])
                .await
                .map(drop),
            // gRPC, not ttrpc: it answers once it accepts connections
            // (it binds its socket when it is ready to serve).
            Daemon::Crid => tokio::net::UnixStream::connect(socket)
                .await
                .map(drop)
                .map_err(|e| Error::unavailable(format!("{}: {e}", socket.display()))),
        };
        match answer {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other,
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, request)
        .await
        .unwrap_or_else(|_| {
            Err(Error::unavailable(format!(
                "no answer on {} within {PROBE_TIMEOUT:?}",
                socket.display()
            )))
        })
}

/// The last lines of a log, for an error message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_holds_everything() {
        let layout = Layout::new(Some(PathBuf::from("/srv/b")));
        assert_eq!(
            layout.socket(Daemon::Snapd),
            PathBuf::from("/srv/b/run/snapd.sock")
        );
        assert_eq!(
            layout.pid_file(Daemon::Taskd),
            PathBuf::from("/srv/b/run/taskd.pid")
        );
        assert_eq!(
            layout.store_dir(Daemon::Contentd),
            PathBuf::from("/srv/b/content")
        );
        assert_eq!(
            layout.state_dir(Daemon::Metad),
            PathBuf::from("/srv/b/run/meta")
        );
        assert_eq!(
            layout.log_file(Daemon::Metad),
            PathBuf::from("/srv/b/log/metad.log")
        );
        assert_eq!(
            layout.container_log_dir(),
            Some(PathBuf::from("/srv/b/log/containers"))
        );
    }

    #[test]
    fn without_a_root_the_daemons_defaults_apply() {
        let layout = Layout::new(None);
        assert_eq!(
            layout.socket(Daemon::Contentd),
            PathBuf::from(berth_api::sockets::CONTENTD)
        );
        assert_eq!(
            layout.socket(Daemon::Snapd),
            PathBuf::from(berth_api::sockets::SNAPD)
        );
        assert_eq!(
            layout.socket(Daemon::Metad),
            PathBuf::from(berth_api::sockets::METAD)
        );
        assert_eq!(
            layout.socket(Daemon::Taskd),
            PathBuf::from(berth_api::sockets::TASKD)
        );
        assert_eq!(
            layout.store_dir(Daemon::Taskd),
            PathBuf::from("/var/lib/berth/tasks")
        );
        assert_eq!(
            layout.state_dir(Daemon::Snapd),
            PathBuf::from("/run/berth/snapshots")
        );
        assert_eq!(layout.container_log_dir(), None);
    }

    #[test]
    fn every_daemons_peers_start_before_it() {
        for (position, daemon) in Daemon::ALL.iter().enumerate() {
            for peer in daemon.peers() {
                let peer_position = Daemon::ALL.iter().position(|d| d == peer);
                assert!(peer_position < Some(position), "{daemon:?} before {peer:?}");
            }
        }
    }

    #[test]
    fn a_pid_file_naming_another_process_is_not_trusted() {
        let dir = std::env::temp_dir().join(format!("berth-local-{}", std::process::id()));
        let layout = Layout::new(Some(dir.clone()));
        std::fs::create_dir_all(layout.run_dir()).unwrap();
        // This test process is alive but is no berth daemon.
        write_pid_file(&layout.pid_file(Daemon::Metad), std::process::id()).unwrap();
        assert_eq!(running_pid(&layout, Daemon::Metad), None);
        // Nor is a pid that does not exist, or garbage.
        std::fs::write(layout.pid_file(Daemon::Metad), "4194304999\n").unwrap();
        assert_eq!(running_pid(&layout, Daemon::Metad), None);
        std::fs::write(layout.pid_file(Daemon::Metad), "metad\n").unwrap();
        assert_eq!(running_pid(&layout, Daemon::Metad), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn zombies_count_as_gone() {
        let mut child = Command::new("true").spawn().unwrap();
        let proc_dir = PathBuf::from(format!("/proc/{}", child.id()));
        // Unreaped, it is a zombie once it has exited.
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_zombie(&proc_dir) != Some(true) {
            assert!(Instant::now() < deadline, "true never exited");
            std::thread::sleep(Duration::from_millis(5));
        }
        child.wait().unwrap();
        assert_eq!(is_zombie(&proc_dir), None);
        assert_eq!(is_zombie(Path::new("/proc/self")), Some(false));
    }
}
