//! What, besides metad's own records, may hold something in a namespace:
//! berth-contentd's blobs and ingests and berth-snapd's snapshots. A
//! namespace is deleted only when every one of them says it holds nothing.

use std::path::PathBuf;

use async_trait::async_trait;
use berth_client::{RemoteContentStore, RemoteSnapshotter};
use berth_content::ContentStore;
use berth_errdefs::{Error, Result};
use berth_metadata::SNAPSHOTTERS;
use berth_snapshot::Snapshotter;

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

/// berth-contentd and berth-snapd, by their sockets.
#[derive(Debug, Clone)]
pub struct DaemonHolders {
    contentd: PathBuf,
    snapd: PathBuf,
}

impl DaemonHolders {
    pub fn new(contentd: PathBuf, snapd: PathBuf) -> DaemonHolders {
        DaemonHolders { contentd, snapd }
    }

    async fn content(&self, namespace: &str) -> Result<Option<String>> {
        let store = RemoteContentStore::connect(&self.contentd).await?;
        if !store.list(namespace, &[]).await?.is_empty() {
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
            if !snapshotter.list(namespace, &[]).await?.is_empty() {
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
impl NamespaceHolders for DaemonHolders {
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
