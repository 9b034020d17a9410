//! `berth.leases.v1.Leases` over ttrpc.

use std::sync::Arc;

use async_trait::async_trait;
use berth_api::leases as pb;
use berth_api::protobuf::well_known_types::empty::Empty;
use berth_daemon::{reply, request_namespace};
use berth_errdefs::Error;
use berth_metadata::wire::{lease_from_pb, lease_to_pb, resource_from_pb, resource_to_pb};
use berth_metadata::LeaseManager;
use ttrpc::r#async::TtrpcContext;

#[derive(Clone)]
pub struct LeasesService {
    store: Arc<dyn LeaseManager>,
}

impl std::fmt::Debug for LeasesService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasesService").finish_non_exhaustive()
    }
}

impl LeasesService {
    pub fn new(store: Arc<dyn LeaseManager>) -> LeasesService {
        LeasesService { store }
    }

    pub fn into_ttrpc(self) -> std::collections::HashMap<String, ttrpc::r#async::Service> {
        pb::create_leases(Arc::new(self))
    }
}

#[async_trait]
impl pb::Leases for LeasesService {
    async fn create(
        &self,
        ctx: &TtrpcContext,
        req: pb::CreateLeaseRequest,
    ) -> ttrpc::Result<pb::Lease> {
        reply(
            "leases.create",
            async {
                let namespace = request_namespace(ctx)?;
                let lease = self.store.create(&namespace, &req.id, req.labels).await?;
                Ok(lease_to_pb(&lease))
            }
            .await,
        )
    }

    async fn update(
        &self,
        ctx: &TtrpcContext,
        req: pb::UpdateLeaseRequest,
    ) -> ttrpc::Result<pb::Lease> {
        reply(
            "leases.update",
            async {
                let namespace = request_namespace(ctx)?;
                let lease = req
                    .lease
                    .as_ref()
                    .ok_or_else(|| Error::invalid_argument("update needs a lease"))?;
                let lease = lease_from_pb(lease);
                let lease = self
                    .store
                    .update(&namespace, lease, &req.update_paths)
                    .await?;
                Ok(lease_to_pb(&lease))
            }
            .await,
        )
    }

    async fn delete(
        &self,
        ctx: &TtrpcContext,
        req: pb::DeleteLeaseRequest,
    ) -> ttrpc::Result<Empty> {
        reply(
            "leases.delete",
            async {
                let namespace = request_namespace(ctx)?;
                self.store.delete(&namespace, &req.id, req.sync).await?;
                Ok(Empty::new())
            }
            .await,
        )
    }

    async fn list(
        &self,
        ctx: &TtrpcContext,
        req: pb::ListLeasesRequest,
    ) -> ttrpc::Result<pb::ListLeasesResponse> {
        reply(
            "leases.list",
            async {
                let namespace = request_namespace(ctx)?;
                let leases = self.store.list(&namespace, &req.filters).await?;
                Ok(pb::ListLeasesResponse {
                    leases: leases.iter().map(lease_to_pb).collect(),
                    ..Default::default()
                })
            }
            .await,
        )
    }

    async fn add_resource(
        &self,
        ctx: &TtrpcContext,
        req: pb::AddResourceRequest,
    ) -> ttrpc::Result<Empty> {
        reply(
            "leases.add_resource",
            async {
                let namespace = request_namespace(ctx)?;
                let resource = resource_from_pb(&req.resource)?;
                self.store
                    .add_resource(&namespace, &req.id, resource)
                    .await?;
                Ok(Empty::new())
            }
            .await,
        )
    }

    async fn delete_resource(
        &self,
        ctx: &TtrpcContext,
        req: pb::DeleteResourceRequest,
    ) -> ttrpc::Result<Empty> {
        reply(
            "leases.delete_resource",
            async {
                let namespace = request_namespace(ctx)?;
                let resource = resource_from_pb(&req.resource)?;
                self.store
                    .delete_resource(&namespace, &req.id, resource)
                    .await?;
                Ok(Empty::new())
            }
            .await,
        )
    }

    async fn list_resources(
        &self,
        ctx: &TtrpcContext,
        req: pb::ListResourcesRequest,
    ) -> ttrpc::Result<pb::ListResourcesResponse> {
        reply(
            "leases.list_resources",
            async {
                let namespace = request_namespace(ctx)?;
                let resources = self.store.list_resources(&namespace, &req.id).await?;
                Ok(pb::ListResourcesResponse {
                    resources: resources.iter().map(resource_to_pb).collect(),
                    ..Default::default()
                })
            }
            .await,
        )
    }
}
