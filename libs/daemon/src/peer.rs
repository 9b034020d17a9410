use std::os::fd::{BorrowedFd, RawFd};

use nix::sys::socket::{getsockopt, sockopt};
use nix::unistd::{Gid, Uid, User};
use ttrpc::security_extension::{AcceptHook, HookError, HookOutput};

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

    /// Whether a peer with these credentials may call.
    pub fn allows(&self, uid: Uid, gid: Gid) -> bool {
        if uid.is_root() || uid == self.own_uid {
            return true;
        }
        let Some(group) = self.group else {
            return false;
        };
        if gid == group {
            return true;
        }
        // Supplementary groups of the peer's user, from the group database.
        match User::from_uid(uid) {
            Ok(Some(user)) => {
                let Ok(name) = std::ffi::CString::new(user.name) else {
                    return false;
                };
                nix::unistd::getgrouplist(&name, user.gid)
                    .map(|groups| groups.contains(&group))
                    .unwrap_or(false)
            }
            _ => false,
        }
    }
}

impl AcceptHook for PeerPolicy {
    fn on_accept(&self, fd: RawFd) -> Result<HookOutput, HookError> {
        // SAFETY: ttrpc hands the hook the accepted connection's descriptor,
        // open for the whole call; we only borrow it to read its credentials.
        let socket = unsafe { BorrowedFd::borrow_raw(fd) };
        let creds =
            getsockopt(&socket, sockopt::PeerCredentials).map_err(|e| HookError::Io(e.into()))?;
        let (uid, gid) = (Uid::from_raw(creds.uid()), Gid::from_raw(creds.gid()));
        if self.allows(uid, gid) {
            let mut data = ttrpc::ConnectionData::new();
            match crate::liveness::ConnectionWatch::start(fd) {
                Ok(watch) => {
                    data.insert(crate::liveness::KEY.to_string(), Box::new(watch));
                }
                Err(e) => tracing::warn!(error = %e, "cannot watch connection for hang-ups"),
            }
            Ok(HookOutput {
                data,
                payload_transform: None,
            })
        } else {
            tracing::warn!(
                uid = creds.uid(),
                gid = creds.gid(),
                pid = creds.pid(),
                "refused connection from a caller that is neither root, the daemon's user nor in its group"
            );
            Err(HookError::Rejected(format!(
                "uid {} may not call this daemon",
                creds.uid()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_own_user_are_allowed_others_are_not() {
        let policy = PeerPolicy {
            own_uid: Uid::from_raw(1234),
            group: None,
        };
        assert!(policy.allows(Uid::from_raw(0), Gid::from_raw(0)));
        assert!(policy.allows(Uid::from_raw(1234), Gid::from_raw(99)));
        assert!(!policy.allows(Uid::from_raw(65534), Gid::from_raw(65534)));
    }

    #[test]
    fn the_configured_group_is_allowed() {
        let policy = PeerPolicy {
            own_uid: Uid::from_raw(0),
            group: Some(Gid::from_raw(4242)),
        };
        assert!(policy.allows(Uid::from_raw(7777), Gid::from_raw(4242)));
        assert!(!policy.allows(Uid::from_raw(7777), Gid::from_raw(4243)));
    }
}
