//! Images: a name bound to the descriptor of an image's root (index or
//! manifest) in the content store.

use async_trait::async_trait;
use berth_daemon::lmdb::now_nanos;
use berth_errdefs::{Error, Result};
use berth_filters::Filter;
use berth_metadata::{
    apply_image_update, drop_empty_values, validate_image, validate_image_name, Image, ImageFields,
    ImageStore,
};
use containerd_shim_protos::events::image::{ImageCreate, ImageDelete, ImageUpdate};

use crate::store::records::ImageRecord;
use crate::store::{check_namespace, MetaStore};

fn not_found(name: &str) -> Error {
    Error::not_found(format!("image {name}: not found"))
}

#[async_trait]
impl ImageStore for MetaStore {
    async fn get(&self, namespace: &str, name: &str) -> Result<Image> {
        check_namespace(namespace)?;
        validate_image_name(name)?;
        let (namespace, name) = (namespace.to_string(), name.to_string());
        self.read(move |records, txn| {
            records
                .images
                .get(txn, &namespace, &name)?
                .ok_or_else(|| not_found(&name))?
                .to_image(&name)
        })
        .await
    }

    async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Image>> {
        check_namespace(namespace)?;
        let filter = Filter::parse_any(filters)?;
        let namespace = namespace.to_string();
        self.read(move |records, txn| {
            let mut out = Vec::new();
            for (name, record) in records.images.scan(txn, &namespace)? {
                let image = record.to_image(&name)?;
                if filter.matches(&ImageFields(&image)) {
                    out.push(image);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn create(&self, namespace: &str, mut image: Image) -> Result<Image> {
        check_namespace(namespace)?;
        drop_empty_values(&mut image.labels);
        drop_empty_values(&mut image.target.annotations);
        validate_image(&image)?;
        let _hold = self.inner.scheduler.hold_mutations().await;
        let ns = namespace.to_string();
        let created = self
            .write(move |records, txn| {
                let now = now_nanos();
                let record = ImageRecord::new(&image, now, now);
                records
                    .images
                    .insert(txn, &ns, &image.name, &record, "image")?;
                records.ensure_namespace(txn, &ns)?;
                record.to_image(&image.name)
            })
            .await?;
        self.publish(
            namespace,
            "/images/create",
            &ImageCreate {
                name: created.name.clone(),
                labels: created.labels.clone(),
                ..Default::default()
            },
        );
        Ok(created)
    }

    async fn update(&self, namespace: &str, image: Image, paths: &[String]) -> Result<Image> {
        check_namespace(namespace)?;
        validate_image_name(&image.name)?;
        let _hold = self.inner.scheduler.hold_mutations().await;
        let (ns, paths) = (namespace.to_string(), paths.to_vec());
        let updated = self
            .write(move |records, txn| {
                let name = image.name.clone();
                let current = records
                    .images
                    .get(txn, &ns, &name)?
                    .ok_or_else(|| not_found(&name))?;
                let updated = apply_image_update(&current.to_image(&name)?, image, &paths)?;
                validate_image(&updated)?;
                let record = ImageRecord::new(
                    &updated,
                    current.created_at,
                    now_nanos().max(current.updated_at),
                );
                records.images.put(txn, &ns, &name, &record)?;
                record.to_image(&name)
            })
            .await?;
        self.publish(
            namespace,
            "/images/update",
            &ImageUpdate {
                name: updated.name.clone(),
                labels: updated.labels.clone(),
                ..Default::default()
            },
        );
        Ok(updated)
    }

    async fn delete(&self, namespace: &str, name: &str, sync: bool) -> Result<()> {
        check_namespace(namespace)?;
        validate_image_name(name)?;
        let (ns, owned) = (namespace.to_string(), name.to_string());
        self.write(move |records, txn| {
            if !records.images.delete(txn, &ns, &owned)? {
                return Err(not_found(&owned));
            }
            Ok(())
        })
        .await?;
        self.inner.scheduler.note_deletion();
        self.publish(
            namespace,
            "/images/delete",
            &ImageDelete {
                name: name.to_string(),
                ..Default::default()
            },
        );
        self.collect_if(sync).await
    }
}
