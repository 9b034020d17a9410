//! The seam between the shim and the OCI runtime it drives: the operations
//! the shim asks of runc, as a trait. [`crate::runc::Runc`] is the real one;
//! the container state and the exit routing only ever see `dyn Runtime`, so
//! unit tests drive them with a fake that needs neither root nor runc.
//!
//! Also here: the runtime settings, and how they are saved in the bundle
//! for `delete` (cleanup mode) to read back.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use crate::container::SpecFacts;
use crate::error::{Result, ShimError};
use crate::reaper::Reaper;
use crate::runc::Runc;

/// The runtime settings `delete` (cleanup mode) reads back from the bundle.
pub const RUNTIME_FILE: &str = "berth-runtime.json";

/// Which runtime binary to run and its global flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub binary: String,
    pub root: PathBuf,
    pub systemd_cgroup: bool,
    pub criu: Option<String>,
}

/// The container's stdio, handed to `create` and `exec`.
#[derive(Debug)]
pub struct ProcessStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

#[derive(Debug, Default)]
pub struct CreateOptions<'a> {
    pub console_socket: Option<&'a Path>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
}

/// What the shim asks of an OCI runtime, for one container it runs.
/// Every call names the container by `id`; errors are
/// [`ShimError::Runtime`] with the runtime's own message, which callers
/// match on ("does not exist", "not running") as they would runc's.
#[async_trait]
pub trait Runtime: std::fmt::Debug + Send + Sync {
    /// The settings the runtime was made with.
    fn config(&self) -> &RuntimeConfig;

    /// `create`: sets the container up with its init stopped before the
    /// user process; writes the init's pid to `pid_file`. Without `stdio`
    /// the init gets /dev/null.
    async fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        options: &CreateOptions<'_>,
        stdio: Option<ProcessStdio>,
    ) -> Result<()>;

    /// `start`: lets a created init (`init_pid`) run the user process.
    async fn start(&self, id: &str, init_pid: u32) -> Result<()>;

    /// `exec --detach`: starts the process described in `process_json`
    /// and writes its pid to `pid_file` before returning.
    async fn exec(
        &self,
        id: &str,
        process_json: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        stdio: Option<ProcessStdio>,
    ) -> Result<()>;

    /// `kill [--all]`: signals the init (or every process of the container).
    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()>;

    /// `delete [--force]`; a container the runtime does not know is not an error.
    async fn delete(&self, id: &str, force: bool) -> Result<()>;

    /// `delete --force` of a container whose init has exited and been
    /// reaped: what a runtime may do more cheaply than `delete`.
    async fn delete_stopped(&self, id: &str) -> Result<()> {
        self.delete(id, true).await
    }

    async fn pause(&self, id: &str) -> Result<()>;

    async fn resume(&self, id: &str) -> Result<()>;

    /// The pids of every process in the container.
    async fn ps(&self, id: &str) -> Result<Vec<u32>>;

    /// `update` with the JSON LinuxResources.
    async fn update(&self, id: &str, resources_json: &[u8]) -> Result<()>;

    async fn checkpoint(
        &self,
        id: &str,
        image_path: &Path,
        work_path: Option<&Path>,
        leave_running: bool,
    ) -> Result<()>;
}

/// Makes the runtime for a container at Create, from the settings in the
/// request, the bundle and what its spec says (None: unreadable).
pub type RuntimeFactory = Arc<
    dyn Fn(RuntimeConfig, &Path, Option<SpecFacts>, Arc<Reaper>) -> Arc<dyn Runtime> + Send + Sync,
>;

/// The real runtime: the runc command line (or crun's, runsc's...).
pub fn runc_factory() -> RuntimeFactory {
    Arc::new(|config, bundle, spec, reaper| Arc::new(Runc::new(config, bundle, spec, reaper)))
}

/// [`RUNTIME_FILE`]'s contents.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedRuntime {
    binary: String,
    root: PathBuf,
    systemd_cgroup: bool,
}

pub fn save_runtime_config(bundle: &Path, config: &RuntimeConfig) -> Result<()> {
    let saved = SavedRuntime {
        binary: config.binary.clone(),
        root: config.root.clone(),
        systemd_cgroup: config.systemd_cgroup,
    };
    let json =
        serde_json::to_vec(&saved).map_err(|e| ShimError::json("encoding the runtime", e))?;
    let path = bundle.join(RUNTIME_FILE);
    std::fs::write(&path, json).map_err(|e| ShimError::io(format!("writing {}", path.display()), e))
}

/// The runtime settings saved at Create, if any.
pub fn load_runtime_config(bundle: &Path) -> Option<RuntimeConfig> {
    let text = std::fs::read(bundle.join(RUNTIME_FILE)).ok()?;
    let saved: SavedRuntime = serde_json::from_slice(&text).ok()?;
    Some(RuntimeConfig {
        binary: saved.binary,
        root: saved.root,
        systemd_cgroup: saved.systemd_cgroup,
        criu: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
