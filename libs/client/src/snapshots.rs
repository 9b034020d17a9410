use std::path::Path;

use async_trait::async_trait;
use berth_api::snapshots as pb;
use berth_errdefs::Result;
use berth_ids::Digest;
use berth_snapshot::wire::{
    descriptor_from_pb, descriptor_to_pb, info_from_pb, info_to_pb, mount_from_pb,
};
use berth_snapshot::{Descriptor, DiffLayer, Info, Labels, Mount, Snapshotter, Usage};

use crate::connection::{connect, request_context_leased};

/// One snapshotter of berth-snapd, across its socket.
#[derive(Clone)]
pub struct RemoteSnapshotter {
    lease: Option<String>,
    client: pb::SnapshotsClient,
    snapshotter: String,
}

impl std::fmt::Debug for RemoteSnapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSnapshotter")
            .field("snapshotter", &self.snapshotter)
            .finish_non_exhaustive()
    }
}

/// What [`RemoteSnapshotter::unpack`] did.
pub type UnpackResult = berth_image::Unpacked;

impl RemoteSnapshotter {
    /// Connects to snapd and uses its snapshotter `snapshotter` (empty:
    /// the daemon's default).
    pub async fn connect(socket: &Path, snapshotter: &str) -> Result<RemoteSnapshotter> {
        Ok(RemoteSnapshotter::new(connect(socket).await?, snapshotter))
    }

    pub fn new(client: ttrpc::r#async::Client, snapshotter: &str) -> RemoteSnapshotter {
        RemoteSnapshotter {
            lease: None,
            client: pb::SnapshotsClient::new(client),
            snapshotter: snapshotter.to_string(),
        }
    }

    /// The same client, sending every request under `lease` (metadata key
    /// `containerd-lease`): what the daemon creates for it is held by that
    /// lease.
    pub fn with_lease(mut self, lease: impl Into<String>) -> Self {
        self.lease = Some(lease.into());
        self
    }

    fn context(&self, namespace: &str) -> ttrpc::context::Context {
        request_context_leased(namespace, self.lease.as_deref())
    }

    fn key(&self, key: &str) -> pb::KeyRequest {
        pb::KeyRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_string(),
            ..Default::default()
        }
    }

    /// Applies `layers` (blobs in berth-contentd) as committed snapshots
    /// named by chain ID, under this client's lease (without syncfs: the
    /// `Unpacker` trait takes both as options).
    pub async fn unpack(
        &self,
        namespace: &str,
        layers: &[Descriptor],
        diff_ids: &[Digest],
    ) -> Result<UnpackResult> {
        self.unpack_under(namespace, layers, diff_ids, self.lease.as_deref(), false)
            .await
    }

    async fn unpack_under(
        &self,
        namespace: &str,
        layers: &[Descriptor],
        diff_ids: &[Digest],
        lease: Option<&str>,
        sync_fs: bool,
    ) -> Result<UnpackResult> {
        let req = pb::UnpackRequest {
            snapshotter: self.snapshotter.clone(),
            layers: layers.iter().map(descriptor_to_pb).collect(),
            diff_ids: diff_ids.iter().map(|d| d.to_string()).collect(),
            sync_fs,
            ..Default::default()
        };
        let ctx = request_context_leased(namespace, lease);
        let resp = self.client.unpack(ctx, &req).await?;
        Ok(UnpackResult {
            chain_id: Digest::parse(&resp.chain_id)?,
            applied: u64::try_from(resp.applied).unwrap_or(0),
        })
    }

    /// The layer of `upper` against `lower`, stored in berth-contentd, of
    /// `media_type` (empty: gzip).
    pub async fn diff(
        &self,
        namespace: &str,
        lower: Option<&str>,
        upper: &str,
        media_type: &str,
        labels: Labels,
    ) -> Result<DiffLayer> {
        let req = pb::DiffRequest {
            snapshotter: self.snapshotter.clone(),
            lower: lower.unwrap_or_default().to_string(),
            upper: upper.to_string(),
            labels,
            media_type: media_type.to_string(),
            ..Default::default()
        };
        let resp = self.client.diff(self.context(namespace), &req).await?;
        Ok(DiffLayer {
            descriptor: descriptor_from_pb(resp.diff.get_or_default())?,
            diff_id: Digest::parse(&resp.diff_id)?,
        })
    }
}

fn mounts(resp: pb::MountsResponse) -> Vec<Mount> {
    resp.mounts.iter().map(mount_from_pb).collect()
}

#[async_trait]
impl Snapshotter for RemoteSnapshotter {
    async fn stat(&self, namespace: &str, key: &str) -> Result<Info> {
        let resp = self
            .client
            .stat(self.context(namespace), &self.key(key))
            .await?;
        info_from_pb(resp.info.get_or_default())
    }

    async fn update(&self, namespace: &str, info: Info, paths: &[String]) -> Result<Info> {
        let req = pb::UpdateRequest {
            snapshotter: self.snapshotter.clone(),
            info: Some(info_to_pb(&info)).into(),
            update_paths: paths.to_vec(),
            ..Default::default()
        };
        let resp = self.client.update(self.context(namespace), &req).await?;
        info_from_pb(resp.info.get_or_default())
    }

    async fn usage(&self, namespace: &str, key: &str) -> Result<Usage> {
        let resp = self
            .client
            .usage(self.context(namespace), &self.key(key))
            .await?;
        Ok(Usage {
            size: u64::try_from(resp.size).unwrap_or(0),
            inodes: u64::try_from(resp.inodes).unwrap_or(0),
        })
    }

    async fn mounts(&self, namespace: &str, key: &str) -> Result<Vec<Mount>> {
        let resp = self
            .client
            .mounts(self.context(namespace), &self.key(key))
            .await?;
        Ok(mounts(resp))
    }

    async fn prepare(
        &self,
        namespace: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        let req = pb::PrepareRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_string(),
            parent: parent.unwrap_or_default().to_string(),
            labels,
            ..Default::default()
        };
        Ok(mounts(
            self.client.prepare(self.context(namespace), &req).await?,
        ))
    }

    async fn view(
        &self,
        namespace: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        let req = pb::PrepareRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_string(),
            parent: parent.unwrap_or_default().to_string(),
            labels,
            ..Default::default()
        };
        Ok(mounts(
            self.client.view(self.context(namespace), &req).await?,
        ))
    }

    async fn commit(&self, namespace: &str, name: &str, key: &str, labels: Labels) -> Result<()> {
        let req = pb::CommitRequest {
            snapshotter: self.snapshotter.clone(),
            name: name.to_string(),
            key: key.to_string(),
            labels,
            ..Default::default()
        };
        self.client.commit(self.context(namespace), &req).await?;
        Ok(())
    }

    async fn remove(&self, namespace: &str, key: &str) -> Result<()> {
        let req = pb::RemoveRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_string(),
            ..Default::default()
        };
        self.client.remove(self.context(namespace), &req).await?;
        Ok(())
    }

    async fn remove_if_unchanged(
        &self,
        namespace: &str,
        key: &str,
        seen: std::time::SystemTime,
    ) -> Result<()> {
        let req = pb::RemoveRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_string(),
            if_updated_at: berth_api::time::timestamp(seen),
            ..Default::default()
        };
        self.client.remove(self.context(namespace), &req).await?;
        Ok(())
    }

    async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Info>> {
        let req = pb::ListRequest {
            snapshotter: self.snapshotter.clone(),
            filters: filters.to_vec(),
            ..Default::default()
        };
        let mut stream = self.client.list(self.context(namespace), &req).await?;
        let mut infos = Vec::new();
        while let Some(batch) = stream.recv().await? {
            for info in &batch.info {
                infos.push(info_from_pb(info)?);
            }
        }
        Ok(infos)
    }

    async fn cleanup(&self) -> Result<()> {
        let req = pb::CleanupRequest {
            snapshotter: self.snapshotter.clone(),
            ..Default::default()
        };
        self.client
            .cleanup(self.context(berth_ids::DEFAULT_NAMESPACE), &req)
            .await?;
        Ok(())
    }

    async fn release_lease(&self, namespace: &str, lease: &str) -> Result<u64> {
        let req = pb::ReleaseLeaseRequest {
            snapshotter: self.snapshotter.clone(),
            lease: lease.to_string(),
            ..Default::default()
        };
        let resp = self
            .client
            .release_lease(self.context(namespace), &req)
            .await?;
        Ok(resp.released)
    }
}

#[async_trait]
impl berth_image::Unpacker for RemoteSnapshotter {
    fn snapshotter_name(&self) -> &str {
        berth_snapshot::canonical_snapshotter(&self.snapshotter)
    }

    async fn unpack_layers(
        &self,
        namespace: &str,
        layers: &[berth_image::Descriptor],
        diff_ids: &[Digest],
        options: &berth_image::UnpackOptions,
    ) -> Result<berth_image::Unpacked> {
        let layers: Vec<Descriptor> = layers
            .iter()
            .map(|l| Descriptor {
                urls: Vec::new(),
                platform: None,
                annotations: Default::default(),
                media_type: l.media_type.clone(),
                digest: l.digest.clone(),
                size: l.size,
            })
            .collect();
        self.unpack_under(
            namespace,
            &layers,
            diff_ids,
            options.lease.as_deref().or(self.lease.as_deref()),
            options.sync_fs,
        )
        .await
    }
}
