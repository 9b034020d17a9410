//! `berth.images.v1.Images` over ttrpc.

use std::sync::Arc;

use async_trait::async_trait;
use berth_api::images as pb;
use berth_api::protobuf::well_known_types::empty::Empty;
use berth_daemon::{reply, request_namespace};
use berth_errdefs::{Error, Result};
use berth_metadata::wire::{image_from_pb, image_to_pb};
use berth_metadata::{Image, ImageStore};
use ttrpc::r#async::{ServerStreamSender, TtrpcContext};

use berth_api::list_batches;

#[derive(Clone)]
pub struct ImagesService {
    store: Arc<dyn ImageStore>,
}

impl std::fmt::Debug for ImagesService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImagesService").finish_non_exhaustive()
    }
}

/// Whether any of these update paths reads the new record's target.
fn touches_target(paths: &[String]) -> bool {
    paths.is_empty()
        || paths
            .iter()
            .any(|p| p == "target" || p == "annotations" || p.starts_with("annotations."))
}

impl ImagesService {
    pub fn new(store: Arc<dyn ImageStore>) -> ImagesService {
        ImagesService { store }
    }

    pub fn into_ttrpc(self) -> std::collections::HashMap<String, ttrpc::r#async::Service> {
        pb::create_images(Arc::new(self))
    }

    /// The image of an update request. A label-only update (as containerd's
    /// clients send) may come without a target; the stored one stands in,
    /// since those paths never read it.
    async fn update_subject(&self, namespace: &str, req: &pb::UpdateImageRequest) -> Result<Image> {
        let image = req
            .image
            .as_ref()
            .ok_or_else(|| Error::invalid_argument("update needs an image"))?;
        let has_target = image.target.as_ref().is_some_and(|t| !t.digest.is_empty());
        if has_target || touches_target(&req.update_paths) {
            return image_from_pb(image);
        }
        let current = self.store.get(namespace, &image.name).await?;
        let mut with_target = image.clone();
        with_target.target = Some(berth_metadata::wire::descriptor_to_pb(&current.target)).into();
        image_from_pb(&with_target)
    }
}

#[async_trait]
impl pb::Images for ImagesService {
    async fn get(&self, ctx: &TtrpcContext, req: pb::GetImageRequest) -> ttrpc::Result<pb::Image> {
        reply(
            "images.get",
            async {
                let namespace = request_namespace(ctx)?;
                Ok(image_to_pb(&self.store.get(&namespace, &req.name).await?))
            }
            .await,
        )
    }

    async fn list(
        &self,
        ctx: &TtrpcContext,
        req: pb::ListImagesRequest,
        sender: ServerStreamSender<pb::ListImagesResponse>,
    ) -> ttrpc::Result<()> {
        reply(
            "images.list",
            async {
                let namespace = request_namespace(ctx)?;
                let images = self.store.list(&namespace, &req.filters).await?;
                for batch in list_batches(images.iter().map(image_to_pb).collect()) {
                    let response = pb::ListImagesResponse {
                        images: batch,
                        ..Default::default()
                    };
                    sender.send(&response).await?;
                }
                Ok(())
            }
            .await,
        )
    }

    async fn create(&self, ctx: &TtrpcContext, req: pb::Image) -> ttrpc::Result<pb::Image> {
        reply(
            "images.create",
            async {
                let namespace = request_namespace(ctx)?;
                let created = self.store.create(&namespace, image_from_pb(&req)?).await?;
                Ok(image_to_pb(&created))
            }
            .await,
        )
    }

    async fn update(
        &self,
        ctx: &TtrpcContext,
        req: pb::UpdateImageRequest,
    ) -> ttrpc::Result<pb::Image> {
        reply(
            "images.update",
            async {
                let namespace = request_namespace(ctx)?;
                let image = self.update_subject(&namespace, &req).await?;
                let updated = self
                    .store
                    .update(&namespace, image, &req.update_paths)
                    .await?;
                Ok(image_to_pb(&updated))
            }
            .await,
        )
    }

    async fn delete(
        &self,
        ctx: &TtrpcContext,
        req: pb::DeleteImageRequest,
    ) -> ttrpc::Result<Empty> {
        reply(
            "images.delete",
            async {
                let namespace = request_namespace(ctx)?;
                self.store.delete(&namespace, &req.name, req.sync).await?;
                Ok(Empty::new())
            }
            .await,
        )
    }
}
