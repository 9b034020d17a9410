//! What taskd asks of the other daemons: a container's record (metad) and
//! the mounts of its snapshot (snapd). A trait, so the manager's logic is
//! tested without them.

use std::path::PathBuf;

use async_trait::async_trait;
use berth_client::{RemoteContainers, RemoteSnapshotter};
use berth_errdefs::{Error, ErrorKind, Result};
use berth_metadata::{Container, ContainerStore};
use berth_mount::Mount;
use berth_snapshot::Snapshotter;

#[async_trait]
pub trait Peers: Send + Sync {
    async fn container(&self, namespace: &str, id: &str) -> Result<Container>;
    async fn rootfs_mounts(
        &self,
        namespace: &str,
        snapshotter: &str,
        key: &str,
    ) -> Result<Vec<Mount>>;
}

/// metad and snapd on their sockets, connected per call: either may have
/// restarted since the last one.
#[derive(Debug, Clone)]
pub struct SocketPeers {
    pub metad: PathBuf,
    pub snapd: PathBuf,
}

#[async_trait]
impl Peers for SocketPeers {
    async fn container(&self, namespace: &str, id: &str) -> Result<Container> {
        RemoteContainers::connect(&self.metad)
            .await?
            .get(namespace, id)
            .await
            .map_err(|e| e.context(format!("container {id}")))
    }

    async fn rootfs_mounts(
        &self,
        namespace: &str,
        snapshotter: &str,
        key: &str,
    ) -> Result<Vec<Mount>> {
        let snapshots = RemoteSnapshotter::connect(&self.snapd, snapshotter).await?;
        snapshots.mounts(namespace, key).await.map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::not_found(format!(
                    "the container's snapshot {key:?} ({snapshotter}) is gone: {}",
                    e.message()
                ))
            } else {
                e.context(format!("mounts of snapshot {key}"))
            }
        })
    }
}
