//! The `containerd.task.v2.Task` service for one container.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::{
    CheckpointOptions, Options as RuncOptions, ProcessDetails,
};
use containerd_shim_protos::shim::shim as api;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::types::task::ProcessInfo;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use ttrpc::r#async::TtrpcContext;

use crate::cgroups::Cgroup;
use crate::error::{Result, ShimError};
use crate::events::{self, timestamp, Publisher};
use crate::layout;
use crate::process::{ExitInfo, Process, ProcessStatus};
use crate::reaper::{Exit, Reaper};
use crate::runc::{self, CreateOptions, Runc, RuntimeConfig};
use crate::stdio::{self, ConsoleSocket, StdioPaths};
use berth_mount::{HostMounter, Mount, Mounter};

/// The runtime settings `delete` (cleanup mode) reads back from the bundle.
pub const RUNTIME_FILE: &str = "berth-runtime.json";
const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_secs(2);
const UNMATCHED_EXITS_KEPT: usize = 256;
const RUNC_OPTIONS_URL: &str = "containerd.runc.v1.Options";

#[derive(Debug)]
struct Container {
    id: String,
    bundle: PathBuf,
    runc: Runc,
    init: Process,
    execs: HashMap<String, Process>,
    rootfs_mounted: bool,
    shares_host_pid_ns: bool,
    cgroup: Option<Cgroup>,
    oom_watch: Option<AbortHandle>,
}

impl Container {
    fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| ShimError::NotFound(format!("exec {exec_id} not found")))
    }
}

#[derive(Debug, Default)]
struct State {
    container: Option<Container>,
    /// Exits of pids not (yet) known: an exec that exited before its pid
    /// file was read, or orphans re-parented to us.
    unmatched: VecDeque<Exit>,
    /// Shutdown was asked for while the container still existed (a Delete
    /// still running, say): exit once it is gone.
    shutdown_requested: bool,
}

#[derive(Debug)]
pub struct Service {
    namespace: String,
    reaper: Arc<Reaper>,
    publisher: Publisher,
    state: Mutex<State>,
    shutdown: Arc<Notify>,
    mounter: HostMounter,
}

impl Service {
    pub fn new(
        namespace: String,
        reaper: Arc<Reaper>,
        publisher: Publisher,
        shutdown: Arc<Notify>,
    ) -> Arc<Service> {
        Arc::new(Service {
            namespace,
            reaper,
            publisher,
            state: Mutex::new(State::default()),
            shutdown,
            mounter: HostMounter,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn container<'a>(state: &'a mut State, id: &str) -> Result<&'a mut Container> {
        match state.container.as_mut() {
            Some(c) if c.id == id => Ok(c),
            _ => Err(ShimError::NotFound(format!("container {id} not found"))),
        }
    }

    /// Routes one reaped exit to its process. Called for every exit the
    /// reaper does not hand to a runtime command.
    pub fn handle_exit(self: &Arc<Self>, exit: Exit) {
        let mut state = self.lock();
        let Some(container) = state.container.as_mut() else {
            // Create has not recorded the container yet (its init can die
            // right after `runc create`): keep the exit for it to find.
            Self::keep_unmatched(&mut state, exit);
            return;
        };
        let exec_id = if container.init.claims(exit.pid) {
            Some(String::new())
        } else {
            container
                .execs
                .iter()
                .find(|(_, p)| p.claims(exit.pid))
                .map(|(k, _)| k.clone())
        };
        let Some(exec_id) = exec_id else {
            Self::keep_unmatched(&mut state, exit);
            return;
        };
        if let Ok(process) = container.process_mut(&exec_id) {
            if process.starting {
                process.held_exit = Some(exit);
                return;
            }
        }
        self.begin_exit(container, &exec_id, exit);
    }

    /// Marks a process as exiting and records its exit once its output has
    /// drained, so a client that stops reading at Wait loses nothing.
    fn begin_exit(self: &Arc<Self>, container: &mut Container, exec_id: &str, exit: Exit) {
        let Ok(process) = container.process_mut(exec_id) else {
            return;
        };
        process.exiting = true;
        let output_done = process.io.take_output_done();
        let kill_all = exec_id.is_empty() && container.shares_host_pid_ns;
        let runc = container.runc.clone();
        let id = container.id.clone();
        let this = self.clone();
        let exec_id = exec_id.to_string();
        tokio::spawn(async move {
            if kill_all {
                let _ = runc.kill(&id, libc::SIGKILL as u32, true).await;
            }
            if let Some(done) = output_done {
                let _ = tokio::time::timeout(OUTPUT_DRAIN_LIMIT, done).await;
            }
            this.finish_exit(&id, &exec_id, exit);
        });
    }

    fn finish_exit(&self, id: &str, exec_id: &str, exit: Exit) {
        let mut state = self.lock();
        let Ok(container) = Self::container(&mut state, id) else {
            return;
        };
        let Ok(process) = container.process_mut(exec_id) else {
            return;
        };
        process.record_exit(ExitInfo {
            status: exit.status,
            at: exit.at,
        });
        process.exiting = false;
        process.io.close_stdin();
        let event_id = if exec_id.is_empty() { id } else { exec_id };
        self.publisher.publish(
            events::TASK_EXIT,
            &events::task_exit(id, event_id, exit.pid as u32, exit.status, exit.at),
        );
    }

    /// Keeps an exit no process has claimed yet (bounded).
    fn keep_unmatched(state: &mut State, exit: Exit) {
        if state.unmatched.len() >= UNMATCHED_EXITS_KEPT {
            state.unmatched.pop_front();
        }
        state.unmatched.push_back(exit);
    }

    fn take_unmatched(state: &mut State, pid: u32) -> Option<Exit> {
        let index = state.unmatched.iter().position(|e| e.pid == pid as i32)?;
        state.unmatched.remove(index)
    }

    async fn create_task(self: &Arc<Self>, req: api::CreateTaskRequest) -> Result<u32> {
        berth_ids::validate_id(&req.id)?;
        if self.lock().container.is_some() {
            return Err(ShimError::AlreadyExists(format!(
                "this shim already runs a container, not creating {}",
                req.id
            )));
        }
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented(
                "restoring from a checkpoint is not supported".into(),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.is_absolute() {
            return Err(ShimError::InvalidArgument(format!(
                "bundle {} is not an absolute path",
                req.bundle
            )));
        }
        let options = runc_options(req.options.as_ref())?;
        let config = RuntimeConfig {
            binary: non_empty(&options.binary_name).unwrap_or_else(|| "runc".into()),
            root: non_empty(&options.root)
                .map(|root| Path::new(&root).join(&self.namespace))
                .unwrap_or_else(|| layout::default_runtime_root(&bundle, &self.namespace)),
            systemd_cgroup: options.systemd_cgroup,
            criu: None,
        };
        save_runtime_config(&bundle, &config)?;
        let runc = Runc::new(config, &bundle, self.reaper.clone());

        let rootfs = bundle.join("rootfs");
        let mounts: Vec<Mount> = req
            .rootfs
            .iter()
            .map(|m| Mount {
                kind: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        // (What was mounted before a failure is unmounted again.)
        self.mounter.mount_all(&mounts, &rootfs)?;

        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let created = self
            .create_with_runc(&req.id, &bundle, &runc, &paths, &options)
            .await;
        let (pid, io) = match created {
            Ok(done) => done,
            Err(e) => {
                if !mounts.is_empty() {
                    let _ = self.mounter.unmount_all(&rootfs);
                }
                return Err(e);
            }
        };

        let mut init = Process::new(String::new(), paths.clone(), Vec::new());
        init.pid = pid;
        init.io = io;
        let cgroup = Cgroup::of_pid(pid).ok();
        let oom_watch = cgroup.clone().map(|cgroup| {
            let publisher = self.publisher.clone();
            let id = req.id.clone();
            tokio::spawn(async move {
                let _ = crate::cgroups::watch_oom(cgroup, move || {
                    let mut event = ev::TaskOOM::new();
                    event.container_id = id.clone();
                    publisher.publish(events::TASK_OOM, &event);
                })
                .await;
            })
            .abort_handle()
        });
        let container = Container {
            id: req.id.clone(),
            bundle: bundle.clone(),
            runc,
            init,
            execs: HashMap::new(),
            rootfs_mounted: !mounts.is_empty(),
            shares_host_pid_ns: shares_host_pid_namespace(&bundle),
            cgroup,
            oom_watch,
        };

        let mut event = ev::TaskCreate::new();
        event.container_id = req.id.clone();
        event.bundle = req.bundle.clone();
        event.rootfs = req.rootfs.clone();
        let mut io = ev::TaskIO::new();
        io.stdin = req.stdin.clone();
        io.stdout = req.stdout.clone();
        io.stderr = req.stderr.clone();
        io.terminal = req.terminal;
        event.io = Some(io).into();
        event.checkpoint = req.checkpoint.clone();
        event.pid = pid;

        let mut state = self.lock();
        state.container = Some(container);
        self.publisher.publish(events::TASK_CREATE, &event);
        if let Some(exit) = Self::take_unmatched(&mut state, pid) {
            if let Some(container) = state.container.as_mut() {
                self.begin_exit(container, "", exit);
            }
        }
        Ok(pid)
    }

    async fn create_with_runc(
        &self,
        id: &str,
        bundle: &Path,
        runc: &Runc,
        paths: &StdioPaths,
        options: &RuncOptions,
    ) -> Result<(u32, stdio::ProcessIo)> {
        let (mut io, container_stdio) =
            stdio::open(paths, id, &self.namespace, &self.reaper).await?;
        let console = if paths.terminal {
            Some(ConsoleSocket::new()?)
        } else {
            None
        };
        let pid_file = bundle.join("init.pid");
        let create_options = CreateOptions {
            console_socket: console.as_ref().map(|c| c.path()),
            no_pivot: options.no_pivot_root,
            no_new_keyring: options.no_new_keyring,
        };
        let create = runc.create(id, bundle, &pid_file, &create_options, container_stdio);
        if let Some(console) = &console {
            let (created, master) = run_with_console(create, console).await;
            created?;
            let attached = master.and_then(|m| io.attach_console(m));
            if let Err(e) = attached {
                return Err(self.undo_create(runc, id, e).await);
            }
        } else {
            create.await?;
        }
        match runc::read_pid_file(&pid_file) {
            Ok(pid) => Ok((pid, io)),
            Err(e) => Err(self.undo_create(runc, id, e).await),
        }
    }

    /// `runc create` succeeded but Create cannot finish: take the
    /// container down again so no paused init is left behind.
    async fn undo_create(&self, runc: &Runc, id: &str, error: ShimError) -> ShimError {
        if let Err(e) = runc.delete(id, true).await {
            crate::log_warn!("could not delete half-created container {id}: {e}");
        }
        error
    }

    async fn start_init(self: &Arc<Self>, id: &str) -> Result<u32> {
        let runc = {
            let mut state = self.lock();
            let container = Self::container(&mut state, id)?;
            if container.init.status != ProcessStatus::Created || !container.init.is_live() {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {id} is not in the created state"
                )));
            }
            container.init.starting = true;
            container.runc.clone()
        };
        let started = runc.start(id).await;
        let mut state = self.lock();
        let container = Self::container(&mut state, id)?;
        container.init.starting = false;
        let held = container.init.held_exit.take();
        let pid = container.init.pid;
        if started.is_ok() {
            container.init.status = ProcessStatus::Running;
            let mut event = ev::TaskStart::new();
            event.container_id = id.to_string();
            event.pid = pid;
            self.publisher.publish(events::TASK_START, &event);
        }
        if let Some(exit) = held {
            self.begin_exit(container, "", exit);
        }
        started.map(|()| pid)
    }

    async fn start_exec(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<u32> {
        let (runc, bundle, paths, spec) = {
            let mut state = self.lock();
            let container = Self::container(&mut state, id)?;
            if container.init.status != ProcessStatus::Running || !container.init.is_live() {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {id} is not running"
                )));
            }
            let runc = container.runc.clone();
            let bundle = container.bundle.clone();
            let process = container.process_mut(exec_id)?;
            if process.status != ProcessStatus::Created || process.starting {
                return Err(ShimError::FailedPrecondition(format!(
                    "exec {exec_id} was already started"
                )));
            }
            process.starting = true;
            (runc, bundle, process.stdio.clone(), process.spec.clone())
        };
        let started = self
            .exec_with_runc(id, exec_id, &runc, &bundle, &paths, &spec)
            .await;
        let mut state = self.lock();
        let unmatched = match &started {
            Ok((pid, _)) => Self::take_unmatched(&mut state, *pid),
            Err(_) => None,
        };
        let container = Self::container(&mut state, id)?;
        let process = container.process_mut(exec_id)?;
        process.starting = false;
        let (pid, io) = started?;
        process.pid = pid;
        process.io = io;
        process.status = ProcessStatus::Running;
        let mut event = ev::TaskExecStarted::new();
        event.container_id = id.to_string();
        event.exec_id = exec_id.to_string();
        event.pid = pid;
        self.publisher.publish(events::TASK_EXEC_STARTED, &event);
        if let Some(exit) = unmatched.or(process.held_exit.take()) {
            self.begin_exit(container, exec_id, exit);
        }
        Ok(pid)
    }

    async fn exec_with_runc(
        &self,
        id: &str,
        exec_id: &str,
        runc: &Runc,
        bundle: &Path,
        paths: &StdioPaths,
        spec: &[u8],
    ) -> Result<(u32, stdio::ProcessIo)> {
        let spec_file = bundle.join(format!(".{exec_id}.process.json"));
        std::fs::write(&spec_file, spec)
            .map_err(|e| ShimError::io(format!("writing {}", spec_file.display()), e))?;
        let (mut io, container_stdio) =
            stdio::open(paths, id, &self.namespace, &self.reaper).await?;
        let console = if paths.terminal {
            Some(ConsoleSocket::new()?)
        } else {
            None
        };
        let pid_file = bundle.join(format!("{exec_id}.pid"));
        let exec = runc.exec(
            id,
            &spec_file,
            &pid_file,
            console.as_ref().map(|c| c.path()),
            container_stdio,
        );
        let result = if let Some(console) = &console {
            let (executed, master) = run_with_console(exec, console).await;
            executed.and_then(|()| io.attach_console(master?))
        } else {
            exec.await
        };
        let _ = std::fs::remove_file(&spec_file);
        result?;
        let pid = runc::read_pid_file(&pid_file)?;
        Ok((pid, io))
    }

    async fn delete_process(
        self: &Arc<Self>,
        id: &str,
        exec_id: &str,
    ) -> Result<api::DeleteResponse> {
        if !exec_id.is_empty() {
            let mut state = self.lock();
            let container = Self::container(&mut state, id)?;
            let process = container.process_mut(exec_id)?;
            if process.status != ProcessStatus::Created && process.exit().is_none() {
                return Err(ShimError::FailedPrecondition(format!(
                    "exec {exec_id} is still running"
                )));
            }
            let exit = process.exit();
            let pid = process.pid;
            container.execs.remove(exec_id);
            return Ok(delete_response(pid, exit));
        }
        let (runc, bundle, mounted) = {
            let mut state = self.lock();
            let container = Self::container(&mut state, id)?;
            let init = &container.init;
            if matches!(init.status, ProcessStatus::Running | ProcessStatus::Paused)
                && init.exit().is_none()
            {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {id} is still running"
                )));
            }
            (
                container.runc.clone(),
                container.bundle.clone(),
                container.rootfs_mounted,
            )
        };
        runc.delete(id, true).await?;
        if mounted {
            self.mounter.unmount_all(&bundle.join("rootfs"))?;
        }
        let mut state = self.lock();
        let container = Self::container(&mut state, id)?;
        let pid = container.init.pid;
        let exit = container.init.exit().or(Some(ExitInfo {
            status: 128 + libc::SIGKILL as u32,
            at: SystemTime::now(),
        }));
        if let Some(watch) = container.oom_watch.take() {
            watch.abort();
        }
        state.container = None;
        if state.shutdown_requested {
            self.shutdown.notify_one();
        }
        state.unmatched.clear();
        let response = delete_response(pid, exit);
        let mut event = ev::TaskDelete::new();
        event.container_id = id.to_string();
        event.pid = pid;
        event.exit_status = response.exit_status;
        event.exited_at = response.exited_at.clone();
        self.publisher.publish(events::TASK_DELETE, &event);
        Ok(response)
    }

    async fn kill_process(&self, req: &api::KillRequest) -> Result<()> {
        let (runc, pid) = {
            let mut state = self.lock();
            let container = Self::container(&mut state, &req.id)?;
            let runc = container.runc.clone();
            let process = container.process_mut(&req.exec_id)?;
            if !process.is_live() {
                return Err(ShimError::NotFound("process already finished".into()));
            }
            if !req.exec_id.is_empty() && process.pid == 0 {
                return Err(ShimError::FailedPrecondition(format!(
                    "exec {} is not started",
                    req.exec_id
                )));
            }
            (runc, process.pid)
        };
        if req.exec_id.is_empty() {
            return runc
                .kill(&req.id, req.signal, req.all)
                .await
                .map_err(|e| match e {
                    ShimError::Runtime { message, .. }
                        if message.contains("not running")
                            || message.contains("does not exist") =>
                    {
                        ShimError::NotFound("process already finished".into())
                    }
                    other => other,
                });
        }
        let signal = nix::sys::signal::Signal::try_from(req.signal as i32)
            .map_err(|_| ShimError::InvalidArgument(format!("invalid signal {}", req.signal)))?;
        // Never 0 or negative: kill(2) would signal a whole process group,
        // the shim's own among them, or every process it may signal.
        let pid = match i32::try_from(pid) {
            Ok(pid) if pid > 0 => pid,
            _ => {
                return Err(ShimError::FailedPrecondition(format!(
                    "exec {} has no process to signal",
                    req.exec_id
                )))
            }
        };
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::ESRCH) => {
                Err(ShimError::NotFound("process already finished".into()))
            }
            Err(e) => Err(ShimError::sys("signalling the process", e)),
        }
    }

    async fn set_paused(&self, id: &str, pause: bool) -> Result<()> {
        let runc = {
            let mut state = self.lock();
            let container = Self::container(&mut state, id)?;
            let wanted = if pause {
                ProcessStatus::Running
            } else {
                ProcessStatus::Paused
            };
            if container.init.status != wanted || !container.init.is_live() {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {id} is not {}",
                    if pause { "running" } else { "paused" }
                )));
            }
            container.runc.clone()
        };
        if pause {
            runc.pause(id).await?;
        } else {
            runc.resume(id).await?;
        }
        let mut state = self.lock();
        let container = Self::container(&mut state, id)?;
        if container.init.is_live() {
            container.init.status = if pause {
                ProcessStatus::Paused
            } else {
                ProcessStatus::Running
            };
        }
        if pause {
            let mut event = ev::TaskPaused::new();
            event.container_id = id.to_string();
            self.publisher.publish(events::TASK_PAUSED, &event);
        } else {
            let mut event = ev::TaskResumed::new();
            event.container_id = id.to_string();
            self.publisher.publish(events::TASK_RESUMED, &event);
        }
        Ok(())
    }

    async fn pids(&self, id: &str) -> Result<api::PidsResponse> {
        let (runc, exec_pids) = {
            let mut state = self.lock();
            let container = Self::container(&mut state, id)?;
            let exec_pids: HashMap<u32, String> = container
                .execs
                .iter()
                .filter(|(_, p)| p.pid != 0)
                .map(|(k, p)| (p.pid, k.clone()))
                .collect();
            (container.runc.clone(), exec_pids)
        };
        let mut response = api::PidsResponse::new();
        for pid in runc.ps(id).await? {
            let mut info = ProcessInfo::new();
            info.pid = pid;
            if let Some(exec_id) = exec_pids.get(&pid) {
                let mut details = ProcessDetails::new();
                details.exec_id = exec_id.clone();
                let mut any = Any::new();
                any.type_url = "containerd.runc.v1.ProcessDetails".into();
                any.value = details
                    .write_to_bytes()
                    .map_err(|e| ShimError::protobuf("encoding process details", e))?;
                info.info = Some(any).into();
            }
            response.processes.push(info);
        }
        Ok(response)
    }

    async fn checkpoint(&self, req: &api::CheckpointTaskRequest) -> Result<()> {
        let runc = {
            let mut state = self.lock();
            Self::container(&mut state, &req.id)?.runc.clone()
        };
        let criu = runc.config().criu.clone().unwrap_or_else(|| "criu".into());
        if !on_path(&criu) {
            return Err(ShimError::Unimplemented(
                "checkpoint needs criu, which is not installed".into(),
            ));
        }
        let mut options = CheckpointOptions::new();
        if let Some(any) = req.options.as_ref() {
            if any
                .type_url
                .ends_with("containerd.runc.v1.CheckpointOptions")
            {
                options = CheckpointOptions::parse_from_bytes(&any.value)
                    .map_err(|e| ShimError::protobuf("decoding checkpoint options", e))?;
            }
        }
        let image = non_empty(&options.image_path).unwrap_or_else(|| req.path.clone());
        let work = non_empty(&options.work_path).map(PathBuf::from);
        runc.checkpoint(&req.id, Path::new(&image), work.as_deref(), !options.exit)
            .await?;
        let mut event = ev::TaskCheckpointed::new();
        event.container_id = req.id.clone();
        event.checkpoint = image;
        self.publisher.publish(events::TASK_CHECKPOINTED, &event);
        Ok(())
    }
}

/// Runs a runtime command that sends a terminal to `console`.
async fn run_with_console(
    command: impl std::future::Future<Output = Result<()>>,
    console: &ConsoleSocket,
) -> (Result<()>, Result<std::os::fd::OwnedFd>) {
    let receive = console.receive_master();
    tokio::pin!(receive);
    tokio::pin!(command);
    tokio::select! {
        done = &mut command => match done {
            Ok(()) => {
                let master = tokio::time::timeout(Duration::from_secs(10), receive)
                    .await
                    .unwrap_or_else(|_| Err(ShimError::Runtime {
                        command: "console socket".into(),
                        message: "the runtime never sent a terminal".into(),
                    }));
                (Ok(()), master)
            }
            Err(e) => (Err(e), Err(ShimError::FailedPrecondition("no terminal".into()))),
        },
        master = &mut receive => (command.await, master),
    }
}

fn delete_response(pid: u32, exit: Option<ExitInfo>) -> api::DeleteResponse {
    let mut response = api::DeleteResponse::new();
    response.pid = pid;
    if let Some(exit) = exit {
        response.exit_status = exit.status;
        response.exited_at = Some(timestamp(exit.at)).into();
    }
    response
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn on_path(binary: &str) -> bool {
    if binary.contains('/') {
        return Path::new(binary).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(binary).is_file()))
}

/// The runc options in a Create request; other option types (e.g.
/// `runtimeoptions.v1.Options` from CRI) carry nothing we use.
fn runc_options(options: Option<&Any>) -> Result<RuncOptions> {
    match options {
        Some(any) if any.type_url.ends_with(RUNC_OPTIONS_URL) => {
            RuncOptions::parse_from_bytes(&any.value)
                .map_err(|e| ShimError::protobuf("decoding runc options", e))
        }
        _ => Ok(RuncOptions::new()),
    }
}

fn save_runtime_config(bundle: &Path, config: &RuntimeConfig) -> Result<()> {
    let json = serde_json::json!({
        "binary": config.binary,
        "root": config.root,
        "systemd_cgroup": config.systemd_cgroup,
    });
    let path = bundle.join(RUNTIME_FILE);
    std::fs::write(&path, json.to_string())
        .map_err(|e| ShimError::io(format!("writing {}", path.display()), e))
}

/// The runtime settings saved at Create, if any.
pub fn load_runtime_config(bundle: &Path) -> Option<RuntimeConfig> {
    let text = std::fs::read_to_string(bundle.join(RUNTIME_FILE)).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(RuntimeConfig {
        binary: json.get("binary")?.as_str()?.to_string(),
        root: PathBuf::from(json.get("root")?.as_str()?),
        systemd_cgroup: json.get("systemd_cgroup")?.as_bool()?,
        criu: None,
    })
}

/// Whether the spec gives the container no pid namespace of its own; then
/// its processes do not die with init and must be killed explicitly.
fn shares_host_pid_namespace(bundle: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(bundle.join("config.json")) else {
        return false;
    };
    let Ok(spec) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    let private = spec
        .pointer("/linux/namespaces")
        .and_then(|n| n.as_array())
        .is_some_and(|namespaces| {
            namespaces.iter().any(|ns| {
                ns.get("type").and_then(|t| t.as_str()) == Some("pid")
                    && ns
                        .get("path")
                        .and_then(|p| p.as_str())
                        .unwrap_or("")
                        .is_empty()
            })
        });
    !private
}

fn validate_exec_id(exec_id: &str) -> Result<()> {
    if !exec_id.is_empty() {
        berth_ids::validate_id(exec_id)?;
    }
    Ok(())
}

/// The ttrpc face of [`Service`].
#[derive(Debug, Clone)]
pub struct TaskService(pub Arc<Service>);

impl std::ops::Deref for TaskService {
    type Target = Arc<Service>;
    fn deref(&self) -> &Arc<Service> {
        &self.0
    }
}

#[async_trait]
impl Task for TaskService {
    async fn state(
        &self,
        _: &TtrpcContext,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        let mut state = self.lock();
        let container = Service::container(&mut state, &req.id)?;
        let bundle = container.bundle.display().to_string();
        let process = container.process_mut(&req.exec_id)?;
        let mut response = api::StateResponse::new();
        response.id = req.id.clone();
        response.exec_id = req.exec_id.clone();
        response.bundle = bundle;
        response.pid = process.pid;
        response.status = process.status.to_proto().into();
        response.stdin = process.stdio.stdin.clone();
        response.stdout = process.stdio.stdout.clone();
        response.stderr = process.stdio.stderr.clone();
        response.terminal = process.stdio.terminal;
        if let Some(exit) = process.exit() {
            response.exit_status = exit.status;
            response.exited_at = Some(timestamp(exit.at)).into();
        }
        Ok(response)
    }

    async fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        let pid = self
            .create_task(req)
            .await
            .inspect_err(|e| crate::log_error!("create: {e}"))?;
        let mut response = api::CreateTaskResponse::new();
        response.pid = pid;
        Ok(response)
    }

    async fn start(
        &self,
        _: &TtrpcContext,
        req: api::StartRequest,
    ) -> ttrpc::Result<api::StartResponse> {
        validate_exec_id(&req.exec_id)?;
        let pid = if req.exec_id.is_empty() {
            self.start_init(&req.id).await
        } else {
            self.start_exec(&req.id, &req.exec_id).await
        }
        .inspect_err(|e| crate::log_error!("start: {e}"))?;
        let mut response = api::StartResponse::new();
        response.pid = pid;
        Ok(response)
    }

    async fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        Ok(self.delete_process(&req.id, &req.exec_id).await?)
    }

    async fn pids(
        &self,
        _: &TtrpcContext,
        req: api::PidsRequest,
    ) -> ttrpc::Result<api::PidsResponse> {
        Ok(Service::pids(self, &req.id).await?)
    }

    async fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> ttrpc::Result<Empty> {
        self.set_paused(&req.id, true).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> ttrpc::Result<Empty> {
        self.set_paused(&req.id, false).await?;
        Ok(Empty::new())
    }

    async fn checkpoint(
        &self,
        _: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> ttrpc::Result<Empty> {
        Service::checkpoint(self, &req).await?;
        Ok(Empty::new())
    }

    async fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<Empty> {
        self.kill_process(&req).await?;
        Ok(Empty::new())
    }

    async fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> ttrpc::Result<Empty> {
        berth_ids::validate_id(&req.exec_id).map_err(ShimError::from)?;
        let mut state = self.lock();
        let container = Service::container(&mut state, &req.id)?;
        if container.execs.contains_key(&req.exec_id) {
            return Err(
                ShimError::AlreadyExists(format!("exec {} already exists", req.exec_id)).into(),
            );
        }
        if !container.init.is_live() {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is not running",
                req.id
            ))
            .into());
        }
        let spec = req
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .unwrap_or_default();
        serde_json::from_slice::<serde_json::Value>(&spec)
            .map_err(|e| ShimError::json("exec process spec", e))?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        container.execs.insert(
            req.exec_id.clone(),
            Process::new(req.exec_id.clone(), stdio, spec),
        );
        let mut event = ev::TaskExecAdded::new();
        event.container_id = req.id.clone();
        event.exec_id = req.exec_id.clone();
        self.publisher.publish(events::TASK_EXEC_ADDED, &event);
        Ok(Empty::new())
    }

    async fn resize_pty(
        &self,
        _: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> ttrpc::Result<Empty> {
        let mut state = self.lock();
        let container = Service::container(&mut state, &req.id)?;
        let process = container.process_mut(&req.exec_id)?;
        if let Some(console) = process.io.console() {
            stdio::resize(console, req.width, req.height)?;
        }
        Ok(Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> ttrpc::Result<Empty> {
        let mut state = self.lock();
        let container = Service::container(&mut state, &req.id)?;
        let process = container.process_mut(&req.exec_id)?;
        if req.stdin {
            process.io.close_stdin();
        }
        Ok(Empty::new())
    }

    async fn update(&self, _: &TtrpcContext, req: api::UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let runc = {
            let mut state = self.lock();
            Service::container(&mut state, &req.id)?.runc.clone()
        };
        let resources = req
            .resources
            .as_ref()
            .map(|any| any.value.clone())
            .unwrap_or_default();
        serde_json::from_slice::<serde_json::Value>(&resources)
            .map_err(|e| ShimError::json("update resources", e))?;
        runc.update(&req.id, &resources).await?;
        Ok(Empty::new())
    }

    async fn wait(
        &self,
        _: &TtrpcContext,
        req: api::WaitRequest,
    ) -> ttrpc::Result<api::WaitResponse> {
        let mut rx = {
            let mut state = self.lock();
            let container = Service::container(&mut state, &req.id)?;
            container.process_mut(&req.exec_id)?.subscribe()
        };
        let exit = rx
            .wait_for(Option::is_some)
            .await
            .map(|exit| *exit)
            .map_err(|_| ShimError::NotFound(format!("process {} was deleted", req.id)))?;
        let mut response = api::WaitResponse::new();
        if let Some(exit) = exit {
            response.exit_status = exit.status;
            response.exited_at = Some(timestamp(exit.at)).into();
        }
        Ok(response)
    }

    async fn stats(
        &self,
        _: &TtrpcContext,
        req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        let cgroup = {
            let mut state = self.lock();
            let container = Service::container(&mut state, &req.id)?;
            match &container.cgroup {
                Some(cgroup) => cgroup.clone(),
                None => Cgroup::of_pid(container.init.pid)?,
            }
        };
        let mut response = api::StatsResponse::new();
        response.stats = Some(cgroup.metrics()?).into();
        Ok(response)
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        let mut response = api::ConnectResponse::new();
        response.shim_pid = std::process::id();
        let state = self.lock();
        if let Some(container) = state.container.as_ref().filter(|c| c.id == req.id) {
            response.task_pid = container.init.pid;
        }
        Ok(response)
    }

    async fn shutdown(&self, _: &TtrpcContext, _req: api::ShutdownRequest) -> ttrpc::Result<Empty> {
        let mut state = self.lock();
        if state.container.is_none() {
            self.shutdown.notify_one();
        } else {
            state.shutdown_requested = true;
        }
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_options_are_read_only_from_their_own_type() {
        let mut options = RuncOptions::new();
        options.binary_name = "crun".into();
        let mut any = Any::new();
        any.type_url = "containerd.runc.v1.Options".into();
        any.value = options.write_to_bytes().unwrap();
        assert_eq!(runc_options(Some(&any)).unwrap().binary_name, "crun");
        any.type_url = "runtimeoptions.v1.Options".into();
        assert_eq!(runc_options(Some(&any)).unwrap().binary_name, "");
        assert_eq!(runc_options(None).unwrap().binary_name, "");
    }

    #[test]
    fn pid_namespace_sharing_is_read_from_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        let write = |spec: &str| std::fs::write(dir.path().join("config.json"), spec).unwrap();
        write(r#"{"linux":{"namespaces":[{"type":"pid"},{"type":"mount"}]}}"#);
        assert!(!shares_host_pid_namespace(dir.path()));
        write(r#"{"linux":{"namespaces":[{"type":"mount"}]}}"#);
        assert!(shares_host_pid_namespace(dir.path()));
        write(r#"{"linux":{"namespaces":[{"type":"pid","path":"/proc/1/ns/pid"}]}}"#);
        assert!(shares_host_pid_namespace(dir.path()));
    }

    #[test]
    fn runtime_config_round_trips_through_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let config = RuntimeConfig {
            binary: "crun".into(),
            root: "/run/x/runc/ns".into(),
            systemd_cgroup: true,
            criu: None,
        };
        save_runtime_config(dir.path(), &config).unwrap();
        assert_eq!(load_runtime_config(dir.path()), Some(config));
    }
}
