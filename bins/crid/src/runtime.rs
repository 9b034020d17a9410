//! Pod sandboxes and their containers: what the CRI's RuntimeService asks,
//! done through metad (records), snapd (snapshots), taskd (processes) and
//! CNI (the pod's network), with crid's own state beside them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use berth_errdefs::{Error, ErrorKind, Result};
use berth_metadata::{ContainerStore, Runtime};
use berth_network::{Cni, PodNetwork, PortMapping};
use berth_tasks::container::{create_container_then, remove_container, CopyUp, NewContainer};
use berth_tasks::{CreateTask, ExecProcess, KillProcess, Stdio, Tasks};
use k8s_cri::v1 as cri;
use tokio::sync::watch;

use crate::daemons::Daemons;
use crate::images::{self, NAMESPACE};
use crate::logs::{self, LogFile};
use crate::namespaces;
use crate::spec::{self, Host};
use crate::state::{
    now_nanos, selected, Container, ContainerPhase, Sandbox, SandboxPhase, Store, KIND_CONTAINER,
    KIND_LABEL, KIND_SANDBOX,
};

/// ExecSync's bound on what it keeps of its output (CVE-2022-1708): 16 MiB
/// in all, less room for the reply's framing, so that the reply fits the
/// kubelet's (and crictl's) 16 MiB message bound. stdout is kept first.
pub const EXEC_SYNC_OUTPUT_LIMIT: usize = 16 * 1024 * 1024 - 64 * 1024;
/// How long a SIGKILLed process may take to be reported gone.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// crid's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub root: PathBuf,
    pub state: PathBuf,
    pub sandbox_image: String,
    /// Runtime handler name → shim runtime (`io.containerd.runc.v2`, or a
    /// path); "" is the default handler.
    pub runtimes: HashMap<String, String>,
    pub cni: Cni,
    pub host: Host,
    pub pause_process: PauseProcess,
}

/// Which pods get a pause process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PauseProcess {
    /// Only pods whose containers share one PID namespace, where it is the
    /// first process (and reaps the others). Every other pod's namespaces
    /// are pinned by crid, and its containers join them: CRI-O's default.
    #[default]
    WhenPidShared,
    /// Every pod, as containerd does.
    Always,
}

impl PauseProcess {
    /// Whether a pod with these namespace options gets one.
    pub fn needed_by(self, options: &cri::NamespaceOption) -> bool {
        self == PauseProcess::Always || options.pid == cri::NamespaceMode::Pod as i32
    }
}

/// A running container's output being logged (and sent to attached
/// clients), and its stdin when it has one.
struct Logging {
    exited: watch::Sender<bool>,
    file: Arc<LogFile>,
    output: logs::Output,
    stdin: Option<Arc<tokio::sync::Mutex<Option<tokio::net::unix::pipe::Sender>>>>,
}

/// What an attach gets: the container's output as it comes, and word when
/// it exits.
#[derive(Debug)]
pub struct Attached {
    pub output: tokio::sync::broadcast::Receiver<(bool, Vec<u8>)>,
    pub exited: watch::Receiver<bool>,
    pub stdin_once: bool,
}

pub struct Crid {
    pub daemons: Daemons,
    pub settings: Settings,
    pub store: Store,
    logging: Mutex<HashMap<String, Logging>>,
    /// Containers the kernel's OOM killer acted in (from `/tasks/oom`).
    oom_killed: Mutex<std::collections::HashSet<String>>,
    /// Containers a stop of crid's own is SIGKILLing: their status 137 is
    /// that kill's, so their exit is recorded at once (OOMKilled only if
    /// the OOM event is already in), not after the wait for an OOM event
    /// that a SIGKILL from elsewhere gets.
    killed_by_stop: Mutex<std::collections::HashSet<String>>,
    /// Told each time the exit watcher records an exit, so that a stop
    /// waiting for it goes on at once.
    exit_recorded: tokio::sync::Notify,
    /// The last CPU sample of each container: (when, CPU nanoseconds), to
    /// give a rate.
    cpu_samples: Mutex<HashMap<String, (i64, u64)>>,
    /// One task removal at a time per id: the exit watcher and a stop or
    /// remove would otherwise delete the same task at once.
    removals: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// GetContainerEvents' subscribers (the kubelet's evented PLEG).
    events: tokio::sync::broadcast::Sender<cri::ContainerEventResponse>,
}

impl std::fmt::Debug for Crid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crid")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// 32 random bytes in hex: sandbox and container ids, as containerd's.
pub fn new_id() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::io("reading /dev/urandom", &e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn nanos(time: std::time::SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Crid {
    pub fn new(daemons: Daemons, settings: Settings) -> Arc<Crid> {
        let store = Store::open(&settings.root);
        Arc::new(Crid {
            daemons,
            settings,
            store,
            logging: Mutex::new(HashMap::new()),
            oom_killed: Mutex::new(Default::default()),
            killed_by_stop: Mutex::new(Default::default()),
            exit_recorded: tokio::sync::Notify::new(),
            cpu_samples: Mutex::new(HashMap::new()),
            removals: Mutex::new(HashMap::new()),
            events: tokio::sync::broadcast::channel(1024).0,
        })
    }

    fn runtime_for(&self, handler: &str) -> Result<String> {
        self.settings
            .runtimes
            .get(handler)
            .or_else(|| {
                if handler == "runc" {
                    self.settings.runtimes.get("")
                } else {
                    None
                }
            })
            .cloned()
            .ok_or_else(|| Error::invalid_argument(format!("no runtime handler {handler:?}")))
    }

    /// Makes a container record (and its snapshot) through berth-tasks.
    async fn make_container(
        &self,
        image: &images::CriImage,
        runtime: String,
        labels: HashMap<String, String>,
        options: berth_oci::SpecOptions,
        copy_up: Vec<CopyUp>,
    ) -> Result<berth_metadata::Container> {
        let clients = self.daemons.container_clients().await?;
        let new = NewContainer {
            image: image.record_name(),
            read: berth_tasks::container::ImageRead::Read(image.read_image()),
            runtime: Runtime {
                name: runtime,
                options: None,
            },
            labels,
            options,
            scratch: self.settings.state.join("views"),
            copy_up,
        };
        // The record is the answer; the lease that held the snapshot until
        // it existed is let go after the answer, in a task of its own (a
        // lease left by a crid that dies first expires on its own).
        let snapshotter = self.daemons.snapshotter.clone();
        let (made_tx, made_rx) = tokio::sync::oneshot::channel();
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let services = clients.services(&snapshotter);
            let made = create_container_then(services, NAMESPACE, new, move |made| {
                let _ = made_tx.send(made.record);
                async {}
            })
            .await;
            if let Err(e) = made {
                let _ = failed_tx.send(e);
            }
        });
        match made_rx.await {
            Ok(record) => Ok(record),
            // Not made: the error follows.
            Err(_) => Err(failed_rx
                .await
                .unwrap_or_else(|_| Error::internal("making the container stopped"))),
        }
    }

    async fn unmake_container(&self, id: &str) -> Result<()> {
        let clients = self.daemons.container_clients().await?;
        match remove_container(clients.services(&self.daemons.snapshotter), NAMESPACE, id).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes a task that has stopped (killing it first if it has not);
    /// a task already gone is fine.
    async fn remove_task(&self, id: &str) -> Result<()> {
        let lock = self
            .removals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone();
        let removed = {
            let _one_at_a_time = lock.lock().await;
            self.remove_task_now(id).await
        };
        let mut removals = self.removals.lock().unwrap_or_else(|p| p.into_inner());
        if removals.get(id).is_some_and(|l| Arc::strong_count(l) <= 2) {
            removals.remove(id);
        }
        removed
    }

    async fn remove_task_now(&self, id: &str) -> Result<()> {
        let tasks = self.daemons.tasks().await?;
        match tasks.get(NAMESPACE, id, "").await {
            Ok(process) if process.status != berth_tasks::Status::Stopped => {
                berth_tasks::kill_all_and_wait(&tasks, NAMESPACE, id, KILL_GRACE).await;
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        match tasks.delete(NAMESPACE, id).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every container event from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<cri::ContainerEventResponse> {
        self.events.subscribe()
    }

    /// Tells subscribers what happened to a container (or a sandbox: its
    /// id is the container id), with its pod's status and its pod's
    /// containers' statuses as they are now.
    fn emit(&self, id: &str, kind: cri::ContainerEventType) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let sandbox_id = match self.store.container(id) {
            Some(c) => c.sandbox_id,
            None => id.to_string(),
        };
        let containers_statuses = self
            .store
            .containers()
            .into_iter()
            .filter(|c| c.sandbox_id == sandbox_id)
            .filter_map(|c| self.container_status(&c.id).ok())
            .collect();
        let _ = self.events.send(cri::ContainerEventResponse {
            container_id: id.to_string(),
            container_event_type: kind as i32,
            created_at: now_nanos(),
            pod_sandbox_status: self.pod_sandbox_status(&sandbox_id).ok(),
            containers_statuses,
        });
    }

    // ---- sandboxes ----

    pub async fn run_pod_sandbox(
        self: &Arc<Self>,
        config: cri::PodSandboxConfig,
        handler: &str,
    ) -> Result<String> {
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| Error::invalid_argument("the sandbox config has no metadata"))?;
        if meta.name.is_empty() || meta.namespace.is_empty() || meta.uid.is_empty() {
            return Err(Error::invalid_argument(
                "sandbox metadata needs a name, a namespace and a uid",
            ));
        }
        let runtime = self.runtime_for(handler)?;
        if spec::pod_user_namespace(&config)?.is_some() && !self.settings.host.id_mapped_mounts {
            return Err(Error::failed_precondition(
                "a user namespace needs id-mapped mounts, which this kernel does not make on crid's filesystem",
            ));
        }
        let options = crate::state::pod_namespace_options(&config);
        let wanted = namespaces::Wanted::of(&options);
        let sysctls = config
            .linux
            .as_ref()
            .map(|l| namespaces::check_sysctls(&l.sysctls, wanted))
            .transpose()?
            .unwrap_or_default();
        let pause = self.settings.pause_process.needed_by(&options);
        let image = if pause {
            Some(self.sandbox_image().await?)
        } else {
            None
        };
        let id = new_id()?;
        let mut sandbox = Sandbox {
            id: id.clone(),
            config: config.clone(),
            runtime_handler: handler.to_string(),
            created_at: now_nanos(),
            phase: SandboxPhase::NotReady,
            netns: None,
            userns: None,
            ipcns: None,
            utsns: None,
            shm: None,
            network: None,
            pause,
            pid: 0,
            dir: self.store.sandbox_dir(&id),
        };
        // Recorded first: a name already taken fails before anything is
        // made, and whatever is made from here on is found again (and
        // cleaned up) after a crash.
        self.store.add_sandbox(sandbox.clone())?;
        match self
            .start_sandbox(&mut sandbox, wanted, &sysctls, image.as_ref(), runtime)
            .await
        {
            Ok(()) => Ok(id),
            Err(e) => {
                tracing::warn!(sandbox = %id, "run failed: {e}");
                let _ = self.stop_pod_sandbox(&id).await;
                let _ = self.remove_pod_sandbox(&id).await;
                Err(e)
            }
        }
    }

    /// Records a pod without a pause process in metad, as a container
    /// record with no image, snapshot or task (see
    /// [`spec::sandbox_record_spec`]): every pod is a record, as with
    /// containerd, and a record left by a crash is found and removed at
    /// start like any other.
    async fn record_sandbox(&self, sandbox: &Sandbox, runtime: String) -> Result<()> {
        let spec = spec::sandbox_record_spec(sandbox)?;
        let value = serde_json::to_vec(&spec)
            .map_err(|e| Error::internal(format!("encoding the spec: {e}")))?;
        let now = std::time::SystemTime::now();
        let record = berth_metadata::Container {
            id: sandbox.id.clone(),
            labels: HashMap::from([(KIND_LABEL.to_string(), KIND_SANDBOX.to_string())])
                .into_iter()
                .collect(),
            image: String::new(),
            runtime: Runtime {
                name: runtime,
                options: None,
            },
            spec: Some(berth_metadata::Any {
                type_url: berth_tasks::container::SPEC_TYPE.to_string(),
                value,
            }),
            snapshotter: self.daemons.snapshotter.clone(),
            snapshot_key: String::new(),
            created_at: now,
            updated_at: now,
            extensions: Default::default(),
            sandbox: String::new(),
        };
        self.daemons
            .containers()
            .await?
            .create(NAMESPACE, record)
            .await
            .map(|_| ())
    }

    /// The image of pods' pause processes, imported (the built-in one) or
    /// pulled when missing.
    async fn sandbox_image(&self) -> Result<images::CriImage> {
        let sandbox_image = &self.settings.sandbox_image;
        if let Some(image) = images::find(&self.daemons, sandbox_image).await? {
            return Ok(image);
        }
        if sandbox_image == crate::pause::BUILTIN_PAUSE {
            crate::pause::import(&self.daemons).await?;
        } else {
            images::pull(&self.daemons, sandbox_image, None).await?;
        }
        images::require(&self.daemons, sandbox_image).await
    }

    async fn start_sandbox(
        self: &Arc<Self>,
        sandbox: &mut Sandbox,
        wanted: namespaces::Wanted,
        sysctls: &[namespaces::Sysctl],
        image: Option<&images::CriImage>,
        runtime: String,
    ) -> Result<()> {
        let id = sandbox.id.clone();
        spec::write_sandbox_files(sandbox)?;
        // The pod's namespaces are made and pinned here (inside its user
        // namespace, made first, when it has one of its own, so that the
        // pod's root administers them), with its hostname and sysctls set.
        let userns = spec::pod_user_namespace(&sandbox.config)?;
        let mappings = userns.as_ref().map(|userns| {
            (
                berth_tasks::container::id_mappings(&userns.uid_mappings),
                berth_tasks::container::id_mappings(&userns.gid_mappings),
            )
        });
        // The pod's root owns the files it would own without one.
        let root = mappings
            .as_ref()
            .map(|(uids, gids)| berth_mount::root_pair(uids, gids))
            .transpose()?;
        let hostname = (wanted.uts && !sandbox.config.hostname.is_empty())
            .then(|| sandbox.config.hostname.clone());
        let (state, name, sysctls) = (self.settings.state.clone(), id.clone(), sysctls.to_vec());
        let pinned = tokio::task::spawn_blocking(move || {
            let user = mappings
                .as_ref()
                .map(|(uids, gids)| (uids.as_slice(), gids.as_slice()));
            let pinned = namespaces::pin(&state, &name, wanted, user)?;
            namespaces::configure(&pinned, hostname.as_deref(), &sysctls)?;
            Ok::<_, Error>(pinned)
        })
        .await
        .map_err(|e| Error::internal(format!("namespace thread: {e}")))??;
        // Recorded with the rest once the pod is ready (or fails): a run
        // cut short before leaves them at their usual paths, where a stop
        // finds them.
        sandbox.set_pinned(pinned.clone());
        if let Some(root) = root {
            spec::give_sandbox_files(sandbox, root)?;
        }
        // The network is attached while the pause container (if the pod
        // has one) is made and started: both need only the namespace, and
        // each costs a few processes (the CNI plugins; the shim and runc).
        // Both are waited for, so a failure of one never leaves the other
        // half-done behind the cleanup, which stops the pause process and
        // detaches what is recorded.
        let network = async {
            if !wanted.net {
                return Ok(None);
            }
            self.settings
                .cni
                .setup(&pod_network(sandbox))
                .await
                .map(Some)
        };
        let pause = async {
            let Some(image) = image else {
                self.record_sandbox(sandbox, runtime).await?;
                return Ok(0);
            };
            let options = spec::sandbox_options(&self.settings.host, sandbox, &image.user)?;
            let labels = HashMap::from([(KIND_LABEL.to_string(), KIND_SANDBOX.to_string())]);
            self.make_container(image, runtime, labels, options, Vec::new())
                .await?;
            let tasks = self.daemons.tasks().await?;
            tasks
                .create(
                    NAMESPACE,
                    CreateTask {
                        container_id: id.clone(),
                        ..Default::default()
                    },
                )
                .await?;
            tasks.start(NAMESPACE, &id, "").await
        };
        let (network, pause) = tokio::join!(network, pause);
        let attachment = network.as_ref().ok().cloned().flatten();
        sandbox.network = attachment.clone();
        let pid = match (network, pause) {
            (Ok(_), Ok(pid)) => pid,
            (network, pause) => {
                // Recorded before the error is returned: the cleanup
                // detaches what is recorded.
                self.store.update_sandbox(&id, |s| {
                    s.set_pinned(pinned.clone());
                    s.network = attachment.clone();
                })?;
                network?;
                return pause.map(|_| ());
            }
        };
        sandbox.pid = pid;
        sandbox.phase = SandboxPhase::Ready;
        // One write for all of it: the pod's state file is synced on each.
        self.store.update_sandbox(&id, |s| {
            s.set_pinned(pinned.clone());
            s.network = attachment.clone();
            s.pid = pid;
            s.phase = SandboxPhase::Ready;
        })?;
        self.emit(&id, cri::ContainerEventType::ContainerCreatedEvent);
        self.emit(&id, cri::ContainerEventType::ContainerStartedEvent);
        if sandbox.pause {
            self.watch_exit(id);
        }
        Ok(())
    }

    /// Where the id-mapped clones of a container's volumes are attached:
    /// outside its own directory, which is removed recursively (these are
    /// only ever unmounted and unlinked, never descended into).
    fn idmapped_dir(&self, id: &str) -> PathBuf {
        self.settings.state.join("idmapped").join(id)
    }

    async fn release_idmapped_volumes(&self, id: &str) -> Result<()> {
        let dir = self.idmapped_dir(id);
        tokio::task::spawn_blocking(move || release_idmapped_volumes(&dir))
            .await
            .map_err(|e| Error::internal(format!("mount thread: {e}")))?
    }

    pub async fn stop_pod_sandbox(self: &Arc<Self>, id: &str) -> Result<()> {
        let Some(sandbox) = self.store.find_sandbox(id) else {
            // The CRI: stopping what is not there succeeds.
            return Ok(());
        };
        for container in self.store.containers() {
            if container.sandbox_id != sandbox.id {
                continue;
            }
            match container.phase {
                ContainerPhase::Running => self.stop_container(&container.id, 0).await?,
                // A created container has no task, unless a start was cut
                // short after taskd made it: that one goes with the pod.
                ContainerPhase::Created => self.remove_task(&container.id).await?,
                ContainerPhase::Exited => {}
            }
        }
        self.remove_task(&sandbox.id).await?;
        self.mark_not_ready(&sandbox.id)?;
        // A RunPodSandbox cut short before it recorded the pod's
        // namespaces left them at their usual paths; CNI's teardown then
        // goes without the attachment's result, which CNI allows (DEL
        // releases the address by the pod's id).
        let state = self.settings.state.clone();
        let mut sandbox = sandbox;
        sandbox.netns = sandbox.netns.clone().or_else(|| {
            let path = namespaces::Kind::Net.dir(&state).join(&sandbox.id);
            path.exists().then_some(path)
        });
        if sandbox.netns.is_some() {
            if let Err(e) = self
                .settings
                .cni
                .teardown(&pod_network(&sandbox), sandbox.network.as_ref())
                .await
            {
                tracing::warn!(sandbox = %sandbox.id, "CNI teardown: {e}");
            }
        }
        let name = sandbox.id.clone();
        tokio::task::spawn_blocking(move || {
            namespaces::unmount_shm(&state, &name)?;
            namespaces::unpin(&state, &name, &namespaces::Kind::ALL)
        })
        .await
        .map_err(|e| Error::internal(format!("namespace thread: {e}")))??;
        self.store.update_sandbox(&sandbox.id, |s| {
            s.set_pinned(namespaces::Pinned::default());
            s.network = None;
        })?;
        Ok(())
    }

    pub async fn remove_pod_sandbox(self: &Arc<Self>, id: &str) -> Result<()> {
        let Some(sandbox) = self.store.find_sandbox(id) else {
            return Ok(());
        };
        for container in self.store.containers() {
            if container.sandbox_id == sandbox.id {
                self.remove_container(&container.id).await?;
            }
        }
        self.stop_pod_sandbox(&sandbox.id).await?;
        self.unmake_container(&sandbox.id).await?;
        self.emit(&sandbox.id, cri::ContainerEventType::ContainerDeletedEvent);
        self.store.remove_sandbox(&sandbox.id);
        Ok(())
    }

    /// What a verbose PodSandboxStatus adds, as containerd gives it under
    /// `info`: its pause process (pid 0 without one), its pinned
    /// namespaces and its config, as JSON.
    pub fn pod_sandbox_info(&self, id: &str) -> Result<HashMap<String, String>> {
        let sandbox = self.store.sandbox_or_not_found(id)?;
        let info = serde_json::json!({
            "pid": sandbox.pid,
            "pauseProcess": sandbox.pause,
            "runtimeHandler": sandbox.runtime_handler,
            "netNamespacePath": sandbox.netns,
            "ipcNamespacePath": sandbox.ipcns,
            "utsNamespacePath": sandbox.utsns,
            "userNamespacePath": sandbox.userns,
            "snapshotter": self.daemons.snapshotter,
            "snapshotKey": sandbox.pause.then_some(&sandbox.id),
            "config": sandbox.config,
        });
        Ok(HashMap::from([("info".to_string(), info.to_string())]))
    }

    pub fn pod_sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus> {
        let sandbox = self.store.sandbox_or_not_found(id)?;
        let ips = sandbox.ip();
        let ns = sandbox.namespace_options();
        Ok(cri::PodSandboxStatus {
            id: sandbox.id.clone(),
            metadata: Some(sandbox.metadata()),
            state: sandbox.state() as i32,
            created_at: sandbox.created_at,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: ips.first().cloned().unwrap_or_default(),
                additional_ips: ips
                    .iter()
                    .skip(1)
                    .map(|ip| cri::PodIp { ip: ip.clone() })
                    .collect(),
            }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace { options: Some(ns) }),
            }),
            labels: sandbox.config.labels.clone(),
            annotations: sandbox.config.annotations.clone(),
            runtime_handler: sandbox.runtime_handler.clone(),
        })
    }

    pub fn list_pod_sandbox(&self, filter: Option<cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
        let filter = filter.unwrap_or_default();
        let mut out: Vec<cri::PodSandbox> = self
            .store
            .sandboxes()
            .into_iter()
            .filter(|s| s.selected_by(&filter.id, &filter.label_selector))
            .filter(|s| {
                filter
                    .state
                    .as_ref()
                    .is_none_or(|v| v.state == s.state() as i32)
            })
            .map(|s| cri::PodSandbox {
                id: s.id.clone(),
                metadata: Some(s.metadata()),
                state: s.state() as i32,
                created_at: s.created_at,
                labels: s.config.labels.clone(),
                annotations: s.config.annotations.clone(),
                runtime_handler: s.runtime_handler.clone(),
            })
            .collect();
        out.sort_by_key(|s| s.created_at);
        out
    }

    // ---- containers ----

    pub async fn create_container(
        &self,
        sandbox_id: &str,
        config: cri::ContainerConfig,
    ) -> Result<String> {
        let sandbox = self.store.sandbox_or_not_found(sandbox_id)?;
        if sandbox.phase != SandboxPhase::Ready {
            return Err(Error::failed_precondition(format!(
                "sandbox {} is not ready",
                sandbox.id
            )));
        }
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| Error::invalid_argument("the container config has no metadata"))?;
        if meta.name.is_empty() {
            return Err(Error::invalid_argument("the container has no name"));
        }
        let asked = config.image.clone().unwrap_or_default().image;
        let image = images::require(&self.daemons, &asked).await?;
        let id = new_id()?;
        let target_pid = {
            let ns = config
                .linux
                .as_ref()
                .and_then(|l| l.security_context.as_ref())
                .and_then(|s| s.namespace_options.as_ref());
            match ns {
                Some(ns) if ns.pid == cri::NamespaceMode::Target as i32 => self
                    .store
                    .find_container(&ns.target_id)
                    .filter(|c| c.phase == ContainerPhase::Running)
                    .map(|c| c.pid),
                _ => None,
            }
        };
        let image_name = image
            .tags
            .iter()
            .next()
            .cloned()
            .unwrap_or_else(|| asked.clone());
        let mut options = spec::container_options(
            &self.settings.host,
            &id,
            &config,
            &sandbox,
            &image_name,
            target_pid,
        )?;
        let log_path = (!sandbox.config.log_directory.is_empty() && !config.log_path.is_empty())
            .then(|| PathBuf::from(&sandbox.config.log_directory).join(&config.log_path));
        let stop_signal = image
            .defaults
            .stop_signal
            .as_deref()
            .map(berth_tasks::signal_number)
            .transpose()?
            .unwrap_or(15);
        let container = Container {
            id: id.clone(),
            sandbox_id: sandbox.id.clone(),
            config,
            image_id: image.id.to_string(),
            image_ref: asked,
            created_at: now_nanos(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            phase: ContainerPhase::Created,
            pid: 0,
            log_path,
            dir: self.store.container_dir(&id),
            stop_signal,
            user: None,
        };
        let mounts = container.config.mounts.clone();
        let wants_idmap = mounts
            .iter()
            .any(|m| !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty());
        if wants_idmap && sandbox.userns.is_none() {
            return Err(Error::invalid_argument(
                "an id-mapped mount needs a pod in a user namespace of its own",
            ));
        }
        self.store.add_container(container)?;
        let made = async {
            if wants_idmap {
                let (dir, wanted) = (self.idmapped_dir(&id), mounts.clone());
                let attached =
                    tokio::task::spawn_blocking(move || attach_idmapped_volumes(&dir, &wanted))
                        .await
                        .map_err(|e| Error::internal(format!("mount thread: {e}")))??;
                // runc binds the id-mapped clone; the bind keeps its mapping.
                for (destination, clone) in attached {
                    for mount in options.mounts.iter_mut() {
                        if mount.destination == destination {
                            mount.source = clone.display().to_string();
                        }
                    }
                }
            }
            // Made under the container's directory, which its removal (or
            // a failed creation's) takes away.
            let (volumes, copy_up) = spec::image_volumes(
                &image.defaults.volumes,
                &mounts,
                &self.store.container_dir(&id),
            )?;
            options.mounts.extend(volumes);
            // As containerd: shallower destinations first (a stable sort),
            // so that an image's /etc volume never hides the pod's
            // /etc/hosts.
            options
                .mounts
                .sort_by_key(|m| m.destination.split('/').filter(|p| !p.is_empty()).count());
            let runtime = self.runtime_for(&sandbox.runtime_handler)?;
            let labels = HashMap::from([(KIND_LABEL.to_string(), KIND_CONTAINER.to_string())]);
            self.make_container(&image, runtime, labels, options, copy_up)
                .await
        };
        let record = match made.await {
            Ok(record) => record,
            Err(e) => {
                if let Err(e) = self.release_idmapped_volumes(&id).await {
                    tracing::warn!(id = %id, "id-mapped mounts of a failed creation: {e}");
                }
                self.store.remove_container(&id);
                return Err(e);
            }
        };
        // Not written on its own (a state write is a sync): the start's
        // write keeps it, and a restart before that reads it again from
        // the record (see `recover`).
        self.store.set_container_user(&id, user_of_record(&record));
        self.emit(&id, cri::ContainerEventType::ContainerCreatedEvent);
        Ok(id)
    }

    pub async fn start_container(self: &Arc<Self>, id: &str) -> Result<()> {
        let container = self.store.container_or_not_found(id)?;
        if container.phase != ContainerPhase::Created {
            return Err(Error::failed_precondition(format!(
                "container {} is not created but {:?}",
                container.id, container.phase
            )));
        }
        let sandbox_ready = self
            .store
            .sandbox(&container.sandbox_id)
            .is_some_and(|s| s.phase == SandboxPhase::Ready);
        if !sandbox_ready {
            return Err(Error::failed_precondition(format!(
                "the sandbox of container {} is not ready",
                container.id
            )));
        }
        if container.user.is_none() {
            // A restart lost it and could not read it again then: the
            // start's state write keeps it.
            if let Err(e) = self.read_user_again(&container.id).await {
                tracing::warn!(id = %container.id, "its user, for its status: {e}");
            }
        }
        let stdio = self.start_logging(&container)?;
        let tasks = self.daemons.tasks().await?;
        let started = async {
            tasks
                .create(
                    NAMESPACE,
                    CreateTask {
                        container_id: container.id.clone(),
                        stdio,
                        ..Default::default()
                    },
                )
                .await?;
            tasks.start(NAMESPACE, &container.id, "").await
        }
        .await;
        match started {
            Ok(pid) => {
                self.store.update_container(&container.id, |c| {
                    c.phase = ContainerPhase::Running;
                    c.pid = pid;
                    c.started_at = now_nanos();
                })?;
                self.emit(
                    &container.id,
                    cri::ContainerEventType::ContainerStartedEvent,
                );
                self.watch_exit(container.id.clone());
                Ok(())
            }
            Err(e) => {
                // As containerd: a container that failed to start is
                // exited, with the reason.
                let _ = self.remove_task(&container.id).await;
                self.stop_logging(&container.id);
                let message = e.to_string();
                let _ = self.store.update_container(&container.id, |c| {
                    c.phase = ContainerPhase::Exited;
                    c.finished_at = now_nanos();
                    c.exit_code = 128;
                    c.reason = "StartError".into();
                    c.message = message;
                });
                Err(e)
            }
        }
    }

    /// Sets a container's user (for its status) from its metad record: it
    /// is kept in memory from its creation until its start's state write.
    async fn read_user_again(&self, id: &str) -> Result<()> {
        let record = self.daemons.containers().await?.get(NAMESPACE, id).await?;
        self.store.set_container_user(id, user_of_record(&record));
        Ok(())
    }

    /// The fifos of a container's output, and their copy into its log.
    fn start_logging(&self, container: &Container) -> Result<Stdio> {
        std::fs::create_dir_all(&container.dir)
            .map_err(|e| Error::io(format!("creating {}", container.dir.display()), &e))?;
        let tty = container.config.tty;
        let stdout = container.dir.join("stdout");
        let stderr = container.dir.join("stderr");
        let stdin_path = container.dir.join("stdin");
        logs::make_fifo(&stdout)?;
        if !tty {
            logs::make_fifo(&stderr)?;
        }
        let stdin = if container.config.stdin {
            logs::make_fifo(&stdin_path)?;
            let writer = tokio::net::unix::pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(&stdin_path)
                .map_err(|e| Error::io(format!("opening {}", stdin_path.display()), &e))?;
            Some(Arc::new(tokio::sync::Mutex::new(Some(writer))))
        } else {
            None
        };
        let log_path = container
            .log_path
            .clone()
            .unwrap_or_else(|| container.dir.join("container.log"));
        let file = LogFile::open(&log_path)?;
        let (exited, watcher) = watch::channel(false);
        let (output, _) = tokio::sync::broadcast::channel(256);
        let out = logs::Follower::new(logs::open_reader(&stdout)?, watcher.clone());
        tokio::spawn(logs::copy_stream(
            out,
            "stdout",
            file.clone(),
            output.clone(),
        ));
        if !tty {
            let err = logs::Follower::new(logs::open_reader(&stderr)?, watcher);
            tokio::spawn(logs::copy_stream(
                err,
                "stderr",
                file.clone(),
                output.clone(),
            ));
        }
        let has_stdin = stdin.is_some();
        self.logging
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                container.id.clone(),
                Logging {
                    exited,
                    file,
                    output,
                    stdin,
                },
            );
        Ok(Stdio {
            stdin: if has_stdin {
                stdin_path.display().to_string()
            } else {
                String::new()
            },
            stdout: stdout.display().to_string(),
            stderr: if tty {
                String::new()
            } else {
                stderr.display().to_string()
            },
            terminal: tty,
        })
    }

    fn stop_logging(&self, id: &str) {
        if let Some(logging) = self
            .logging
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
        {
            let _ = logging.exited.send(true);
        }
    }

    /// The output and exit of a running container, for an attach.
    pub fn attach_to(&self, id: &str) -> Result<Attached> {
        let container = self
            .store
            .find_container(id)
            .filter(|c| c.phase == ContainerPhase::Running)
            .ok_or_else(|| {
                Error::failed_precondition(format!("container {id:?} is not running"))
            })?;
        let logging = self.logging.lock().unwrap_or_else(|p| p.into_inner());
        let l = logging
            .get(&container.id)
            .ok_or_else(|| Error::failed_precondition("the container's output is not open"))?;
        Ok(Attached {
            output: l.output.subscribe(),
            exited: l.exited.subscribe(),
            stdin_once: container.config.stdin_once,
        })
    }

    fn stdin_of(
        &self,
        id: &str,
    ) -> Option<Arc<tokio::sync::Mutex<Option<tokio::net::unix::pipe::Sender>>>> {
        let logging = self.logging.lock().unwrap_or_else(|p| p.into_inner());
        let container = self.store.find_container(id)?;
        logging.get(&container.id).and_then(|l| l.stdin.clone())
    }

    /// Writes to a running container's stdin (it was created with one).
    pub async fn write_stdin(&self, id: &str, data: &[u8]) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let stdin = self
            .stdin_of(id)
            .ok_or_else(|| Error::failed_precondition(format!("container {id} has no stdin")))?;
        let mut writer = stdin.lock().await;
        match writer.as_mut() {
            Some(w) => w
                .write_all(data)
                .await
                .map_err(|e| Error::io("writing the container's stdin", &e)),
            None => Err(Error::failed_precondition(
                "the container's stdin is closed",
            )),
        }
    }

    /// Closes crid's end of a container's stdin.
    pub async fn close_stdin(&self, id: &str) {
        if let Some(stdin) = self.stdin_of(id) {
            stdin.lock().await.take();
        }
    }

    pub fn reopen_container_log(&self, id: &str) -> Result<()> {
        let container = self.store.container_or_not_found(id)?;
        if container.phase != ContainerPhase::Running {
            return Err(Error::failed_precondition(format!(
                "container {} is not running",
                container.id
            )));
        }
        let logging = self.logging.lock().unwrap_or_else(|p| p.into_inner());
        match logging.get(&container.id) {
            Some(l) => l.file.reopen(),
            None => Err(Error::failed_precondition(
                "the container's log is not open",
            )),
        }
    }

    /// Waits for a task's init process to exit (across taskd restarts) and
    /// records the exit.
    fn watch_exit(self: &Arc<Self>, id: String) {
        let crid = self.clone();
        tokio::spawn(async move {
            let exit = loop {
                let waited = match crid.daemons.tasks().await {
                    Ok(tasks) => tasks.wait(NAMESPACE, &id, "").await,
                    Err(e) => Err(e),
                };
                match waited {
                    Ok(exit) => break Some(exit),
                    Err(e) if e.kind() == ErrorKind::NotFound => break None,
                    Err(e) => {
                        tracing::debug!(id, "waiting for the task: {e}; again in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            crid.exited(&id, exit).await;
        });
    }

    async fn exited(&self, id: &str, exit: Option<berth_tasks::Exit>) {
        let (code, at) = match exit {
            Some(exit) => (exit.status as i32, nanos(exit.at)),
            None => (255, now_nanos()),
        };
        if self.store.container(id).is_some() {
            self.stop_logging(id);
            let our_kill = self
                .killed_by_stop
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
            let oom = code == 137 && self.saw_oom(id, !our_kill).await;
            let mut stopped = false;
            let _ = self.store.update_container(id, |c| {
                if c.phase == ContainerPhase::Running {
                    stopped = true;
                    c.phase = ContainerPhase::Exited;
                    c.finished_at = at;
                    c.exit_code = code;
                    c.reason = match (exit.is_some(), code) {
                        (false, _) => "Unknown".into(),
                        (true, 0) => "Completed".into(),
                        (true, _) if oom => "OOMKilled".into(),
                        (true, _) => "Error".into(),
                    };
                }
            });
            self.exit_recorded.notify_waiters();
            self.cpu_samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
            if stopped {
                self.emit(id, cri::ContainerEventType::ContainerStoppedEvent);
            }
        } else if self.store.sandbox(id).is_some() {
            let _ = self.mark_not_ready(id);
        }
        if let Err(e) = self.remove_task(id).await {
            tracing::warn!(id, "deleting the exited task: {e}");
        }
    }

    /// Marks a sandbox not ready; the one caller that changes it (a stop,
    /// or the watcher of its pause process) tells subscribers.
    fn mark_not_ready(&self, id: &str) -> Result<()> {
        let mut stopped = false;
        self.store.update_sandbox(id, |s| {
            stopped = s.phase == SandboxPhase::Ready;
            s.phase = SandboxPhase::NotReady;
        })?;
        if stopped {
            self.emit(id, cri::ContainerEventType::ContainerStoppedEvent);
        }
        Ok(())
    }

    /// Whether the OOM killer acted in the container. The shim publishes
    /// the OOM before the exit as a rule, but the two travel different
    /// paths (metad's exchange, taskd's wait): a SIGKILL exit waits a
    /// moment for it (`wait`), unless the kill was a stop's.
    async fn saw_oom(&self, id: &str, wait: bool) -> bool {
        let rounds = if wait { 20 } else { 1 };
        for round in 0..rounds {
            if self
                .oom_killed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id)
            {
                return true;
            }
            if round + 1 < rounds {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        false
    }

    /// Follows metad's `/tasks/oom` events for the life of crid.
    pub fn watch_ooms(self: &Arc<Self>) {
        let crid = self.clone();
        tokio::spawn(async move {
            let filters = [format!(r#"topic=="/tasks/oom",namespace=="{NAMESPACE}""#)];
            loop {
                let subscribed = async {
                    let events =
                        berth_client::events::RemoteEvents::connect(&crid.daemons.metad).await?;
                    let mut subscription = events.subscribe(&filters).await?;
                    while let Some(envelope) = subscription.next().await? {
                        let event = berth_client::events::KnownEvent::decode(
                            &envelope.event.type_url,
                            &envelope.event.value,
                        );
                        if let Some(id) = event.and_then(|e| e.field(&["container_id".to_string()]))
                        {
                            tracing::info!(container = %id, "OOM killer acted");
                            crid.oom_killed
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(id);
                        }
                    }
                    Ok::<(), Error>(())
                }
                .await;
                if let Err(e) = subscribed {
                    tracing::debug!("OOM events: {e}; again in 1 s");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Stats of the containers `filter` selects (every one when none).
    pub async fn container_stats(
        &self,
        filter: Option<cri::ContainerStatsFilter>,
    ) -> Result<Vec<cri::ContainerStats>> {
        let filter = filter.unwrap_or_default();
        let containers: Vec<Container> = self
            .store
            .containers()
            .into_iter()
            .filter(|c| c.selected_by(&filter.id, &filter.pod_sandbox_id, &filter.label_selector))
            .collect();
        let tasks = self.daemons.tasks().await?;
        let snapshots = self.daemons.snapshots().await?;
        let mut out = Vec::with_capacity(containers.len());
        for c in containers {
            out.push(self.stats_of(&c, &tasks, &snapshots).await);
        }
        Ok(out)
    }

    pub async fn one_container_stats(&self, id: &str) -> Result<cri::ContainerStats> {
        let c = self.store.container_or_not_found(id)?;
        let tasks = self.daemons.tasks().await?;
        let snapshots = self.daemons.snapshots().await?;
        Ok(self.stats_of(&c, &tasks, &snapshots).await)
    }

    async fn stats_of(
        &self,
        c: &Container,
        tasks: &berth_client::RemoteTasks,
        snapshots: &berth_client::RemoteSnapshotter,
    ) -> cri::ContainerStats {
        use berth_snapshot::Snapshotter;
        let now = now_nanos();
        let mut stats = cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: c.id.clone(),
                metadata: Some(c.metadata()),
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
            }),
            ..Default::default()
        };
        if let Ok(usage) = snapshots.usage(NAMESPACE, &c.id).await {
            stats.writable_layer = Some(cri::FilesystemUsage {
                timestamp: now,
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: String::new(),
                }),
                used_bytes: Some(cri::UInt64Value { value: usage.size }),
                inodes_used: Some(cri::UInt64Value {
                    value: usage.inodes,
                }),
            });
        }
        if c.phase != ContainerPhase::Running {
            return stats;
        }
        let filters = [format!("container_id=={}", c.id)];
        let Some(usage) = tasks
            .metrics(NAMESPACE, &filters)
            .await
            .ok()
            .and_then(|m| m.into_iter().find(|m| m.container_id == c.id))
            .and_then(|m| berth_tasks::usage::usage(&m))
        else {
            return stats;
        };
        let (cpu, memory) = self.cpu_and_memory(&c.id, &usage, now);
        stats.cpu = Some(cpu);
        stats.memory = Some(memory);
        stats
    }

    /// A usage sample in the CRI's terms; the CPU rate comes from the
    /// previous sample kept under `key`.
    fn cpu_and_memory(
        &self,
        key: &str,
        usage: &berth_tasks::usage::Usage,
        now: i64,
    ) -> (cri::CpuUsage, cri::MemoryUsage) {
        let rate = {
            let mut samples = self.cpu_samples.lock().unwrap_or_else(|p| p.into_inner());
            let previous = samples.insert(key.to_string(), (now, usage.cpu_nanos));
            previous.and_then(|(at, cpu)| {
                let elapsed = now.checked_sub(at).filter(|e| *e > 0)? as u128;
                let used = usage.cpu_nanos.checked_sub(cpu)? as u128;
                Some((used * 1_000_000_000 / elapsed) as u64)
            })
        };
        let value = |value| Some(cri::UInt64Value { value });
        let cpu = cri::CpuUsage {
            timestamp: now,
            usage_core_nano_seconds: value(usage.cpu_nanos),
            usage_nano_cores: rate.map(|value| cri::UInt64Value { value }),
        };
        let memory = cri::MemoryUsage {
            timestamp: now,
            working_set_bytes: value(usage.working_set_bytes),
            usage_bytes: value(usage.memory_bytes),
            rss_bytes: value(usage.rss_bytes),
            page_faults: value(usage.page_faults),
            major_page_faults: value(usage.major_page_faults),
            available_bytes: None,
        };
        (cpu, memory)
    }

    /// ListPodSandboxStats: the ready pods `filter` selects.
    pub async fn pod_sandbox_stats(
        &self,
        filter: Option<cri::PodSandboxStatsFilter>,
    ) -> Result<Vec<cri::PodSandboxStats>> {
        let filter = filter.unwrap_or_default();
        let sandboxes: Vec<Sandbox> = self
            .store
            .sandboxes()
            .into_iter()
            .filter(|s| {
                s.phase == SandboxPhase::Ready && s.selected_by(&filter.id, &filter.label_selector)
            })
            .collect();
        let mut out = Vec::with_capacity(sandboxes.len());
        for sandbox in &sandboxes {
            out.push(self.sandbox_stats_of(sandbox).await?);
        }
        Ok(out)
    }

    /// PodSandboxStats of one pod, which must be ready (as containerd).
    pub async fn one_pod_sandbox_stats(&self, id: &str) -> Result<cri::PodSandboxStats> {
        let sandbox = self.store.sandbox_or_not_found(id)?;
        if sandbox.phase != SandboxPhase::Ready {
            return Err(Error::failed_precondition(format!(
                "sandbox {} is not ready",
                sandbox.id
            )));
        }
        self.sandbox_stats_of(&sandbox).await
    }

    /// A pod's usage: its pause process's and its running containers'
    /// cgroups added up, the processes in them, its network's counters
    /// (`eth0` the default interface, `lo` left out) and each container's
    /// own stats.
    async fn sandbox_stats_of(&self, sandbox: &Sandbox) -> Result<cri::PodSandboxStats> {
        let tasks = self.daemons.tasks().await?;
        let snapshots = self.daemons.snapshots().await?;
        let now = now_nanos();
        let containers: Vec<Container> = self
            .store
            .containers()
            .into_iter()
            .filter(|c| c.sandbox_id == sandbox.id)
            .collect();
        let mut container_stats = Vec::with_capacity(containers.len());
        for c in &containers {
            container_stats.push(self.stats_of(c, &tasks, &snapshots).await);
        }
        let filters: Vec<String> = std::iter::once(sandbox.id.as_str())
            .chain(
                containers
                    .iter()
                    .filter(|c| c.phase == ContainerPhase::Running)
                    .map(|c| c.id.as_str()),
            )
            .map(|id| format!("container_id=={id}"))
            .collect();
        let usages: Vec<berth_tasks::usage::Usage> = tasks
            .metrics(NAMESPACE, &filters)
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(berth_tasks::usage::usage)
            .collect();
        let mut linux = cri::LinuxPodSandboxStats {
            containers: container_stats,
            ..Default::default()
        };
        if !usages.is_empty() {
            let total: berth_tasks::usage::Usage = usages.iter().copied().sum();
            let (cpu, memory) = self.cpu_and_memory(&format!("pod:{}", sandbox.id), &total, now);
            linux.cpu = Some(cpu);
            linux.memory = Some(memory);
            linux.process = Some(cri::ProcessUsage {
                timestamp: now,
                process_count: Some(cri::UInt64Value {
                    value: total.processes,
                }),
            });
        }
        if let Some(netns) = sandbox.netns.clone() {
            let counters =
                tokio::task::spawn_blocking(move || berth_network::interface_counters(&netns))
                    .await
                    .map_err(|e| Error::internal(format!("network stats thread: {e}")))?;
            if let Ok(counters) = counters {
                let usage = |c: &berth_network::InterfaceCounters| cri::NetworkInterfaceUsage {
                    name: c.name.clone(),
                    rx_bytes: Some(cri::UInt64Value { value: c.rx_bytes }),
                    rx_errors: Some(cri::UInt64Value { value: c.rx_errors }),
                    tx_bytes: Some(cri::UInt64Value { value: c.tx_bytes }),
                    tx_errors: Some(cri::UInt64Value { value: c.tx_errors }),
                };
                linux.network = Some(cri::NetworkUsage {
                    timestamp: now,
                    default_interface: counters
                        .iter()
                        .find(|c| c.name == berth_network::POD_INTERFACE)
                        .map(usage),
                    interfaces: counters
                        .iter()
                        .filter(|c| c.name != "lo" && c.name != berth_network::POD_INTERFACE)
                        .map(usage)
                        .collect(),
                });
            }
        }
        Ok(cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: sandbox.id.clone(),
                metadata: Some(sandbox.metadata()),
                labels: sandbox.config.labels.clone(),
                annotations: sandbox.config.annotations.clone(),
            }),
            linux: Some(linux),
            windows: None,
        })
    }

    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let Some(container) = self.store.find_container(id) else {
            return Ok(());
        };
        if container.phase != ContainerPhase::Running {
            return Ok(());
        }
        let tasks = self.daemons.tasks().await?;
        if timeout > 0 {
            let signal = KillProcess {
                container_id: container.id.clone(),
                exec_id: String::new(),
                signal: container.stop_signal,
                all: false,
            };
            match tasks.kill(NAMESPACE, signal).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let limit = Duration::from_secs(timeout as u64);
            if tokio::time::timeout(limit, tasks.wait(NAMESPACE, &container.id, ""))
                .await
                .is_ok()
            {
                return self.await_exited(&container.id).await;
            }
        }
        self.killed_by_stop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(container.id.clone());
        berth_tasks::kill_all_and_wait(&tasks, NAMESPACE, &container.id, KILL_GRACE).await;
        let exited = self.await_exited(&container.id).await;
        if exited.is_err() {
            // The kill may not have landed: a later exit is not this stop's.
            self.killed_by_stop
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&container.id);
        }
        exited
    }

    /// Returns once the exit watcher has recorded the container's exit
    /// (woken as it records one, and looking again every 25 ms all the
    /// same), or fails after 5 s.
    async fn await_exited(&self, id: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            let recorded = self.exit_recorded.notified();
            tokio::pin!(recorded);
            // Registered before the look: an exit recorded in between
            // still wakes it.
            recorded.as_mut().enable();
            match self.store.container(id) {
                Some(c) if c.phase == ContainerPhase::Running => {
                    let _ = tokio::time::timeout(Duration::from_millis(25), recorded).await;
                }
                _ => return Ok(()),
            }
        }
        Err(Error::unavailable(format!("container {id} did not stop")))
    }

    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let Some(container) = self.store.find_container(id) else {
            return Ok(());
        };
        if container.phase == ContainerPhase::Running {
            self.stop_container(&container.id, 0).await?;
        }
        self.remove_task(&container.id).await?;
        self.stop_logging(&container.id);
        self.release_idmapped_volumes(&container.id).await?;
        self.unmake_container(&container.id).await?;
        self.emit(
            &container.id,
            cri::ContainerEventType::ContainerDeletedEvent,
        );
        self.store.remove_container(&container.id);
        // What an exit that never came (or came before the stop's kill)
        // left of it.
        for marks in [&self.killed_by_stop, &self.oom_killed] {
            marks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&container.id);
        }
        Ok(())
    }

    fn to_cri_container(&self, c: &Container) -> cri::Container {
        cri::Container {
            id: c.id.clone(),
            pod_sandbox_id: c.sandbox_id.clone(),
            metadata: Some(c.metadata()),
            image: Some(cri::ImageSpec {
                image: c.image_id.clone(),
                ..Default::default()
            }),
            image_ref: c.image_id.clone(),
            state: c.state() as i32,
            created_at: c.created_at,
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            image_id: c.image_id.clone(),
        }
    }

    pub fn list_containers(&self, filter: Option<cri::ContainerFilter>) -> Vec<cri::Container> {
        let filter = filter.unwrap_or_default();
        let mut out: Vec<cri::Container> = self
            .store
            .containers()
            .into_iter()
            .filter(|c| c.selected_by(&filter.id, &filter.pod_sandbox_id, &filter.label_selector))
            .filter(|c| {
                filter
                    .state
                    .as_ref()
                    .is_none_or(|v| v.state == c.state() as i32)
            })
            .filter(|c| selected(&c.config.labels, &filter.label_selector))
            .map(|c| self.to_cri_container(&c))
            .collect();
        out.sort_by_key(|c| c.created_at);
        out
    }

    /// What a verbose ContainerStatus adds, as containerd gives it under
    /// `info`: its pod, its process (`crictl inspect`'s `.info.pid`) and
    /// its config, as JSON.
    pub fn container_info(&self, id: &str) -> Result<HashMap<String, String>> {
        let c = self.store.container_or_not_found(id)?;
        let info = serde_json::json!({
            "sandboxID": c.sandbox_id,
            "pid": c.pid,
            "snapshotter": self.daemons.snapshotter,
            "snapshotKey": c.id,
            "config": c.config,
        });
        Ok(HashMap::from([("info".to_string(), info.to_string())]))
    }

    pub fn container_status(&self, id: &str) -> Result<cri::ContainerStatus> {
        let c = self.store.container_or_not_found(id)?;
        let image_spec = c.config.image.clone().unwrap_or_default();
        Ok(cri::ContainerStatus {
            id: c.id.clone(),
            metadata: Some(c.metadata()),
            state: c.state() as i32,
            created_at: c.created_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
            exit_code: c.exit_code,
            image: Some(image_spec),
            image_ref: c.image_id.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            mounts: c.config.mounts.clone(),
            log_path: c
                .log_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            resources: c.config.linux.as_ref().and_then(|l| {
                l.resources.clone().map(|r| cri::ContainerResources {
                    linux: Some(r),
                    ..Default::default()
                })
            }),
            image_id: c.image_id.clone(),
            user: c.user.clone(),
        })
    }

    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<Option<(Vec<u8>, Vec<u8>, i32)>> {
        let container = self.store.container_or_not_found(id)?;
        if container.phase != ContainerPhase::Running {
            return Err(Error::failed_precondition(format!(
                "container {} is not running",
                container.id
            )));
        }
        if cmd.is_empty() {
            return Err(Error::invalid_argument("no command to run"));
        }
        let process = self.exec_process_spec(&container.id, cmd, false).await?;
        let exec_id = format!("exec-{}", &new_id()?[..16]);
        let dir = container.dir.join(&exec_id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), &e))?;
        let result = self
            .exec_in(&container.id, &exec_id, &dir, process, timeout)
            .await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    async fn exec_in(
        &self,
        id: &str,
        exec_id: &str,
        dir: &std::path::Path,
        process: Vec<u8>,
        timeout: Duration,
    ) -> Result<Option<(Vec<u8>, Vec<u8>, i32)>> {
        let stdout = dir.join("stdout");
        let stderr = dir.join("stderr");
        logs::make_fifo(&stdout)?;
        logs::make_fifo(&stderr)?;
        let (exited, watcher) = watch::channel(false);
        let out = tokio::spawn(logs::collect(
            logs::Follower::new(logs::open_reader(&stdout)?, watcher.clone()),
            EXEC_SYNC_OUTPUT_LIMIT,
        ));
        let err = tokio::spawn(logs::collect(
            logs::Follower::new(logs::open_reader(&stderr)?, watcher),
            EXEC_SYNC_OUTPUT_LIMIT,
        ));
        let tasks = self.daemons.tasks().await?;
        tasks
            .exec(
                NAMESPACE,
                ExecProcess {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    stdio: Stdio {
                        stdin: String::new(),
                        stdout: stdout.display().to_string(),
                        stderr: stderr.display().to_string(),
                        terminal: false,
                    },
                    spec: process,
                },
            )
            .await?;
        let outcome = async {
            tasks.start(NAMESPACE, id, exec_id).await?;
            let waited = if timeout.is_zero() {
                Some(tasks.wait(NAMESPACE, id, exec_id).await)
            } else {
                tokio::time::timeout(timeout, tasks.wait(NAMESPACE, id, exec_id))
                    .await
                    .ok()
            };
            Ok::<_, Error>(waited)
        }
        .await;
        let waited = match outcome {
            Ok(Some(waited)) => Some(waited?),
            Ok(None) => {
                // Timed out: the process goes, and the caller hears so.
                let kill = KillProcess {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    signal: 9,
                    all: false,
                };
                let _ = tasks.kill(NAMESPACE, kill).await;
                let _ = tokio::time::timeout(KILL_GRACE, tasks.wait(NAMESPACE, id, exec_id)).await;
                None
            }
            Err(e) => {
                let _ = exited.send(true);
                let _ = tasks.delete_process(NAMESPACE, id, exec_id).await;
                return Err(e);
            }
        };
        let _ = exited.send(true);
        let stdout = out.await.unwrap_or_default();
        let mut stderr = err.await.unwrap_or_default();
        stderr.truncate(EXEC_SYNC_OUTPUT_LIMIT.saturating_sub(stdout.len()));
        let _ = tasks.delete_process(NAMESPACE, id, exec_id).await;
        Ok(waited.map(|exit| (stdout, stderr, exit.status as i32)))
    }

    /// The container's own process with `cmd` for its arguments, as JSON.
    pub async fn exec_process_spec(
        &self,
        id: &str,
        cmd: Vec<String>,
        tty: bool,
    ) -> Result<Vec<u8>> {
        let record = self.daemons.containers().await?.get(NAMESPACE, id).await?;
        let spec_bytes = record
            .spec
            .ok_or_else(|| Error::failed_precondition(format!("container {id} has no spec")))?
            .value;
        let spec: oci_spec::runtime::Spec = serde_json::from_slice(&spec_bytes)
            .map_err(|e| Error::internal(format!("the spec of {id}: {e}")))?;
        let mut process = spec
            .process()
            .clone()
            .ok_or_else(|| Error::failed_precondition(format!("container {id} has no process")))?;
        process.set_args(Some(cmd));
        process.set_terminal(Some(tty));
        serde_json::to_vec(&process).map_err(|e| Error::internal(format!("encoding: {e}")))
    }

    pub async fn update_container_resources(
        &self,
        id: &str,
        resources: Option<cri::LinuxContainerResources>,
    ) -> Result<()> {
        let container = self.store.container_or_not_found(id)?;
        let Some(resources) = resources else {
            return Ok(());
        };
        if container.phase == ContainerPhase::Running {
            let mut out = oci_spec::runtime::LinuxResources::default();
            spec::apply_resources(&mut out, &resources);
            let json = serde_json::to_vec(&out)
                .map_err(|e| Error::internal(format!("encoding resources: {e}")))?;
            self.daemons
                .tasks()
                .await?
                .update(
                    NAMESPACE,
                    berth_tasks::UpdateTask {
                        container_id: container.id.clone(),
                        resources: Some(json),
                        annotations: Default::default(),
                    },
                )
                .await?;
        }
        self.store.update_container(&container.id, |c| {
            let linux = c.config.linux.get_or_insert_with(Default::default);
            linux.resources = Some(resources);
        })?;
        Ok(())
    }

    // ---- recovery ----

    /// After a restart: every running task is watched again (and its log
    /// reopened), exits that happened meanwhile recorded, and records left
    /// by a crash in the middle of a creation removed.
    pub async fn recover(self: &Arc<Self>) -> Result<()> {
        let tasks = self.daemons.tasks().await?;
        for sandbox in self.store.sandboxes() {
            if sandbox.phase != SandboxPhase::Ready {
                continue;
            }
            if !sandbox.pause {
                // A pod without a pause process is ready until it is
                // stopped, as long as its namespaces are (a reboot takes
                // them: the kubelet then makes the pod again).
                if !namespaces::still_pinned(&sandbox.pinned()) {
                    tracing::warn!(sandbox = %sandbox.id, "its namespaces are gone: not ready");
                    self.mark_not_ready(&sandbox.id)?;
                }
                continue;
            }
            match tasks.get(NAMESPACE, &sandbox.id, "").await {
                Ok(p) if p.status == berth_tasks::Status::Running => self.watch_exit(sandbox.id),
                Ok(p) => self.exited(&sandbox.id, p.exit).await,
                Err(e) if e.kind() == ErrorKind::NotFound => self.exited(&sandbox.id, None).await,
                Err(e) => return Err(e),
            }
        }
        for container in self.store.containers() {
            if container.user.is_none() {
                // Created, not yet started, when crid went: its user was
                // never written.
                if let Err(e) = self.read_user_again(&container.id).await {
                    tracing::warn!(id = %container.id, "its user, for its status (read again at its start): {e}");
                }
            }
            if container.phase == ContainerPhase::Created {
                // A StartContainer cut short by the crash may have made
                // (and started) the task; the container is still created
                // for the kubelet, which starts it again: what the cut-short
                // start made goes first.
                if let Err(e) = self.remove_task(&container.id).await {
                    tracing::warn!(id = %container.id, "removing a cut-short start's task: {e}");
                }
                continue;
            }
            if container.phase != ContainerPhase::Running {
                continue;
            }
            match tasks.get(NAMESPACE, &container.id, "").await {
                Ok(p) if p.status == berth_tasks::Status::Running => {
                    if let Err(e) = self.start_logging(&container) {
                        tracing::warn!(id = %container.id, "reopening its output: {e}");
                    }
                    self.watch_exit(container.id);
                }
                Ok(p) => self.exited(&container.id, p.exit).await,
                Err(e) if e.kind() == ErrorKind::NotFound => self.exited(&container.id, None).await,
                Err(e) => return Err(e),
            }
        }
        // Id-mapped volume clones of containers crid no longer has: a
        // creation or removal cut short.
        let idmapped = self.settings.state.join("idmapped");
        for entry in std::fs::read_dir(&idmapped).into_iter().flatten().flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if self.store.container(&id).is_none() {
                if let Err(e) = self.release_idmapped_volumes(&id).await {
                    tracing::warn!(id = %id, "id-mapped mounts left by a crash: {e}");
                }
            }
        }
        // Records crid made but has no state for: a creation cut short.
        let records = self
            .daemons
            .containers()
            .await?
            .list(NAMESPACE, &[])
            .await?;
        for record in records {
            let ours = matches!(
                record.labels.get(KIND_LABEL).map(String::as_str),
                Some(KIND_SANDBOX | KIND_CONTAINER)
            );
            if ours
                && self.store.sandbox(&record.id).is_none()
                && self.store.container(&record.id).is_none()
            {
                tracing::info!(id = %record.id, "removing a record left by a crash");
                let _ = self.remove_task(&record.id).await;
                let _ = self.unmake_container(&record.id).await;
            }
        }
        Ok(())
    }

    /// Whether CNI can set up pods: a network list whose plugins exist.
    pub fn network_condition(&self) -> (bool, String) {
        match self.settings.cni.network() {
            Ok(Some(list)) => {
                let missing = self.settings.cni.missing_plugins(&list);
                if missing.is_empty() {
                    (true, String::new())
                } else {
                    (
                        false,
                        format!("CNI plugins not found: {}", missing.join(", ")),
                    )
                }
            }
            Ok(None) => (
                false,
                format!(
                    "no network config found in {}",
                    self.settings.cni.conf_dir.display()
                ),
            ),
            Err(e) => (false, e.to_string()),
        }
    }
}

/// Attaches under `dir` (one entry per mount, named by its index) an
/// id-mapped clone of each mount's host path that asks for `uid_mappings`
/// and `gid_mappings` (the kubelet's volumes of a pod in a user namespace),
/// and returns each one's container path and clone. What was attached
/// before a failure stays for [`release_idmapped_volumes`]. Blocks.
fn attach_idmapped_volumes(
    dir: &std::path::Path,
    mounts: &[cri::Mount],
) -> Result<Vec<(String, PathBuf)>> {
    let mut attached = Vec::new();
    for (n, mount) in mounts.iter().enumerate() {
        if mount.uid_mappings.is_empty() && mount.gid_mappings.is_empty() {
            continue;
        }
        let path = &mount.container_path;
        let convert = |what: &str, list: &[cri::IdMapping]| {
            if list.is_empty() {
                return Err(Error::invalid_argument(format!(
                    "mount at {path}: {what} mappings are missing"
                )));
            }
            list.iter()
                .map(|m| {
                    let mapping = berth_mount::IdMapping {
                        container_id: m.container_id,
                        host_id: m.host_id,
                        size: m.length,
                    };
                    berth_mount::idmap::check_mapping(&mapping)
                        .map(|()| mapping)
                        .map_err(|e| Error::invalid_argument(format!("mount at {path}: {e}")))
                })
                .collect::<Result<Vec<_>>>()
        };
        let (uids, gids) = (
            convert("uid", &mount.uid_mappings)?,
            convert("gid", &mount.gid_mappings)?,
        );
        let source = std::path::Path::new(&mount.host_path);
        let meta = std::fs::metadata(source)
            .map_err(|e| Error::io(format!("mount at {path}: {}", source.display()), &e))?;
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), &e))?;
        let clone = dir.join(n.to_string());
        let made = if meta.is_dir() {
            std::fs::create_dir(&clone)
        } else {
            std::fs::File::create(&clone).map(|_| ())
        };
        made.map_err(|e| Error::io(format!("creating {}", clone.display()), &e))?;
        berth_mount::idmapped_bind(source, &clone, &uids, &gids)?;
        attached.push((path.clone(), clone));
    }
    Ok(attached)
}

/// Detaches and unlinks every id-mapped clone under `dir`, then `dir`;
/// nothing there is ever deleted recursively (a clone still mounted would
/// take the volume's files with it). A `dir` that is gone is fine. Blocks.
fn release_idmapped_volumes(dir: &std::path::Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()), &e)),
    };
    for entry in entries.flatten() {
        let clone = entry.path();
        berth_mount::unmount_all(&clone)?;
        let removed = match entry.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir(&clone),
            _ => std::fs::remove_file(&clone),
        };
        removed.map_err(|e| Error::io(format!("removing {}", clone.display()), &e))?;
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", dir.display()), &e)),
    }
}

fn pod_network(sandbox: &Sandbox) -> PodNetwork {
    let meta = sandbox.metadata();
    PodNetwork {
        id: sandbox.id.clone(),
        netns: sandbox.netns.clone().unwrap_or_default(),
        pod_name: meta.name,
        pod_namespace: meta.namespace,
        pod_uid: meta.uid,
        port_mappings: sandbox
            .config
            .port_mappings
            .iter()
            .filter(|p| p.host_port > 0)
            .map(|p| PortMapping {
                host_port: p.host_port as u16,
                container_port: p.container_port as u16,
                protocol: match cri::Protocol::try_from(p.protocol) {
                    Ok(cri::Protocol::Udp) => "udp",
                    Ok(cri::Protocol::Sctp) => "sctp",
                    _ => "tcp",
                }
                .to_string(),
                host_ip: p.host_ip.clone(),
            })
            .collect(),
    }
}

/// The user a container's record says its process runs as, for its status.
fn user_of_record(record: &berth_metadata::Container) -> Option<cri::ContainerUser> {
    let spec = record.spec.as_ref()?;
    let spec = serde_json::from_slice::<oci_spec::runtime::Spec>(&spec.value).ok()?;
    spec::effective_user(&spec)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn only_a_pod_sharing_one_pid_namespace_needs_a_pause_process_by_default() {
        let options = |pid: cri::NamespaceMode| cri::NamespaceOption {
            pid: pid as i32,
            ..Default::default()
        };
        use cri::NamespaceMode::{Container, Node, Pod, Target};
        let default = PauseProcess::default();
        assert!(default.needed_by(&options(Pod)));
        for mode in [Container, Node, Target] {
            assert!(!default.needed_by(&options(mode)), "{mode:?}");
            assert!(PauseProcess::Always.needed_by(&options(mode)), "{mode:?}");
        }
        // The config file's spelling is the flag's.
        #[derive(serde::Deserialize)]
        struct File {
            pause_process: PauseProcess,
        }
        let file: File = serde_json::from_str(r#"{"pause_process": "when-pid-shared"}"#).unwrap();
        assert_eq!(file.pause_process, PauseProcess::WhenPidShared);
        let file: File = serde_json::from_str(r#"{"pause_process": "always"}"#).unwrap();
        assert_eq!(file.pause_process, PauseProcess::Always);
        use clap::ValueEnum;
        assert_eq!(
            PauseProcess::from_str("when-pid-shared", false).unwrap(),
            PauseProcess::WhenPidShared
        );
    }
}
