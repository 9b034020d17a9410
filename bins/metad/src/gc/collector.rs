//! One collection: list contentd and snapd, then, holding metad's writers
//! back, read the roots, mark, delete what nothing holds, and let go.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use berth_errdefs::{Error, ErrorKind, Result};
use containerd_shim_protos::events::snapshot::SnapshotRemove;
use tokio::sync::RwLock;

use super::mark::{self, ContentGarbage, Listing, SnapshotGarbage};
use super::roots::RootSource;
use crate::events::Exchange;
use crate::peers::{ContentDaemon, Daemons, SnapshotDaemon, CONTENTD, SNAPD};

/// What a collection consults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorConfig {
    /// berth-snapd's snapshotters to collect. Empty: berth-snapd is not
    /// consulted at all (a host that runs none).
    pub snapshotters: Vec<String>,
    /// The longest one call to contentd or snapd may take before the
    /// daemon counts as down (metad's writers wait while the deletions
    /// run, so a hung daemon must not hold them forever).
    pub call_timeout: Duration,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            snapshotters: berth_metadata::SNAPSHOTTERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            call_timeout: Duration::from_secs(60),
        }
    }
}

/// One object a collection deleted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Removed {
    /// `content`, `snapshots/<snapshotter>` or `leases`.
    pub kind: String,
    pub namespace: String,
    /// A digest, snapshot key or lease id.
    pub id: String,
}

/// What a collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub removed: Vec<Removed>,
    /// The whole collection.
    pub duration: Duration,
    /// How long metad's writers were held back.
    pub pause: Duration,
    /// Daemons that could not be listed (or failed while deleting).
    pub skipped: Vec<String>,
}

/// Runs collections over metad's roots and the daemons' objects.
pub struct Collector {
    roots: Arc<dyn RootSource>,
    daemons: Arc<dyn Daemons>,
    config: CollectorConfig,
    events: Option<Arc<Exchange>>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// contentd as one collection saw it.
struct ContentView {
    daemon: Arc<dyn ContentDaemon>,
    blobs: BTreeMap<String, Vec<berth_content::Info>>,
}

/// snapd as one collection saw it.
struct SnapshotView {
    daemons: HashMap<String, Arc<dyn SnapshotDaemon>>,
    snapshots: BTreeMap<(String, String), Vec<berth_snapshot::Info>>,
}

impl Collector {
    pub fn new(
        roots: Arc<dyn RootSource>,
        daemons: Arc<dyn Daemons>,
        config: CollectorConfig,
    ) -> Collector {
        Collector {
            roots,
            daemons,
            config,
            events: None,
        }
    }

    /// The same collector, publishing what it removes on `events` as
    /// containerd's collector does: `/snapshot/remove` for each snapshot
    /// (containerd publishes nothing for collected blobs or leases).
    pub fn with_events(mut self, events: Arc<Exchange>) -> Collector {
        self.events = Some(events);
        self
    }

    /// One collection. `gate` is held exclusively from reading the roots
    /// until the deletions are done: a record that would add a reference
    /// waits, so nothing about to be deleted gains one from metad. Objects
    /// that contentd or snapd change after listing survive through the
    /// conditional deletes.
    pub async fn collect(&self, gate: &RwLock<()>) -> Result<Report> {
        let started = Instant::now();
        let namespaces = self
            .blocking(|roots| {
                roots.begin_collection();
                roots.namespaces()
            })
            .await?;

        let (mut content, mut snapshots) = tokio::join!(
            self.list_content(&namespaces),
            self.list_snapshots(&namespaces)
        );
        let mut skipped = Vec::new();
        if content.is_none() {
            skipped.push(CONTENTD.to_string());
        }
        if snapshots.is_none() && !self.config.snapshotters.is_empty() {
            skipped.push(SNAPD.to_string());
        }
        let listing = Listing {
            content: content
                .as_mut()
                .map(|c| std::mem::take(&mut c.blobs))
                .unwrap_or_default(),
            snapshots: snapshots
                .as_mut()
                .map(|s| std::mem::take(&mut s.snapshots))
                .unwrap_or_default(),
        };

        let pause_started = Instant::now();
        let writers_held = gate.write().await;
        let plan = self
            .blocking(move |roots| Ok(mark::plan(&roots.roots()?, &listing, SystemTime::now())))
            .await?;

        let mut removed = Vec::new();
        if skipped.is_empty() {
            let (content_removed, snapshots_removed) = tokio::join!(
                self.sweep_content(content.as_ref(), &plan.content),
                self.sweep_snapshots(snapshots.as_ref(), &plan.snapshots)
            );
            for (daemon, (objects, failure)) in
                [(CONTENTD, content_removed), (SNAPD, snapshots_removed)]
            {
                removed.extend(objects);
                if let Some(e) = failure {
                    tracing::warn!(daemon, error = %e, "stopped deleting: the daemon failed");
                    skipped.push(daemon.to_string());
                }
            }
        } else if !plan.content.is_empty() || !plan.snapshots.is_empty() {
            // Blobs name snapshots and snapshots name blobs: without one
            // daemon's objects, the other's garbage is a guess.
            tracing::warn!(
                skipped = ?skipped,
                blobs = plan.content.len(),
                snapshots = plan.snapshots.len(),
                "a daemon could not be listed: deleting no blobs or snapshots this time"
            );
        }

        if !plan.expired_leases.is_empty() {
            let leases = plan.expired_leases.clone();
            match self
                .blocking(move |roots| roots.delete_leases(&leases))
                .await
            {
                Ok(()) => {
                    removed.extend(
                        plan.expired_leases
                            .into_iter()
                            .map(|(namespace, id)| Removed {
                                kind: "leases".to_string(),
                                namespace,
                                id,
                            }),
                    )
                }
                Err(e) => tracing::warn!(error = %e, "deleting expired leases"),
            }
        }
        drop(writers_held);
        let pause = pause_started.elapsed();

        if let Some(events) = &self.events {
            for object in &removed {
                if let Some(snapshotter) = object.kind.strip_prefix("snapshots/") {
                    events.publish_message(
                        &object.namespace,
                        "/snapshot/remove",
                        &SnapshotRemove {
                            key: object.id.clone(),
                            snapshotter: snapshotter.to_string(),
                            ..Default::default()
                        },
                    );
                }
            }
        }
        let report = Report {
            removed,
            duration: started.elapsed(),
            pause,
            skipped,
        };
        tracing::info!(
            removed = report.removed.len(),
            duration = ?report.duration,
            pause = ?report.pause,
            skipped = ?report.skipped,
            "garbage collected"
        );
        Ok(report)
    }

    /// Runs `work` on metad's store off the async threads.
    async fn blocking<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn RootSource) -> Result<T> + Send + 'static,
    {
        let roots = self.roots.clone();
        berth_daemon::blocking(move || work(roots.as_ref())).await
    }

    /// A call to a daemon, which counts as failed if it takes too long.
    async fn call<T>(&self, what: &str, call: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::time::timeout(self.config.call_timeout, call)
            .await
            .map_err(|_| {
                Error::unavailable(format!(
                    "{what}: no answer within {:?}",
                    self.config.call_timeout
                ))
            })?
    }

    /// Every namespace's blobs, or None if contentd could not be listed.
    async fn list_content(&self, namespaces: &[String]) -> Option<ContentView> {
        let listed = async {
            let daemon = self.call("connecting", self.daemons.contentd()).await?;
            let mut blobs = BTreeMap::new();
            for namespace in namespaces {
                let infos = self
                    .call(&format!("listing {namespace}"), daemon.list(namespace))
                    .await?;
                blobs.insert(namespace.clone(), infos);
            }
            Ok::<_, Error>(ContentView { daemon, blobs })
        };
        listed
            .await
            .map_err(|e| tracing::warn!(daemon = CONTENTD, error = %e, "cannot list blobs"))
            .ok()
    }

    /// Every namespace's snapshots of every snapshotter, or None if any of
    /// them could not be listed.
    async fn list_snapshots(&self, namespaces: &[String]) -> Option<SnapshotView> {
        let listed = async {
            let mut daemons = HashMap::new();
            let mut snapshots = BTreeMap::new();
            for snapshotter in &self.config.snapshotters {
                let daemon = self
                    .call("connecting", self.daemons.snapd(snapshotter))
                    .await?;
                for namespace in namespaces {
                    let infos = self
                        .call(
                            &format!("listing {snapshotter} in {namespace}"),
                            daemon.list(namespace),
                        )
                        .await?;
                    snapshots.insert((namespace.clone(), snapshotter.clone()), infos);
                }
                daemons.insert(snapshotter.clone(), daemon);
            }
            Ok::<_, Error>(SnapshotView { daemons, snapshots })
        };
        listed
            .await
            .map_err(|e| tracing::warn!(daemon = SNAPD, error = %e, "cannot list snapshots"))
            .ok()
    }

    /// Deletes garbage blobs; stops at the first failure that is not the
    /// blob's own (changed or gone since listing: skipped).
    async fn sweep_content(
        &self,
        view: Option<&ContentView>,
        garbage: &[ContentGarbage],
    ) -> (Vec<Removed>, Option<Error>) {
        let mut removed = Vec::new();
        let Some(view) = view else {
            return (removed, None);
        };
        for blob in garbage {
            let deleted = self
                .call(
                    "deleting",
                    view.daemon
                        .delete_if_unchanged(&blob.namespace, &blob.digest, blob.seen),
                )
                .await;
            match outcome(deleted) {
                Ok(true) => removed.push(Removed {
                    kind: "content".to_string(),
                    namespace: blob.namespace.clone(),
                    id: blob.digest.to_string(),
                }),
                Ok(false) => tracing::debug!(
                    namespace = %blob.namespace,
                    digest = %blob.digest,
                    "changed since it was listed: kept"
                ),
                Err(e) => return (removed, Some(e)),
            }
        }
        (removed, None)
    }

    /// Removes garbage snapshots in the plan's order (children first).
    async fn sweep_snapshots(
        &self,
        view: Option<&SnapshotView>,
        garbage: &[SnapshotGarbage],
    ) -> (Vec<Removed>, Option<Error>) {
        let mut removed = Vec::new();
        let Some(view) = view else {
            return (removed, None);
        };
        for snapshot in garbage {
            let Some(daemon) = view.daemons.get(&snapshot.snapshotter) else {
                continue;
            };
            let result = self
                .call(
                    "removing",
                    daemon.remove_if_unchanged(&snapshot.namespace, &snapshot.key, snapshot.seen),
                )
                .await;
            match outcome(result) {
                Ok(true) => removed.push(Removed {
                    kind: format!("snapshots/{}", snapshot.snapshotter),
                    namespace: snapshot.namespace.clone(),
                    id: snapshot.key.clone(),
                }),
                Ok(false) => tracing::debug!(
                    namespace = %snapshot.namespace,
                    snapshotter = %snapshot.snapshotter,
                    key = %snapshot.key,
                    "changed since it was listed, or has new children: kept"
                ),
                Err(e) => return (removed, Some(e)),
            }
        }
        (removed, None)
    }
}

/// Whether a conditional delete deleted (true), was refused because the
/// object changed or went meanwhile (false), or failed.
fn outcome(result: Result<()>) -> Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::NotFound | ErrorKind::FailedPrecondition
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests;
