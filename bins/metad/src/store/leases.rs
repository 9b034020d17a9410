//! Leases: holds on content, ingests and snapshots against garbage
//! collection, until deleted or expired (`containerd.io/gc.expire`).

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use berth_daemon::lmdb::now_nanos;
use berth_errdefs::{Error, Result};
use berth_filters::Filter;
use berth_ids::validate_id;
use berth_metadata::{
    apply_lease_update, drop_empty_values, validate_lease_labels, validate_resource, Labels, Lease,
    LeaseFields, LeaseManager, Resource,
};

use crate::store::records::LeaseRecord;
use crate::store::{check_namespace, MetaStore};

fn not_found(id: &str) -> Error {
    Error::not_found(format!("lease {id}: not found"))
}

/// A fresh lease id: the time in nanoseconds and 32 random bits
/// (`1732900000123456789-9f3a0c11`), as containerd's clients make them.
fn generate_lease_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = now_nanos();
    // RandomState is seeded from the OS once per process and varied per
    // instance; the counter separates ids made within one nanosecond.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(now);
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{now}-{:08x}", hasher.finish() as u32)
}

#[async_trait]
impl LeaseManager for MetaStore {
    async fn create(&self, namespace: &str, id: &str, mut labels: Labels) -> Result<Lease> {
        check_namespace(namespace)?;
        let id = if id.is_empty() {
            generate_lease_id()
        } else {
            validate_id(id)?;
            id.to_string()
        };
        drop_empty_values(&mut labels);
        validate_lease_labels(&labels)?;
        let _hold = self.inner.scheduler.hold_mutations().await;
        let ns = namespace.to_string();
        self.write(move |records, txn| {
            let record = LeaseRecord {
                created_at: now_nanos(),
                labels,
            };
            records.leases.insert(txn, &ns, &id, &record, "lease")?;
            records.ensure_namespace(txn, &ns)?;
            Ok(record.to_lease(&id))
        })
        .await
    }

    async fn update(&self, namespace: &str, lease: Lease, paths: &[String]) -> Result<Lease> {
        check_namespace(namespace)?;
        validate_id(&lease.id)?;
        let paths = paths.to_vec();
        let _hold = self.inner.scheduler.hold_mutations().await;
        let ns = namespace.to_string();
        self.write(move |records, txn| {
            let id = lease.id.clone();
            let record = records
                .leases
                .get(txn, &ns, &id)?
                .ok_or_else(|| not_found(&id))?;
            let updated = apply_lease_update(&record.to_lease(&id), lease, &paths)?;
            validate_lease_labels(&updated.labels)?;
            let record = LeaseRecord {
                created_at: record.created_at,
                labels: updated.labels.clone(),
            };
            records.leases.put(txn, &ns, &id, &record)?;
            Ok(updated)
        })
        .await
    }

    async fn delete(&self, namespace: &str, id: &str, sync: bool) -> Result<()> {
        check_namespace(namespace)?;
        validate_id(id)?;
        let (ns, id) = (namespace.to_string(), id.to_string());
        self.write(move |records, txn| {
            if !records.delete_lease(txn, &ns, &id)? {
                return Err(not_found(&id));
            }
            Ok(())
        })
        .await?;
        self.inner.scheduler.note_deletion();
        self.collect_if(sync).await
    }

    async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Lease>> {
        check_namespace(namespace)?;
        let filter = Filter::parse_any(filters)?;
        let namespace = namespace.to_string();
        self.read(move |records, txn| {
            Ok(records
                .leases
                .scan(txn, &namespace)?
                .into_iter()
                .map(|(id, record)| record.to_lease(&id))
                .filter(|lease| filter.matches(&LeaseFields(lease)))
                .collect())
        })
        .await
    }

    async fn add_resource(&self, namespace: &str, id: &str, resource: Resource) -> Result<()> {
        check_namespace(namespace)?;
        validate_id(id)?;
        let resource = validate_resource(&resource)?;
        let _hold = self.inner.scheduler.hold_mutations().await;
        let (ns, id) = (namespace.to_string(), id.to_string());
        self.write(move |records, txn| {
            if records.leases.get(txn, &ns, &id)?.is_none() {
                return Err(not_found(&id));
            }
            records.put_resource(txn, &ns, &id, &resource)?;
            Ok(())
        })
        .await
    }

    async fn delete_resource(&self, namespace: &str, id: &str, resource: Resource) -> Result<()> {
        check_namespace(namespace)?;
        validate_id(id)?;
        let resource = validate_resource(&resource)?;
        let (ns, id) = (namespace.to_string(), id.to_string());
        self.write(move |records, txn| {
            if records.leases.get(txn, &ns, &id)?.is_none() {
                return Err(not_found(&id));
            }
            records.delete_resource(txn, &ns, &id, &resource)?;
            Ok(())
        })
        .await?;
        self.inner.scheduler.note_deletion();
        Ok(())
    }

    async fn list_resources(&self, namespace: &str, id: &str) -> Result<Vec<Resource>> {
        check_namespace(namespace)?;
        validate_id(id)?;
        let (ns, id) = (namespace.to_string(), id.to_string());
        self.read(move |records, txn| {
            if records.leases.get(txn, &ns, &id)?.is_none() {
                return Err(not_found(&id));
            }
            records.resources_of(txn, &ns, &id)
        })
        .await
    }
}
