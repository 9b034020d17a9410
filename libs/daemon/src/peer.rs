use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::{getsockopt, sockopt};
use nix::unistd::{Gid, Uid};

use crate::DaemonError;

/// Who may call a daemon: root, the daemon's own user, and members of one
/// configured group. Checked with SO_PEERCRED on every accepted connection,
/// on top of the socket's file mode.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    own_uid: Uid,
    group: Option<Gid>,
}

impl PeerPolicy {
    pub fn new(group: Option<&str>) -> Result<PeerPolicy, DaemonError> {
        Ok(PeerPolicy {
            own_uid: Uid::effective(),
            group: group.map(crate::socket::resolve_group).transpose()?,
        })
    }

    /// Whether a peer with these credentials may call: `gid` is its
    /// effective group, `groups` its supplementary groups, both as the
    /// kernel reports them for the connecting process (not as the group
    /// database lists them for its user, which a process that dropped or
    /// gained groups would contradict).
    pub fn allows(&self, uid: Uid, gid: Gid, groups: &[Gid]) -> bool {
        if uid.is_root() || uid == self.own_uid {
            return true;
        }
        match self.group {
            Some(group) => gid == group || groups.contains(&group),
            None => false,
        }
    }
}

impl PeerPolicy {
    /// Whether the process at the other end of a connected `socket` may
    /// call (logged when it may not). For servers other than ttrpc's, which
    /// calls [`AcceptHook::on_accept`].
    pub fn admits(&self, socket: BorrowedFd<'_>) -> std::io::Result<bool> {
        let creds = getsockopt(&socket, sockopt::PeerCredentials)?;
        let (uid, gid) = (Uid::from_raw(creds.uid()), Gid::from_raw(creds.gid()));
        let groups = match self.group {
            Some(_) => peer_groups(socket)?,
            None => Vec::new(),
        };
        let allowed = self.allows(uid, gid, &groups);
        if !allowed {
            tracing::warn!(
                uid = creds.uid(),
                gid = creds.gid(),
                pid = creds.pid(),
                "refused connection from a caller that is neither root, the daemon's user nor in its group"
            );
        }
        Ok(allowed)
    }
}

/// The supplementary groups of the process at the other end of `socket`
/// (SO_PEERGROUPS, as they were when it connected).
fn peer_groups(socket: BorrowedFd<'_>) -> std::io::Result<Vec<Gid>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` is a live buffer of `len` bytes, which the
        // kernel fills and whose used length it writes back to `len`.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups.into_iter().map(Gid::from_raw).collect());
        }
        let error = std::io::Error::last_os_error();
        // Too small: `len` says how much is needed.
        if error.raw_os_error() == Some(libc::ERANGE) && count > groups.len() {
            groups.resize(count, 0);
            continue;
        }
        return Err(error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_descriptor_that_is_not_a_socket_has_no_peer_groups() {
        // One error, returned at once (not taken for "the buffer is too
        // small" and retried).
        let (read, _write) = nix::unistd::pipe().unwrap();
        let err = peer_groups(read.as_fd()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTSOCK), "{err}");
    }

    #[test]
    fn a_connected_peer_has_its_groups() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let groups = peer_groups(a.as_fd()).unwrap();
        let own = nix::unistd::getgroups().unwrap();
        assert_eq!(groups, own);
    }

    #[test]
    fn root_and_own_user_are_allowed_others_are_not() {
        let policy = PeerPolicy {
            own_uid: Uid::from_raw(1234),
            group: None,
        };
        assert!(policy.allows(Uid::from_raw(0), Gid::from_raw(0), &[]));
        assert!(policy.allows(Uid::from_raw(1234), Gid::from_raw(99), &[]));
        assert!(!policy.allows(Uid::from_raw(65534), Gid::from_raw(65534), &[]));
        // Without a configured group, no group admits anyone.
        assert!(!policy.allows(
            Uid::from_raw(65534),
            Gid::from_raw(4242),
            &[Gid::from_raw(4242)]
        ));
    }

    #[test]
    fn the_configured_group_is_allowed() {
        let policy = PeerPolicy {
            own_uid: Uid::from_raw(0),
            group: Some(Gid::from_raw(4242)),
        };
        assert!(policy.allows(Uid::from_raw(7777), Gid::from_raw(4242), &[]));
        assert!(!policy.allows(Uid::from_raw(7777), Gid::from_raw(4243), &[]));
        // A supplementary member is allowed; other supplementary groups
        // are not enough.
        let other = [Gid::from_raw(1), Gid::from_raw(4243)];
        assert!(policy.allows(
            Uid::from_raw(7777),
            Gid::from_raw(4243),
            &[Gid::from_raw(1), Gid::from_raw(4242)]
        ));
        assert!(!policy.allows(Uid::from_raw(7777), Gid::from_raw(4243), &other));
    }

    #[test]
    fn peer_groups_are_the_connecting_process_groups() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::os::fd::AsFd;
        let raw = |groups: Vec<Gid>| {
            let mut raw: Vec<u32> = groups.into_iter().map(Gid::as_raw).collect();
            raw.sort();
            raw
        };
        let ours = raw(nix::unistd::getgroups().unwrap());
        let theirs = raw(peer_groups(a.as_fd()).unwrap());
        assert_eq!(theirs, ours);
    }
}
