//! `berth.snapshots.v1.Snapshots` over ttrpc: a thin edge over the local
//! snapshotters. Requests are parsed and validated here; every error leaves
//! as the ttrpc status of its kind.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use berth_api::protobuf::well_known_types::empty::Empty;
use berth_api::snapshots as pb;
use berth_daemon::{reply, request_lease, request_namespace};
use berth_errdefs::{Error, Result};
use berth_snapshot::wire::{
    descriptor_from_pb, descriptor_to_pb, info_from_pb, info_to_pb, mount_to_pb, optional,
};
use berth_snapshot::{Leased, Mount, Snapshotter};
use ttrpc::r#async::{ServerStreamSender, TtrpcContext};

use crate::diff::{DiffOptions, Differ};
use crate::local::{Backend, LocalSnapshotter};
use crate::unpack::Unpacker;

#[derive(Clone)]
pub struct SnapshotService {
    snapshotters: HashMap<&'static str, LocalSnapshotter>,
    unpacker: Arc<Unpacker>,
    differ: Arc<Differ>,
}

impl std::fmt::Debug for SnapshotService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotService").finish_non_exhaustive()
    }
}

fn mounts_response(mounts: Vec<Mount>) -> pb::MountsResponse {
    pb::MountsResponse {
        mounts: mounts.iter().map(mount_to_pb).collect(),
        ..Default::default()
    }
}

impl SnapshotService {
    pub fn new(
        snapshotters: Vec<LocalSnapshotter>,
        unpacker: Arc<Unpacker>,
        differ: Arc<Differ>,
    ) -> SnapshotService {
        SnapshotService {
            snapshotters: snapshotters
                .into_iter()
                .map(|s| (s.backend().name(), s))
                .collect(),
            unpacker,
            differ,
        }
    }

    /// The ttrpc service table to register with the server.
    pub fn into_ttrpc(self) -> HashMap<String, ttrpc::r#async::Service> {
        pb::create_snapshots(Arc::new(self))
    }

    fn snapshotter(&self, name: &str) -> Result<&LocalSnapshotter> {
        let name = berth_snapshot::canonical_snapshotter(name);
        let backend = Backend::from_name(name)?;
        self.snapshotters
            .get(backend.name())
            .ok_or_else(|| Error::invalid_argument(format!("snapshotter {name} is not enabled")))
    }
}

#[async_trait]
impl pb::Snapshots for SnapshotService {
    async fn prepare(
        &self,
        ctx: &TtrpcContext,
        req: pb::PrepareRequest,
    ) -> ttrpc::Result<pb::MountsResponse> {
        reply(
            "prepare",
            async {
                let ns = request_namespace(ctx)?;
                let sn = self.snapshotter(&req.snapshotter)?;
                let mounts = Leased::new(sn, request_lease(ctx)?)
                    .prepare(&ns, &req.key, optional(&req.parent).as_deref(), req.labels)
                    .await?;
                Ok(mounts_response(mounts))
            }
            .await,
        )
    }

    async fn view(
        &self,
        ctx: &TtrpcContext,
        req: pb::PrepareRequest,
    ) -> ttrpc::Result<pb::MountsResponse> {
        reply(
            "view",
            async {
                let ns = request_namespace(ctx)?;
                let sn = self.snapshotter(&req.snapshotter)?;
                let mounts = Leased::new(sn, request_lease(ctx)?)
                    .view(&ns, &req.key, optional(&req.parent).as_deref(), req.labels)
                    .await?;
                Ok(mounts_response(mounts))
            }
            .await,
        )
    }

    async fn mounts(
        &self,
        ctx: &TtrpcContext,
        req: pb::KeyRequest,
    ) -> ttrpc::Result<pb::MountsResponse> {
        reply(
            "mounts",
            async {
                let ns = request_namespace(ctx)?;
                let sn = self.snapshotter(&req.snapshotter)?;
                Ok(mounts_response(sn.mounts(&ns, &req.key).await?))
            }
            .await,
        )
    }

    async fn commit(&self, ctx: &TtrpcContext, req: pb::CommitRequest) -> ttrpc::Result<Empty> {
        reply(
            "commit",
            async {
                let ns = request_namespace(ctx)?;
                let sn = self.snapshotter(&req.snapshotter)?;
                Leased::new(sn, request_lease(ctx)?)
                    .commit(&ns, &req.name, &req.key, req.labels)
                    .await?;
                Ok(Empty::new())
            }
            .await,
        )
    }

    async fn remove(&self, ctx: &TtrpcContext, req: pb::RemoveRequest) -> ttrpc::Result<Empty> {
        reply(
            "remove",
            async {
                let ns = request_namespace(ctx)?;
                let sn = self.snapshotter(&req.snapshotter)?;
                match req.if_updated_at.as_ref() {
                    Some(_) => {
                        let seen = berth_api::time::system_time(&req.if_updated_at);
                        sn.remove_if_unchanged(&ns, &req.key, seen).await?
                    }
                    None => sn.remove(&ns, &req.key).await?,
                }
                Ok(Empty::new())
            }
            .await,
        )
    }

    async fn stat(
        &self,
        ctx: &TtrpcContext,
        req: pb::KeyRequest,
    ) -> ttrpc::Result<pb::InfoResponse> {
        reply(
            "stat",
            async {
                let ns = request_namespace(ctx)?;
                let sn = self.snapshotter(&req.snapshotter)?;
                let info = sn.stat(&ns, &req.key).await?;
                Ok(pb::InfoResponse {
                    info: Some(info_to_pb(&info)).into(),
                    ..Default::default()
                })
            }
            .await,
        )
    }

    async fn update(
        &self,
        ctx: &TtrpcContext,
        req: pb::UpdateRequest,
    ) -> ttrpc::Result<pb::InfoResponse> {
        reply(
            "update",
            async {
                let ns = request_namespace(ctx)?;
                let sn = self.snapshotter(&req.snapshotter)?;
                let info = info_from_pb(req.info.get_or_default())?;
                let info = sn.update(&ns, info, &req.update_paths).await?;
                Ok(pb::InfoResponse {
                    info: Some(info_to_pb(&info)).into(),
                    ..Default::default()
                })
            }
            .await,
        )
    }

    async fn usage(
        &self,
        ctx: &TtrpcContext,
        req: pb::KeyRequest,
    ) -> ttrpc::Result<pb::UsageResponse> {
        reply(
            "usage",
            async {
                let ns = request_namespace(ctx)?;
                let sn = self.snapshotter(&req.snapshotter)?;
                let usage = sn.usage(&ns, &req.key).await?;
                Ok(pb::UsageResponse {
                    size: usage.size as i64,
                    inodes: usage.inodes as i64,
                    ..Default::default()
                })
            }
            .await,
        )
    }

    async fn list(
        &self,
        ctx: &TtrpcContext,
        req: pb::ListRequest,
        sender: ServerStreamSender<pb::ListResponse>,
    ) -> ttrpc::Result<()> {
        reply(
            "list",
            async {
                let ns = request_namespace(ctx)?;
                let sn = self.snapshotter(&req.snapshotter)?;
                let infos = sn.list(&ns, &req.filters).await?;
                for batch in berth_api::list_batches(infos.iter().map(info_to_pb).collect()) {
                    let response = pb::ListResponse {
                        info: batch,
                        ..Default::default()
                    };
                    sender.send(&response).await?;
                }
                Ok(())
            }
            .await,
        )
    }

    async fn cleanup(&self, _ctx: &TtrpcContext, req: pb::CleanupRequest) -> ttrpc::Result<Empty> {
        reply(
            "cleanup",
            async {
                let sn = self.snapshotter(&req.snapshotter)?;
                sn.cleanup().await?;
                Ok(Empty::new())
            }
            .await,
        )
    }

    async fn release_lease(
        &self,
        ctx: &TtrpcContext,
        req: pb::ReleaseLeaseRequest,
    ) -> ttrpc::Result<pb::ReleaseLeaseResponse> {
        reply(
            "release_lease",
            async {
                let ns = request_namespace(ctx)?;
                berth_ids::validate_id(&req.lease)?;
                let sn = self.snapshotter(&req.snapshotter)?;
                let released = sn.release_lease(&ns, &req.lease).await?;
                Ok(pb::ReleaseLeaseResponse {
                    released,
                    ..Default::default()
                })
            }
            .await,
        )
    }

    async fn unpack(
        &self,
        ctx: &TtrpcContext,
        req: pb::UnpackRequest,
    ) -> ttrpc::Result<pb::UnpackResponse> {
        reply(
            "unpack",
            async {
                let ns = request_namespace(ctx)?;
                let sn = self.snapshotter(&req.snapshotter)?;
                let layers = req
                    .layers
                    .iter()
                    .map(descriptor_from_pb)
                    .collect::<Result<Vec<_>>>()?;
                let diff_ids = req
                    .diff_ids
                    .iter()
                    .map(|d| Ok(berth_ids::Digest::parse(d)?))
                    .collect::<Result<Vec<_>>>()?;
                let lease = request_lease(ctx)?;
                // On a task of its own: ttrpc drops a request's future when
                // its caller hangs up, which would leave the scratch
                // snapshot of the layer being applied behind (until the
                // next start). The unpack runs to its end instead, and what
                // it commits serves the caller's retry.
                let (unpacker, sn) = (self.unpacker.clone(), sn.clone());
                let sync_fs = req.sync_fs;
                let unpacked = tokio::spawn(async move {
                    unpacker
                        .unpack(&ns, &sn, &layers, &diff_ids, lease.as_deref(), sync_fs)
                        .await
                })
                .await
                .map_err(|e| Error::internal(format!("unpack task: {e}")))??;
                Ok(pb::UnpackResponse {
                    chain_id: unpacked.chain_id.to_string(),
                    applied: unpacked.applied as i64,
                    ..Default::default()
                })
            }
            .await,
        )
    }

    async fn diff(
        &self,
        ctx: &TtrpcContext,
        req: pb::DiffRequest,
    ) -> ttrpc::Result<pb::DiffResponse> {
        reply(
            "diff",
            async {
                let ns = request_namespace(ctx)?;
                let sn = self.snapshotter(&req.snapshotter)?;
                let layer = self
                    .differ
                    .diff(
                        &ns,
                        sn,
                        optional(&req.lower).as_deref(),
                        &req.upper,
                        DiffOptions {
                            media_type: req.media_type,
                            labels: req.labels,
                            lease: request_lease(ctx)?,
                        },
                    )
                    .await?;
                Ok(pb::DiffResponse {
                    diff: Some(descriptor_to_pb(&layer.descriptor)).into(),
                    diff_id: layer.diff_id.to_string(),
                    ..Default::default()
                })
            }
            .await,
        )
    }
}
