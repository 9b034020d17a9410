//! `berth.containers.v1.Containers` over ttrpc.

use std::sync::Arc;

use async_trait::async_trait;
use berth_api::containers as pb;
use berth_api::protobuf::well_known_types::empty::Empty;
use berth_daemon::{reply, request_namespace};
use berth_errdefs::Error;
use berth_metadata::wire::{container_from_pb, container_to_pb};
use berth_metadata::ContainerStore;
use ttrpc::r#async::{ServerStreamSender, TtrpcContext};

use berth_api::list_batches;

#[derive(Clone)]
pub struct ContainersService {
    store: Arc<dyn ContainerStore>,
}

impl std::fmt::Debug for ContainersService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainersService").finish_non_exhaustive()
    }
}

impl ContainersService {
    pub fn new(store: Arc<dyn ContainerStore>) -> ContainersService {
        ContainersService { store }
    }

    pub fn into_ttrpc(self) -> std::collections::HashMap<String, ttrpc::r#async::Service> {
        pb::create_containers(Arc::new(self))
    }
}

#[async_trait]
impl pb::Containers for ContainersService {
    async fn get(
        &self,
        ctx: &TtrpcContext,
        req: pb::GetContainerRequest,
    ) -> ttrpc::Result<pb::Container> {
        reply(
            "containers.get",
            async {
                let namespace = request_namespace(ctx)?;
                Ok(container_to_pb(&self.store.get(&namespace, &req.id).await?))
            }
            .await,
        )
    }

    async fn list(
        &self,
        ctx: &TtrpcContext,
        req: pb::ListContainersRequest,
        sender: ServerStreamSender<pb::ListContainersResponse>,
    ) -> ttrpc::Result<()> {
        reply(
            "containers.list",
            async {
                let namespace = request_namespace(ctx)?;
                let containers = self.store.list(&namespace, &req.filters).await?;
                for batch in list_batches(containers.iter().map(container_to_pb).collect()) {
                    let response = pb::ListContainersResponse {
                        containers: batch,
                        ..Default::default()
                    };
                    sender.send(&response).await?;
                }
                Ok(())
            }
            .await,
        )
    }

    async fn create(&self, ctx: &TtrpcContext, req: pb::Container) -> ttrpc::Result<pb::Container> {
        reply(
            "containers.create",
            async {
                let namespace = request_namespace(ctx)?;
                let created = self
                    .store
                    .create(&namespace, container_from_pb(&req))
                    .await?;
                Ok(container_to_pb(&created))
            }
            .await,
        )
    }

    async fn update(
        &self,
        ctx: &TtrpcContext,
        req: pb::UpdateContainerRequest,
    ) -> ttrpc::Result<pb::Container> {
        reply(
            "containers.update",
            async {
                let namespace = request_namespace(ctx)?;
                let container = req
                    .container
                    .as_ref()
                    .ok_or_else(|| Error::invalid_argument("update needs a container"))?;
                let updated = self
                    .store
                    .update(&namespace, container_from_pb(container), &req.update_paths)
                    .await?;
                Ok(container_to_pb(&updated))
            }
            .await,
        )
    }

    async fn delete(
        &self,
        ctx: &TtrpcContext,
        req: pb::DeleteContainerRequest,
    ) -> ttrpc::Result<Empty> {
        reply(
            "containers.delete",
            async {
                let namespace = request_namespace(ctx)?;
                self.store.delete(&namespace, &req.id).await?;
                Ok(Empty::new())
            }
            .await,
        )
    }
}
