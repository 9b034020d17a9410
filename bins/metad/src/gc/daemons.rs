//! How a collection reaches berth-contentd and berth-snapd: only the calls
//! it makes, so tests can stand in for either daemon.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use berth_client::{RemoteContentStore, RemoteSnapshotter};
use berth_content::ContentStore;
use berth_errdefs::Result;
use berth_ids::Digest;
use berth_snapshot::Snapshotter;

/// The name `skipped` uses for berth-contentd.
pub const CONTENTD: &str = "berth-contentd";
/// The name `skipped` uses for berth-snapd.
pub const SNAPD: &str = "berth-snapd";

/// What a collection asks of berth-contentd.
#[async_trait]
pub trait ContentDaemon: Send + Sync {
    /// Every blob of the namespace.
    async fn list(&self, namespace: &str) -> Result<Vec<berth_content::Info>>;
    /// [`ContentStore::delete_if_unchanged`].
    async fn delete_if_unchanged(
        &self,
        namespace: &str,
        digest: &Digest,
        seen: SystemTime,
    ) -> Result<()>;
}

/// What a collection asks of one snapshotter of berth-snapd.
#[async_trait]
pub trait SnapshotDaemon: Send + Sync {
    /// Every snapshot of the namespace.
    async fn list(&self, namespace: &str) -> Result<Vec<berth_snapshot::Info>>;
    /// [`Snapshotter::remove_if_unchanged`].
    async fn remove_if_unchanged(&self, namespace: &str, key: &str, seen: SystemTime)
        -> Result<()>;
}

/// Connects to the daemons; called afresh by every collection, so one that
/// restarted since the last is found again and one that is down costs only
/// this collection.
#[async_trait]
pub trait Daemons: Send + Sync {
    async fn contentd(&self) -> Result<Arc<dyn ContentDaemon>>;
    async fn snapd(&self, snapshotter: &str) -> Result<Arc<dyn SnapshotDaemon>>;
}

/// The daemons at their sockets.
#[derive(Debug, Clone)]
pub struct Sockets {
    pub contentd: PathBuf,
    pub snapd: PathBuf,
}

#[async_trait]
impl Daemons for Sockets {
    async fn contentd(&self) -> Result<Arc<dyn ContentDaemon>> {
        Ok(Arc::new(RemoteContentStore::connect(&self.contentd).await?))
    }

    async fn snapd(&self, snapshotter: &str) -> Result<Arc<dyn SnapshotDaemon>> {
        Ok(Arc::new(
            RemoteSnapshotter::connect(&self.snapd, snapshotter).await?,
        ))
    }
}

#[async_trait]
impl ContentDaemon for RemoteContentStore {
    async fn list(&self, namespace: &str) -> Result<Vec<berth_content::Info>> {
        ContentStore::list(self, namespace, &[]).await
    }

    async fn delete_if_unchanged(
        &self,
        namespace: &str,
        digest: &Digest,
        seen: SystemTime,
    ) -> Result<()> {
        ContentStore::delete_if_unchanged(self, namespace, digest, seen).await
    }
}

#[async_trait]
impl SnapshotDaemon for RemoteSnapshotter {
    async fn list(&self, namespace: &str) -> Result<Vec<berth_snapshot::Info>> {
        Snapshotter::list(self, namespace, &[]).await
    }

    async fn remove_if_unchanged(
        &self,
        namespace: &str,
        key: &str,
        seen: SystemTime,
    ) -> Result<()> {
        Snapshotter::remove_if_unchanged(self, namespace, key, seen).await
    }
}
