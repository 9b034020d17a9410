use std::path::Path;

use async_trait::async_trait;
use berth_api::namespaces as pb;
use berth_errdefs::Result;
use berth_ids::DEFAULT_NAMESPACE;
use berth_metadata::wire::{namespace_from_pb, namespace_to_pb};
use berth_metadata::{Namespace, NamespaceStore};

use crate::connection::{connect, request_context};

/// berth-metad's namespaces, across its socket.
#[derive(Clone)]
pub struct RemoteNamespaces {
    client: pb::NamespacesClient,
}

impl std::fmt::Debug for RemoteNamespaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteNamespaces").finish_non_exhaustive()
    }
}

impl RemoteNamespaces {
    pub async fn connect(socket: &Path) -> Result<RemoteNamespaces> {
        Ok(RemoteNamespaces::new(connect(socket).await?))
    }

    pub fn new(client: ttrpc::r#async::Client) -> RemoteNamespaces {
        RemoteNamespaces {
            client: pb::NamespacesClient::new(client),
        }
    }
}

/// Namespace calls name their namespace in the request; the metadata
/// carries the default.
fn context() -> ttrpc::context::Context {
    request_context(DEFAULT_NAMESPACE)
}

#[async_trait]
impl NamespaceStore for RemoteNamespaces {
    async fn get(&self, name: &str) -> Result<Namespace> {
        let req = pb::GetNamespaceRequest {
            name: name.to_string(),
            ..Default::default()
        };
        Ok(namespace_from_pb(&self.client.get(context(), &req).await?))
    }

    async fn list(&self, filters: &[String]) -> Result<Vec<Namespace>> {
        let req = pb::ListNamespacesRequest {
            filters: filters.to_vec(),
            ..Default::default()
        };
        let resp = self.client.list(context(), &req).await?;
        Ok(resp.namespaces.iter().map(namespace_from_pb).collect())
    }

    async fn create(&self, namespace: Namespace) -> Result<Namespace> {
        let resp = self
            .client
            .create(context(), &namespace_to_pb(&namespace))
            .await?;
        Ok(namespace_from_pb(&resp))
    }

    async fn update(&self, namespace: Namespace, paths: &[String]) -> Result<Namespace> {
        let req = pb::UpdateNamespaceRequest {
            namespace: Some(namespace_to_pb(&namespace)).into(),
            update_paths: paths.to_vec(),
            ..Default::default()
        };
        Ok(namespace_from_pb(
            &self.client.update(context(), &req).await?,
        ))
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let req = pb::DeleteNamespaceRequest {
            name: name.to_string(),
            ..Default::default()
        };
        self.client.delete(context(), &req).await?;
        Ok(())
    }
}
