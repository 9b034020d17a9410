//! The seams the image orchestrations run over. Content, snapshots, images
//! and leases have their contract crates' traits; the two services that had
//! none — contentd's transfer and snapd's unpack — get theirs here, with
//! berth-client implementing them across the sockets.

use async_trait::async_trait;
use berth_api::transfer as pb;
use berth_errdefs::Result;
use berth_ids::Digest;
use berth_snapshot::Snapshotter;

use crate::document::Descriptor;
use crate::progress::Progress;

/// Moving images between registries and the content store.
#[async_trait]
pub trait Transfer: Send + Sync {
    /// Fetches the image `request` names; every blob stored or found is
    /// tied to `lease`. Returns the root.
    async fn fetch(
        &self,
        namespace: &str,
        request: &pb::FetchRequest,
        lease: Option<&str>,
        on_progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Descriptor>;

    /// Pushes the image whose root is in the content store. Returns the root.
    async fn push(
        &self,
        namespace: &str,
        request: &pb::PushRequest,
        on_progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Descriptor>;
}

/// How an unpack works.
#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// Every snapshot the unpack makes or finds is tied to this lease.
    pub lease: Option<String>,
    /// syncfs each layer before committing it.
    pub sync_fs: bool,
}

/// What an unpack did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// The committed snapshot of the top layer (named by chain ID).
    pub chain_id: Digest,
    /// How many layers were applied (the others already were).
    pub applied: u64,
}

/// A snapshotter that applies layers from the content store.
#[async_trait]
pub trait Unpacker: Snapshotter {
    /// The snapshotter's canonical name (as gc labels name it).
    fn snapshotter_name(&self) -> &str;

    /// Applies `layers` bottom first as committed snapshots named by chain
    /// ID (those already there are kept).
    async fn unpack_layers(
        &self,
        namespace: &str,
        layers: &[Descriptor],
        diff_ids: &[Digest],
        options: &UnpackOptions,
    ) -> Result<Unpacked>;
}
