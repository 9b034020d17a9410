//! Where the shim puts things, derived from the bundle containerd created:
//! `<state>/io.containerd.runtime.v2.task/<ns>/<id>`. With containerd's
//! default state dir this gives the Go shim's paths (`/run/containerd/s/…`,
//! `/run/containerd/runc/<ns>`); a private containerd keeps everything under
//! its own state dir.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const TASK_PLUGIN_DIR: &str = "io.containerd.runtime.v2.task";
const FALLBACK_STATE: &str = "/run/berth";
/// sun_path holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// containerd's state dir for a bundle, or berth's default when the bundle
/// is not laid out the way containerd lays it out.
pub fn state_dir(bundle: &Path) -> PathBuf {
    let plugin_dir = bundle.parent().and_then(Path::parent);
    match plugin_dir {
        Some(dir) if dir.file_name().is_some_and(|n| n == TASK_PLUGIN_DIR) => dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(FALLBACK_STATE)),
        _ => PathBuf::from(FALLBACK_STATE),
    }
}

/// The runtime's `--root` when the options name none.
pub fn default_runtime_root(bundle: &Path, namespace: &str) -> PathBuf {
    state_dir(bundle).join("runc").join(namespace)
}

/// The shim's socket: `<state>/s/<sha256(address/ns/id)>`, like containerd's
/// `SocketAddress`, falling back to `/run/berth/s` if that path is too long.
pub fn socket_path(bundle: &Path, grpc_address: &str, namespace: &str, id: &str) -> PathBuf {
    let joined = Path::new(grpc_address).join(namespace).join(id);
    let hash = hex::encode(Sha256::digest(joined.as_os_str().as_encoded_bytes()));
    let path = state_dir(bundle).join("s").join(&hash);
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        path
    } else {
        Path::new(FALLBACK_STATE).join("s").join(hash)
    }
}

pub fn address_of(socket: &Path) -> String {
    format!("unix://{}", socket.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_default_layout_gives_go_shim_paths() {
        let bundle = Path::new("/run/containerd/io.containerd.runtime.v2.task/default/c1");
        assert_eq!(state_dir(bundle), Path::new("/run/containerd"));
        assert_eq!(
            default_runtime_root(bundle, "default"),
            Path::new("/run/containerd/runc/default")
        );
        let socket = socket_path(bundle, "/run/containerd/containerd.sock", "default", "c1");
        assert!(socket.starts_with("/run/containerd/s"));
        assert_eq!(socket.file_name().unwrap().len(), 64);
        assert!(address_of(&socket).starts_with("unix:///run/containerd/s/"));
    }

    #[test]
    fn unknown_layouts_fall_back_to_berth_paths() {
        assert_eq!(state_dir(Path::new("/tmp/x")), Path::new("/run/berth"));
        let long = format!("/{}/io.containerd.runtime.v2.task/ns/id", "d".repeat(80));
        let socket = socket_path(Path::new(&long), "/a.sock", "ns", "id");
        assert!(socket.starts_with("/run/berth/s"));
    }
}
