//! The daemons crid works through, connected per call: any of them may
//! have restarted since the last one (as taskd reaches its peers).

use std::path::PathBuf;

use berth_client::{
    RemoteContainers, RemoteContentStore, RemoteImages, RemoteLeases, RemoteSnapshotter,
    RemoteTasks, RemoteTransfer,
};
use berth_errdefs::Result;
use berth_tasks::container::ContainerServices;

/// The clients a container is made and removed through.
#[derive(Debug)]
pub struct ContainerClients {
    content: RemoteContentStore,
    images: RemoteImages,
    snapshots: RemoteSnapshotter,
    containers: RemoteContainers,
    leases: RemoteLeases,
}

impl ContainerClients {
    pub fn services<'a>(&'a self, snapshotter: &'a str) -> ContainerServices<'a> {
        ContainerServices {
            content: &self.content,
            images: &self.images,
            snapshots: &self.snapshots,
            snapshotter,
            containers: &self.containers,
            leases: &self.leases,
            unpacker: Some(&self.snapshots),
        }
    }
}

/// Where the other daemons listen, and the snapshotter pods use.
#[derive(Debug, Clone)]
pub struct Daemons {
    pub contentd: PathBuf,
    pub snapd: PathBuf,
    pub metad: PathBuf,
    pub taskd: PathBuf,
    pub snapshotter: String,
}

impl Daemons {
    pub async fn content(&self) -> Result<RemoteContentStore> {
        RemoteContentStore::connect(&self.contentd)
            .await
            .map_err(|e| e.context("berth-contentd"))
    }
    pub async fn transfer(&self) -> Result<RemoteTransfer> {
        RemoteTransfer::connect(&self.contentd)
            .await
            .map_err(|e| e.context("berth-contentd"))
    }
    pub async fn snapshots(&self) -> Result<RemoteSnapshotter> {
        RemoteSnapshotter::connect(&self.snapd, &self.snapshotter)
            .await
            .map_err(|e| e.context("berth-snapd"))
    }
    pub async fn images(&self) -> Result<RemoteImages> {
        RemoteImages::connect(&self.metad)
            .await
            .map_err(|e| e.context("berth-metad"))
    }
    pub async fn containers(&self) -> Result<RemoteContainers> {
        RemoteContainers::connect(&self.metad)
            .await
            .map_err(|e| e.context("berth-metad"))
    }
    pub async fn leases(&self) -> Result<RemoteLeases> {
        RemoteLeases::connect(&self.metad)
            .await
            .map_err(|e| e.context("berth-metad"))
    }
    pub async fn container_clients(&self) -> Result<ContainerClients> {
        Ok(ContainerClients {
            content: self.content().await?,
            images: self.images().await?,
            snapshots: self.snapshots().await?,
            containers: self.containers().await?,
            leases: self.leases().await?,
        })
    }

    pub async fn tasks(&self) -> Result<RemoteTasks> {
        RemoteTasks::connect(&self.taskd)
            .await
            .map_err(|e| e.context("berth-taskd"))
    }
}
