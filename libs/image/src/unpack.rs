//! Unpacking an image that is in the content store into snapshots.

use berth_content::ContentStore;
use berth_errdefs::Result;
use berth_ids::Digest;
use berth_metadata::LeaseManager;

use crate::platform::Matcher;
use crate::services::{UnpackOptions, Unpacked, Unpacker};
use crate::store::{label_unpacked, read_config, resolve_manifest};

/// What [`unpack`] made of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackedImage {
    /// The platform's manifest that was unpacked.
    pub manifest: Digest,
    pub config: Digest,
    /// How many layers the image has.
    pub layers: usize,
    pub unpacked: Unpacked,
}

/// Unpacks the manifest `root` names for `platforms` and labels its config
/// with the snapshot chain, so the image holds its snapshots.
pub async fn unpack(
    store: &dyn ContentStore,
    unpacker: &dyn Unpacker,
    namespace: &str,
    root: &Digest,
    platforms: &Matcher,
    options: &UnpackOptions,
) -> Result<UnpackedImage> {
    let resolved = resolve_manifest(store, namespace, root, platforms).await?;
    let config = read_config(store, namespace, &resolved.manifest).await?;
    let diff_ids = config.diff_ids_for(&resolved.manifest)?;
    let unpacked = unpacker
        .unpack_layers(namespace, &resolved.manifest.layers, diff_ids, options)
        .await
        .map_err(|e| e.context(format!("unpacking {root}")))?;
    label_unpacked(
        store,
        namespace,
        &resolved.manifest.config.digest,
        unpacker.snapshotter_name(),
        &unpacked.chain_id,
    )
    .await?;
    Ok(UnpackedImage {
        manifest: resolved.digest,
        config: resolved.manifest.config.digest.clone(),
        layers: resolved.manifest.layers.len(),
        unpacked,
    })
}

/// [`unpack`] under a lease of its own from `leases`, held until the
/// image's config is labelled with the snapshots: until then nothing
/// refers to the layers just committed, and a collection in between (one
/// that the end of a pull's lease started, say) would take them, though the
/// unpack reports them made. The snapshotter's ties to the lease go with
/// it. With a lease in `options` already, that one holds them.
pub async fn unpack_held(
    store: &dyn ContentStore,
    unpacker: &dyn Unpacker,
    leases: &dyn LeaseManager,
    namespace: &str,
    root: &Digest,
    platforms: &Matcher,
    options: &UnpackOptions,
) -> Result<UnpackedImage> {
    if options.lease.is_some() {
        return unpack(store, unpacker, namespace, root, platforms, options).await;
    }
    let (unpacked, _deleted) = berth_metadata::with_held_lease(
        leases,
        namespace,
        berth_metadata::CLIENT_LEASE_TTL,
        |lease| async move {
            let options = UnpackOptions {
                lease: Some(lease.clone()),
                ..options.clone()
            };
            let unpacked = unpack(store, unpacker, namespace, root, platforms, &options).await;
            // The snapshots are the config's now; a failed release leaves
            // only labels that the lease's end makes meaningless.
            let _ = unpacker.release_lease(namespace, &lease).await;
            unpacked
        },
    )
    .await?;
    unpacked
}
