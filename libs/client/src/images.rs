use std::path::Path;

use async_trait::async_trait;
use berth_api::images as pb;
use berth_errdefs::Result;
use berth_metadata::wire::{image_from_pb, image_to_pb};
use berth_metadata::{Image, ImageStore};

use crate::connection::{connect, request_context};

/// berth-metad's images, across its socket.
#[derive(Clone)]
pub struct RemoteImages {
    client: pb::ImagesClient,
}

impl std::fmt::Debug for RemoteImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteImages").finish_non_exhaustive()
    }
}

impl RemoteImages {
    pub async fn connect(socket: &Path) -> Result<RemoteImages> {
        Ok(RemoteImages::new(connect(socket).await?))
    }

    pub fn new(client: ttrpc::r#async::Client) -> RemoteImages {
        RemoteImages {
            client: pb::ImagesClient::new(client),
        }
    }
}

#[async_trait]
impl ImageStore for RemoteImages {
    async fn get(&self, namespace: &str, name: &str) -> Result<Image> {
        let req = pb::GetImageRequest {
            name: name.to_string(),
            ..Default::default()
        };
        image_from_pb(&self.client.get(request_context(namespace), &req).await?)
    }

    async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Image>> {
        let req = pb::ListImagesRequest {
            filters: filters.to_vec(),
            ..Default::default()
        };
        let mut stream = self.client.list(request_context(namespace), &req).await?;
        let mut images = Vec::new();
        while let Some(batch) = stream.recv().await? {
            for image in &batch.images {
                images.push(image_from_pb(image)?);
            }
        }
        Ok(images)
    }

    async fn create(&self, namespace: &str, image: Image) -> Result<Image> {
        let resp = self
            .client
            .create(request_context(namespace), &image_to_pb(&image))
            .await?;
        image_from_pb(&resp)
    }

    async fn update(&self, namespace: &str, image: Image, paths: &[String]) -> Result<Image> {
        let req = pb::UpdateImageRequest {
            image: Some(image_to_pb(&image)).into(),
            update_paths: paths.to_vec(),
            ..Default::default()
        };
        image_from_pb(&self.client.update(request_context(namespace), &req).await?)
    }

    async fn delete(&self, namespace: &str, name: &str, sync: bool) -> Result<()> {
        let req = pb::DeleteImageRequest {
            name: name.to_string(),
            sync,
            ..Default::default()
        };
        self.client.delete(request_context(namespace), &req).await?;
        Ok(())
    }
}
