//! metad's two seams onto the other daemons, and their one implementation
//! over the sockets ([`Sockets`]):
//!
//! - [`NamespaceHolders`]: what, besides metad's own records, may hold
//!   something in a namespace (berth-contentd's blobs and ingests,
//!   berth-snapd's snapshots). A namespace is deleted only when every one
//!   of them says it holds nothing.
//! - [`Daemons`]: how a collection reaches berth-contentd and berth-snapd,
//!   only the calls it makes, so tests can stand in for either daemon.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use berth_client::{RemoteContentStore, RemoteSnapshotter};
use berth_content::ContentStore;
use berth_errdefs::{Error, Result};
use berth_ids::Digest;
use berth_metadata::SNAPSHOTTERS;
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

/// Asks the other daemons about a namespace.
#[async_trait]
pub trait NamespaceHolders: Send + Sync + std::fmt::Debug {
    /// What still holds something in `namespace` (e.g. "content in
    /// berth-contentd"), or None. Unavailable when a holder cannot be
    /// asked: a namespace that might hold something is never deleted.
    async fn holding(&self, namespace: &str) -> Result<Option<String>>;
}

/// Nothing outside metad: for a metad that runs alone (tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct MetadOnly;

#[async_trait]
impl NamespaceHolders for MetadOnly {
    async fn holding(&self, _namespace: &str) -> Result<Option<String>> {
        Ok(None)
    }
}

impl Sockets {
    async fn content(&self, namespace: &str) -> Result<Option<String>> {
        let store = RemoteContentStore::connect(&self.contentd).await?;
        if !ContentStore::list(&store, namespace, &[]).await?.is_empty() {
            return Ok(Some("content in berth-contentd".to_string()));
        }
        if !store.list_statuses(namespace, &[]).await?.is_empty() {
            return Ok(Some("ingests in berth-contentd".to_string()));
        }
        Ok(None)
    }

    async fn snapshots(&self, namespace: &str) -> Result<Option<String>> {
        for name in SNAPSHOTTERS {
            let snapshotter = RemoteSnapshotter::connect(&self.snapd, name).await?;
            if !Snapshotter::list(&snapshotter, namespace, &[])
                .await?
                .is_empty()
            {
                return Ok(Some(format!("{name} snapshots in berth-snapd")));
            }
        }
        Ok(None)
    }
}

/// Any failure to ask is Unavailable: the answer is unknown.
fn unknown(daemon: &str, socket: &std::path::Path, err: Error) -> Error {
    Error::unavailable(format!(
        "cannot tell whether {daemon} ({}) holds anything in the namespace: {err}",
        socket.display()
    ))
}

#[async_trait]
impl NamespaceHolders for Sockets {
    async fn holding(&self, namespace: &str) -> Result<Option<String>> {
        if let Some(what) = self
            .content(namespace)
            .await
            .map_err(|e| unknown("berth-contentd", &self.contentd, e))?
        {
            return Ok(Some(what));
        }
        self.snapshots(namespace)
            .await
            .map_err(|e| unknown("berth-snapd", &self.snapd, e))
    }
}
