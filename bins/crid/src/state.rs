//! What crid keeps of each sandbox and container beyond metad's record and
//! taskd's process: the CRI config it was made from and its life so far
//! (network, times, exit), one JSON file per object under crid's root,
//! replaced atomically on every change so that a SIGKILL leaves either the
//! old state or the new.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_errdefs::{Error, Result};
use berth_network::Attachment;
use k8s_cri::v1 as cri;
use serde::{Deserialize, Serialize};

/// containerd's label telling sandboxes from containers in metad.
pub const KIND_LABEL: &str = "io.cri-containerd.kind";
pub const KIND_SANDBOX: &str = "sandbox";
pub const KIND_CONTAINER: &str = "container";

/// Nanoseconds since the epoch, as the CRI counts time.
pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxPhase {
    Ready,
    NotReady,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sandbox {
    pub id: String,
    pub config: cri::PodSandboxConfig,
    pub runtime_handler: String,
    pub created_at: i64,
    pub phase: SandboxPhase,
    /// The pinned network namespace (none on the host network).
    pub netns: Option<PathBuf>,
    /// The pinned user namespace of a pod in one of its own.
    #[serde(default)]
    pub userns: Option<PathBuf>,
    /// The pinned IPC namespace (none when it shares the node's).
    #[serde(default)]
    pub ipcns: Option<PathBuf>,
    /// The pinned UTS namespace (none on the host network).
    #[serde(default)]
    pub utsns: Option<PathBuf>,
    /// The pod's /dev/shm, a tmpfs its containers share with its IPC
    /// namespace (none when that is the node's).
    #[serde(default)]
    pub shm: Option<PathBuf>,
    /// What CNI gave it, for the teardown.
    pub network: Option<Attachment>,
    /// Whether it has a pause process: only a pod whose containers share
    /// one PID namespace needs one (or every pod, with `--pause-process
    /// always`); state written before pods could go without had one.
    #[serde(default = "has_pause_by_default")]
    pub pause: bool,
    /// The pause process, once started; 0 without one.
    pub pid: u32,
    /// Hostname, hosts and resolv.conf, bound into its containers.
    pub dir: PathBuf,
}

impl Sandbox {
    /// The pod's user namespace as its processes join it: the one pinned
    /// for it, with the mappings its config asks for; None for the node's.
    pub fn user_namespace(&self) -> Result<Option<berth_oci::UserNamespace>> {
        Ok(
            crate::spec::pod_user_namespace(&self.config)?.map(|mut ns| {
                ns.path = self.userns.as_ref().map(|p| p.display().to_string());
                ns
            }),
        )
    }

    /// What crid pinned for the pod, as recorded.
    pub fn pinned(&self) -> crate::namespaces::Pinned {
        crate::namespaces::Pinned {
            net: self.netns.clone(),
            ipc: self.ipcns.clone(),
            uts: self.utsns.clone(),
            user: self.userns.clone(),
            shm: self.shm.clone(),
        }
    }

    /// Records what crid pinned for the pod (all None once unpinned).
    pub fn set_pinned(&mut self, pinned: crate::namespaces::Pinned) {
        self.netns = pinned.net;
        self.ipcns = pinned.ipc;
        self.utsns = pinned.uts;
        self.userns = pinned.user;
        self.shm = pinned.shm;
    }

    pub fn metadata(&self) -> cri::PodSandboxMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }

    /// Whether a CRI filter's id (a prefix) and label selector select it.
    pub fn selected_by(&self, id: &str, labels: &HashMap<String, String>) -> bool {
        (id.is_empty() || self.id.starts_with(id)) && selected(&self.config.labels, labels)
    }

    /// The name the CRI keeps unique: name, namespace, uid, attempt.
    pub fn unique_name(&self) -> String {
        sandbox_name(&self.metadata())
    }

    pub fn state(&self) -> cri::PodSandboxState {
        match self.phase {
            SandboxPhase::Ready => cri::PodSandboxState::SandboxReady,
            SandboxPhase::NotReady => cri::PodSandboxState::SandboxNotready,
        }
    }

    pub fn ip(&self) -> Vec<String> {
        self.network.as_ref().map(|n| n.ips()).unwrap_or_default()
    }

    pub fn namespace_options(&self) -> cri::NamespaceOption {
        pod_namespace_options(&self.config)
    }
}

/// The namespace options a pod's config asks for (the defaults if none).
pub fn pod_namespace_options(config: &cri::PodSandboxConfig) -> cri::NamespaceOption {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

fn has_pause_by_default() -> bool {
    true
}

pub fn sandbox_name(m: &cri::PodSandboxMetadata) -> String {
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerPhase {
    Created,
    Running,
    Exited,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub sandbox_id: String,
    pub config: cri::ContainerConfig,
    /// The image's id (its config digest) and the reference it was asked by.
    pub image_id: String,
    pub image_ref: String,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub phase: ContainerPhase,
    pub pid: u32,
    /// The log file (the sandbox's log directory joined with the config's
    /// log path), or none.
    pub log_path: Option<PathBuf>,
    /// Its fifos and exec fifos.
    pub dir: PathBuf,
    /// The signal that stops it (the image's StopSignal), as a number.
    pub stop_signal: u32,
    /// Who its process runs as (from its spec).
    #[serde(default)]
    pub user: Option<cri::ContainerUser>,
}

impl Container {
    pub fn metadata(&self) -> cri::ContainerMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }

    /// Whether a list filter selects it: an id prefix, a pod id prefix and
    /// labels, each empty for any.
    pub fn selected_by(
        &self,
        id: &str,
        pod_sandbox_id: &str,
        labels: &HashMap<String, String>,
    ) -> bool {
        (id.is_empty() || self.id.starts_with(id))
            && (pod_sandbox_id.is_empty() || self.sandbox_id.starts_with(pod_sandbox_id))
            && selected(&self.config.labels, labels)
    }

    pub fn state(&self) -> cri::ContainerState {
        match self.phase {
            ContainerPhase::Created => cri::ContainerState::ContainerCreated,
            ContainerPhase::Running => cri::ContainerState::ContainerRunning,
            ContainerPhase::Exited => cri::ContainerState::ContainerExited,
        }
    }
}

/// Writes `value` to `path` through a temporary file and a rename.
fn save<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| Error::internal(format!("encoding {}: {e}", path.display())))?;
    let dir = path
        .parent()
        .ok_or_else(|| Error::internal("a state file without a directory"))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), &e))?;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)
        .map_err(|e| Error::io(format!("creating {}", temporary.display()), &e))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_data())
        .map_err(|e| Error::io(format!("writing {}", temporary.display()), &e))?;
    std::fs::rename(&temporary, path)
        .map_err(|e| Error::io(format!("renaming {}", temporary.display()), &e))
}

/// The prefix a record's directory is renamed to before it is deleted, so
/// that a removal cut short (crid SIGKILLed inside `remove_dir_all`) never
/// leaves a directory that looks like a record's.
const GONE_PREFIX: &str = ".gone-";

/// Loads the records under `dir`; what a removal or a creation cut short
/// left (a renamed directory, a directory without its state file) is
/// deleted, as nothing can be in flight at start.
fn load_all<T: for<'de> Deserialize<'de>>(dir: &Path) -> Vec<T> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if entry.file_name().to_string_lossy().starts_with(GONE_PREFIX) {
            remove_record_dir(&path);
            continue;
        }
        let file = path.join("state.json");
        match std::fs::read(&file) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(value) => out.push(value),
                Err(e) => tracing::warn!(file = %file.display(), "unreadable state: {e}"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(dir = %path.display(), "removing what a cut-short run left");
                remove_record_dir(&path);
            }
            Err(e) => tracing::warn!(file = %file.display(), "no state: {e}"),
        }
    }
    out
}

/// Deletes a record's directory: renamed first (one atomic step), so a
/// crash part-way leaves only a name `load_all` deletes.
fn remove_record_dir(path: &Path) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let doomed = if name.starts_with(GONE_PREFIX) {
        path.to_path_buf()
    } else {
        path.with_file_name(format!("{GONE_PREFIX}{name}"))
    };
    if doomed != path {
        match std::fs::rename(path, &doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(dir = %path.display(), "renaming before removal: {e}");
                return;
            }
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&doomed) {
        tracing::warn!(dir = %doomed.display(), "removing: {e}");
    }
}

/// Every sandbox and container crid knows, in memory and on disk.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    sandboxes: Mutex<HashMap<String, Sandbox>>,
    containers: Mutex<HashMap<String, Container>>,
}

impl Store {
    /// Loads what the last run left under `root`.
    pub fn open(root: &Path) -> Store {
        let sandboxes = load_all::<Sandbox>(&root.join("sandboxes"))
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        let containers = load_all::<Container>(&root.join("containers"))
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect();
        Store {
            root: root.to_path_buf(),
            sandboxes: Mutex::new(sandboxes),
            containers: Mutex::new(containers),
        }
    }

    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.root.join("sandboxes").join(id)
    }

    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }

    fn lock_sandboxes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Sandbox>> {
        self.sandboxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn sandboxes(&self) -> Vec<Sandbox> {
        self.lock_sandboxes().values().cloned().collect()
    }

    pub fn containers(&self) -> Vec<Container> {
        self.lock_containers().values().cloned().collect()
    }

    pub fn sandbox(&self, id: &str) -> Option<Sandbox> {
        self.lock_sandboxes().get(id).cloned()
    }

    pub fn container(&self, id: &str) -> Option<Container> {
        self.lock_containers().get(id).cloned()
    }

    /// The one sandbox whose id is `id` or starts with it (as crictl
    /// accepts prefixes).
    pub fn find_sandbox(&self, id: &str) -> Option<Sandbox> {
        find_by_prefix(&self.lock_sandboxes(), id)
    }

    pub fn find_container(&self, id: &str) -> Option<Container> {
        find_by_prefix(&self.lock_containers(), id)
    }

    /// [`Store::find_sandbox`], or NotFound as the CRI answers it.
    pub fn sandbox_or_not_found(&self, id: &str) -> Result<Sandbox> {
        self.find_sandbox(id)
            .ok_or_else(|| Error::not_found(format!("sandbox {id:?} not found")))
    }

    /// [`Store::find_container`], or NotFound as the CRI answers it.
    pub fn container_or_not_found(&self, id: &str) -> Result<Container> {
        self.find_container(id)
            .ok_or_else(|| Error::not_found(format!("container {id:?} not found")))
    }

    /// Records a new sandbox, unless its name is taken.
    pub fn add_sandbox(&self, sandbox: Sandbox) -> Result<()> {
        let mut sandboxes = self.lock_sandboxes();
        let name = sandbox.unique_name();
        if let Some(other) = sandboxes.values().find(|s| s.unique_name() == name) {
            return Err(Error::already_exists(format!(
                "the sandbox name {name:?} is taken by {}",
                other.id
            )));
        }
        save(&self.sandbox_dir(&sandbox.id).join("state.json"), &sandbox)?;
        sandboxes.insert(sandbox.id.clone(), sandbox);
        Ok(())
    }

    /// Changes a sandbox and saves it; NotFound if it is gone.
    pub fn update_sandbox(&self, id: &str, change: impl FnOnce(&mut Sandbox)) -> Result<Sandbox> {
        let mut sandboxes = self.lock_sandboxes();
        let sandbox = sandboxes
            .get_mut(id)
            .ok_or_else(|| Error::not_found(format!("sandbox {id}")))?;
        let mut changed = sandbox.clone();
        change(&mut changed);
        save(&self.sandbox_dir(id).join("state.json"), &changed)?;
        *sandbox = changed.clone();
        Ok(changed)
    }

    pub fn remove_sandbox(&self, id: &str) {
        self.lock_sandboxes().remove(id);
        remove_record_dir(&self.sandbox_dir(id));
    }

    /// Records a new container, unless its name is taken in its pod.
    pub fn add_container(&self, container: Container) -> Result<()> {
        let mut containers = self.lock_containers();
        let name = container_name(&container);
        if let Some(other) = containers
            .values()
            .find(|c| c.sandbox_id == container.sandbox_id && container_name(c) == name)
        {
            return Err(Error::already_exists(format!(
                "the container name {name:?} is taken by {} in its pod",
                other.id
            )));
        }
        save(
            &self.container_dir(&container.id).join("state.json"),
            &container,
        )?;
        containers.insert(container.id.clone(), container);
        Ok(())
    }

    pub fn update_container(
        &self,
        id: &str,
        change: impl FnOnce(&mut Container),
    ) -> Result<Container> {
        let mut containers = self.lock_containers();
        let container = containers
            .get_mut(id)
            .ok_or_else(|| Error::not_found(format!("container {id}")))?;
        let mut changed = container.clone();
        change(&mut changed);
        save(&self.container_dir(id).join("state.json"), &changed)?;
        *container = changed.clone();
        Ok(changed)
    }

    /// Sets a container's user in memory only: the next write of its
    /// state keeps it (a creation sets it just before the start writes).
    pub fn set_container_user(&self, id: &str, user: Option<cri::ContainerUser>) {
        if let Some(container) = self.lock_containers().get_mut(id) {
            container.user = user;
        }
    }

    pub fn remove_container(&self, id: &str) {
        self.lock_containers().remove(id);
        remove_record_dir(&self.container_dir(id));
    }
}

fn container_name(c: &Container) -> String {
    let m = c.metadata();
    format!("{}_{}", m.name, m.attempt)
}

fn find_by_prefix<T: Clone>(map: &HashMap<String, T>, id: &str) -> Option<T> {
    if id.is_empty() {
        return None;
    }
    if let Some(found) = map.get(id) {
        return Some(found.clone());
    }
    let mut matches = map.iter().filter(|(k, _)| k.starts_with(id));
    match (matches.next(), matches.next()) {
        (Some((_, found)), None) => Some(found.clone()),
        _ => None,
    }
}

/// Whether `labels` has every pair of `selector`.
pub fn selected(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// crid SIGKILLed inside a record's removal (or before a new record's
    /// state file was renamed into place) left a directory no run listed
    /// and none removed: start removes it.
    #[test]
    fn what_a_cut_short_removal_left_is_removed_at_start() {
        let root = tempfile::tempdir().unwrap();
        let sandboxes = root.path().join("sandboxes");
        let half_removed = sandboxes.join("a".repeat(64));
        std::fs::create_dir_all(&half_removed).unwrap();
        std::fs::write(half_removed.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        let renamed = sandboxes.join(format!("{GONE_PREFIX}{}", "b".repeat(64)));
        std::fs::create_dir_all(renamed.join("deeper")).unwrap();
        let damaged = root.path().join("containers").join("c".repeat(64));
        std::fs::create_dir_all(&damaged).unwrap();
        std::fs::write(damaged.join("state.json"), "{not json").unwrap();

        let store = Store::open(root.path());
        assert!(store.sandboxes().is_empty());
        assert!(!half_removed.exists() && !renamed.exists());
        // A state file that is there but unreadable is kept for whoever
        // looks into it.
        assert!(damaged.join("state.json").exists());

        // A removal renames first: nothing is left under the record's name.
        let record = sandboxes.join("d".repeat(64));
        std::fs::create_dir_all(&record).unwrap();
        remove_record_dir(&record);
        assert_eq!(std::fs::read_dir(&sandboxes).unwrap().count(), 0);
    }
}
