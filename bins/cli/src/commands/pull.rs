//! `berth pull REF`: fetch an image through berth-contentd and unpack its
//! layers through berth-snapd at the same time, under a lease from
//! berth-metad, then record the image there.
//!
//! The fetch reports each image manifest before its blobs, and each blob as
//! it is committed; the unpacker applies the longest run of bottom layers
//! that have arrived, so layer N is applied while N+1.. are still
//! downloading. Everything the pull creates carries its lease, so a garbage
//! collection meanwhile keeps it; once the image record (and the config's
//! label naming its snapshot chain) exists, the lease is dropped.

use std::cell::RefCell;
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use berth_api::transfer as pb;
use berth_client::{
    RemoteContentStore, RemoteImages, RemoteLeases, RemoteSnapshotter, RemoteTransfer,
};
use berth_errdefs::ErrorKind;
use berth_ids::Digest;
use berth_metadata::{Descriptor, Image, ImageStore, LeaseManager, LABEL_GC_EXPIRE};
use tokio::sync::mpsc;

use super::snapshots::SnapshotterArg;
use super::transfer::{finish, Display, SourceArgs};
use crate::global::Global;
use crate::image::{host_platform, label_unpacked, ImageLayers};

/// How long a pull's lease lives if the pull dies without dropping it.
const LEASE_EXPIRY: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Fetch and record the image, but do not unpack it.
    #[arg(long)]
    pub skip_unpack: bool,
    /// Write each layer back to disk (syncfs) before committing it, so
    /// that unpacked layers survive a power loss.
    #[arg(long)]
    pub sync_fs: bool,
    #[command(flatten)]
    pub snapshotter: SnapshotterArg,
    /// Print only the image's digest.
    #[arg(short, long)]
    pub quiet: bool,
}

pub async fn run(global: &Global, args: PullArgs) -> Result<()> {
    let ns = global.namespace()?.to_string();
    let (reference, request) = args.source.request()?;
    let leases = RemoteLeases::connect(global.metad_socket())
        .await
        .context("berth-metad")?;
    let expires = SystemTime::now() + LEASE_EXPIRY;
    let lease = leases
        .create(
            &ns,
            "",
            [(
                LABEL_GC_EXPIRE.to_string(),
                berth_metadata::format_rfc3339(expires),
            )]
            .into(),
        )
        .await
        .context("taking a lease")?;
    let pulled = pull(global, &ns, &request, &args, &lease.id).await;
    // Whatever happened, the lease goes: on success the image holds what
    // was pulled; on failure the next collection may take the pieces.
    if let Err(e) = leases.delete(&ns, &lease.id, false).await {
        eprintln!("berth: warning: dropping lease {}: {e}", lease.id);
    }
    let root = pulled.with_context(|| format!("pull {reference}"))?;
    finish(global.format, args.quiet, "pulled", &reference, &root)
}

async fn pull(
    global: &Global,
    ns: &str,
    request: &pb::FetchRequest,
    args: &PullArgs,
    lease: &str,
) -> Result<pb::Descriptor> {
    let transfer = RemoteTransfer::connect(global.contentd_socket())
        .await
        .context("berth-contentd")?
        .with_lease(lease);
    let store = RemoteContentStore::connect(global.contentd_socket())
        .await
        .context("berth-contentd")?
        .with_lease(lease);
    let display = RefCell::new(Display::new(global.format, args.quiet));
    let fetched: RefCell<Vec<Digest>> = RefCell::default();
    let (events, mut received) = mpsc::unbounded_channel::<pb::Progress>();
    let fetch = async {
        let root = transfer
            .fetch(ns, request, |p| {
                display.borrow_mut().show(p);
                if let Some(digest) = stored_blob(p) {
                    fetched.borrow_mut().push(digest);
                }
                // The unpacker may have stopped (it failed): the fetch's own
                // result says what matters then.
                let _ = events.send(p.clone());
            })
            .await?;
        drop(events);
        anyhow::Ok(root)
    };
    let platform = args
        .source
        .platforms
        .first()
        .cloned()
        .unwrap_or_else(host_platform);
    let unpacker = async {
        if args.skip_unpack {
            while received.recv().await.is_some() {}
            return anyhow::Ok(None);
        }
        let sn = RemoteSnapshotter::connect(global.snapd_socket(), &args.snapshotter.snapshotter)
            .await
            .context("berth-snapd")?
            .with_lease(lease)
            .with_sync_fs(args.sync_fs);
        let mut pipeline = Pipeline::new(&store, sn, ns, &platform, &display);
        while let Some(progress) = received.recv().await {
            pipeline.observe(&progress).await?;
        }
        anyhow::Ok(Some(pipeline))
    };
    let (root, unpacked) = tokio::try_join!(fetch, unpacker)?;
    display.borrow_mut().finish();
    let root_digest = Digest::parse(&root.digest)?;
    let mut touched = Touched {
        blobs: fetched.into_inner(),
        ..Default::default()
    };
    if let Some(mut pipeline) = unpacked {
        let (image, chain) = pipeline.finish(&root_digest).await?;
        touched.chains = pipeline.chains();
        touched.snapshotter = Some(pipeline.sn.clone());
        label_unpacked(
            &store,
            ns,
            &image.config,
            &args.snapshotter.snapshotter,
            &chain,
        )
        .await?;
    }
    record_image(global, ns, &request.reference, &root).await?;
    // The image holds it all now: take the lease's labels off again, so
    // they do not pile up over pulls (best effort; a stale label holds
    // nothing once its lease is gone).
    release(&store, ns, lease, &touched).await;
    Ok(root)
}

/// Removes `lease`'s label from the blobs and snapshots a pull touched.
async fn release(store: &RemoteContentStore, ns: &str, lease: &str, touched: &Touched) {
    let key = berth_api::lease_label(lease);
    for digest in &touched.blobs {
        if let Err(e) = berth_content::set_label(store, ns, digest, &key, None).await {
            eprintln!("berth: warning: unlabelling {digest}: {e}");
        }
    }
    let Some(sn) = &touched.snapshotter else {
        return;
    };
    for chain in &touched.chains {
        let name = chain.to_string();
        if let Err(e) = berth_snapshot::set_label(sn, ns, &name, &key, None).await {
            eprintln!("berth: warning: unlabelling snapshot {chain}: {e}");
        }
    }
}

/// What a pull created or found, for [`release`].
#[derive(Debug, Default)]
struct Touched {
    blobs: Vec<Digest>,
    chains: Vec<Digest>,
    /// The unpack's connection to snapd, when there was an unpack.
    snapshotter: Option<RemoteSnapshotter>,
}

/// Creates the image record, or points an existing one at the new root.
async fn record_image(
    global: &Global,
    ns: &str,
    reference: &str,
    root: &pb::Descriptor,
) -> Result<()> {
    let images = RemoteImages::connect(global.metad_socket())
        .await
        .context("berth-metad")?;
    let image = Image {
        name: reference.to_string(),
        labels: Default::default(),
        target: Descriptor {
            media_type: root.media_type.clone(),
            digest: Digest::parse(&root.digest)?,
            size: root.size,
            annotations: Default::default(),
        },
        created_at: SystemTime::UNIX_EPOCH,
        updated_at: SystemTime::UNIX_EPOCH,
    };
    match images.create(ns, image.clone()).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            images
                .update(ns, image, &["target".to_string()])
                .await
                .with_context(|| format!("updating image {reference}"))?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("recording image {reference}")),
    }
}

/// The blob a progress event says is now in the store.
fn stored_blob(progress: &pb::Progress) -> Option<Digest> {
    let descriptor = progress.descriptor.as_ref()?;
    (progress.event == "blob" && matches!(progress.state.as_str(), "done" | "exists"))
        .then(|| Digest::parse(&descriptor.digest).ok())
        .flatten()
}

/// Unpacks layers as their blobs arrive.
struct Pipeline<'a> {
    store: &'a RemoteContentStore,
    sn: RemoteSnapshotter,
    ns: &'a str,
    platform: &'a str,
    display: &'a RefCell<Display>,
    /// The manifest being unpacked, once the fetch named it.
    image: Option<ImageLayers>,
    diff_ids: Option<Vec<Digest>>,
    /// Blobs committed (or found present) so far.
    arrived: HashSet<String>,
    /// How many bottom layers are unpacked, and the chain they make.
    unpacked: usize,
    chain: Option<Digest>,
}

impl<'a> Pipeline<'a> {
    fn new(
        store: &'a RemoteContentStore,
        sn: RemoteSnapshotter,
        ns: &'a str,
        platform: &'a str,
        display: &'a RefCell<Display>,
    ) -> Pipeline<'a> {
        Pipeline {
            store,
            sn,
            ns,
            platform,
            display,
            image: None,
            diff_ids: None,
            arrived: HashSet::new(),
            unpacked: 0,
            chain: None,
        }
    }

    async fn observe(&mut self, progress: &pb::Progress) -> Result<()> {
        let Some(descriptor) = progress.descriptor.as_ref() else {
            return Ok(());
        };
        match progress.event.as_str() {
            "manifest" if self.image.is_none() => {
                // The root manifest has no platform; an index's entries do.
                if progress.platform.is_empty() || progress.platform == self.platform {
                    let digest = Digest::parse(&descriptor.digest)?;
                    if Digest::of(&progress.data) != digest {
                        anyhow::bail!("manifest {digest} does not match its content");
                    }
                    self.image = Some(ImageLayers::from_manifest(digest, &progress.data)?);
                }
            }
            "blob" if stored_blob(progress).is_some() => {
                self.arrived.insert(descriptor.digest.clone());
            }
            _ => return Ok(()),
        }
        self.advance().await
    }

    /// Unpacks the longest run of bottom layers whose blobs have arrived.
    async fn advance(&mut self) -> Result<()> {
        let Some(image) = &self.image else {
            return Ok(());
        };
        if self.diff_ids.is_none() {
            if !self.arrived.contains(&image.config.to_string()) {
                return Ok(());
            }
            self.diff_ids = Some(image.diff_ids(self.store, self.ns).await?);
        }
        let ready = image
            .layers
            .iter()
            .take_while(|l| self.arrived.contains(&l.digest.to_string()))
            .count();
        if ready > self.unpacked {
            self.unpack_to(ready).await?;
        }
        Ok(())
    }

    async fn unpack_to(&mut self, count: usize) -> Result<()> {
        let (Some(image), Some(diff_ids)) = (&self.image, &self.diff_ids) else {
            return Ok(());
        };
        let done = self
            .sn
            .unpack(self.ns, &image.layers[..count], &diff_ids[..count])
            .await
            .with_context(|| format!("unpacking layers of {}", image.manifest))?;
        self.display
            .borrow_mut()
            .show_unpacked(&done.chain_id, count, image.layers.len());
        self.unpacked = count;
        self.chain = Some(done.chain_id);
        Ok(())
    }

    /// The chain IDs of the unpacked layers, bottom first.
    fn chains(&self) -> Vec<Digest> {
        match &self.diff_ids {
            Some(diff_ids) => berth_snapshot::chain_ids(&diff_ids[..self.unpacked]),
            None => Vec::new(),
        }
    }

    /// After the fetch: unpacks whatever is left (all of it, if the fetch
    /// never named a manifest early) and returns the image and its chain.
    async fn finish(&mut self, root: &Digest) -> Result<(ImageLayers, Digest)> {
        if self.image.is_none() {
            let image =
                ImageLayers::resolve(self.store, self.ns, root, Some(self.platform)).await?;
            self.image = Some(image);
        }
        if self.diff_ids.is_none() {
            if let Some(image) = &self.image {
                self.diff_ids = Some(image.diff_ids(self.store, self.ns).await?);
            }
        }
        let total = self.image.as_ref().map_or(0, |i| i.layers.len());
        if self.unpacked < total || self.chain.is_none() {
            self.unpack_to(total).await?;
        }
        match (&self.image, &self.chain) {
            (Some(image), Some(chain)) => Ok((image.clone(), chain.clone())),
            _ => anyhow::bail!("{root}: nothing to unpack"),
        }
    }
}
