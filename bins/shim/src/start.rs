//! The `start` action: bind the shim's socket, write the `address` file,
//! launch the long-lived server with the socket as fd 3, and report the
//! address the way the calling containerd understands.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::Options as RuncOptions;

use crate::error::{Result, ShimError};
use crate::flags::Flags;
use crate::layout;

/// The bundle: `-bundle` if given, else the working directory containerd
/// started us in.
pub fn bundle_dir(flags: &Flags) -> Result<PathBuf> {
    if !flags.bundle.is_empty() {
        return Ok(PathBuf::from(&flags.bundle));
    }
    std::env::current_dir().map_err(|e| ShimError::io("reading the working directory", e))
}

/// Binds a filesystem socket with mode 0600 in a directory of mode 0700.
/// A stale socket file (nobody listening) is replaced.
pub fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| ShimError::io(format!("creating {}", dir.display()), e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| ShimError::io(format!("setting the mode of {}", dir.display()), e))?;
    }
    let listener = match UnixListener::bind(path) {
        Ok(listener) => listener,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let _ = std::fs::remove_file(path);
            UnixListener::bind(path)
                .map_err(|e| ShimError::io(format!("binding {}", path.display()), e))?
        }
        Err(e) => return Err(ShimError::io(format!("binding {}", path.display()), e)),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ShimError::io(format!("setting the mode of {}", path.display()), e))?;
    Ok(listener)
}

/// Writes `<bundle>/address` atomically, without a trailing newline.
pub fn write_address(bundle: &Path, address: &str) -> Result<()> {
    let temp = bundle.join(".address");
    std::fs::write(&temp, address)
        .map_err(|e| ShimError::io(format!("writing {}", temp.display()), e))?;
    std::fs::rename(&temp, bundle.join("address"))
        .map_err(|e| ShimError::io("renaming the address file", e))
}

/// Runs the action; returns what to print on stdout.
pub fn run(flags: &Flags, options: &[u8]) -> Result<String> {
    let bundle = bundle_dir(flags)?;
    let socket = layout::socket_path(&bundle, &flags.address, &flags.namespace, &flags.id);
    let address = layout::address_of(&socket);

    if socket.exists() && UnixStream::connect(&socket).is_ok() {
        // A shim for this container already serves there.
        write_address(&bundle, &address)?;
        return Ok(reply(&address));
    }
    let listener = bind_socket(&socket)?;
    if let Err(e) = write_address(&bundle, &address) {
        let _ = std::fs::remove_file(&socket);
        return Err(e);
    }
    let child = match spawn_server(flags, &bundle, &listener) {
        Ok(child) => child,
        Err(e) => {
            let _ = std::fs::remove_file(&socket);
            return Err(e);
        }
    };
    drop(listener);
    if let Some(cgroup) = shim_cgroup(options) {
        move_to_cgroup(child, &cgroup);
    }
    adjust_oom_score(child);
    Ok(reply(&address))
}

fn spawn_server(flags: &Flags, bundle: &Path, listener: &UnixListener) -> Result<u32> {
    let exe = std::env::current_exe().map_err(|e| ShimError::io("finding our binary", e))?;
    let mut cmd = Command::new(exe);
    cmd.args(["-namespace", &flags.namespace, "-id", &flags.id])
        .args(["-address", &flags.address]);
    if !flags.publish_binary.is_empty() {
        cmd.args(["-publish-binary", &flags.publish_binary]);
    }
    if flags.debug {
        cmd.arg("-debug");
    }
    cmd.current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let fd = listener.as_raw_fd();
    // SAFETY: runs in the forked child before exec; dup2 is
    // async-signal-safe and `fd` stays open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec set.
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| ShimError::io("starting the shim server", e))?;
    Ok(child.id())
}

/// The plain address for containerd 1.6 (which dials anything without
/// `unix://` as an abstract socket and knows no JSON); the bootstrap JSON
/// only when the caller advertises a shim protocol version that takes it.
fn reply(address: &str) -> String {
    let max_version: u32 = std::env::var("MAX_SHIM_VERSION")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if max_version >= 2 {
        serde_json::json!({"version": 2, "address": address, "protocol": "ttrpc"}).to_string()
    } else {
        address.to_string()
    }
}

/// `shim_cgroup` from runc options on stdin (a legacy `Any`, containerd
/// 1.6–2.2); anything else on stdin names no cgroup.
fn shim_cgroup(stdin: &[u8]) -> Option<String> {
    let any = Any::parse_from_bytes(stdin).ok()?;
    if !any.type_url.ends_with("containerd.runc.v1.Options") {
        return None;
    }
    let options = RuncOptions::parse_from_bytes(&any.value).ok()?;
    (!options.shim_cgroup.is_empty()).then_some(options.shim_cgroup)
}

fn move_to_cgroup(pid: u32, cgroup: &str) {
    let relative = cgroup.trim_start_matches('/');
    let root = Path::new("/sys/fs/cgroup");
    let targets: Vec<PathBuf> = if root.join("cgroup.controllers").exists() {
        vec![root.join(relative)]
    } else {
        std::fs::read_dir(root)
            .map(|dirs| dirs.flatten().map(|d| d.path().join(relative)).collect())
            .unwrap_or_default()
    };
    for dir in targets {
        if dir.is_dir() {
            let _ = std::fs::write(dir.join("cgroup.procs"), pid.to_string());
        }
    }
}

/// The server is a little more killable than containerd, like the Go shim.
fn adjust_oom_score(pid: u32) {
    let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let score = (own + 1).min(1000);
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/oom_score_adj"))
    {
        let _ = file.write_all(score.to_string().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_is_0600_in_a_0700_dir_and_replaces_stale_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s").join("sock");
        let first = bind_socket(&path).unwrap();
        drop(first);
        // The file is left behind with nobody listening: stale.
        let listener = bind_socket(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        drop(listener);
    }

    #[test]
    fn address_file_has_no_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        write_address(dir.path(), "unix:///run/x/s/abc").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("address")).unwrap(),
            "unix:///run/x/s/abc"
        );
        assert!(!dir.path().join(".address").exists());
    }

    #[test]
    fn shim_cgroup_comes_only_from_runc_options() {
        let mut options = RuncOptions::new();
        options.shim_cgroup = "/shims".into();
        let mut any = Any::new();
        any.type_url = "containerd.runc.v1.Options".into();
        any.value = options.write_to_bytes().unwrap();
        assert_eq!(
            shim_cgroup(&any.write_to_bytes().unwrap()).as_deref(),
            Some("/shims")
        );
        assert_eq!(shim_cgroup(&[]), None);
        any.type_url = "runtimeoptions.v1.Options".into();
        assert_eq!(shim_cgroup(&any.write_to_bytes().unwrap()), None);
    }
}
