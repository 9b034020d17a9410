use std::io::ErrorKind;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{getsockopt, sockopt, SockType};
use nix::unistd::{chown, Gid};

use crate::{DaemonConfig, DaemonError};

/// Creates the root and state directories with mode 0700 (and enforces it if
/// they exist: they hold nothing anyone else should see).
pub fn prepare_dirs(config: &DaemonConfig) -> Result<(), DaemonError> {
    for dir in [&config.root, &config.state] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| DaemonError::io("creating", dir, e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| DaemonError::io("setting mode 0700 on", dir, e))?;
    }
    Ok(())
}

/// Where the listening socket came from.
#[derive(Debug)]
pub enum SocketSource {
    /// Inherited from systemd; not ours to remove.
    Activated(UnixListener),
    /// Bound by us at this path; removed on shutdown.
    Bound(UnixListener, PathBuf),
}

impl SocketSource {
    /// The inherited socket when `LISTEN_FDS`/`LISTEN_PID` name this process,
    /// otherwise a new one bound at `config.address`.
    pub fn open(config: &DaemonConfig) -> Result<SocketSource, DaemonError> {
        match inherited_listener()? {
            Some(listener) => Ok(SocketSource::Activated(listener)),
            None => {
                let listener = bind_socket(&config.address, config.socket_group.as_deref())?;
                Ok(SocketSource::Bound(listener, config.address.clone()))
            }
        }
    }

    pub fn into_listener(self) -> (UnixListener, Option<PathBuf>) {
        match self {
            SocketSource::Activated(l) => (l, None),
            SocketSource::Bound(l, path) => (l, Some(path)),
        }
    }
}

fn inherited_listener() -> Result<Option<UnixListener>, DaemonError> {
    // sd_notify checks LISTEN_PID against our pid; the variables are removed
    // so that nothing we start inherits them.
    // SAFETY: called during start-up before the daemon spawns threads that
    // read the environment.
    let fds: Vec<RawFd> = unsafe { sd_notify::listen_fds_and_unset_env() }
        .map_err(|e| DaemonError::Activation(e.to_string()))?
        .collect();
    let fd = match fds.as_slice() {
        [] => return Ok(None),
        [fd] => *fd,
        more => {
            return Err(DaemonError::Activation(format!(
                "expected one socket, systemd passed {}",
                more.len()
            )))
        }
    };
    // SAFETY: systemd passed this descriptor to us and nothing else in the
    // process owns it; from here the listener owns and closes it.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    let is_unix_stream = getsockopt(&listener, sockopt::SockType).ok() == Some(SockType::Stream)
        && nix::sys::socket::getsockname::<nix::sys::socket::UnixAddr>(fd)
            .ok()
            .is_some_and(|addr| addr.path().is_some())
        && getsockopt(&listener, sockopt::AcceptConn).unwrap_or(false);
    if !is_unix_stream {
        return Err(DaemonError::Activation(
            "the inherited fd is not a listening unix stream socket on a filesystem path".into(),
        ));
    }
    set_cloexec(&listener)?;
    Ok(Some(listener))
}

fn set_cloexec(listener: &UnixListener) -> Result<(), DaemonError> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(listener, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map(|_| ())
        .map_err(|e| DaemonError::Activation(format!("setting close-on-exec: {e}")))
}

/// Binds a filesystem socket (never abstract) with mode 0660 in a directory
/// of mode 0711. A stale socket left by a dead daemon is replaced; a live one
/// is an error.
pub(crate) fn bind_socket(path: &Path, group: Option<&str>) -> Result<UnixListener, DaemonError> {
    if path.as_os_str().as_encoded_bytes().first() == Some(&b'@') || !path.is_absolute() {
        return Err(DaemonError::InvalidSetting(format!(
            "socket address must be an absolute filesystem path, not {}",
            path.display()
        )));
    }
    let parent = path.parent().ok_or_else(|| {
        DaemonError::InvalidSetting(format!("socket {} has no directory", path.display()))
    })?;
    if !parent.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(parent)
            .map_err(|e| DaemonError::io("creating socket directory", parent, e))?;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| DaemonError::io("setting mode 0711 on", parent, e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(DaemonError::InvalidSetting(format!(
                    "{} exists and is not a socket",
                    path.display()
                )));
            }
            match UnixStream::connect(path) {
                Ok(_) => return Err(DaemonError::AddressInUse(path.to_path_buf())),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)
                        .map_err(|e| DaemonError::io("removing stale socket", path, e))?;
                }
                Err(e) => return Err(DaemonError::io("probing existing socket", path, e)),
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(DaemonError::io("inspecting", path, e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| DaemonError::io("binding", path, e))?;
    if let Some(group) = group {
        let gid = resolve_group(group)?;
        chown(path, None, Some(gid)).map_err(|e| DaemonError::io("chown", path, e.into()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| DaemonError::io("setting mode 0660 on", path, e))?;
    Ok(listener)
}

/// A group given by name or number.
pub(crate) fn resolve_group(group: &str) -> Result<Gid, DaemonError> {
    if let Ok(number) = group.parse::<u32>() {
        return Ok(Gid::from_raw(number));
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(DaemonError::InvalidSetting(format!(
            "no group named {group:?}"
        ))),
        Err(e) => Err(DaemonError::InvalidSetting(format!(
            "looking up group {group:?}: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn socket_is_0660_in_a_new_0711_directory_and_stale_sockets_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/berth/test.sock");
        let listener = bind_socket(&path, None).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o660);
        assert_eq!(
            std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o7777,
            0o711
        );
        // A live socket is not taken over.
        assert!(matches!(
            bind_socket(&path, None),
            Err(DaemonError::AddressInUse(_))
        ));
        drop(listener);
        // The file is left behind by a dead daemon: it is replaced.
        bind_socket(&path, None).unwrap();
    }

    #[test]
    fn abstract_and_relative_addresses_are_refused() {
        assert!(bind_socket(Path::new("@berth"), None).is_err());
        assert!(bind_socket(Path::new("relative.sock"), None).is_err());
    }

    #[test]
    fn a_regular_file_at_the_address_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-socket");
        std::fs::write(&path, "keep").unwrap();
        assert!(bind_socket(&path, None).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep");
    }
}
