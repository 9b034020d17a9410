use std::path::Path;

use async_trait::async_trait;
use berth_api::containers as pb;
use berth_errdefs::Result;
use berth_metadata::wire::{container_from_pb, container_to_pb};
use berth_metadata::{Container, ContainerStore};

use crate::connection::{connect, request_context};

/// berth-metad's containers, across its socket.
#[derive(Clone)]
pub struct RemoteContainers {
    client: pb::ContainersClient,
}

impl std::fmt::Debug for RemoteContainers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteContainers").finish_non_exhaustive()
    }
}

impl RemoteContainers {
    pub async fn connect(socket: &Path) -> Result<RemoteContainers> {
        Ok(RemoteContainers::new(connect(socket).await?))
    }

    pub fn new(client: ttrpc::r#async::Client) -> RemoteContainers {
        RemoteContainers {
            client: pb::ContainersClient::new(client),
        }
    }
}

#[async_trait]
impl ContainerStore for RemoteContainers {
    async fn get(&self, namespace: &str, id: &str) -> Result<Container> {
        let req = pb::GetContainerRequest {
            id: id.to_string(),
            ..Default::default()
        };
        let resp = self.client.get(request_context(namespace), &req).await?;
        Ok(container_from_pb(&resp))
    }

    async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Container>> {
        let req = pb::ListContainersRequest {
            filters: filters.to_vec(),
            ..Default::default()
        };
        let mut stream = self.client.list(request_context(namespace), &req).await?;
        let mut containers = Vec::new();
        while let Some(batch) = stream.recv().await? {
            containers.extend(batch.containers.iter().map(container_from_pb));
        }
        Ok(containers)
    }

    async fn create(&self, namespace: &str, container: Container) -> Result<Container> {
        let resp = self
            .client
            .create(request_context(namespace), &container_to_pb(&container))
            .await?;
        Ok(container_from_pb(&resp))
    }

    async fn update(
        &self,
        namespace: &str,
        container: Container,
        paths: &[String],
    ) -> Result<Container> {
        let req = pb::UpdateContainerRequest {
            container: Some(container_to_pb(&container)).into(),
            update_paths: paths.to_vec(),
            ..Default::default()
        };
        let resp = self.client.update(request_context(namespace), &req).await?;
        Ok(container_from_pb(&resp))
    }

    async fn delete(&self, namespace: &str, id: &str) -> Result<()> {
        let req = pb::DeleteContainerRequest {
            id: id.to_string(),
            ..Default::default()
        };
        self.client.delete(request_context(namespace), &req).await?;
        Ok(())
    }
}
