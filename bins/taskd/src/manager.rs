//! The tasks of this host: each a bundle and a shim, created from a
//! container record, supervised (a shim that dies is cleaned up after and
//! its task reported stopped), and found again from the bundles when taskd
//! restarts. Implements the [`Tasks`] contract.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use berth_errdefs::{Error, ErrorKind, Result};
use berth_filters::{Adaptor, Filter};
use berth_tasks::{
    CreateTask, Deleted, ExecProcess, Exit, KillProcess, Metric, Process, ProcessPid, Status,
    Stdio, Tasks, UpdateTask,
};
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any as PbAny;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::types::task::Status as ShimStatus;
use tokio::sync::watch;

use crate::bundle::{Bundle, TaskRecord};
use crate::events::{task_delete, Relay};
use crate::peers::Peers;
use crate::shim::{self, Invocation, ShimClient};

/// containerd's health-check budget for a shim found after a restart.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest spec taskd writes into a bundle.
const MAX_SPEC: usize = 16 * 1024 * 1024;
/// The exit status containerd reports for a task whose shim died.
const DEAD_SHIM_STATUS: u32 = 128 + 9;
/// How long a recovered shim may take to finish the Create the last taskd
/// sent before its task counts as never created.
const CREATE_GRACE: Duration = Duration::from_secs(5);
/// How long the task of a container that is gone gets to die of SIGKILL
/// before it is deleted.
const ORPHAN_EXIT_WAIT: Duration = Duration::from_secs(10);
const SIGKILL: u32 = 9;

/// How taskd runs shims.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Where bundles live: `<bundles>/<namespace>/<id>`.
    pub bundles: PathBuf,
    /// runc's `--root` for the runc shims taskd gives options to; outside
    /// `bundles`, where it would look like a namespace.
    pub runtime_root: PathBuf,
    /// taskd's socket: the shims' `-address` and `TTRPC_ADDRESS`.
    pub address: PathBuf,
    /// taskd's executable (`-publish-binary`).
    pub publish_binary: PathBuf,
    /// Where shim binaries are looked for (taskd's PATH).
    pub search_path: Option<OsString>,
    /// Also looked in: taskd's own directory.
    pub beside: Option<PathBuf>,
    pub debug: bool,
}

/// One live task.
struct Task {
    bundle: Bundle,
    invocation: Invocation,
    shim: ShimClient,
    /// The init pid, once created.
    pid: u32,
    /// Set when the shim died and the task was cleaned up after: Waits
    /// end with this exit.
    dead: watch::Sender<Option<Exit>>,
    /// Copies the shim's log; ends with the task (taskd holds the fifo
    /// read-write, so it would never see the end by itself).
    _log: Option<LogFollower>,
    /// Held by a Delete while it runs; true once the task is deleted. Two
    /// Deletes at once: the second waits, then finds no task (NotFound, as
    /// containerd answers), instead of a second runtime delete failing.
    deletion: tokio::sync::Mutex<bool>,
}

/// The copy of a shim's log fifo into taskd's log; stopped when dropped.
struct LogFollower(tokio::task::JoinHandle<()>);

impl Drop for LogFollower {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One task as [`TaskManager::samples`] saw it.
#[derive(Debug, Clone)]
pub struct TaskSample {
    pub namespace: String,
    pub id: String,
    pub status: Status,
    /// `io.containerd.cgroups.v1.Metrics` or `.v2.Metrics`, when the shim has them.
    pub stats: Option<berth_metadata::Any>,
}

enum Entry {
    /// Being created: the id is taken, the task not yet usable.
    Creating,
    Ready(Arc<Task>),
}

pub struct TaskManager {
    config: ManagerConfig,
    peers: Arc<dyn Peers>,
    relay: Relay,
    tasks: Mutex<HashMap<(String, String), Entry>>,
}

impl std::fmt::Debug for TaskManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskManager")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn key(namespace: &str, id: &str) -> (String, String) {
    (namespace.to_string(), id.to_string())
}

fn poisoned() -> Error {
    Error::internal("the task table is poisoned")
}

fn status_from_shim(status: ShimStatus) -> Status {
    match status {
        ShimStatus::CREATED => Status::Created,
        ShimStatus::RUNNING => Status::Running,
        ShimStatus::STOPPED => Status::Stopped,
        ShimStatus::PAUSED => Status::Paused,
        ShimStatus::PAUSING => Status::Pausing,
        ShimStatus::UNKNOWN => Status::Unknown,
    }
}

fn process_from_state(container_id: &str, exec_id: &str, state: &api::StateResponse) -> Process {
    let status = state
        .status
        .enum_value()
        .map(status_from_shim)
        .unwrap_or_default();
    Process {
        container_id: container_id.to_string(),
        exec_id: exec_id.to_string(),
        pid: state.pid,
        status,
        stdio: Stdio {
            stdin: state.stdin.clone(),
            stdout: state.stdout.clone(),
            stderr: state.stderr.clone(),
            terminal: state.terminal,
        },
        exit: (status == Status::Stopped).then(|| Exit {
            status: state.exit_status,
            at: berth_api::time::system_time(&state.exited_at),
        }),
    }
}

/// A stdio string a shim may open: "", an absolute fifo path, or a
/// `fifo://`, `file://` or `binary://` URI.
fn validate_stdio(stdio: &Stdio) -> Result<()> {
    for (name, value) in [
        ("stdin", &stdio.stdin),
        ("stdout", &stdio.stdout),
        ("stderr", &stdio.stderr),
    ] {
        if value.is_empty() {
            continue;
        }
        let path = ["fifo://", "file://", "binary://"]
            .iter()
            .find_map(|scheme| value.strip_prefix(scheme))
            .unwrap_or(value);
        let path = path.split('?').next().unwrap_or_default();
        if !path.starts_with('/') || path.contains('\0') || path.split('/').any(|c| c == "..") {
            return Err(Error::invalid_argument(format!(
                "{name} {value:?}: an absolute path without `..`, or a fifo://, file:// or binary:// URI"
            )));
        }
    }
    if stdio.stdin.starts_with("file://") || stdio.stdin.starts_with("binary://") {
        return Err(Error::invalid_argument("stdin must be a fifo"));
    }
    Ok(())
}

fn validate_exec_id(exec_id: &str) -> Result<()> {
    berth_ids::validate_id(exec_id).map_err(|e| Error::invalid_argument(format!("exec id: {e}")))
}

fn mounts_to_shim(mounts: &[berth_mount::Mount]) -> Vec<api::Mount> {
    mounts
        .iter()
        .map(|m| api::Mount {
            type_: m.kind.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
            ..Default::default()
        })
        .collect()
}

fn pb_any(any: &berth_metadata::Any) -> PbAny {
    PbAny {
        type_url: any.type_url.clone(),
        value: any.value.clone(),
        ..Default::default()
    }
}

struct ProcessFields<'a>(&'a Process);

impl Adaptor for ProcessFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str)? {
            "container_id" | "id" => Some(self.0.container_id.clone()),
            "status" => Some(self.0.status.as_str().to_string()),
            "pid" => Some(self.0.pid.to_string()),
            _ => None,
        }
    }
}

impl TaskManager {
    pub fn new(config: ManagerConfig, peers: Arc<dyn Peers>, relay: Relay) -> Arc<TaskManager> {
        Arc::new(TaskManager {
            config,
            peers,
            relay,
            tasks: Mutex::new(HashMap::new()),
        })
    }

    fn task(&self, namespace: &str, id: &str) -> Result<Arc<Task>> {
        berth_ids::validate_id(id).map_err(|e| Error::invalid_argument(e.to_string()))?;
        let tasks = self.tasks.lock().map_err(|_| poisoned())?;
        match tasks.get(&key(namespace, id)) {
            Some(Entry::Ready(task)) => Ok(task.clone()),
            _ => Err(Error::not_found(format!("task {id}: no such task"))),
        }
    }

    fn invocation(&self, bundle: &Bundle, binary: PathBuf) -> Invocation {
        Invocation {
            binary,
            namespace: bundle.namespace.clone(),
            id: bundle.id.clone(),
            bundle: bundle.path.clone(),
            address: self.config.address.clone(),
            publish_binary: self.config.publish_binary.clone(),
            debug: self.config.debug,
        }
    }

    /// Options for a runc shim (berth's or containerd's) that was given
    /// none: runc's state under taskd's own state dir, so that two taskds
    /// (or taskd and a containerd) never share a runc root. Other shims
    /// get nothing: they may not know runc's options.
    fn default_runc_options(&self, binary: &std::path::Path) -> Option<berth_metadata::Any> {
        let name = binary.file_name()?.to_str()?;
        if !matches!(name, "containerd-shim-runc-v2" | "containerd-shim-berth-v2") {
            return None;
        }
        let options = containerd_shim_protos::shim::oci::Options {
            root: self.config.runtime_root.to_string_lossy().into_owned(),
            ..Default::default()
        };
        berth_tasks::container::runc_options(&options).ok()
    }

    /// runc's options as given (`SystemdCgroup` set, say), with taskd's
    /// runc root where they name none, for the same reason as
    /// [`Self::default_runc_options`].
    fn with_runc_root(&self, options: berth_metadata::Any) -> berth_metadata::Any {
        runc_options_with_root(options, &self.config.runtime_root)
    }

    /// Copies what a shim logs to its `log` fifo into taskd's log, until
    /// the returned follower is dropped.
    fn follow_shim_log(bundle: &Bundle) -> Option<LogFollower> {
        let fifo = bundle.open_log().ok()?;
        let id = bundle.id.clone();
        let pipe = tokio::net::unix::pipe::Receiver::from_file(fifo).ok()?;
        Some(LogFollower(tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(target: "shim", id = %id, "{line}");
            }
        })))
    }

    /// Watches the shim process; when it dies with its task still here,
    /// cleans up after it as containerd does.
    fn supervise(self: &Arc<TaskManager>, task: &Arc<Task>, shim_pid: u32) {
        let Some(pidfd) = pidfd_open(shim_pid) else {
            tracing::warn!(id = %task.bundle.id, shim_pid, "cannot watch the shim process");
            return;
        };
        let manager = Arc::downgrade(self);
        let watched = Arc::downgrade(task);
        tokio::spawn(async move {
            // SAFETY: the AsyncFd owns the pidfd, which stays open and the
            // same for its whole life.
            let registered = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    pidfd,
                    tokio::io::Interest::READABLE,
                )
            };
            let Ok(fd) = registered else {
                return;
            };
            let _ = fd.readable().await;
            let (Some(manager), Some(task)) = (manager.upgrade(), watched.upgrade()) else {
                return;
            };
            manager.shim_died(&task).await;
        });
    }

    /// The shim of a task still in the table exited: run its `delete`
    /// action, report the task stopped (exit and delete events), remove
    /// the bundle and the task.
    async fn shim_died(&self, task: &Arc<Task>) {
        let bundle = &task.bundle;
        {
            let Ok(mut tasks) = self.tasks.lock() else {
                return;
            };
            let k = key(&bundle.namespace, &bundle.id);
            match tasks.get(&k) {
                Some(Entry::Ready(current)) if Arc::ptr_eq(current, task) => {
                    tasks.remove(&k);
                }
                _ => return,
            }
        }
        tracing::warn!(namespace = %bundle.namespace, id = %bundle.id, "the shim died; cleaning up");
        let exit = self.cleanup_dead(bundle, &task.invocation, task.pid).await;
        let _ = task.dead.send(Some(exit));
    }

    /// Cleans up after a task whose shim is gone. Returns the exit the task
    /// is reported with.
    async fn cleanup_dead(&self, bundle: &Bundle, invocation: &Invocation, pid: u32) -> Exit {
        let exit = match invocation.delete().await {
            Ok((_, exit)) => exit,
            Err(e) => {
                tracing::warn!(id = %bundle.id, error = %e, "the shim's delete action failed");
                Exit {
                    status: DEAD_SHIM_STATUS,
                    at: SystemTime::now(),
                }
            }
        };
        if let Err(e) = self.relay.report_exit(bundle, pid, exit) {
            tracing::warn!(id = %bundle.id, error = %e, "reporting the exit");
        }
        if let Err(e) = self.relay.publish(
            &bundle.namespace,
            "/tasks/delete",
            &task_delete(&bundle.id, pid, exit),
        ) {
            tracing::warn!(id = %bundle.id, error = %e, "reporting the delete");
        }
        if let Err(e) = bundle.remove() {
            tracing::warn!(id = %bundle.id, error = %e, "removing the bundle");
        }
        exit
    }

    /// Every task's status and cgroup figures as its shim reports them now
    /// (for metrics). A shim that does not answer within `timeout` is left
    /// out of this round.
    pub async fn samples(&self, timeout: Duration) -> Vec<TaskSample> {
        let tasks: Vec<Arc<Task>> = match self.tasks.lock() {
            Ok(tasks) => tasks
                .values()
                .filter_map(|entry| match entry {
                    Entry::Ready(task) => Some(task.clone()),
                    Entry::Creating => None,
                })
                .collect(),
            Err(_) => return Vec::new(),
        };
        let sampled = futures::future::join_all(tasks.iter().map(|task| async move {
            let id = &task.bundle.id;
            let ask = async {
                let state = task.shim.state(id, "").await.ok()?;
                let status = process_from_state(id, "", &state).status;
                let stats = task.shim.stats(id).await.ok().flatten();
                Some(TaskSample {
                    namespace: task.bundle.namespace.clone(),
                    id: id.clone(),
                    status,
                    stats,
                })
            };
            tokio::time::timeout(timeout, ask).await.ok().flatten()
        }))
        .await;
        sampled.into_iter().flatten().collect()
    }

    /// Finds every task again from the bundles after a restart: a shim that
    /// answers is taken back (and an exit no one reported is reported), a
    /// shim that does not is cleaned up after.
    pub async fn recover(self: &Arc<TaskManager>) {
        let bundles = {
            let state = self.config.bundles.clone();
            tokio::task::spawn_blocking(move || Bundle::list(&state))
                .await
                .unwrap_or_default()
        };
        let mut recovering = Vec::new();
        for bundle in bundles {
            let manager = self.clone();
            recovering.push(tokio::spawn(
                async move { manager.recover_one(bundle).await },
            ));
        }
        for job in recovering {
            let _ = job.await;
        }
    }

    async fn recover_one(self: &Arc<TaskManager>, bundle: Bundle) {
        let record = match bundle.read_record() {
            Ok(record) => record,
            Err(_) => {
                // taskd died while creating it: nothing acknowledged it.
                tracing::info!(id = %bundle.id, "removing a half-created task");
                if let Some(binary) = bundle.shim_binary_path() {
                    let _ = self.invocation(&bundle, binary).delete().await;
                }
                // The shim `start` left serving, if it got that far (its
                // address is in the bundle, as containerd's shims write it).
                if let Ok(address) = std::fs::read_to_string(bundle.path.join("address")) {
                    if let Ok(bootstrap) = shim::Bootstrap::parse(&address) {
                        if let Ok(client) = ShimClient::connect(&bootstrap, &bundle.namespace).await
                        {
                            client.shutdown(&bundle.id).await;
                        }
                    }
                }
                if let Err(e) = bundle.remove() {
                    tracing::warn!(id = %bundle.id, error = %e, "removing the bundle");
                }
                return;
            }
        };
        let invocation = self.invocation(&bundle, record.shim_binary.clone());
        let log = Self::follow_shim_log(&bundle);
        let client = ShimClient::connect(&record.bootstrap, &bundle.namespace).await;
        let connected = match client {
            Ok(client) => match client.connect_rpc(&bundle.id, RECONNECT_TIMEOUT).await {
                Ok(hello) => Ok((client, hello)),
                Err(e) => {
                    // It serves but cannot speak of the task: it goes
                    // with it.
                    client.shutdown(&bundle.id).await;
                    Err(e)
                }
            },
            Err(e) => Err(e),
        };
        let (client, hello) = match connected {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(id = %bundle.id, error = %e, "the shim is gone; cleaning up");
                let pid = bundle.exit_reported().unwrap_or(0);
                self.cleanup_dead(&bundle, &invocation, pid).await;
                return;
            }
        };
        // A shim that never got the task's Create (taskd died just after
        // starting it) does not know the task; one still finishing the
        // Create the last taskd sent knows it shortly. Waited for, then
        // removed with the shim.
        if !Self::known_to_shim(&client, &bundle.id).await {
            tracing::info!(
                namespace = %bundle.namespace,
                id = %bundle.id,
                "removing a task its shim never created"
            );
            self.cleanup_dead(&bundle, &invocation, hello.task_pid)
                .await;
            client.shutdown(&bundle.id).await;
            return;
        }
        // A task whose container record is gone (its client gave up while
        // taskd was down and removed the record, as `berth run` undoes a
        // failed run) is removed once it is back in the table, as
        // containerd removes the tasks of deleted containers when it
        // starts. Only a record metad says is gone counts: an unreachable
        // metad keeps the task.
        let record_gone = matches!(
            self.peers.container(&bundle.namespace, &bundle.id).await,
            Err(e) if e.kind() == ErrorKind::NotFound
        );
        let (dead, _) = watch::channel(None);
        let task = Arc::new(Task {
            bundle: bundle.clone(),
            invocation,
            shim: client,
            pid: hello.task_pid,
            dead,
            _log: log,
            deletion: tokio::sync::Mutex::new(false),
        });
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.insert(
                key(&bundle.namespace, &bundle.id),
                Entry::Ready(task.clone()),
            );
        }
        self.supervise(&task, hello.shim_pid);
        // An exit that happened while taskd was down, if the shim could not
        // deliver it: reported now, once.
        if let Ok(state) = task.shim.state(&bundle.id, "").await {
            let process = process_from_state(&bundle.id, "", &state);
            if let Some(exit) = process.exit {
                if bundle.exit_reported() != Some(process.pid) {
                    let _ = self.relay.report_exit(&bundle, process.pid, exit);
                }
            }
        }
        tracing::info!(namespace = %bundle.namespace, id = %bundle.id, "task recovered");
        if record_gone {
            tracing::info!(
                namespace = %bundle.namespace,
                id = %bundle.id,
                "removing the task of a container that is gone"
            );
            let _ = task.shim.kill(&bundle.id, "", SIGKILL, true).await;
            let _ = tokio::time::timeout(ORPHAN_EXIT_WAIT, task.shim.wait(&bundle.id, "")).await;
            if let Err(e) = self.delete_task(&bundle.namespace, &bundle.id).await {
                tracing::warn!(id = %bundle.id, error = %e, "removing the task of a container that is gone");
            }
        }
    }

    /// Whether the shim knows task `id`, asking for up to
    /// [`CREATE_GRACE`] while it answers NotFound (a Create in flight).
    async fn known_to_shim(client: &ShimClient, id: &str) -> bool {
        let deadline = tokio::time::Instant::now() + CREATE_GRACE;
        loop {
            match client.state(id, "").await {
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    if tokio::time::Instant::now() >= deadline {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => return true,
            }
        }
    }

    async fn create_task(
        self: &Arc<TaskManager>,
        namespace: &str,
        request: CreateTask,
    ) -> Result<u32> {
        let bundle = Bundle::locate(&self.config.bundles, namespace, &request.container_id)?;
        validate_stdio(&request.stdio)?;
        let container = self.peers.container(namespace, &bundle.id).await?;
        let binary = shim::resolve(
            &container.runtime.name,
            self.config.search_path.as_deref(),
            self.config.beside.as_deref(),
        )?;
        let spec = container.spec.as_ref().ok_or_else(|| {
            Error::failed_precondition(format!("container {}: it has no spec", bundle.id))
        })?;
        if spec.value.len() > MAX_SPEC
            || !serde_json::from_slice::<serde_json::Value>(&spec.value)
                .is_ok_and(|v| v.is_object())
        {
            return Err(Error::invalid_argument(format!(
                "container {}: its spec is not an OCI runtime spec (a JSON object of at most 16 MiB)",
                bundle.id
            )));
        }
        let rootfs = if request.rootfs.is_empty() && !container.snapshot_key.is_empty() {
            self.peers
                .rootfs_mounts(namespace, &container.snapshotter, &container.snapshot_key)
                .await?
        } else {
            request.rootfs.clone()
        };
        let options = match request
            .options
            .clone()
            .or(container.runtime.options.clone())
        {
            Some(given) => Some(self.with_runc_root(given)),
            None => self.default_runc_options(&binary),
        };
        bundle.create(&spec.value)?;
        // From here every failure undoes what was made.
        let invocation = self.invocation(&bundle, binary.clone());
        let log = Self::follow_shim_log(&bundle);
        let shim_request = api::CreateTaskRequest {
            id: bundle.id.clone(),
            bundle: bundle.path.to_string_lossy().into_owned(),
            rootfs: mounts_to_shim(&rootfs),
            terminal: request.stdio.terminal,
            stdin: request.stdio.stdin.clone(),
            stdout: request.stdio.stdout.clone(),
            stderr: request.stdio.stderr.clone(),
            options: options.as_ref().map(pb_any).into(),
            ..Default::default()
        };
        // A shim serving a group (a pod's containers) exits once its last
        // task is deleted: one asked to exit just as `start` found it
        // serving goes away under this create. Its socket is dead then, so
        // starting again gets a new shim; once is enough.
        let mut attempts = 0;
        let (client, pid, shim_pid) = loop {
            attempts += 1;
            let went_away = |e: &Error| attempts == 1 && e.kind() == ErrorKind::Unavailable;
            let started = async {
                let bootstrap = invocation.start(options.as_ref()).await?;
                bundle.write_record(&TaskRecord {
                    runtime: container.runtime.name.clone(),
                    shim_binary: binary.clone(),
                    bootstrap: bootstrap.clone(),
                })?;
                let client = ShimClient::connect(&bootstrap, namespace).await?;
                Ok::<_, Error>(client)
            }
            .await;
            let client = match started {
                Ok(client) => client,
                Err(e) if went_away(&e) => {
                    tracing::info!(id = %bundle.id, "the shim went away ({e}); starting one again");
                    continue;
                }
                Err(e) => {
                    let _ = invocation.delete().await;
                    let _ = bundle.remove();
                    return Err(e);
                }
            };
            let created = async {
                let pid = client.create(&shim_request).await?;
                let hello = client.connect_rpc(&bundle.id, RECONNECT_TIMEOUT).await?;
                Ok::<_, Error>((pid, hello.shim_pid))
            }
            .await;
            match created {
                Ok((pid, shim_pid)) => break (client, pid, shim_pid),
                Err(e) if went_away(&e) => {
                    tracing::info!(id = %bundle.id, "the shim went away ({e}); starting one again");
                    // Whatever a shim dying mid-create left (runc's state,
                    // the rootfs mount) goes first, as after a dead shim.
                    let _ = invocation.delete().await;
                    continue;
                }
                Err(e) => {
                    let _ = client.delete(&bundle.id, "").await;
                    client.shutdown(&bundle.id).await;
                    let _ = invocation.delete().await;
                    let _ = bundle.remove();
                    return Err(e);
                }
            }
        };
        let (dead, _) = watch::channel(None);
        let task = Arc::new(Task {
            bundle: bundle.clone(),
            invocation,
            shim: client,
            pid,
            dead,
            _log: log,
            deletion: tokio::sync::Mutex::new(false),
        });
        {
            let mut tasks = self.tasks.lock().map_err(|_| poisoned())?;
            tasks.insert(key(namespace, &bundle.id), Entry::Ready(task.clone()));
        }
        self.supervise(&task, shim_pid);
        Ok(pid)
    }

    /// Creates the task of a container; the id is held while it is made.
    pub async fn create_and_hold(
        self: &Arc<TaskManager>,
        namespace: &str,
        request: CreateTask,
    ) -> Result<u32> {
        berth_ids::validate_namespace(namespace)
            .map_err(|e| Error::invalid_argument(e.to_string()))?;
        berth_ids::validate_id(&request.container_id)
            .map_err(|e| Error::invalid_argument(e.to_string()))?;
        let k = key(namespace, &request.container_id);
        {
            let mut tasks = self.tasks.lock().map_err(|_| poisoned())?;
            if tasks.contains_key(&k) {
                return Err(Error::already_exists(format!(
                    "task {}: already exists",
                    request.container_id
                )));
            }
            tasks.insert(k.clone(), Entry::Creating);
        }
        let result = self.create_task(namespace, request).await;
        if result.is_err() {
            if let Ok(mut tasks) = self.tasks.lock() {
                if matches!(tasks.get(&k), Some(Entry::Creating)) {
                    tasks.remove(&k);
                }
            }
        }
        result
    }

    async fn delete_task(&self, namespace: &str, id: &str) -> Result<Deleted> {
        let task = self.task(namespace, id)?;
        let mut deleted = task.deletion.lock().await;
        if *deleted {
            return Err(Error::not_found(format!("task {id}: no such task")));
        }
        let result = self.delete_task_now(namespace, id, &task).await;
        *deleted = result.is_ok();
        result
    }

    /// Takes `task` out of the table, unless another task of that id has
    /// taken its place.
    fn unlist(&self, namespace: &str, task: &Arc<Task>) -> Result<()> {
        let mut tasks = self.tasks.lock().map_err(|_| poisoned())?;
        let k = key(namespace, &task.bundle.id);
        if matches!(tasks.get(&k), Some(Entry::Ready(current)) if Arc::ptr_eq(current, task)) {
            tasks.remove(&k);
        }
        Ok(())
    }

    /// A task its shim no longer knows — its Delete finished in the shim
    /// while taskd was down, so the restarted taskd took it back just
    /// before — goes from the table, its shim is asked to exit and its
    /// bundle removed: what the interrupted Delete had left to do.
    async fn forget_deleted(&self, namespace: &str, task: &Arc<Task>) {
        let id = &task.bundle.id;
        tracing::info!(namespace, id = %id, "finishing the deletion of a task its shim no longer has");
        let _ = self.unlist(namespace, task);
        task.shim.shutdown(id).await;
        if let Err(e) = task.bundle.remove() {
            tracing::warn!(id = %id, error = %e, "removing the bundle");
        }
    }

    async fn delete_task_now(
        &self,
        namespace: &str,
        id: &str,
        task: &Arc<Task>,
    ) -> Result<Deleted> {
        let state = match task.shim.state(id, "").await {
            Ok(state) => state,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.forget_deleted(namespace, task).await;
                return Err(Error::not_found(format!("task {id}: no such task")));
            }
            Err(e) => return Err(e),
        };
        let process = process_from_state(id, "", &state);
        // As containerd: a task never started (its init still waiting in
        // runc) may be deleted too; the shim's delete removes it with
        // runc.
        let deletable = matches!(
            process.status,
            Status::Stopped | Status::Created | Status::Unknown
        );
        if !deletable {
            return Err(Error::failed_precondition(format!(
                "task {id}: must be stopped before it is deleted (it is {})",
                process.status
            )));
        }
        let reply = match task.shim.delete(id, "").await {
            Ok(reply) => reply,
            Err(e) if e.kind() == ErrorKind::NotFound => api::DeleteResponse::default(),
            Err(e) => return Err(e),
        };
        self.unlist(namespace, task)?;
        task.shim.shutdown(id).await;
        task.bundle.remove()?;
        Ok(Deleted {
            id: id.to_string(),
            pid: reply.pid,
            exit: Exit {
                status: reply.exit_status,
                at: berth_api::time::system_time(&reply.exited_at),
            },
        })
    }

    async fn wait_process(&self, namespace: &str, id: &str, exec_id: &str) -> Result<Exit> {
        let task = self.task(namespace, id)?;
        let dead = task.dead.subscribe();
        let dead_after_error = task.dead.subscribe();
        tokio::select! {
            result = task.shim.wait(id, exec_id) => match result {
                Err(e) if e.kind() == ErrorKind::Unavailable && exec_id.is_empty() => {
                    // The shim went away mid-wait: the exit is the one the
                    // cleanup reports.
                    dead_exit(dead_after_error).await.ok_or(e)
                }
                other => other,
            },
            exit = dead_exit(dead) => match exit {
                Some(exit) if exec_id.is_empty() => Ok(exit),
                _ => Err(Error::not_found(format!("task {id}: the shim died"))),
            },
        }
    }
}

/// The exit a dead shim's cleanup reported, once it has (None if the task
/// went away without one).
async fn dead_exit(mut dead: watch::Receiver<Option<Exit>>) -> Option<Exit> {
    let found = dead
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|exit| *exit);
    found
}

/// A pidfd for `pid`, readable once the process exits.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
    // no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall returned a new fd that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    debug_assert!(owned.as_raw_fd() >= 0);
    Some(owned)
}

/// The [`Tasks`] contract over the manager (the ttrpc service and tests
/// both hold one).
#[derive(Debug, Clone)]
pub struct LocalTasks(pub Arc<TaskManager>);

#[async_trait]
impl Tasks for LocalTasks {
    async fn create(&self, namespace: &str, request: CreateTask) -> Result<u32> {
        self.0.create_and_hold(namespace, request).await
    }

    async fn start(&self, namespace: &str, container_id: &str, exec_id: &str) -> Result<u32> {
        let task = self.0.task(namespace, container_id)?;
        task.shim.start(container_id, exec_id).await
    }

    async fn delete(&self, namespace: &str, container_id: &str) -> Result<Deleted> {
        self.0.delete_task(namespace, container_id).await
    }

    async fn delete_process(
        &self,
        namespace: &str,
        container_id: &str,
        exec_id: &str,
    ) -> Result<Deleted> {
        validate_exec_id(exec_id)?;
        let task = self.0.task(namespace, container_id)?;
        let state = task.shim.state(container_id, exec_id).await?;
        let process = process_from_state(container_id, exec_id, &state);
        if !matches!(process.status, Status::Stopped | Status::Created) {
            return Err(Error::failed_precondition(format!(
                "process {exec_id}: must be stopped before it is deleted (it is {})",
                process.status
            )));
        }
        let reply = task.shim.delete(container_id, exec_id).await?;
        Ok(Deleted {
            id: exec_id.to_string(),
            pid: reply.pid,
            exit: Exit {
                status: reply.exit_status,
                at: berth_api::time::system_time(&reply.exited_at),
            },
        })
    }

    async fn get(&self, namespace: &str, container_id: &str, exec_id: &str) -> Result<Process> {
        if !exec_id.is_empty() {
            validate_exec_id(exec_id)?;
        }
        let task = self.0.task(namespace, container_id)?;
        let state = match task.shim.state(container_id, exec_id).await {
            Ok(state) => state,
            Err(e) if e.kind() == ErrorKind::NotFound && exec_id.is_empty() => {
                self.0.forget_deleted(namespace, &task).await;
                return Err(Error::not_found(format!(
                    "task {container_id}: no such task"
                )));
            }
            Err(e) => return Err(e),
        };
        Ok(process_from_state(container_id, exec_id, &state))
    }

    async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Process>> {
        let filter =
            Filter::parse_any(filters).map_err(|e| Error::invalid_argument(e.to_string()))?;
        let tasks: Vec<Arc<Task>> = {
            let tasks = self.0.tasks.lock().map_err(|_| poisoned())?;
            tasks
                .iter()
                .filter(|((ns, _), _)| ns == namespace)
                .filter_map(|(_, entry)| match entry {
                    Entry::Ready(task) => Some(task.clone()),
                    Entry::Creating => None,
                })
                .collect()
        };
        let states = futures::future::join_all(tasks.iter().map(|task| async move {
            let id = &task.bundle.id;
            let state = task.shim.state(id, "").await;
            if matches!(&state, Err(e) if e.kind() == ErrorKind::NotFound) {
                self.0.forget_deleted(namespace, task).await;
            }
            state.map(|state| process_from_state(id, "", &state))
        }))
        .await;
        let mut processes: Vec<Process> = states
            .into_iter()
            .filter_map(Result::ok)
            .filter(|p| filter.matches(&ProcessFields(p)))
            .collect();
        processes.sort_by(|a, b| a.container_id.cmp(&b.container_id));
        Ok(processes)
    }

    async fn kill(&self, namespace: &str, request: KillProcess) -> Result<()> {
        if !request.exec_id.is_empty() {
            validate_exec_id(&request.exec_id)?;
        }
        if request.signal == 0 || request.signal > 64 {
            return Err(Error::invalid_argument(format!(
                "signal {}: not a signal",
                request.signal
            )));
        }
        let task = self.0.task(namespace, &request.container_id)?;
        task.shim
            .kill(
                &request.container_id,
                &request.exec_id,
                request.signal,
                request.all,
            )
            .await
    }

    async fn exec(&self, namespace: &str, request: ExecProcess) -> Result<()> {
        validate_exec_id(&request.exec_id)?;
        validate_stdio(&request.stdio)?;
        if serde_json::from_slice::<serde_json::Value>(&request.spec)
            .map(|v| !v.is_object())
            .unwrap_or(true)
        {
            return Err(Error::invalid_argument(
                "exec: the process spec is not a JSON OCI process",
            ));
        }
        let task = self.0.task(namespace, &request.container_id)?;
        let shim_request = api::ExecProcessRequest {
            id: request.container_id.clone(),
            exec_id: request.exec_id.clone(),
            terminal: request.stdio.terminal,
            stdin: request.stdio.stdin.clone(),
            stdout: request.stdio.stdout.clone(),
            stderr: request.stdio.stderr.clone(),
            spec: MessageField::some(PbAny {
                type_url: berth_tasks::wire::PROCESS_SPEC_TYPE.to_string(),
                value: request.spec.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        task.shim.exec(&shim_request).await
    }

    async fn resize_pty(
        &self,
        namespace: &str,
        container_id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<()> {
        let task = self.0.task(namespace, container_id)?;
        task.shim
            .resize_pty(container_id, exec_id, width, height)
            .await
    }

    async fn close_stdin(&self, namespace: &str, container_id: &str, exec_id: &str) -> Result<()> {
        let task = self.0.task(namespace, container_id)?;
        task.shim.close_stdin(container_id, exec_id).await
    }

    async fn pause(&self, namespace: &str, container_id: &str) -> Result<()> {
        let task = self.0.task(namespace, container_id)?;
        task.shim.pause(container_id).await
    }

    async fn resume(&self, namespace: &str, container_id: &str) -> Result<()> {
        let task = self.0.task(namespace, container_id)?;
        task.shim.resume(container_id).await
    }

    async fn pids(&self, namespace: &str, container_id: &str) -> Result<Vec<ProcessPid>> {
        let task = self.0.task(namespace, container_id)?;
        let reply = task.shim.pids(container_id).await?;
        Ok(reply
            .processes
            .iter()
            .map(|p| ProcessPid {
                pid: p.pid,
                exec_id: p
                    .info
                    .as_ref()
                    .and_then(|info| {
                        containerd_shim_protos::protobuf::Message::parse_from_bytes(&info.value)
                            .ok()
                            .map(|d: containerd_shim_protos::shim::oci::ProcessDetails| d.exec_id)
                    })
                    .unwrap_or_default(),
            })
            .collect())
    }

    async fn update(&self, namespace: &str, request: UpdateTask) -> Result<()> {
        let task = self.0.task(namespace, &request.container_id)?;
        if let Some(json) = &request.resources {
            if serde_json::from_slice::<serde_json::Value>(json)
                .map(|v| !v.is_object())
                .unwrap_or(true)
            {
                return Err(Error::invalid_argument(
                    "update: resources are not JSON OCI LinuxResources",
                ));
            }
        }
        let shim_request = api::UpdateTaskRequest {
            id: request.container_id.clone(),
            resources: request
                .resources
                .as_ref()
                .map(|json| PbAny {
                    type_url: berth_tasks::wire::RESOURCES_TYPE.to_string(),
                    value: json.clone(),
                    ..Default::default()
                })
                .into(),
            annotations: request.annotations.clone().into_iter().collect(),
            ..Default::default()
        };
        task.shim.update(&shim_request).await
    }

    async fn metrics(&self, namespace: &str, filters: &[String]) -> Result<Vec<Metric>> {
        let processes = self.list(namespace, filters).await?;
        let mut metrics = Vec::new();
        for process in processes {
            let Ok(task) = self.0.task(namespace, &process.container_id) else {
                continue;
            };
            if let Some(data) = task.shim.stats(&process.container_id).await? {
                metrics.push(Metric {
                    container_id: process.container_id.clone(),
                    at: SystemTime::now(),
                    data,
                });
            }
        }
        Ok(metrics)
    }

    async fn wait(&self, namespace: &str, container_id: &str, exec_id: &str) -> Result<Exit> {
        if !exec_id.is_empty() {
            validate_exec_id(exec_id)?;
        }
        self.0.wait_process(namespace, container_id, exec_id).await
    }
}

/// `options` with runc's root set to `root` if they are runc's and name
/// none; anything else unchanged (a shim that cannot read its options
/// says so itself).
fn runc_options_with_root(
    options: berth_metadata::Any,
    root: &std::path::Path,
) -> berth_metadata::Any {
    use containerd_shim_protos::protobuf::Message;
    if options.type_url != berth_tasks::container::RUNC_OPTIONS_TYPE {
        return options;
    }
    let Ok(mut runc) = containerd_shim_protos::shim::oci::Options::parse_from_bytes(&options.value)
    else {
        return options;
    };
    if !runc.root.is_empty() {
        return options;
    }
    runc.root = root.to_string_lossy().into_owned();
    berth_tasks::container::runc_options(&runc).unwrap_or(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runc(options: &berth_metadata::Any) -> containerd_shim_protos::shim::oci::Options {
        use containerd_shim_protos::protobuf::Message;
        containerd_shim_protos::shim::oci::Options::parse_from_bytes(&options.value).unwrap()
    }

    #[test]
    fn runc_options_without_a_root_get_taskds_and_keep_the_rest() {
        let given =
            berth_tasks::container::runc_options(&containerd_shim_protos::shim::oci::Options {
                systemd_cgroup: true,
                ..Default::default()
            })
            .unwrap();
        let root = std::path::Path::new("/run/berth/tasks/runc");
        let filled = runc(&runc_options_with_root(given, root));
        assert_eq!(filled.root, "/run/berth/tasks/runc");
        assert!(filled.systemd_cgroup);

        let own_root =
            berth_tasks::container::runc_options(&containerd_shim_protos::shim::oci::Options {
                root: "/elsewhere".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            runc(&runc_options_with_root(own_root, root)).root,
            "/elsewhere"
        );

        let other = berth_metadata::Any {
            type_url: "example.com/Options".into(),
            value: vec![1, 2, 3],
        };
        assert_eq!(runc_options_with_root(other.clone(), root), other);
    }

    #[test]
    fn stdio_strings_are_paths_or_known_uris() {
        let ok = |stdin: &str, stdout: &str| {
            validate_stdio(&Stdio {
                stdin: stdin.into(),
                stdout: stdout.into(),
                stderr: String::new(),
                terminal: false,
            })
        };
        assert!(ok("", "").is_ok());
        assert!(ok("/run/berth/fifo/x/c-stdin", "/run/berth/fifo/x/c-stdout").is_ok());
        assert!(ok("", "file:///var/log/c.log").is_ok());
        assert!(ok("", "binary:///usr/bin/logger?a=b").is_ok());
        assert!(ok("relative", "").is_err());
        assert!(ok("", "/a/../etc/shadow").is_err());
        assert!(ok("file:///etc/passwd", "").is_err());
        assert!(ok("", "http://x/y").is_err());
    }

    #[test]
    fn list_filters_see_id_status_and_pid() {
        let process = Process {
            container_id: "web".into(),
            exec_id: String::new(),
            pid: 42,
            status: Status::Running,
            stdio: Stdio::default(),
            exit: None,
        };
        let matches = |f: &str| Filter::parse(f).unwrap().matches(&ProcessFields(&process));
        assert!(matches("status==running"));
        assert!(!matches("status==stopped"));
        assert!(matches("container_id==web"));
        assert!(matches("pid==42"));
        assert!(!matches("pid==43"));
    }

    #[test]
    fn shim_states_map_to_processes_with_their_exit() {
        let mut state = api::StateResponse {
            pid: 7,
            exit_status: 3,
            exited_at: berth_api::time::timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(5)),
            ..Default::default()
        };
        state.status = ShimStatus::STOPPED.into();
        let process = process_from_state("c", "", &state);
        assert_eq!(process.status, Status::Stopped);
        assert_eq!(process.exit.unwrap().status, 3);
        state.status = ShimStatus::RUNNING.into();
        let process = process_from_state("c", "", &state);
        assert_eq!(process.status, Status::Running);
        assert!(process.exit.is_none());
    }
}
