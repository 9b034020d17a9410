//! A task's bundle: `<state>/<namespace>/<id>`, holding the OCI spec
//! (`config.json`), the `rootfs` mount point, the `log` fifo the shim
//! writes to, the `address` the shim writes, and taskd's own record of the
//! task (`task.json`), from which a restarted taskd finds the task again.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use berth_errdefs::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::shim::Bootstrap;

const SPEC: &str = "config.json";
const ROOTFS: &str = "rootfs";
const LOG: &str = "log";
const RECORD: &str = "task.json";
/// containerd's name for the resolved shim path, read back on restart.
const SHIM_BINARY_PATH: &str = "shim-binary-path";
/// Present once the init process's exit has reached metad.
const EXIT_REPORTED: &str = "exit-reported";
/// Removed bundles on their way out (see [`Bundle::remove`]); a name no
/// namespace may have.
pub const TRASH: &str = ".trash";

/// Makes each trashed bundle's name its own, though one id's bundles may
/// be trashed again before the last has gone.
static TRASHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What taskd keeps of a task beyond what its shim knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub runtime: String,
    pub shim_binary: PathBuf,
    pub bootstrap: Bootstrap,
}

/// One task's bundle directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub namespace: String,
    pub id: String,
    pub path: PathBuf,
}

impl Bundle {
    /// Where the bundle of `namespace`/`id` lives; both are validated
    /// before they become a path.
    pub fn locate(state: &Path, namespace: &str, id: &str) -> Result<Bundle> {
        berth_ids::validate_namespace(namespace)
            .map_err(|e| Error::invalid_argument(e.to_string()))?;
        berth_ids::validate_id(id).map_err(|e| Error::invalid_argument(e.to_string()))?;
        Ok(Bundle {
            namespace: namespace.to_string(),
            id: id.to_string(),
            path: state.join(namespace).join(id),
        })
    }

    /// Creates the bundle with its spec, an empty rootfs and the log fifo.
    /// AlreadyExists if a bundle is there.
    pub fn create(&self, spec: &[u8]) -> Result<()> {
        let parent = self.path.parent().unwrap_or(&self.path);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), &e))?;
        match std::fs::DirBuilder::new().mode(0o700).create(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::already_exists(format!(
                    "task {}: a bundle exists at {}",
                    self.id,
                    self.path.display()
                )))
            }
            Err(e) => return Err(Error::io(format!("creating {}", self.path.display()), &e)),
        }
        let filled = (|| {
            if let Some(gid) = user_namespace_root_gid(spec) {
                // runc reaches the rootfs from inside the container's user
                // namespace, whose root is an unprivileged host id: its
                // group may pass through the bundle (and no one else may),
                // as containerd's shims set it, and anyone may pass (but
                // not list) the namespace directory, the bundles directory
                // and taskd's state directory above it, which are 0700
                // until a user namespace needs them (as containerd keeps
                // its state at 0711). Every other bundle stays 0700.
                for dir in self.path.ancestors().skip(1).take(3) {
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                        .map_err(|e| Error::io(format!("opening {}", dir.display()), &e))?;
                }
                std::os::unix::fs::chown(&self.path, None, Some(gid))
                    .and_then(|()| {
                        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o710))
                    })
                    .map_err(|e| {
                        Error::io(format!("opening {} to gid {gid}", self.path.display()), &e)
                    })?;
            }
            write_new(&self.path.join(SPEC), spec, 0o600)?;
            std::fs::DirBuilder::new()
                .mode(0o711)
                .create(self.rootfs())
                .map_err(|e| Error::io("creating the rootfs mount point", &e))?;
            make_fifo(&self.path.join(LOG))
        })();
        if let Err(e) = filled {
            let _ = std::fs::remove_dir_all(&self.path);
            return Err(e);
        }
        Ok(())
    }

    pub fn rootfs(&self) -> PathBuf {
        self.path.join(ROOTFS)
    }

    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    /// Opens the log fifo for reading without blocking: read-write, so the
    /// shim's write-only open never waits for us (as containerd opens it).
    pub fn open_log(&self) -> Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(self.path.join(LOG))
            .map_err(|e| Error::io("opening the shim log fifo", &e))
    }

    pub fn write_record(&self, record: &TaskRecord) -> Result<()> {
        let json = serde_json::to_vec(record)
            .map_err(|e| Error::internal(format!("encoding the task record: {e}")))?;
        replace_file(&self.path.join(RECORD), &json)?;
        replace_file(
            &self.path.join(SHIM_BINARY_PATH),
            record.shim_binary.as_os_str().as_bytes(),
        )
    }

    /// NotFound when taskd never finished creating the task.
    pub fn read_record(&self) -> Result<TaskRecord> {
        let bytes = std::fs::read(self.path.join(RECORD))
            .map_err(|e| Error::io("reading the task record", &e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::internal(format!("the task record of {}: {e}", self.id)))
    }

    /// The shim binary of a bundle without a task record (taskd died
    /// before writing one): containerd's file, if the shim got that far.
    pub fn shim_binary_path(&self) -> Option<PathBuf> {
        let bytes = std::fs::read(self.path.join(SHIM_BINARY_PATH)).ok()?;
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(&bytes));
        path.is_absolute().then_some(path)
    }

    /// The pid whose exit has been reported, if one has.
    pub fn exit_reported(&self) -> Option<u32> {
        std::fs::read_to_string(self.path.join(EXIT_REPORTED))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn mark_exit_reported(&self, pid: u32) -> Result<()> {
        replace_file(&self.path.join(EXIT_REPORTED), pid.to_string().as_bytes())
    }

    /// Unmounts whatever is left on the rootfs and removes the bundle. The
    /// bundle stays if the rootfs cannot be unmounted: removing it then
    /// would descend into the container's filesystem.
    pub fn remove(&self) -> Result<()> {
        if !self.path.exists() {
            return Ok(());
        }
        let rootfs = self.rootfs();
        if rootfs.exists() {
            berth_mount::unmount_all(&rootfs)
                .map_err(|e| Error::internal(format!("unmounting {}: {e}", rootfs.display())))?;
        }
        // The bundle leaves its place at once (its id is free again when
        // this returns) for the trash, and its files go from there off the
        // caller's thread: taskd serves every request on one thread, and
        // removing files may wait on the disk (a filesystem mounted with
        // `discard` discards each freed block before unlink returns). What
        // a crash leaves in the trash, the next start's `list` removes.
        let trash = self.trash();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&trash)
            .map_err(|e| Error::io(format!("creating {}", trash.display()), &e))?;
        // Unique across restarts too: what an earlier taskd left in the
        // trash and could not remove keeps its name.
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let doomed = trash.join(format!(
            "{}-{}-{since_epoch}-{}",
            self.namespace,
            self.id,
            TRASHED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::rename(&self.path, &doomed)
            .map_err(|e| Error::io(format!("removing {}", self.path.display()), &e))?;
        let remove = move || {
            if let Err(e) = std::fs::remove_dir_all(&doomed) {
                tracing::warn!(path = %doomed.display(), error = %e, "removing a deleted bundle");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(remove)),
            Err(_) => remove(),
        }
        Ok(())
    }

    /// Where removed bundles wait for their files to go: beside the
    /// namespaces, under a name no namespace can have.
    fn trash(&self) -> PathBuf {
        let namespaces = self.path.parent().and_then(Path::parent);
        namespaces.unwrap_or(&self.path).join(TRASH)
    }

    /// Every bundle under `state`, by namespace and id; hidden directories
    /// (half-removed bundles) are finished off.
    pub fn list(state: &Path) -> Vec<Bundle> {
        let mut found = Vec::new();
        let Ok(namespaces) = std::fs::read_dir(state) else {
            return found;
        };
        // Bundles removed before a crash, whose files had not all gone.
        if let Ok(trashed) = std::fs::read_dir(state.join(TRASH)) {
            for entry in trashed.flatten() {
                finish_off(&entry.path());
            }
        }
        for namespace in namespaces.flatten() {
            let Some(ns) = namespace.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !namespace.path().is_dir() || berth_ids::validate_namespace(&ns).is_err() {
                continue;
            }
            let Ok(ids) = std::fs::read_dir(namespace.path()) else {
                continue;
            };
            for entry in ids.flatten() {
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if let Some(id) = name.strip_prefix('.') {
                    if berth_ids::validate_id(id).is_ok() {
                        finish_off(&entry.path());
                    }
                    continue;
                }
                if let Ok(bundle) = Bundle::locate(state, &ns, &name) {
                    if bundle.path.is_dir() {
                        found.push(bundle);
                    }
                }
            }
        }
        found
    }
}

/// Removes what is left of a bundle whose removal was cut off, unless its
/// rootfs cannot be unmounted (removing it would descend into the
/// container's filesystem).
fn finish_off(bundle: &Path) {
    if berth_mount::unmount_all(&bundle.join(ROOTFS)).is_ok() {
        let _ = std::fs::remove_dir_all(bundle);
    }
}

/// The host gid of group 0 inside the spec's user namespace, if it has
/// one.
fn user_namespace_root_gid(spec: &[u8]) -> Option<u32> {
    #[derive(serde::Deserialize)]
    struct Spec {
        linux: Option<Linux>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Linux {
        gid_mappings: Option<Vec<Mapping>>,
    }
    #[derive(serde::Deserialize)]
    struct Mapping {
        #[serde(rename = "containerID")]
        container_id: u32,
        #[serde(rename = "hostID")]
        host_id: u32,
        size: u32,
    }
    let spec: Spec = serde_json::from_slice(spec).ok()?;
    spec.linux?
        .gid_mappings?
        .iter()
        .find_map(|m| (m.container_id == 0 && m.size > 0).then_some(m.host_id))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), &e))?;
    file.write_all(bytes)
        .map_err(|e| Error::io(format!("writing {}", path.display()), &e))
}

/// Writes `path` whole or not at all (a sibling temp file renamed over it).
fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let temp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temp);
    write_new(&temp, bytes, 0o600)?;
    std::fs::rename(&temp, path).map_err(|e| Error::io(format!("replacing {}", path.display()), &e))
}

fn make_fifo(path: &Path) -> Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::invalid_argument("a path with a NUL byte"))?;
    nix::unistd::mkfifo(
        c_path.as_c_str(),
        nix::sys::stat::Mode::from_bits_truncate(0o700),
    )
    .map_err(|e| Error::internal(format!("creating the fifo {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("setting the fifo's mode", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapped_root_group_is_read_from_the_spec() {
        let spec = br#"{"linux":{"gidMappings":[
            {"containerID":1,"hostID":9000,"size":10},
            {"containerID":0,"hostID":430000,"size":1}]}}"#;
        assert_eq!(user_namespace_root_gid(spec), Some(430000));
        for none in [
            &br#"{"linux":{}}"#[..],
            br#"{"linux":{"gidMappings":[{"containerID":1,"hostID":9000,"size":10}]}}"#,
            br#"{"process":{}}"#,
            b"not json",
        ] {
            assert_eq!(user_namespace_root_gid(none), None);
        }
    }

    fn record() -> TaskRecord {
        TaskRecord {
            runtime: "io.containerd.berth.v2".into(),
            shim_binary: "/usr/bin/containerd-shim-berth-v2".into(),
            bootstrap: Bootstrap {
                version: 2,
                address: "unix:///run/x".into(),
                protocol: "ttrpc".into(),
            },
        }
    }

    #[test]
    fn a_bundle_holds_spec_rootfs_fifo_and_record_and_goes_away_whole() {
        let state = tempfile::tempdir().unwrap();
        let bundle = Bundle::locate(state.path(), "default", "c1").unwrap();
        bundle.create(br#"{"ociVersion":"1.0.2"}"#).unwrap();
        assert_eq!(
            std::fs::read(bundle.path.join("config.json")).unwrap(),
            br#"{"ociVersion":"1.0.2"}"#
        );
        assert!(bundle.rootfs().is_dir());
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(bundle.path.join("log"))
            .unwrap()
            .file_type()
            .is_fifo());
        let mode = std::fs::metadata(&bundle.path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let again = bundle.create(b"{}").unwrap_err();
        assert_eq!(again.kind(), berth_errdefs::ErrorKind::AlreadyExists);
        assert!(bundle.read_record().is_err());
        bundle.write_record(&record()).unwrap();
        assert_eq!(bundle.read_record().unwrap(), record());
        assert_eq!(
            bundle.shim_binary_path().unwrap(),
            PathBuf::from("/usr/bin/containerd-shim-berth-v2")
        );
        assert_eq!(bundle.exit_reported(), None);
        bundle.mark_exit_reported(42).unwrap();
        assert_eq!(bundle.exit_reported(), Some(42));
        assert_eq!(Bundle::list(state.path()), vec![bundle.clone()]);
        bundle.remove().unwrap();
        assert!(!bundle.path.exists());
        assert!(Bundle::list(state.path()).is_empty());
        bundle.remove().unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_removed_bundle_leaves_its_place_at_once_and_its_files_go_after() {
        let state = tempfile::tempdir().unwrap();
        let trash = state.path().join(TRASH);
        for round in 0..3 {
            let bundle = Bundle::locate(state.path(), "default", "c1").unwrap();
            bundle.create(b"{}").unwrap();
            bundle.write_record(&record()).unwrap();
            bundle.remove().unwrap();
            assert!(!bundle.path.exists(), "round {round}");
            assert!(Bundle::list(state.path()).is_empty(), "round {round}");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::fs::read_dir(&trash).unwrap().count() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the trash never emptied"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn what_a_crash_left_in_the_trash_goes_at_the_next_listing() {
        let state = tempfile::tempdir().unwrap();
        let left = state.path().join(TRASH).join("default-c1-7");
        std::fs::create_dir_all(left.join(ROOTFS)).unwrap();
        std::fs::write(left.join(SPEC), b"{}").unwrap();
        let kept = Bundle::locate(state.path(), "default", "c2").unwrap();
        kept.create(b"{}").unwrap();
        assert_eq!(Bundle::list(state.path()), vec![kept]);
        assert!(!left.exists());
    }

    #[test]
    fn ids_and_namespaces_are_validated_before_they_become_paths() {
        let state = Path::new("/nonexistent");
        for (ns, id) in [
            ("default", "../x"),
            ("..", "x"),
            ("default", ""),
            ("a/b", "x"),
            ("default", ".x"),
        ] {
            let err = Bundle::locate(state, ns, id).unwrap_err();
            assert_eq!(
                err.kind(),
                berth_errdefs::ErrorKind::InvalidArgument,
                "{ns}/{id}"
            );
        }
    }

    #[test]
    fn a_half_removed_bundle_is_finished_off_when_listing() {
        let state = tempfile::tempdir().unwrap();
        let hidden = state.path().join("default").join(".gone");
        std::fs::create_dir_all(hidden.join("rootfs")).unwrap();
        let kept = Bundle::locate(state.path(), "default", "kept").unwrap();
        kept.create(b"{}").unwrap();
        assert_eq!(Bundle::list(state.path()), vec![kept]);
        assert!(!hidden.exists());
    }
}
