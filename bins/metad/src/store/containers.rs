//! Containers: the record of what a container is made of (image, runtime,
//! OCI spec, snapshot); its running task lives in berth-taskd.

use async_trait::async_trait;
use berth_daemon::lmdb::now_nanos;
use berth_errdefs::{Error, Result};
use berth_filters::Filter;
use berth_ids::validate_id;
use berth_metadata::wire::any_to_pb;
use berth_metadata::{
    apply_container_update, drop_empty_values, validate_container, Container, ContainerFields,
    ContainerStore,
};
use containerd_shim_protos::events::container::{
    container_create, ContainerCreate, ContainerDelete, ContainerUpdate,
};

use crate::store::records::ContainerRecord;
use crate::store::{check_namespace, MetaStore};

fn not_found(id: &str) -> Error {
    Error::not_found(format!("container {id}: not found"))
}

#[async_trait]
impl ContainerStore for MetaStore {
    async fn get(&self, namespace: &str, id: &str) -> Result<Container> {
        check_namespace(namespace)?;
        validate_id(id)?;
        let (namespace, id) = (namespace.to_string(), id.to_string());
        self.read(move |records, txn| {
            Ok(records
                .containers
                .get(txn, &namespace, &id)?
                .ok_or_else(|| not_found(&id))?
                .to_container(&id))
        })
        .await
    }

    async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Container>> {
        check_namespace(namespace)?;
        let filter = Filter::parse_any(filters)?;
        let namespace = namespace.to_string();
        self.read(move |records, txn| {
            Ok(records
                .containers
                .scan(txn, &namespace)?
                .into_iter()
                .map(|(id, record)| record.to_container(&id))
                .filter(|container| filter.matches(&ContainerFields(container)))
                .collect())
        })
        .await
    }

    async fn create(&self, namespace: &str, mut container: Container) -> Result<Container> {
        check_namespace(namespace)?;
        drop_empty_values(&mut container.labels);
        validate_container(&container)?;
        let _hold = self.inner.scheduler.hold_mutations().await;
        let ns = namespace.to_string();
        let created = self
            .write(move |records, txn| {
                let now = now_nanos();
                let record = ContainerRecord::new(&container, now, now);
                records
                    .containers
                    .insert(txn, &ns, &container.id, &record, "container")?;
                records.ensure_namespace(txn, &ns)?;
                Ok(record.to_container(&container.id))
            })
            .await?;
        self.publish(
            namespace,
            "/containers/create",
            &ContainerCreate {
                id: created.id.clone(),
                image: created.image.clone(),
                runtime: Some(container_create::Runtime {
                    name: created.runtime.name.clone(),
                    options: created.runtime.options.as_ref().map(any_to_pb).into(),
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            },
        );
        Ok(created)
    }

    async fn update(
        &self,
        namespace: &str,
        container: Container,
        paths: &[String],
    ) -> Result<Container> {
        check_namespace(namespace)?;
        validate_id(&container.id)?;
        let _hold = self.inner.scheduler.hold_mutations().await;
        let (ns, paths) = (namespace.to_string(), paths.to_vec());
        let updated = self
            .write(move |records, txn| {
                let id = container.id.clone();
                let current = records
                    .containers
                    .get(txn, &ns, &id)?
                    .ok_or_else(|| not_found(&id))?;
                let updated =
                    apply_container_update(&current.to_container(&id), container, &paths)?;
                validate_container(&updated)?;
                let record = ContainerRecord::new(
                    &updated,
                    current.created_at,
                    now_nanos().max(current.updated_at),
                );
                records.containers.put(txn, &ns, &id, &record)?;
                Ok(record.to_container(&id))
            })
            .await?;
        self.publish(
            namespace,
            "/containers/update",
            &ContainerUpdate {
                id: updated.id.clone(),
                image: updated.image.clone(),
                labels: updated.labels.clone(),
                snapshot_key: updated.snapshot_key.clone(),
                ..Default::default()
            },
        );
        Ok(updated)
    }

    async fn delete(&self, namespace: &str, id: &str) -> Result<()> {
        check_namespace(namespace)?;
        validate_id(id)?;
        let (ns, owned) = (namespace.to_string(), id.to_string());
        self.write(move |records, txn| {
            if !records.containers.delete(txn, &ns, &owned)? {
                return Err(not_found(&owned));
            }
            Ok(())
        })
        .await?;
        self.inner.scheduler.note_deletion();
        self.publish(
            namespace,
            "/containers/delete",
            &ContainerDelete {
                id: id.to_string(),
                ..Default::default()
            },
        );
        Ok(())
    }
}
