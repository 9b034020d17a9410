//! The tasks contract: what a container's running processes look like and
//! the [`Tasks`] trait. berth-taskd implements it over v2 shims; berth-client's
//! `RemoteTasks` implements it across taskd's socket, so callers (`berth
//! run`, a CRI server) do not care which side they are on.

use std::collections::BTreeMap;
use std::time::SystemTime;

use async_trait::async_trait;
use berth_errdefs::Result;

pub use berth_metadata::Any;
pub use berth_mount::Mount;

pub mod container;
pub mod usage;
pub mod wire;

/// A process's state, as containerd and its shims name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Status {
    #[default]
    Unknown,
    Created,
    Running,
    Stopped,
    Paused,
    Pausing,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Unknown => "unknown",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Paused => "paused",
            Status::Pausing => "pausing",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a process's standard streams go: each "" (not connected), a fifo
/// path, or a `file://` / `binary://` URI the shim understands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// How and when a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or 128 + the signal that ended it.
    pub status: u32,
    pub at: SystemTime,
}

/// One process of a task: its init process (`exec_id` "") or an exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub container_id: String,
    pub exec_id: String,
    pub pid: u32,
    pub status: Status,
    pub stdio: Stdio,
    /// Set once the process has exited.
    pub exit: Option<Exit>,
}

/// What [`Tasks::create`] needs beyond the container record in metad.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateTask {
    pub container_id: String,
    /// Empty: the mounts of the container's snapshot, asked of snapd.
    pub rootfs: Vec<Mount>,
    pub stdio: Stdio,
    /// The shim's task options; default: the container's runtime options.
    pub options: Option<Any>,
}

/// A process to add to a running task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecProcess {
    pub container_id: String,
    pub exec_id: String,
    pub stdio: Stdio,
    /// The OCI runtime-spec `Process`, as JSON.
    pub spec: Vec<u8>,
}

/// A signal for one process, or with `all` for every process of the task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KillProcess {
    pub container_id: String,
    pub exec_id: String,
    pub signal: u32,
    pub all: bool,
}

/// What remains of a deleted process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// The container id for the init process, else the exec id.
    pub id: String,
    pub pid: u32,
    pub exit: Exit,
}

/// A process in a task's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPid {
    pub pid: u32,
    /// The exec it belongs to, if any.
    pub exec_id: String,
}

/// A task's resource usage as its shim reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metric {
    pub container_id: String,
    pub at: SystemTime,
    /// `io.containerd.cgroups.v1.Metrics` or `io.containerd.cgroups.v2.Metrics`.
    pub data: Any,
}

/// Changes to a running task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateTask {
    pub container_id: String,
    /// OCI `LinuxResources`, as JSON.
    pub resources: Option<Vec<u8>>,
    pub annotations: BTreeMap<String, String>,
}

/// The tasks of one host, per namespace.
#[async_trait]
pub trait Tasks: Send + Sync {
    /// Creates the task of a container recorded in metad; returns the pid
    /// of its (created, not started) init process.
    async fn create(&self, namespace: &str, request: CreateTask) -> Result<u32>;
    /// Starts the init process (`exec_id` "") or an exec; returns its pid.
    async fn start(&self, namespace: &str, container_id: &str, exec_id: &str) -> Result<u32>;
    /// Deletes a stopped task with its shim and bundle.
    async fn delete(&self, namespace: &str, container_id: &str) -> Result<Deleted>;
    /// Deletes a stopped exec.
    async fn delete_process(
        &self,
        namespace: &str,
        container_id: &str,
        exec_id: &str,
    ) -> Result<Deleted>;
    async fn get(&self, namespace: &str, container_id: &str, exec_id: &str) -> Result<Process>;
    /// The init process of every task matching any of `filters`
    /// (containerd's syntax over `container_id`, `status`, `pid`).
    async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Process>>;
    async fn kill(&self, namespace: &str, request: KillProcess) -> Result<()>;
    async fn exec(&self, namespace: &str, request: ExecProcess) -> Result<()>;
    async fn resize_pty(
        &self,
        namespace: &str,
        container_id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<()>;
    /// Closes the process's stdin once its client side is done.
    async fn close_stdin(&self, namespace: &str, container_id: &str, exec_id: &str) -> Result<()>;
    async fn pause(&self, namespace: &str, container_id: &str) -> Result<()>;
    async fn resume(&self, namespace: &str, container_id: &str) -> Result<()>;
    async fn pids(&self, namespace: &str, container_id: &str) -> Result<Vec<ProcessPid>>;
    async fn update(&self, namespace: &str, request: UpdateTask) -> Result<()>;
    /// Metrics of every task matching any of `filters` (over `container_id`).
    async fn metrics(&self, namespace: &str, filters: &[String]) -> Result<Vec<Metric>>;
    /// Returns once the process has exited (at once if it has).
    async fn wait(&self, namespace: &str, container_id: &str, exec_id: &str) -> Result<Exit>;
}

/// SIGKILLs every process of a task and waits, at most `limit`, for its
/// init process to be reported stopped: what `rm --force` and `run --rm`
/// do to a task still running. Errors (a task already gone or stopped)
/// are what the delete that follows reports.
pub async fn kill_all_and_wait(
    tasks: &dyn Tasks,
    namespace: &str,
    container_id: &str,
    limit: std::time::Duration,
) {
    let kill = KillProcess {
        container_id: container_id.to_string(),
        exec_id: String::new(),
        signal: 9,
        all: true,
    };
    if tasks.kill(namespace, kill).await.is_ok() {
        let _ = tokio::time::timeout(limit, tasks.wait(namespace, container_id, "")).await;
    }
}

/// Stops a container's task as `nerdctl stop` and `docker stop` do:
/// `signal` to its init process (a paused task is resumed first, or the
/// signal would wait for the thaw), at most `grace` for it to exit, then
/// SIGKILL to every process of the task; then the task is deleted, so the
/// container can be started again. `task` is the container's task as the
/// caller read it (`Tasks::get`). Returns the init's exit.
pub async fn stop_task(
    tasks: &dyn Tasks,
    namespace: &str,
    task: &Process,
    signal: u32,
    grace: std::time::Duration,
) -> Result<Exit> {
    let container_id = task.container_id.as_str();
    if matches!(
        task.status,
        Status::Running | Status::Paused | Status::Pausing
    ) {
        if task.status != Status::Running {
            tasks.resume(namespace, container_id).await?;
        }
        let term = KillProcess {
            container_id: container_id.to_string(),
            exec_id: String::new(),
            signal,
            all: false,
        };
        // A task that exited meanwhile answers NotFound: it is stopped.
        match tasks.kill(namespace, term).await {
            Ok(()) => {}
            Err(e) if e.kind() == berth_errdefs::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let waited = tokio::time::timeout(grace, tasks.wait(namespace, container_id, "")).await;
        if waited.is_err() {
            kill_all_and_wait(tasks, namespace, container_id, KILL_WAIT_LIMIT).await;
        }
    }
    let deleted = tasks.delete(namespace, container_id).await?;
    Ok(deleted.exit)
}

/// How long a SIGKILLed task may take to be reported stopped.
const KILL_WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A signal by name (`SIGTERM`, `TERM`, `term`) or number (1–64), as
/// `kill`, an image's `StopSignal` and the CLI give it.
pub fn signal_number(value: &str) -> Result<u32> {
    if let Ok(n) = value.parse::<u32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(berth_errdefs::Error::invalid_argument(format!(
            "signal {n}: out of range"
        )));
    }
    let name = value.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let signal: nix::sys::signal::Signal = format!("SIG{name}")
        .parse()
        .map_err(|_| berth_errdefs::Error::invalid_argument(format!("{value:?}: not a signal")))?;
    Ok(signal as u32)
}

#[cfg(test)]
mod signal_tests {
    use super::signal_number;

    #[test]
    fn signals_by_name_or_number() {
        for (text, n) in [
            ("SIGTERM", 15),
            ("term", 15),
            ("KILL", 9),
            ("SIGQUIT", 3),
            ("10", 10),
        ] {
            assert_eq!(signal_number(text).ok(), Some(n), "{text}");
        }
        for bad in ["0", "65", "SIGNOPE", ""] {
            assert!(signal_number(bad).is_err(), "{bad}");
        }
    }
}
