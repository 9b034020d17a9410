//! `berth.namespaces.v1.Namespaces` over ttrpc.

use std::sync::Arc;

use async_trait::async_trait;
use berth_api::namespaces as pb;
use berth_api::protobuf::well_known_types::empty::Empty;
use berth_daemon::reply;
use berth_errdefs::Error;
use berth_metadata::wire::{namespace_from_pb, namespace_to_pb};
use berth_metadata::NamespaceStore;
use ttrpc::r#async::TtrpcContext;

#[derive(Clone)]
pub struct NamespacesService {
    store: Arc<dyn NamespaceStore>,
}

impl std::fmt::Debug for NamespacesService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespacesService").finish_non_exhaustive()
    }
}

impl NamespacesService {
    pub fn new(store: Arc<dyn NamespaceStore>) -> NamespacesService {
        NamespacesService { store }
    }

    pub fn into_ttrpc(self) -> std::collections::HashMap<String, ttrpc::r#async::Service> {
        pb::create_namespaces(Arc::new(self))
    }
}

#[async_trait]
impl pb::Namespaces for NamespacesService {
    async fn get(
        &self,
        _ctx: &TtrpcContext,
        req: pb::GetNamespaceRequest,
    ) -> ttrpc::Result<pb::Namespace> {
        reply(
            "namespaces.get",
            async { Ok(namespace_to_pb(&self.store.get(&req.name).await?)) }.await,
        )
    }

    async fn list(
        &self,
        _ctx: &TtrpcContext,
        req: pb::ListNamespacesRequest,
    ) -> ttrpc::Result<pb::ListNamespacesResponse> {
        reply(
            "namespaces.list",
            async {
                let namespaces = self.store.list(&req.filters).await?;
                Ok(pb::ListNamespacesResponse {
                    namespaces: namespaces.iter().map(namespace_to_pb).collect(),
                    ..Default::default()
                })
            }
            .await,
        )
    }

    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: pb::Namespace,
    ) -> ttrpc::Result<pb::Namespace> {
        reply(
            "namespaces.create",
            async {
                let created = self.store.create(namespace_from_pb(&req)).await?;
                Ok(namespace_to_pb(&created))
            }
            .await,
        )
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: pb::UpdateNamespaceRequest,
    ) -> ttrpc::Result<pb::Namespace> {
        reply(
            "namespaces.update",
            async {
                let namespace = req
                    .namespace
                    .as_ref()
                    .ok_or_else(|| Error::invalid_argument("update needs a namespace"))?;
                let updated = self
                    .store
                    .update(namespace_from_pb(namespace), &req.update_paths)
                    .await?;
                Ok(namespace_to_pb(&updated))
            }
            .await,
        )
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: pb::DeleteNamespaceRequest,
    ) -> ttrpc::Result<Empty> {
        reply(
            "namespaces.delete",
            async {
                self.store.delete(&req.name).await?;
                Ok(Empty::new())
            }
            .await,
        )
    }
}
