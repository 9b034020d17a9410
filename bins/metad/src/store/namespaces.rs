//! Namespaces: created explicitly or on first use, labelled, and deleted
//! only once nothing in metad, berth-contentd or berth-snapd is left in
//! them.
//!
//! Namespace events are published in the namespace they are about.

use async_trait::async_trait;
use berth_errdefs::{Error, Result};
use berth_filters::Filter;
use berth_ids::validate_labels;
use berth_metadata::{
    apply_namespace_update, drop_empty_values, Namespace, NamespaceFields, NamespaceStore,
};
use containerd_shim_protos::events::namespace::{
    NamespaceCreate, NamespaceDelete, NamespaceUpdate,
};

use crate::store::records::NamespaceRecord;
use crate::store::{check_namespace, MetaStore};

fn not_found(name: &str) -> Error {
    Error::not_found(format!("namespace {name}: not found"))
}

fn not_empty(name: &str, what: &str) -> Error {
    Error::failed_precondition(format!(
        "namespace {name} must be empty, but it still has {what}"
    ))
}

#[async_trait]
impl NamespaceStore for MetaStore {
    async fn get(&self, name: &str) -> Result<Namespace> {
        check_namespace(name)?;
        let name = name.to_string();
        self.read(move |records, txn| {
            let record = records
                .namespace(txn, &name)?
                .ok_or_else(|| not_found(&name))?;
            Ok(record.to_namespace(&name))
        })
        .await
    }

    async fn list(&self, filters: &[String]) -> Result<Vec<Namespace>> {
        let filter = Filter::parse_any(filters)?;
        self.read(move |records, txn| {
            Ok(records
                .all_namespaces(txn)?
                .into_iter()
                .map(|(name, record)| record.to_namespace(&name))
                .filter(|namespace| filter.matches(&NamespaceFields(namespace)))
                .collect())
        })
        .await
    }

    async fn create(&self, mut namespace: Namespace) -> Result<Namespace> {
        check_namespace(&namespace.name)?;
        validate_labels(&namespace.labels)?;
        drop_empty_values(&mut namespace.labels);
        let created = self
            .write(move |records, txn| {
                if records.namespace(txn, &namespace.name)?.is_some() {
                    return Err(Error::already_exists(format!(
                        "namespace {}: already exists",
                        namespace.name
                    )));
                }
                let record = NamespaceRecord {
                    labels: namespace.labels.clone(),
                };
                records.put_namespace(txn, &namespace.name, &record)?;
                Ok(namespace)
            })
            .await?;
        self.publish(
            &created.name,
            "/namespaces/create",
            &NamespaceCreate {
                name: created.name.clone(),
                labels: created.labels.clone(),
                ..Default::default()
            },
        );
        Ok(created)
    }

    async fn update(&self, namespace: Namespace, paths: &[String]) -> Result<Namespace> {
        check_namespace(&namespace.name)?;
        let paths = paths.to_vec();
        let updated = self
            .write(move |records, txn| {
                let name = namespace.name.clone();
                let current = records
                    .namespace(txn, &name)?
                    .ok_or_else(|| not_found(&name))?
                    .to_namespace(&name);
                let updated = apply_namespace_update(&current, namespace, &paths)?;
                validate_labels(&updated.labels)?;
                let record = NamespaceRecord {
                    labels: updated.labels.clone(),
                };
                records.put_namespace(txn, &name, &record)?;
                Ok(updated)
            })
            .await?;
        self.publish(
            &updated.name,
            "/namespaces/update",
            &NamespaceUpdate {
                name: updated.name.clone(),
                labels: updated.labels.clone(),
                ..Default::default()
            },
        );
        Ok(updated)
    }

    async fn delete(&self, name: &str) -> Result<()> {
        check_namespace(name)?;
        // Refuse early from metad's own records, before asking the other
        // daemons...
        let owned = name.to_string();
        self.read(move |records, txn| {
            if records.namespace(txn, &owned)?.is_none() {
                return Err(not_found(&owned));
            }
            match records.held_in(txn, &owned)? {
                Some(what) => Err(not_empty(&owned, what)),
                None => Ok(()),
            }
        })
        .await?;
        if let Some(what) = self.inner.holders.holding(name).await? {
            return Err(not_empty(name, &what));
        }
        // ...and check again where it counts: in the deleting transaction.
        let owned = name.to_string();
        self.write(move |records, txn| {
            if !records.delete_namespace(txn, &owned)? {
                return Err(not_found(&owned));
            }
            if let Some(what) = records.held_in(txn, &owned)? {
                return Err(not_empty(&owned, what));
            }
            Ok(())
        })
        .await?;
        tracing::info!(namespace = %name, "namespace deleted");
        self.publish(
            name,
            "/namespaces/delete",
            &NamespaceDelete {
                name: name.to_string(),
                ..Default::default()
            },
        );
        Ok(())
    }
}
