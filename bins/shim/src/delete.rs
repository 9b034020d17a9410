//! The `delete` action: cleanup after a shim that is gone (containerd runs
//! it on every teardown too). Kill and delete whatever the container left,
//! unmount its rootfs, and report a SIGKILL exit as a DeleteResponse.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::SystemTime;

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::shim::DeleteResponse;

use crate::error::{Result, ShimError};
use crate::events::timestamp;
use crate::flags::Flags;
use crate::layout;
use crate::runtime::{load_runtime_config, RuntimeConfig};
use berth_mount::{HostMounter, Mounter};

/// Runs the action; returns the encoded DeleteResponse and any warnings.
pub fn run(flags: &Flags, mounter: &impl Mounter) -> Result<(Vec<u8>, Vec<String>)> {
    let bundle = crate::start::bundle_dir(flags)?;
    let mut warnings = Vec::new();
    let config = load_runtime_config(&bundle).unwrap_or_else(|| RuntimeConfig {
        binary: "runc".into(),
        root: layout::default_runtime_root(&bundle, &flags.namespace),
        systemd_cgroup: false,
        criu: None,
    });
    if let Err(e) = runtime_delete(&config, &bundle, &flags.id) {
        warnings.push(e);
    }
    if let Err(e) = mounter.unmount_all(&bundle.join("rootfs")) {
        warnings.push(e.to_string());
    }
    remove_dead_socket(&bundle);

    let mut response = DeleteResponse::new();
    response.pid = crate::runc::read_pid_file(&bundle.join("init.pid")).unwrap_or(0);
    response.exit_status = 128 + libc::SIGKILL as u32;
    response.exited_at = Some(timestamp(SystemTime::now())).into();
    let bytes = response
        .write_to_bytes()
        .map_err(|e| ShimError::protobuf("encoding the delete response", e))?;
    Ok((bytes, warnings))
}

pub fn run_default(flags: &Flags) -> Result<(Vec<u8>, Vec<String>)> {
    run(flags, &HostMounter)
}

fn runtime_delete(
    config: &RuntimeConfig,
    bundle: &Path,
    id: &str,
) -> std::result::Result<(), String> {
    // containerd runs this action after every task, whose shim has
    // usually deleted it already.
    if crate::runc::runc_knows_nothing_of(config, id) {
        return Ok(());
    }
    let mut cmd = Command::new(&config.binary);
    cmd.arg("--root")
        .arg(&config.root)
        .arg("--log")
        .arg(bundle.join("log.json"))
        .args(["--log-format", "json"]);
    if config.systemd_cgroup {
        cmd.arg("--systemd-cgroup");
    }
    let output = cmd
        .args(["delete", "--force", id])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", config.binary))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() || stderr.contains("does not exist") {
        Ok(())
    } else {
        Err(format!("{} delete: {}", config.binary, stderr.trim()))
    }
}

/// Removes the socket named in `address` if nobody listens on it, so a
/// restarting containerd does not wait on it.
fn remove_dead_socket(bundle: &Path) {
    let Ok(address) = std::fs::read_to_string(bundle.join("address")) else {
        return;
    };
    let Some(path) = address.trim().strip_prefix("unix://") else {
        return;
    };
    if UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::Mutex;

    #[derive(Default)]
    struct RecordingMounter(Mutex<Vec<PathBuf>>);

    impl Mounter for RecordingMounter {
        fn mount_all(&self, _: &[berth_mount::Mount], _: &Path) -> berth_errdefs::Result<()> {
            Ok(())
        }
        fn unmount_all(&self, target: &Path) -> berth_errdefs::Result<()> {
            self.0.lock().unwrap().push(target.to_path_buf());
            Ok(())
        }
    }

    #[test]
    fn reports_sigkill_with_the_init_pid_and_unmounts_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("init.pid"), "1234").unwrap();
        // A runtime that knows nothing: `true` accepts any arguments.
        std::fs::write(
            dir.path().join(crate::runtime::RUNTIME_FILE),
            r#"{"binary":"true","root":"/nonexistent","systemd_cgroup":false}"#,
        )
        .unwrap();
        let flags = Flags {
            namespace: "default".into(),
            id: "c1".into(),
            bundle: dir.path().display().to_string(),
            ..Flags::default()
        };
        let mounter = RecordingMounter::default();
        let (bytes, warnings) = run(&flags, &mounter).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let response = DeleteResponse::parse_from_bytes(&bytes).unwrap();
        assert_eq!(response.pid, 1234);
        assert_eq!(response.exit_status, 137);
        assert!(response.exited_at.seconds > 0);
        assert_eq!(
            mounter.0.lock().unwrap().as_slice(),
            &[dir.path().join("rootfs")]
        );
    }
}
