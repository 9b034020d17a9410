use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use berth_api::leases as pb;
use berth_errdefs::{Error, ErrorKind, Result};
use berth_metadata::wire::{lease_from_pb, lease_to_pb, resource_to_pb};
use berth_metadata::{Labels, Lease, LeaseManager, Resource};

use crate::connection::{connect, request_context};

/// berth-metad's leases, across its socket. Connected by path, a call
/// that finds the connection gone (metad restarted) connects again for
/// the next call: a client renewing a lease over a long pull outlives a
/// restart of metad.
#[derive(Clone)]
pub struct RemoteLeases {
    socket: Option<Arc<PathBuf>>,
    client: Arc<Mutex<pb::LeasesClient>>,
}

impl std::fmt::Debug for RemoteLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteLeases").finish_non_exhaustive()
    }
}

impl RemoteLeases {
    pub async fn connect(socket: &Path) -> Result<RemoteLeases> {
        let mut leases = RemoteLeases::new(connect(socket).await?);
        leases.socket = Some(Arc::new(socket.to_path_buf()));
        Ok(leases)
    }

    pub fn new(client: ttrpc::r#async::Client) -> RemoteLeases {
        RemoteLeases {
            socket: None,
            client: Arc::new(Mutex::new(pb::LeasesClient::new(client))),
        }
    }

    fn client(&self) -> pb::LeasesClient {
        self.client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A call's outcome; if it failed because the connection is gone,
    /// connects again (when the socket is known) for the next call. The
    /// failed call is not repeated: it may have taken effect.
    async fn checked<T>(&self, outcome: ttrpc::Result<T>) -> Result<T> {
        let err = match outcome {
            Ok(value) => return Ok(value),
            Err(e) => Error::from_ttrpc(e),
        };
        if err.kind() == ErrorKind::Unavailable {
            if let Some(socket) = &self.socket {
                if let Ok(fresh) = connect(socket).await {
                    *self
                        .client
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        pb::LeasesClient::new(fresh);
                }
            }
        }
        Err(err)
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
        let resp = self.client().create(request_context(namespace), &req).await;
        Ok(lease_from_pb(&self.checked(resp).await?))
    }

    async fn update(&self, namespace: &str, lease: Lease, paths: &[String]) -> Result<Lease> {
        let req = pb::UpdateLeaseRequest {
            lease: Some(lease_to_pb(&lease)).into(),
            update_paths: paths.to_vec(),
            ..Default::default()
        };
        let resp = self.client().update(request_context(namespace), &req).await;
        Ok(lease_from_pb(&self.checked(resp).await?))
    }

    async fn delete(&self, namespace: &str, id: &str, sync: bool) -> Result<()> {
        let req = pb::DeleteLeaseRequest {
            id: id.to_string(),
            sync,
            ..Default::default()
        };
        let resp = self.client().delete(request_context(namespace), &req).await;
        self.checked(resp).await?;
        Ok(())
    }

    async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Lease>> {
        let req = pb::ListLeasesRequest {
            filters: filters.to_vec(),
            ..Default::default()
        };
        let resp = self.client().list(request_context(namespace), &req).await;
        let resp = self.checked(resp).await?;
        Ok(resp.leases.iter().map(lease_from_pb).collect())
    }

    async fn add_resource(&self, namespace: &str, id: &str, resource: Resource) -> Result<()> {
        let req = pb::AddResourceRequest {
            id: id.to_string(),
            resource: Some(resource_to_pb(&resource)).into(),
            ..Default::default()
        };
        let resp = self
            .client()
            .add_resource(request_context(namespace), &req)
            .await;
        self.checked(resp).await?;
        Ok(())
    }

    async fn delete_resource(&self, namespace: &str, id: &str, resource: Resource) -> Result<()> {
        let req = pb::DeleteResourceRequest {
            id: id.to_string(),
            resource: Some(resource_to_pb(&resource)).into(),
            ..Default::default()
        };
        let resp = self
            .client()
            .delete_resource(request_context(namespace), &req)
            .await;
        self.checked(resp).await?;
        Ok(())
    }

    async fn list_resources(&self, namespace: &str, id: &str) -> Result<Vec<Resource>> {
        let req = pb::ListResourcesRequest {
            id: id.to_string(),
            ..Default::default()
        };
        let resp = self
            .client()
            .list_resources(request_context(namespace), &req)
            .await;
        let resp = self.checked(resp).await?;
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
