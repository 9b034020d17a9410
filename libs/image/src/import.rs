//! Importing an OCI archive as images: its content stored through contentd,
//! each named image recorded in metad (and unpacked through snapd for this
//! machine), all under a lease from metad, so that a collection meanwhile
//! takes nothing before the records hold it. What `berth import` and
//! berth-crid's built-in pause image both do.

use std::io::Read;

use berth_content::{ContentStore, Leased};
use berth_errdefs::{ErrorKind, Result};
use berth_ids::Digest;
use berth_metadata::{with_held_lease, ImageStore, LeaseManager, CLIENT_LEASE_TTL};

use crate::archive::{self, ArchiveImage};
use crate::platform::Matcher;
use crate::services::{UnpackOptions, Unpacker};
use crate::store::{record_image, resolve_manifest, root_descriptor};

/// The daemons an import works with. `content` is cloned to write under
/// the import's lease.
#[derive(Clone, Copy)]
pub struct Importer<'a, C> {
    pub content: &'a C,
    pub images: &'a dyn ImageStore,
    pub leases: &'a dyn LeaseManager,
    /// Where named images are unpacked; none stores and records only.
    pub unpacker: Option<&'a dyn Unpacker>,
}

impl<C> std::fmt::Debug for Importer<'_, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Importer")
            .field("unpack", &self.unpacker.map(|u| u.snapshotter_name()))
            .finish_non_exhaustive()
    }
}

/// How an import records and unpacks.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Which manifest of a named image is unpacked (and, with `record_ids`,
    /// whose config names the image's id).
    pub platforms: Matcher,
    /// Also record each named image under its id (its config's digest), as
    /// a pulled image is recorded for the CRI.
    pub record_ids: bool,
    /// syncfs each layer before committing it.
    pub sync_fs: bool,
}

impl Default for ImportOptions {
    fn default() -> ImportOptions {
        ImportOptions {
            platforms: Matcher::host(),
            record_ids: false,
            sync_fs: false,
        }
    }
}

/// What an import reports that does not fail it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportEvent {
    /// The image has no manifest for the platforms asked: stored and
    /// recorded, not unpacked.
    NotUnpacked { root: Digest, reason: String },
    /// Tidying up went wrong (the lease's labels or the lease itself).
    Warning(String),
}

impl<C: ContentStore + Clone + 'static> Importer<'_, C> {
    /// Imports the archive `input` into `namespace`; returns its images
    /// (a name for each the archive names).
    pub async fn import(
        &self,
        namespace: &str,
        input: Box<dyn Read + Send>,
        options: &ImportOptions,
        on_event: &mut (dyn FnMut(ImportEvent) + Send),
    ) -> Result<Vec<ArchiveImage>> {
        let sink = &mut *on_event;
        let (imported, dropped) = with_held_lease(
            self.leases,
            namespace,
            CLIENT_LEASE_TTL,
            move |lease| async move {
                self.import_under(namespace, input, options, &lease, sink)
                    .await
            },
        )
        .await?;
        if let Err(e) = dropped {
            on_event(ImportEvent::Warning(format!(
                "dropping the import's lease: {e}"
            )));
        }
        imported
    }

    async fn import_under(
        &self,
        namespace: &str,
        input: Box<dyn Read + Send>,
        options: &ImportOptions,
        lease: &str,
        on_event: &mut (dyn FnMut(ImportEvent) + Send),
    ) -> Result<Vec<ArchiveImage>> {
        let leased = Leased::new(self.content.clone(), Some(lease.to_string()));
        let images = archive::import(&leased, namespace, input).await?;
        for image in &images {
            let Some(name) = &image.name else {
                continue;
            };
            let root = root_descriptor(&leased, namespace, &image.root)
                .await
                .map_err(|e| e.context(format!("import {name}")))?;
            record_image(self.images, namespace, name, &root)
                .await
                .map_err(|e| e.context(format!("import {name}")))?;
            if options.record_ids {
                let resolved =
                    resolve_manifest(&leased, namespace, &root.digest, &options.platforms)
                        .await
                        .map_err(|e| e.context(format!("import {name}")))?;
                let id = resolved.manifest.config.digest.to_string();
                record_image(self.images, namespace, &id, &root)
                    .await
                    .map_err(|e| e.context(format!("import {name}")))?;
            }
            if let Some(unpacker) = self.unpacker {
                let unpacked = crate::unpack(
                    &leased,
                    unpacker,
                    namespace,
                    &image.root,
                    &options.platforms,
                    &UnpackOptions {
                        lease: Some(lease.to_string()),
                        sync_fs: options.sync_fs,
                    },
                )
                .await;
                match unpacked {
                    Ok(_) => {}
                    // An image for other machines is stored, not unpacked.
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        on_event(ImportEvent::NotUnpacked {
                            root: image.root.clone(),
                            reason: e.to_string(),
                        })
                    }
                    Err(e) => return Err(e.context(format!("import: unpacking {}", image.root))),
                }
            }
        }
        // The records hold it all now: the lease's labels come off (a
        // stale label holds nothing once the lease is gone, so a failure
        // is only reported).
        if let Err(e) = self.content.release_lease(namespace, lease).await {
            on_event(ImportEvent::Warning(format!(
                "untying the import's content from its lease: {e}"
            )));
        }
        if let Some(unpacker) = self.unpacker {
            if let Err(e) = unpacker.release_lease(namespace, lease).await {
                on_event(ImportEvent::Warning(format!(
                    "untying the import's snapshots from its lease: {e}"
                )));
            }
        }
        Ok(images)
    }
}
