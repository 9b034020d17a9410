//! Pulling an image: fetch it through contentd and unpack its layers
//! through snapd at the same time, under a lease from metad, then record
//! the image there.
//!
//! The fetch reports each image manifest before its blobs, and each blob
//! as it is stored; the unpacker applies the longest run of bottom layers
//! that have arrived, so layer N is applied while N+1.. are still
//! downloading. Everything the pull creates carries its lease, so a
//! garbage collection meanwhile keeps it; once the image record (and the
//! config's label naming its snapshot chain) exists, the lease labels come
//! off and the lease is dropped.

use std::collections::HashSet;
use std::sync::Mutex;

use berth_api::transfer as pb;
use berth_content::ContentStore;
use berth_errdefs::{Error, Result};
use berth_ids::Digest;
use berth_metadata::{with_held_lease, ImageStore, LeaseManager, CLIENT_LEASE_TTL};
use tokio::sync::mpsc;

use crate::document::{parse_manifest, Descriptor, Manifest};
use crate::platform::{Matcher, Platform};
use crate::progress::Progress;
use crate::services::{Transfer, UnpackOptions, Unpacker};
use crate::store::{label_unpacked, read_config, resolve_manifest};

/// The daemons a pull works with.
#[derive(Clone, Copy)]
pub struct Puller<'a> {
    pub content: &'a dyn ContentStore,
    pub transfer: &'a dyn Transfer,
    pub images: &'a dyn ImageStore,
    pub leases: &'a dyn LeaseManager,
    /// Where layers are unpacked; none fetches and records only.
    pub unpacker: Option<&'a dyn Unpacker>,
}

impl std::fmt::Debug for Puller<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("unpack", &self.unpacker.map(|u| u.snapshotter_name()))
            .finish_non_exhaustive()
    }
}

/// What to pull and how.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// The fetch: reference, platforms, registry options. The image record
    /// is named by its reference.
    pub request: pb::FetchRequest,
    /// The platform whose layers are unpacked; none: the first the request
    /// names, else this machine's.
    pub unpack_platform: Option<Platform>,
    /// syncfs each layer before committing it.
    pub sync_fs: bool,
}

/// What a pull reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// A step of the fetch.
    Transfer(Box<Progress>),
    /// The bottom `layers` of `of` are unpacked into `chain_id`.
    Unpacked {
        chain_id: Digest,
        layers: usize,
        of: usize,
    },
    /// Something went wrong that does not fail the pull (tidying up).
    Warning(String),
}

/// What a pull brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    pub root: Descriptor,
    /// The unpacked manifest and the snapshot chain of its layers.
    pub unpacked: Option<(Digest, Digest)>,
}

impl Puller<'_> {
    /// Pulls `options.request.reference`; `on_event` sees every step.
    pub async fn pull(
        &self,
        namespace: &str,
        options: &PullOptions,
        on_event: &mut (dyn FnMut(PullEvent) + Send),
    ) -> Result<Pulled> {
        // Decided before anything is created, so a bad platform costs
        // nothing.
        let unpack_platform = match &options.unpack_platform {
            Some(p) => p.clone(),
            None => match options.request.platforms.first() {
                Some(p) => Platform::parse(p)?,
                None => Platform::host(),
            },
        };
        let on_event = Mutex::new(on_event);
        // Whatever happens, the lease goes after: on success the image
        // holds what was pulled; on failure the next collection may take
        // the pieces. If the pull dies, the lease expires minutes later.
        let (pulled, dropped) =
            with_held_lease(self.leases, namespace, CLIENT_LEASE_TTL, |lease| {
                let on_event = &on_event;
                let unpack_platform = &unpack_platform;
                async move {
                    self.pull_under(namespace, options, unpack_platform, &lease, on_event)
                        .await
                }
            })
            .await?;
        if let Err(e) = dropped {
            emit(&on_event, PullEvent::Warning(e.to_string()));
        }
        pulled.map_err(|e| e.context(format!("pull {}", options.request.reference)))
    }

    async fn pull_under(
        &self,
        namespace: &str,
        options: &PullOptions,
        unpack_platform: &Platform,
        lease: &str,
        on_event: &Sink<'_>,
    ) -> Result<Pulled> {
        let (events, mut received) = mpsc::unbounded_channel::<Progress>();
        let fetch = async {
            let mut on_progress = |p: Progress| {
                // The unpacker may have stopped (it failed): the fetch's own
                // result says what matters then.
                if self.unpacker.is_some() {
                    let _ = events.send(p.clone());
                }
                emit(on_event, PullEvent::Transfer(Box::new(p)));
            };
            let root = self
                .transfer
                .fetch(namespace, &options.request, Some(lease), &mut on_progress)
                .await;
            drop(events);
            root
        };
        let unpack_options = UnpackOptions {
            lease: Some(lease.to_string()),
            sync_fs: options.sync_fs,
        };
        let unpack = async {
            let Some(unpacker) = self.unpacker else {
                return Ok(None);
            };
            let mut pipeline = Pipeline {
                store: self.content,
                unpacker,
                namespace,
                platform: Matcher::new(vec![unpack_platform.clone()]),
                options: &unpack_options,
                on_event,
                image: None,
                diff_ids: None,
                arrived: HashSet::new(),
                unpacked: 0,
                chain: None,
            };
            while let Some(progress) = received.recv().await {
                pipeline.observe(&progress).await?;
            }
            Ok(Some(pipeline))
        };
        let (root, pipeline) = tokio::try_join!(fetch, unpack)?;
        let mut unpacked = None;
        if let Some(mut pipeline) = pipeline {
            let (manifest, config, chain) = pipeline.finish(&root.digest).await?;
            label_unpacked(
                self.content,
                namespace,
                &config,
                pipeline.unpacker.snapshotter_name(),
                &chain,
            )
            .await?;
            unpacked = Some((manifest, chain));
        }
        crate::store::record_image(self.images, namespace, &options.request.reference, &root)
            .await?;
        // The image holds it all now: take the lease's labels off again, so
        // they do not pile up over pulls (best effort; a stale label holds
        // nothing once its lease is gone).
        self.release(namespace, lease, on_event).await;
        Ok(Pulled { root, unpacked })
    }

    /// Removes `lease`'s label from everything the pull tied to it: one
    /// request to contentd and one to snapd.
    async fn release(&self, namespace: &str, lease: &str, on_event: &Sink<'_>) {
        if let Err(e) = self.content.release_lease(namespace, lease).await {
            emit(
                on_event,
                PullEvent::Warning(format!("untying blobs from lease {lease}: {e}")),
            );
        }
        if let Some(unpacker) = self.unpacker {
            if let Err(e) = unpacker.release_lease(namespace, lease).await {
                emit(
                    on_event,
                    PullEvent::Warning(format!("untying snapshots from lease {lease}: {e}")),
                );
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding it leaves nothing half-written worth refusing.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn emit(on_event: &Sink<'_>, event: PullEvent) {
    (lock(on_event))(event);
}

/// Where a pull's events go: the caller's callback, shared by the fetch
/// and the unpacker.
type Sink<'s> = Mutex<&'s mut (dyn FnMut(PullEvent) + Send)>;

/// Unpacks layers as their blobs arrive.
struct Pipeline<'a, 's> {
    store: &'a dyn ContentStore,
    unpacker: &'a dyn Unpacker,
    namespace: &'a str,
    platform: Matcher,
    options: &'a UnpackOptions,
    on_event: &'a Sink<'s>,
    /// The manifest being unpacked, once the fetch named it.
    image: Option<(Digest, Manifest)>,
    diff_ids: Option<Vec<Digest>>,
    /// Blobs stored (or found present) so far.
    arrived: HashSet<Digest>,
    /// How many bottom layers are unpacked, and the chain they make.
    unpacked: usize,
    chain: Option<Digest>,
}

impl Pipeline<'_, '_> {
    async fn observe(&mut self, progress: &Progress) -> Result<()> {
        match progress {
            Progress::Manifest {
                descriptor,
                platform,
                data,
            } if self.image.is_none() => {
                // The root manifest has no platform; an index's entries do.
                let wanted = match platform {
                    None => true,
                    Some(p) => Platform::parse(p).is_ok_and(|p| self.platform.matches(&p)),
                };
                if !wanted {
                    return Ok(());
                }
                if Digest::of(data) != descriptor.digest {
                    return Err(Error::failed_precondition(format!(
                        "manifest {} does not match its content",
                        descriptor.digest
                    )));
                }
                self.image = Some((descriptor.digest.clone(), parse_manifest(data)?));
            }
            _ => match progress.stored_blob() {
                Some(digest) => {
                    self.arrived.insert(digest.clone());
                }
                None => return Ok(()),
            },
        }
        self.advance().await
    }

    /// Unpacks the longest run of bottom layers whose blobs have arrived.
    async fn advance(&mut self) -> Result<()> {
        let Some((_, manifest)) = &self.image else {
            return Ok(());
        };
        if self.diff_ids.is_none() {
            if !self.arrived.contains(&manifest.config.digest) {
                return Ok(());
            }
            let config = read_config(self.store, self.namespace, manifest).await?;
            self.diff_ids = Some(config.diff_ids_for(manifest)?.to_vec());
        }
        let ready = manifest
            .layers
            .iter()
            .take_while(|l| self.arrived.contains(&l.digest))
            .count();
        if ready > self.unpacked {
            self.unpack_to(ready).await?;
        }
        Ok(())
    }

    async fn unpack_to(&mut self, count: usize) -> Result<()> {
        let (Some((digest, manifest)), Some(diff_ids)) = (&self.image, &self.diff_ids) else {
            return Ok(());
        };
        let done = self
            .unpacker
            .unpack_layers(
                self.namespace,
                &manifest.layers[..count],
                &diff_ids[..count],
                self.options,
            )
            .await
            .map_err(|e| e.context(format!("unpacking layers of {digest}")))?;
        emit(
            self.on_event,
            PullEvent::Unpacked {
                chain_id: done.chain_id.clone(),
                layers: count,
                of: manifest.layers.len(),
            },
        );
        self.unpacked = count;
        self.chain = Some(done.chain_id);
        Ok(())
    }

    /// After the fetch: unpacks whatever is left (all of it, if the fetch
    /// never named a manifest early). Returns the manifest, its config and
    /// the chain.
    async fn finish(&mut self, root: &Digest) -> Result<(Digest, Digest, Digest)> {
        if self.image.is_none() {
            let resolved =
                resolve_manifest(self.store, self.namespace, root, &self.platform).await?;
            self.image = Some((resolved.digest, resolved.manifest));
        }
        if self.diff_ids.is_none() {
            if let Some((_, manifest)) = &self.image {
                let config = read_config(self.store, self.namespace, manifest).await?;
                self.diff_ids = Some(config.diff_ids_for(manifest)?.to_vec());
            }
        }
        let total = self.image.as_ref().map_or(0, |(_, m)| m.layers.len());
        if self.unpacked < total || self.chain.is_none() {
            self.unpack_to(total).await?;
        }
        match (&self.image, &self.chain) {
            (Some((digest, manifest)), Some(chain)) => Ok((
                digest.clone(),
                manifest.config.digest.clone(),
                chain.clone(),
            )),
            _ => Err(Error::invalid_argument(format!(
                "{root}: nothing to unpack"
            ))),
        }
    }
}
