//! What each Task call does for the shim's containers, free of ttrpc:
//! [`crate::service`] maps requests to these calls and their errors to
//! status codes. The state lives in [`crate::container`] and
//! [`crate::process`], exits are routed by [`crate::exits`], and every
//! runtime operation goes through the [`Runtime`] trait.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::{CheckpointOptions, ProcessDetails};
use containerd_shim_protos::shim::shim as api;
use containerd_shim_protos::types::task::ProcessInfo;
use tokio::sync::Notify;

use crate::cgroups::Cgroup;
use crate::container::{Container, SpecFacts, State};
use crate::error::{Result, ShimError};
use crate::events::{self, timestamp, Publisher};
use crate::layout;
use crate::options::RuntimeOptions;
use crate::process::{ExitInfo, Process, ProcessStatus};
use crate::reaper::Reaper;
use crate::runc;
use crate::runtime::{
    runc_factory, save_runtime_config, CreateOptions, Runtime, RuntimeConfig, RuntimeFactory,
};
use crate::stdio::{self, ConsoleSocket, IoOwner, StdioPaths};
use berth_mount::{HostMounter, Mount, Mounter};

/// The shim's containers and what it needs to run them.
#[derive(Debug)]
pub struct Tasks {
    namespace: String,
    reaper: Arc<Reaper>,
    pub(crate) publisher: Publisher,
    state: Mutex<State>,
    shutdown: Arc<Notify>,
    mounter: HostMounter,
    runtimes: Runtimes,
    /// Woken whenever an exec's Start ends (a Delete of it waits).
    exec_start_finished: Notify,
    /// A Create has come: the shim's life is now its container's.
    create_requested: AtomicBool,
}

/// Open while a Create or an exec's Start runs: exits of pids nobody
/// knows yet are kept only then (see [`crate::exits::UnmatchedExits`]).
struct StartWindow<'a>(&'a Tasks);

impl<'a> StartWindow<'a> {
    fn open(tasks: &'a Tasks) -> StartWindow<'a> {
        tasks.lock().unmatched.start_began();
        StartWindow(tasks)
    }
}

impl Drop for StartWindow<'_> {
    fn drop(&mut self) {
        self.0.lock().unmatched.start_ended();
    }
}

/// A container id whose Create is in progress; a second Create of it (or
/// of a container that exists) is refused until this is dropped.
struct Reservation<'a>(&'a Tasks, String);

impl<'a> Reservation<'a> {
    fn take(tasks: &'a Tasks, id: &str) -> Result<Reservation<'a>> {
        let mut state = tasks.lock();
        if state.exiting {
            return Err(ShimError::Status(berth_errdefs::Error::new(
                berth_errdefs::ErrorKind::Unavailable,
                "the shim is exiting: it was told to once its last task was deleted",
            )));
        }
        if state.containers.contains_key(id) || !state.creating.insert(id.to_string()) {
            return Err(ShimError::AlreadyExists(format!(
                "container {id} already exists"
            )));
        }
        Ok(Reservation(tasks, id.to_string()))
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.0.lock().creating.remove(&self.1);
    }
}

/// Makes each container's runtime (printable, for `Debug`).
struct Runtimes(RuntimeFactory);

impl std::fmt::Debug for Runtimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Runtimes")
    }
}

impl Tasks {
    pub fn new(
        namespace: String,
        reaper: Arc<Reaper>,
        publisher: Publisher,
        shutdown: Arc<Notify>,
    ) -> Arc<Tasks> {
        Tasks::with_runtimes(namespace, reaper, publisher, shutdown, runc_factory())
    }

    /// Like [`Tasks::new`], with each container run by what `runtimes` makes.
    pub fn with_runtimes(
        namespace: String,
        reaper: Arc<Reaper>,
        publisher: Publisher,
        shutdown: Arc<Notify>,
        runtimes: RuntimeFactory,
    ) -> Arc<Tasks> {
        Arc::new(Tasks {
            namespace,
            reaper,
            publisher,
            state: Mutex::new(State::default()),
            shutdown,
            mounter: HostMounter,
            runtimes: Runtimes(runtimes),
            exec_start_finished: Notify::new(),
            create_requested: AtomicBool::new(false),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether any Create has come (see [`crate::serve`]'s idle exit).
    pub fn create_requested(&self) -> bool {
        self.create_requested.load(Ordering::Relaxed)
    }

    pub async fn create(self: &Arc<Self>, req: api::CreateTaskRequest) -> Result<u32> {
        self.create_requested.store(true, Ordering::Relaxed);
        let _window = StartWindow::open(self);
        berth_ids::validate_id(&req.id)?;
        let _reserved = Reservation::take(self, &req.id)?;
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
        let options = RuntimeOptions::from_any(req.options.as_ref())?;
        let config = RuntimeConfig {
            binary: non_empty(&options.binary_name).unwrap_or_else(|| "runc".into()),
            root: non_empty(&options.root)
                .map(|root| Path::new(&root).join(&self.namespace))
                .unwrap_or_else(|| layout::default_runtime_root(&bundle, &self.namespace)),
            systemd_cgroup: options.systemd_cgroup,
            criu: None,
        };
        save_runtime_config(&bundle, &config)?;
        let spec = SpecFacts::read(&bundle);
        let runtime = (self.runtimes.0)(config, &bundle, spec, self.reaper.clone());

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
        let io_owner = IoOwner {
            uid: options.io_uid,
            gid: options.io_gid,
        };
        let created = self
            .create_with_runtime(
                &req.id,
                &bundle,
                runtime.as_ref(),
                &paths,
                &options,
                io_owner,
            )
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
            runtime,
            init,
            execs: HashMap::new(),
            rootfs_mounted: !mounts.is_empty(),
            shares_host_pid_ns: spec.is_some_and(|spec| spec.shares_host_pid_ns),
            cgroup,
            oom_watch,
            io_owner,
            init_reaped: false,
            running_execs: 0,
            held_init_exit: None,
            deleting: false,
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
        let unmatched = state.unmatched.take(pid);
        let container = state.containers.entry(req.id.clone()).or_insert(container);
        // A group's shim whose every earlier container went logs here now.
        crate::log::adopt_if_homeless(&container.bundle);
        self.publisher.publish(events::TASK_CREATE, &event);
        if let Some(exit) = unmatched {
            self.begin_exit(container, "", exit);
        }
        Ok(pid)
    }

    async fn create_with_runtime(
        &self,
        id: &str,
        bundle: &Path,
        runtime: &dyn Runtime,
        paths: &StdioPaths,
        options: &RuntimeOptions,
        io_owner: IoOwner,
    ) -> Result<(u32, stdio::ProcessIo)> {
        let (mut io, container_stdio, console) = self.open_stdio(paths, id, io_owner).await?;
        let pid_file = bundle.join("init.pid");
        let create_options = CreateOptions {
            console_socket: console.as_ref().map(|c| c.path()),
            no_pivot: options.no_pivot_root,
            no_new_keyring: options.no_new_keyring,
        };
        let create = runtime.create(id, bundle, &pid_file, &create_options, container_stdio);
        if let Some(console) = &console {
            let (created, master) = run_with_console(create, console).await;
            created?;
            let attached = master.and_then(|m| io.attach_console(m));
            if let Err(e) = attached {
                return Err(self.undo_create(runtime, id, e).await);
            }
        } else {
            create.await?;
        }
        match runc::read_pid_file(&pid_file) {
            Ok(pid) => Ok((pid, io)),
            Err(e) => Err(self.undo_create(runtime, id, e).await),
        }
    }

    /// `runc create` succeeded but Create cannot finish: take the
    /// container down again so no paused init is left behind.
    async fn undo_create(&self, runtime: &dyn Runtime, id: &str, error: ShimError) -> ShimError {
        if let Err(e) = runtime.delete(id, true).await {
            crate::log_warn!("could not delete half-created container {id}: {e}");
        }
        error
    }

    pub async fn start_init(self: &Arc<Self>, id: &str) -> Result<u32> {
        let (runtime, init_pid) = {
            let mut state = self.lock();
            let container = state.container(id)?;
            if container.init.status != ProcessStatus::Created || !container.init.is_live() {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {id} is not in the created state"
                )));
            }
            container.init.starting = true;
            (container.runtime.clone(), container.init.pid)
        };
        let started = runtime.start(id, init_pid).await;
        let mut state = self.lock();
        let container = state.container(id)?;
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

    /// Starts an exec. Once the init's exit has been reaped this is
    /// refused, even while that exit is not yet published (as containerd's
    /// Go shim does); a Start that begins counts the exec as running until
    /// its exit is published, and the init's exit waits for that.
    pub async fn start_exec(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<u32> {
        let _window = StartWindow::open(self);
        let (runtime, bundle, paths, spec, owner) = {
            let mut state = self.lock();
            let container = state.container(id)?;
            if container.init_reaped {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {id} init process is not running"
                )));
            }
            if container.init.status != ProcessStatus::Running || !container.init.is_live() {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {id} is not running"
                )));
            }
            let runtime = container.runtime.clone();
            let bundle = container.bundle.clone();
            let owner = container.io_owner;
            let process = container.process_mut(exec_id)?;
            if process.status != ProcessStatus::Created || process.starting {
                return Err(ShimError::FailedPrecondition(format!(
                    "exec {exec_id} was already started"
                )));
            }
            process.starting = true;
            let (paths, spec) = (process.stdio.clone(), process.spec.clone());
            container.running_execs += 1;
            (runtime, bundle, paths, spec, owner)
        };
        let started = self
            .exec_with_runtime(id, exec_id, runtime.as_ref(), &bundle, &paths, &spec, owner)
            .await;
        let mut state = self.lock();
        let unmatched = match &started {
            Ok((pid, _)) => state.unmatched.take(*pid),
            Err(_) => None,
        };
        let container = state.container(id)?;
        let process = container.process_mut(exec_id)?;
        process.starting = false;
        self.exec_start_finished.notify_waiters();
        let (pid, io) = match started {
            Ok(started) => started,
            Err(e) => {
                self.exec_gone(container);
                return Err(e);
            }
        };
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

    #[allow(clippy::too_many_arguments)]
    async fn exec_with_runtime(
        &self,
        id: &str,
        exec_id: &str,
        runtime: &dyn Runtime,
        bundle: &Path,
        paths: &StdioPaths,
        spec: &[u8],
        owner: IoOwner,
    ) -> Result<(u32, stdio::ProcessIo)> {
        let spec_file = bundle.join(format!(".{exec_id}.process.json"));
        std::fs::write(&spec_file, spec)
            .map_err(|e| ShimError::io(format!("writing {}", spec_file.display()), e))?;
        let (mut io, container_stdio, console) = self.open_stdio(paths, id, owner).await?;
        let pid_file = bundle.join(format!("{exec_id}.pid"));
        let exec = runtime.exec(
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

    pub async fn delete(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<api::DeleteResponse> {
        if !exec_id.is_empty() {
            let mut state = loop {
                // An exec whose Start is running is neither created nor
                // running yet: wait for the Start to end, then judge.
                let started = self.exec_start_finished.notified();
                {
                    let mut state = self.lock();
                    if !state.container(id)?.process_mut(exec_id)?.starting {
                        break state;
                    }
                }
                started.await;
            };
            let container = state.container(id)?;
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
        let (runtime, bundle, mounted, stopped) = {
            let mut state = self.lock();
            let container = state.container(id)?;
            if container.deleting {
                return Err(ShimError::NotFound(format!(
                    "container {id} is being deleted"
                )));
            }
            let init = &container.init;
            if matches!(init.status, ProcessStatus::Running | ProcessStatus::Paused)
                && init.exit().is_none()
            {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {id} is still running"
                )));
            }
            container.deleting = true;
            (
                container.runtime.clone(),
                container.bundle.clone(),
                container.rootfs_mounted,
                init.exit().is_some(),
            )
        };
        let deleted = if stopped {
            runtime.delete_stopped(id).await
        } else {
            runtime.delete(id, true).await
        };
        let removed = match deleted {
            Ok(()) if mounted => self
                .mounter
                .unmount_all(&bundle.join("rootfs"))
                .map_err(ShimError::from),
            other => other,
        };
        if let Err(e) = removed {
            if let Ok(container) = self.lock().container(id) {
                container.deleting = false;
            }
            return Err(e);
        }
        let mut state = self.lock();
        let container = state.container(id)?;
        let pid = container.init.pid;
        let exit = container.init.exit().or(Some(ExitInfo {
            status: 128 + libc::SIGKILL as u32,
            at: SystemTime::now(),
        }));
        if let Some(watch) = container.oom_watch.take() {
            watch.abort();
        }
        state.containers.remove(id);
        // Its bundle goes next: a group's shim logs on in another's.
        crate::log::follow_bundle_away(
            &bundle,
            state.containers.values().map(|c| c.bundle.as_path()),
        );
        if state.shutdown_requested && state.containers.is_empty() && state.creating.is_empty() {
            state.exiting = true;
            self.shutdown.notify_one();
        }
        let response = delete_response(pid, exit);
        let mut event = ev::TaskDelete::new();
        event.container_id = id.to_string();
        event.pid = pid;
        event.exit_status = response.exit_status;
        event.exited_at = response.exited_at.clone();
        self.publisher.publish(events::TASK_DELETE, &event);
        Ok(response)
    }

    pub async fn kill(&self, req: &api::KillRequest) -> Result<()> {
        let (runtime, pid) = {
            let mut state = self.lock();
            let container = state.container(&req.id)?;
            let runtime = container.runtime.clone();
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
            (runtime, process.pid)
        };
        if req.exec_id.is_empty() {
            return runtime
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

    pub async fn set_paused(&self, id: &str, pause: bool) -> Result<()> {
        let runtime = {
            let mut state = self.lock();
            let container = state.container(id)?;
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
            container.runtime.clone()
        };
        if pause {
            runtime.pause(id).await?;
        } else {
            runtime.resume(id).await?;
        }
        let mut state = self.lock();
        let container = state.container(id)?;
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

    pub async fn pids(&self, id: &str) -> Result<api::PidsResponse> {
        let (runtime, exec_pids) = {
            let mut state = self.lock();
            let container = state.container(id)?;
            let exec_pids: HashMap<u32, String> = container
                .execs
                .iter()
                .filter(|(_, p)| p.pid != 0)
                .map(|(k, p)| (p.pid, k.clone()))
                .collect();
            (container.runtime.clone(), exec_pids)
        };
        let mut response = api::PidsResponse::new();
        for pid in runtime.ps(id).await? {
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

    pub async fn checkpoint(&self, req: &api::CheckpointTaskRequest) -> Result<()> {
        let runtime = {
            let mut state = self.lock();
            state.container(&req.id)?.runtime.clone()
        };
        let criu = runtime
            .config()
            .criu
            .clone()
            .unwrap_or_else(|| "criu".into());
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
        runtime
            .checkpoint(&req.id, Path::new(&image), work.as_deref(), !options.exit)
            .await?;
        let mut event = ev::TaskCheckpointed::new();
        event.container_id = req.id.clone();
        event.checkpoint = image;
        self.publisher.publish(events::TASK_CHECKPOINTED, &event);
        Ok(())
    }

    /// Starts the init (`exec_id` "") or an exec; returns its pid.
    pub async fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<u32> {
        if exec_id.is_empty() {
            self.start_init(id).await
        } else {
            self.start_exec(id, exec_id).await
        }
    }

    pub fn state(&self, req: &api::StateRequest) -> Result<api::StateResponse> {
        let mut state = self.lock();
        let container = state.container(&req.id)?;
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

    /// Registers an exec (Task.Exec); Start runs it.
    pub fn add_exec(&self, req: &api::ExecProcessRequest) -> Result<()> {
        let mut state = self.lock();
        let container = state.container(&req.id)?;
        if container.execs.contains_key(&req.exec_id) {
            return Err(ShimError::AlreadyExists(format!(
                "exec {} already exists",
                req.exec_id
            )));
        }
        // Until the init's exit is published an exec may still be created
        // (its Start is refused once the exit is reaped), as with
        // containerd's Go shim; a paused container takes none.
        if container.init.exit().is_some() {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is not running",
                req.id
            )));
        }
        if container.init.status == ProcessStatus::Paused {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is paused",
                req.id
            )));
        }
        let spec = json_payload(req.spec.as_ref(), "exec process spec")?;
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
        Ok(())
    }

    pub fn resize_pty(&self, req: &api::ResizePtyRequest) -> Result<()> {
        let mut state = self.lock();
        let container = state.container(&req.id)?;
        let process = container.process_mut(&req.exec_id)?;
        if let Some(console) = process.io.console() {
            stdio::resize(console, req.width, req.height)?;
        }
        Ok(())
    }

    pub fn close_io(&self, req: &api::CloseIORequest) -> Result<()> {
        let mut state = self.lock();
        let container = state.container(&req.id)?;
        let process = container.process_mut(&req.exec_id)?;
        if req.stdin {
            process.io.close_stdin();
        }
        Ok(())
    }

    /// A process's stdio as the caller asked: our ends of its fifos, the
    /// runtime's, and a console socket when it has a terminal.
    async fn open_stdio(
        &self,
        paths: &StdioPaths,
        id: &str,
        owner: IoOwner,
    ) -> Result<(
        stdio::ProcessIo,
        Option<crate::runtime::ProcessStdio>,
        Option<ConsoleSocket>,
    )> {
        let (io, container_stdio) =
            stdio::open(paths, id, &self.namespace, &self.reaper, owner).await?;
        let console = if paths.terminal {
            Some(ConsoleSocket::new()?)
        } else {
            None
        };
        Ok((io, container_stdio, console))
    }

    pub async fn update(&self, req: &api::UpdateTaskRequest) -> Result<()> {
        let runtime = {
            let mut state = self.lock();
            state.container(&req.id)?.runtime.clone()
        };
        let resources = json_payload(req.resources.as_ref(), "update resources")?;
        runtime.update(&req.id, &resources).await
    }

    /// Waits for the process to exit; its exit, or none if it never ran.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<Option<ExitInfo>> {
        let mut rx = {
            let mut state = self.lock();
            let container = state.container(id)?;
            container.process_mut(exec_id)?.subscribe()
        };
        rx.wait_for(Option::is_some)
            .await
            .map(|exit| *exit)
            .map_err(|_| ShimError::NotFound(format!("process {id} was deleted")))
    }

    pub fn stats(&self, id: &str) -> Result<api::StatsResponse> {
        let cgroup = {
            let mut state = self.lock();
            let container = state.container(id)?;
            match &container.cgroup {
                Some(cgroup) => cgroup.clone(),
                None => Cgroup::of_pid(container.init.pid)?,
            }
        };
        let mut response = api::StatsResponse::new();
        response.stats = Some(cgroup.metrics()?).into();
        Ok(response)
    }

    /// The init's pid of container `id` (0 if there is none).
    pub fn task_pid(&self, id: &str) -> u32 {
        let state = self.lock();
        state.containers.get(id).map_or(0, |c| c.init.pid)
    }

    /// Exits the shim now if it runs no container, else once the last is
    /// deleted.
    pub fn shutdown(&self) {
        let mut state = self.lock();
        if state.containers.is_empty() && state.creating.is_empty() {
            state.exiting = true;
            self.shutdown.notify_one();
        } else {
            state.shutdown_requested = true;
        }
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

/// The bytes of a JSON document a request carries in an `Any` (empty when
/// absent), checked to be JSON before anything is handed to the runtime.
fn json_payload(any: Option<&Any>, what: &'static str) -> Result<Vec<u8>> {
    let bytes = any.map(|any| any.value.clone()).unwrap_or_default();
    // Checked, not kept: IgnoredAny builds nothing.
    serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
        .map_err(|e| ShimError::json(what, e))?;
    Ok(bytes)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_runtime::{Harness, EXEC_PID, ID, INIT_PID, OTHER_EXEC_PID};

    fn code(error: ShimError) -> ttrpc::Code {
        match ttrpc::Error::from(error) {
            ttrpc::Error::RpcStatus(status) => status.code(),
            other => panic!("not a status: {other:?}"),
        }
    }

    fn kill_request(exec_id: &str, signal: u32) -> api::KillRequest {
        let mut req = api::KillRequest::new();
        req.id = ID.into();
        req.exec_id = exec_id.into();
        req.signal = signal;
        req
    }

    /// Wait returns each process's own exit (status and time), only once
    /// it has been recorded; an exec's exit leaves the init waiting.
    #[tokio::test(flavor = "current_thread")]
    async fn wait_returns_each_process_its_own_exit() {
        let mut h = Harness::running().await;
        h.run_exec("e1", EXEC_PID).await;
        let tasks = h.tasks.clone();
        let init_wait = tokio::spawn(async move { tasks.wait(ID, "").await });
        let tasks = h.tasks.clone();
        let exec_wait = tokio::spawn(async move { tasks.wait(ID, "e1").await });
        h.settle().await;
        assert!(!exec_wait.is_finished() && !init_wait.is_finished());

        let exec_exit = h.reap(EXEC_PID, 3);
        assert_eq!(h.next_event().await, format!("exit {ID} e1 {EXEC_PID} 3"));
        let waited = exec_wait.await.unwrap().unwrap().unwrap();
        assert_eq!((waited.status, waited.at), (3, exec_exit.at));
        h.settle().await;
        assert!(!init_wait.is_finished(), "the init still runs");

        let init_exit = h.reap(INIT_PID, 130);
        assert_eq!(
            h.next_event().await,
            format!("exit {ID} {ID} {INIT_PID} 130")
        );
        let waited = init_wait.await.unwrap().unwrap().unwrap();
        assert_eq!((waited.status, waited.at), (130, init_exit.at));
        // After the fact, Wait answers at once, and State agrees.
        let again = h.tasks.wait(ID, "e1").await.unwrap().unwrap();
        assert_eq!(again.status, 3);
        let mut req = api::StateRequest::new();
        req.id = ID.into();
        let state = h.tasks.state(&req).unwrap();
        assert_eq!((state.exit_status, state.pid), (130, INIT_PID));
        assert!(matches!(
            h.tasks.wait(ID, "nope").await,
            Err(ShimError::NotFound(_))
        ));
    }

    /// Kill of a process whose exit was reaped is NotFound ("process
    /// already finished", as containerd expects) and reaches no runtime
    /// or process; an exec not yet started is FailedPrecondition; a live
    /// init is signalled through the runtime, and the runtime's "not
    /// running" is NotFound too.
    #[tokio::test(flavor = "current_thread")]
    async fn kill_after_exit_is_not_found() {
        let mut h = Harness::running().await;
        h.add_exec("e1", EXEC_PID).await;
        h.add_exec("e2", OTHER_EXEC_PID).await;
        h.tasks.start(ID, "e1").await.unwrap();
        assert_eq!(h.next_call().await, "exec e1");
        assert_eq!(
            h.next_event().await,
            format!("exec-started {ID} e1 {EXEC_PID}")
        );

        let not_started = h.tasks.kill(&kill_request("e2", 15)).await.unwrap_err();
        assert_eq!(code(not_started), ttrpc::Code::FAILED_PRECONDITION);

        h.reap(EXEC_PID, 0);
        assert_eq!(h.next_event().await, format!("exit {ID} e1 {EXEC_PID} 0"));
        let exited = h.tasks.kill(&kill_request("e1", 9)).await.unwrap_err();
        assert_eq!(exited.to_string(), "process already finished");
        assert_eq!(code(exited), ttrpc::Code::NOT_FOUND);

        h.tasks.kill(&kill_request("", 15)).await.unwrap();
        assert_eq!(h.next_call().await, "kill 15");
        h.runtime.fail_kill("container not running");
        let refused = h.tasks.kill(&kill_request("", 9)).await.unwrap_err();
        assert_eq!(h.next_call().await, "kill 9");
        assert_eq!(code(refused), ttrpc::Code::NOT_FOUND);

        h.reap(INIT_PID, 137);
        assert_eq!(
            h.next_event().await,
            format!("exit {ID} {ID} {INIT_PID} 137")
        );
        let exited = h.tasks.kill(&kill_request("", 9)).await.unwrap_err();
        assert_eq!(exited.to_string(), "process already finished");
        assert_eq!(code(exited), ttrpc::Code::NOT_FOUND);
        h.assert_no_call("killing what has exited").await;
    }

    /// Only runc's answers for an init that is gone ("not running", "does
    /// not exist") become NotFound; any other failure of the runtime's kill
    /// is reported as the runtime's own error.
    #[tokio::test(flavor = "current_thread")]
    async fn only_the_runtimes_gone_answers_to_kill_are_not_found() {
        let mut h = Harness::running().await;
        h.runtime.fail_kill("container \"c\" does not exist");
        let gone = h.tasks.kill(&kill_request("", 9)).await.unwrap_err();
        assert_eq!(h.next_call().await, "kill 9");
        assert_eq!(gone.to_string(), "process already finished");
        assert_eq!(code(gone), ttrpc::Code::NOT_FOUND);

        h.runtime.fail_kill("operation not permitted");
        let refused = h.tasks.kill(&kill_request("", 9)).await.unwrap_err();
        assert_eq!(h.next_call().await, "kill 9");
        assert!(
            matches!(&refused, ShimError::Runtime { message, .. } if message == "operation not permitted"),
            "{refused:?}"
        );
        assert_eq!(code(refused), ttrpc::Code::INTERNAL);
    }

    /// An exec is signalled by the shim itself, at its own pid (not
    /// through the runtime, which signals only the init); a pid that is
    /// gone is NotFound, and an exec not yet started has nothing to signal.
    #[tokio::test(flavor = "current_thread")]
    async fn kill_of_a_started_exec_signals_its_own_pid() {
        let mut h = Harness::running().await;
        h.add_exec("gone", EXEC_PID).await;
        h.tasks.start(ID, "gone").await.unwrap();
        assert_eq!(h.next_call().await, "exec gone");
        h.next_event().await;
        let gone = h.tasks.kill(&kill_request("gone", 9)).await.unwrap_err();
        assert_eq!(gone.to_string(), "process already finished");
        assert_eq!(code(gone), ttrpc::Code::NOT_FOUND);

        h.add_exec("later", OTHER_EXEC_PID).await;
        let not_started = h.tasks.kill(&kill_request("later", 9)).await.unwrap_err();
        assert_eq!(not_started.to_string(), "exec later is not started");
        assert_eq!(code(not_started), ttrpc::Code::FAILED_PRECONDITION);

        // A real process stands in for the exec: its stdout pipe reaches
        // end of file once it is dead, whoever reaps it.
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        h.add_exec("real", child.id()).await;
        assert_eq!(h.tasks.start(ID, "real").await.unwrap(), child.id());
        assert_eq!(h.next_call().await, "exec real");
        h.next_event().await;
        h.tasks.kill(&kill_request("real", 9)).await.unwrap();
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut child.stdout.take().unwrap(), &mut rest).unwrap();
        let _ = child.wait();
        h.assert_no_call("signalling an exec").await;
    }

    /// Start runs only a created process of a running container, once: a
    /// second Start, a Start of an init that died before it, and an exec's
    /// Start before the init's are refused before the runtime is asked.
    /// Containers of one pod share the shim: each is created, exits and is
    /// deleted on its own; a Create of an id that exists is refused; the
    /// shim exits only when the last container is gone.
    #[tokio::test(flavor = "current_thread")]
    async fn one_shim_runs_every_container_of_a_pod() {
        let mut h = Harness::running().await;
        let mut req = api::CreateTaskRequest::new();
        req.id = ID.into();
        req.bundle = h.bundle.path().display().to_string();
        assert!(matches!(
            h.tasks.create(req).await,
            Err(ShimError::AlreadyExists(_))
        ));
        h.runtime.set_init_pid(OTHER_EXEC_PID);
        assert_eq!(h.create_named("c2").await, OTHER_EXEC_PID);
        h.tasks.start("c2", "").await.unwrap();
        assert_eq!(h.next_call().await, "start");
        assert_eq!(h.next_event().await, format!("start c2 {OTHER_EXEC_PID}"));

        h.reap(OTHER_EXEC_PID, 3);
        assert_eq!(
            h.next_event().await,
            format!("exit c2 c2 {OTHER_EXEC_PID} 3")
        );
        assert_eq!(
            h.status(""),
            (
                containerd_shim_protos::types::task::Status::RUNNING,
                INIT_PID
            ),
            "c is untouched"
        );
        assert_eq!(h.tasks.task_pid("c2"), OTHER_EXEC_PID);

        h.tasks.shutdown();
        assert_eq!(h.tasks.delete("c2", "").await.unwrap().exit_status, 3);
        assert_eq!(h.next_call().await, "delete force");
        assert_eq!(
            h.next_event().await,
            format!("delete c2 {OTHER_EXEC_PID} 3")
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(100), h.shutdown.notified())
                .await
                .is_err(),
            "c still runs: the shim stays"
        );
        h.reap(INIT_PID, 0);
        assert_eq!(h.next_event().await, format!("exit {ID} {ID} {INIT_PID} 0"));
        h.tasks.delete(ID, "").await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), h.shutdown.notified())
            .await
            .expect("the last Delete lets the requested shutdown happen");
    }

    /// A shim told to exit with nothing left refuses a Create that comes
    /// in before it is gone (Unavailable, nothing run): the exit would
    /// otherwise cut it short, leaving runc's half of it behind.
    #[tokio::test(flavor = "current_thread")]
    async fn a_create_after_the_last_delete_and_shutdown_is_refused_as_unavailable() {
        let mut h = Harness::new(true);
        h.create().await;
        h.tasks.shutdown();
        h.tasks.delete(ID, "").await.unwrap();
        assert_eq!(h.next_call().await, "delete force");
        let mut req = api::CreateTaskRequest::new();
        req.id = "c2".into();
        req.bundle = h.bundle.path().display().to_string();
        let err = h.tasks.create(req).await.unwrap_err();
        assert_eq!(err.kind(), berth_errdefs::ErrorKind::Unavailable, "{err}");
        h.assert_no_call("the runtime is not asked to create").await;
    }

    /// Two Deletes at once: the first deletes (runc's delete runs once),
    /// the second is told the container is gone.
    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_deletes_run_the_runtimes_delete_once() {
        let mut h = Harness::new(true);
        h.create().await;
        let release = h.runtime.gate("delete force");
        let tasks = h.tasks.clone();
        let first = tokio::spawn(async move { tasks.delete(ID, "").await });
        assert_eq!(h.next_call().await, "delete force");
        assert!(matches!(
            h.tasks.delete(ID, "").await,
            Err(ShimError::NotFound(_))
        ));
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap().pid, INIT_PID);
        h.assert_no_call("a second runtime delete").await;
        assert!(matches!(
            h.tasks.delete(ID, "").await,
            Err(ShimError::NotFound(_))
        ));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn start_is_refused_unless_the_process_is_created_and_its_container_ready() {
        let mut h = Harness::new(true);
        h.create().await;
        h.add_exec("early", EXEC_PID).await;
        assert!(matches!(
            h.tasks.start(ID, "early").await,
            Err(ShimError::FailedPrecondition(_))
        ));
        h.assert_no_call("an exec before its container runs").await;

        h.tasks.start(ID, "").await.unwrap();
        assert_eq!(h.next_call().await, "start");
        h.next_event().await;
        assert!(matches!(
            h.tasks.start(ID, "").await,
            Err(ShimError::FailedPrecondition(_))
        ));
        h.assert_no_call("a second start of the init").await;

        h.tasks.start(ID, "early").await.unwrap();
        assert_eq!(h.next_call().await, "exec early");
        h.next_event().await;
        assert!(matches!(
            h.tasks.start(ID, "early").await,
            Err(ShimError::FailedPrecondition(_))
        ));
        h.assert_no_call("a second start of an exec").await;

        let mut h = Harness::new(true);
        h.create_with_init_dying(1).await;
        assert_eq!(h.next_event().await, format!("exit {ID} {ID} {INIT_PID} 1"));
        assert!(matches!(
            h.tasks.start(ID, "").await,
            Err(ShimError::FailedPrecondition(_))
        ));
        h.assert_no_call("starting an init that has exited").await;
    }
}
