use std::path::Path;

use async_trait::async_trait;
use berth_api::leases as pb;
use berth_errdefs::Result;
use berth_metadata::wire::{lease_from_pb, resource_to_pb};
use berth_metadata::{Labels, Lease, LeaseManager, Resource};

use crate::connection::{connect, request_context};

/// berth-metad's leases, across its socket.
#[derive(Clone)]
pub struct RemoteLeases {
    client: pb::LeasesClient,
}

impl std::fmt::Debug for RemoteLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteLeases").finish_non_exhaustive()
    }
}

impl RemoteLeases {
    pub async fn connect(socket: &Path) -> Result<RemoteLeases> {
        Ok(RemoteLeases::new(connect(socket).await?))
    }

    pub fn new(client: ttrpc::r#async::Client) -> RemoteLeases {
        RemoteLeases {
            client: pb::LeasesClient::new(client),
        }
    }
}

#[async_trait]
impl LeaseManager for RemoteLeases {
    async fn create(&self, namespace: &str, id: &str, labels: Labels) -> Result<Lease> {
        let req = pb::CreateLeaseRequest {
            id: id.to_string(),
            labels,
            ..Default::default()
        };
        let resp = self.client.create(request_context(namespace), &req).await?;
        Ok(lease_from_pb(&resp))
    }

    async fn delete(&self, namespace: &str, id: &str, sync: bool) -> Result<()> {
        let req = pb::DeleteLeaseRequest {
            id: id.to_string(),
            sync,
            ..Default::default()
        };
        self.client.delete(request_context(namespace), &req).await?;
        Ok(())
    }

    async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Lease>> {
        let req = pb::ListLeasesRequest {
            filters: filters.to_vec(),
            ..Default::default()
        };
        let resp = self.client.list(request_context(namespace), &req).await?;
        Ok(resp.leases.iter().map(lease_from_pb).collect())
    }

    async fn add_resource(&self, namespace: &str, id: &str, resource: Resource) -> Result<()> {
        let req = pb::AddResourceRequest {
            id: id.to_string(),
            resource: Some(resource_to_pb(&resource)).into(),
            ..Default::default()
        };
        self.client
            .add_resource(request_context(namespace), &req)
            .await?;
        Ok(())
    }

    async fn delete_resource(&self, namespace: &str, id: &str, resource: Resource) -> Result<()> {
        let req = pb::DeleteResourceRequest {
            id: id.to_string(),
            resource: Some(resource_to_pb(&resource)).into(),
            ..Default::default()
        };
        self.client
            .delete_resource(request_context(namespace), &req)
            .await?;
        Ok(())
    }

    async fn list_resources(&self, namespace: &str, id: &str) -> Result<Vec<Resource>> {
        let req = pb::ListResourcesRequest {
            id: id.to_string(),
            ..Default::default()
        };
        let resp = self
            .client
            .list_resources(request_context(namespace), &req)
            .await?;
        Ok(resp
            .resources
            .iter()
            .map(|r| Resource {
                id: r.id.clone(),
                kind: r.type_.clone(),
            })
            .collect())
    }
}
