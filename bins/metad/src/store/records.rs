//! The LMDB records of berth-metad.
//!
//! Keys join validated names with `/`. No namespace, container id, lease
//! id, digest, ingest ref or snapshot key can contain one, so a prefix scan
//! over `"<namespace>/"` sees exactly one namespace. Image names may
//! contain `/`, but they only ever come after the namespace.
//!
//! | database | key | value |
//! |---|---|---|
//! | `namespaces` | `<namespace>` | [`NamespaceRecord`] |
//! | `images` | `<namespace>/<name>` | [`ImageRecord`] |
//! | `containers` | `<namespace>/<id>` | [`ContainerRecord`] |
//! | `leases` | `<namespace>/<id>` | [`LeaseRecord`] |
//! | `lease_resources` | `<namespace>/<lease>/<kind>/<id>` | (none) |
//!
//! A resource's kind is `content`, `ingests` or `snapshots/<snapshotter>`
//! and its id has no `/`, so the last `/` of a resource key separates them.
//! Every request is one short write transaction that does no file IO.

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex};

use berth_daemon::lmdb::{db_error, open_env, to_system_time};
use berth_errdefs::{Error, Result};
use berth_ids::Digest;
use berth_metadata::{Any, Container, Descriptor, Image, Lease, Namespace, Resource, Runtime};
use heed::types::{SerdeJson, Str, Unit};
use heed::{Database, Env, RoTxn, RwTxn};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::gc::LeaseRoots;

/// Upper bound on the metadata file (LMDB maps it sparsely).
const MAP_SIZE: usize = 4 << 30;

type Labels = HashMap<String, String>;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub labels: Labels,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorRecord {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: Labels,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub target: DescriptorRecord,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub labels: Labels,
    pub created_at: u64,
    pub updated_at: u64,
}

/// An opaque protobuf `Any`; the value in base64 (JSON has no bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnyRecord {
    pub type_url: String,
    #[serde(with = "base64_bytes")]
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeRecord {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<AnyRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub labels: Labels,
    pub image: String,
    pub runtime: RuntimeRecord,
    pub spec: Option<AnyRecord>,
    pub snapshotter: String,
    pub snapshot_key: String,
    pub created_at: u64,
    pub updated_at: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extensions: BTreeMap<String, AnyRecord>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub labels: Labels,
}

mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = <&str>::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

impl AnyRecord {
    fn from_any(any: &Any) -> AnyRecord {
        AnyRecord {
            type_url: any.type_url.clone(),
            value: any.value.clone(),
        }
    }

    fn to_any(&self) -> Any {
        Any {
            type_url: self.type_url.clone(),
            value: self.value.clone(),
        }
    }
}

impl NamespaceRecord {
    pub fn to_namespace(&self, name: &str) -> Namespace {
        Namespace {
            name: name.to_string(),
            labels: self.labels.clone(),
        }
    }
}

impl ImageRecord {
    /// The record of `image`, stamped with these times.
    pub fn new(image: &Image, created_at: u64, updated_at: u64) -> ImageRecord {
        ImageRecord {
            target: DescriptorRecord {
                media_type: image.target.media_type.clone(),
                digest: image.target.digest.to_string(),
                // Validated to fit (validate_descriptor); the stored
                // format keeps the wire's int64.
                size: i64::try_from(image.target.size).unwrap_or(i64::MAX),
                annotations: image.target.annotations.clone(),
            },
            labels: image.labels.clone(),
            created_at,
            updated_at,
        }
    }

    pub fn digest(&self) -> Result<Digest> {
        Digest::parse(&self.target.digest)
            .map_err(|e| Error::internal(format!("corrupt image record: target {e}")))
    }

    pub fn to_image(&self, name: &str) -> Result<Image> {
        Ok(Image {
            name: name.to_string(),
            labels: self.labels.clone(),
            target: Descriptor {
                urls: Vec::new(),
                platform: None,
                media_type: self.target.media_type.clone(),
                digest: self.digest()?,
                size: u64::try_from(self.target.size).map_err(|_| {
                    Error::internal(format!(
                        "corrupt image record: target size {}",
                        self.target.size
                    ))
                })?,
                annotations: self.target.annotations.clone(),
            },
            created_at: to_system_time(self.created_at),
            updated_at: to_system_time(self.updated_at),
        })
    }
}

impl ContainerRecord {
    pub fn new(container: &Container, created_at: u64, updated_at: u64) -> ContainerRecord {
        ContainerRecord {
            labels: container.labels.clone(),
            image: container.image.clone(),
            runtime: RuntimeRecord {
                name: container.runtime.name.clone(),
                options: container.runtime.options.as_ref().map(AnyRecord::from_any),
            },
            spec: container.spec.as_ref().map(AnyRecord::from_any),
            snapshotter: container.snapshotter.clone(),
            snapshot_key: container.snapshot_key.clone(),
            created_at,
            updated_at,
            extensions: container
                .extensions
                .iter()
                .map(|(k, v)| (k.clone(), AnyRecord::from_any(v)))
                .collect(),
            sandbox: container.sandbox.clone(),
        }
    }

    pub fn to_container(&self, id: &str) -> Container {
        Container {
            id: id.to_string(),
            labels: self.labels.clone(),
            image: self.image.clone(),
            runtime: Runtime {
                name: self.runtime.name.clone(),
                options: self.runtime.options.as_ref().map(AnyRecord::to_any),
            },
            spec: self.spec.as_ref().map(AnyRecord::to_any),
            snapshotter: self.snapshotter.clone(),
            snapshot_key: self.snapshot_key.clone(),
            created_at: to_system_time(self.created_at),
            updated_at: to_system_time(self.updated_at),
            extensions: self
                .extensions
                .iter()
                .map(|(k, v)| (k.clone(), v.to_any()))
                .collect(),
            sandbox: self.sandbox.clone(),
        }
    }
}

impl LeaseRecord {
    pub fn to_lease(&self, id: &str) -> Lease {
        Lease {
            id: id.to_string(),
            created_at: to_system_time(self.created_at),
            labels: self.labels.clone(),
        }
    }
}

/// One database of records keyed `<namespace>/<name>`.
#[derive(Debug)]
pub struct Table<R> {
    db: Database<Str, SerdeJson<R>>,
    record: PhantomData<fn() -> R>,
}

impl<R> Clone for Table<R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for Table<R> {}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl<R: Serialize + DeserializeOwned + 'static> Table<R> {
    /// How many records each namespace has (keys only: no record is
    /// decoded).
    pub fn count_by_namespace(
        &self,
        txn: &RoTxn,
    ) -> Result<std::collections::BTreeMap<String, u64>> {
        let keys = self.db.remap_data_type::<heed::types::DecodeIgnore>();
        let mut counts = std::collections::BTreeMap::new();
        for item in keys.iter(txn).map_err(db_error)? {
            let (key, ()) = item.map_err(db_error)?;
            if let Some((namespace, _)) = key.split_once('/') {
                *counts.entry(namespace.to_string()).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }

    fn create(env: &Env, txn: &mut RwTxn, name: &str) -> Result<Table<R>> {
        Ok(Table {
            db: env.create_database(txn, Some(name)).map_err(db_error)?,
            record: PhantomData,
        })
    }

    pub fn get(&self, txn: &RoTxn, namespace: &str, name: &str) -> Result<Option<R>> {
        self.db.get(txn, &key(namespace, name)).map_err(db_error)
    }

    pub fn put(&self, txn: &mut RwTxn, namespace: &str, name: &str, record: &R) -> Result<()> {
        self.db
            .put(txn, &key(namespace, name), record)
            .map_err(db_error)
    }

    /// Puts a new record; AlreadyExists ("`kind` `name`: already exists")
    /// if there is one.
    pub fn insert(
        &self,
        txn: &mut RwTxn,
        namespace: &str,
        name: &str,
        record: &R,
        kind: &str,
    ) -> Result<()> {
        if self.get(txn, namespace, name)?.is_some() {
            return Err(Error::already_exists(format!(
                "{kind} {name}: already exists"
            )));
        }
        self.put(txn, namespace, name, record)
    }

    /// False if there was no such record.
    pub fn delete(&self, txn: &mut RwTxn, namespace: &str, name: &str) -> Result<bool> {
        self.db.delete(txn, &key(namespace, name)).map_err(db_error)
    }

    /// Every record of a namespace, by name.
    pub fn scan(&self, txn: &RoTxn, namespace: &str) -> Result<Vec<(String, R)>> {
        let prefix = key(namespace, "");
        let mut out = Vec::new();
        for item in self.db.prefix_iter(txn, &prefix).map_err(db_error)? {
            let (key, record) = item.map_err(db_error)?;
            out.push((key[prefix.len()..].to_string(), record));
        }
        Ok(out)
    }

    /// Whether the namespace has any record here.
    pub fn any_in(&self, txn: &RoTxn, namespace: &str) -> Result<bool> {
        let prefix = key(namespace, "");
        let mut iter = self.db.prefix_iter(txn, &prefix).map_err(db_error)?;
        Ok(iter.next().transpose().map_err(db_error)?.is_some())
    }

    /// Every record of every namespace, as (namespace, name, record).
    pub fn all(&self, txn: &RoTxn) -> Result<Vec<(String, String, R)>> {
        let mut out = Vec::new();
        for item in self.db.iter(txn).map_err(db_error)? {
            let (key, record) = item.map_err(db_error)?;
            let (namespace, name) = key
                .split_once('/')
                .ok_or_else(|| Error::internal(format!("corrupt record key {key:?}")))?;
            out.push((namespace.to_string(), name.to_string(), record));
        }
        Ok(out)
    }
}

/// metad's LMDB environment and its databases. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Records {
    env: Env,
    pub namespaces: Database<Str, SerdeJson<NamespaceRecord>>,
    pub images: Table<ImageRecord>,
    pub containers: Table<ContainerRecord>,
    pub leases: Table<LeaseRecord>,
    resources: Database<Str, Unit>,
    /// Leases deleted while a collection lists contentd and snapd (`None`
    /// when none does), with their resources: roots of that collection
    /// all the same (see [`Records::keep_deleted_leases`]). Shared by
    /// every clone of these records.
    deleted_while_listing: Arc<Mutex<DeletedLeases>>,
}

/// Leases (namespace, lease) kept aside for a collection, or `None`.
type DeletedLeases = Option<Vec<(String, LeaseRoots)>>;

fn resource_prefix(namespace: &str, lease: &str) -> String {
    format!("{namespace}/{lease}/")
}

fn resource_key(namespace: &str, lease: &str, resource: &Resource) -> String {
    format!("{namespace}/{lease}/{}/{}", resource.kind, resource.id)
}

/// A resource back from the part of its key after the lease.
fn parse_resource(rest: &str) -> Result<Resource> {
    let (kind, id) = rest
        .rsplit_once('/')
        .ok_or_else(|| Error::internal(format!("corrupt lease resource key {rest:?}")))?;
    Ok(Resource {
        id: id.to_string(),
        kind: kind.to_string(),
    })
}

impl Records {
    /// Opens (creating if needed) the records in `dir`.
    pub fn open(dir: &Path) -> Result<Records> {
        let env = open_env(dir, MAP_SIZE, 8)?;
        let mut txn = env.write_txn().map_err(db_error)?;
        let namespaces = env
            .create_database(&mut txn, Some("namespaces"))
            .map_err(db_error)?;
        let images = Table::create(&env, &mut txn, "images")?;
        let containers = Table::create(&env, &mut txn, "containers")?;
        let leases = Table::create(&env, &mut txn, "leases")?;
        let resources = env
            .create_database(&mut txn, Some("lease_resources"))
            .map_err(db_error)?;
        txn.commit().map_err(db_error)?;
        Ok(Records {
            env,
            namespaces,
            images,
            containers,
            leases,
            resources,
            deleted_while_listing: Arc::new(Mutex::new(None)),
        })
    }

    /// From now until [`Records::take_deleted_leases`], every lease deleted
    /// is kept aside with its resources. A collection lists contentd's and
    /// snapd's labels before it reads metad's leases, so a client that
    /// hands its objects from a lease to a label (`berth unpack`: label the
    /// image's config with its top layer, then delete the lease) could
    /// otherwise set the label after the listing and delete the lease
    /// before the leases are read, and the collection would see neither.
    /// Any lease alive when the listing starts holds for the whole
    /// collection.
    pub fn keep_deleted_leases(&self) {
        *self.deleted_leases() = Some(Vec::new());
    }

    /// The leases deleted since [`Records::keep_deleted_leases`], as
    /// `(namespace, lease)`; stops keeping them.
    pub fn take_deleted_leases(&self) -> Vec<(String, LeaseRoots)> {
        self.deleted_leases().take().unwrap_or_default()
    }

    fn deleted_leases(&self) -> std::sync::MutexGuard<'_, DeletedLeases> {
        // A panic while holding it left a whole list or none: still usable.
        self.deleted_while_listing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn read(&self) -> Result<RoTxn<'_, heed::WithTls>> {
        self.env.read_txn().map_err(db_error)
    }

    pub fn write(&self) -> Result<RwTxn<'_>> {
        self.env.write_txn().map_err(db_error)
    }

    pub fn namespace(&self, txn: &RoTxn, name: &str) -> Result<Option<NamespaceRecord>> {
        self.namespaces.get(txn, name).map_err(db_error)
    }

    pub fn put_namespace(
        &self,
        txn: &mut RwTxn,
        name: &str,
        record: &NamespaceRecord,
    ) -> Result<()> {
        self.namespaces.put(txn, name, record).map_err(db_error)
    }

    pub fn delete_namespace(&self, txn: &mut RwTxn, name: &str) -> Result<bool> {
        self.namespaces.delete(txn, name).map_err(db_error)
    }

    /// Records the namespace if it is not yet (as containerd does on a
    /// namespace's first image, container or lease).
    pub fn ensure_namespace(&self, txn: &mut RwTxn, name: &str) -> Result<()> {
        if self.namespace(txn, name)?.is_none() {
            self.put_namespace(txn, name, &NamespaceRecord::default())?;
        }
        Ok(())
    }

    /// Every namespace, by name.
    pub fn all_namespaces(&self, txn: &RoTxn) -> Result<Vec<(String, NamespaceRecord)>> {
        let mut out = Vec::new();
        for item in self.namespaces.iter(txn).map_err(db_error)? {
            let (name, record) = item.map_err(db_error)?;
            out.push((name.to_string(), record));
        }
        Ok(out)
    }

    /// What of metad's own records a namespace still holds, if anything.
    pub fn held_in(&self, txn: &RoTxn, namespace: &str) -> Result<Option<&'static str>> {
        if self.images.any_in(txn, namespace)? {
            return Ok(Some("images"));
        }
        if self.containers.any_in(txn, namespace)? {
            return Ok(Some("containers"));
        }
        if self.leases.any_in(txn, namespace)? {
            return Ok(Some("leases"));
        }
        Ok(None)
    }

    pub fn put_resource(
        &self,
        txn: &mut RwTxn,
        namespace: &str,
        lease: &str,
        resource: &Resource,
    ) -> Result<()> {
        self.resources
            .put(txn, &resource_key(namespace, lease, resource), &())
            .map_err(db_error)
    }

    pub fn delete_resource(
        &self,
        txn: &mut RwTxn,
        namespace: &str,
        lease: &str,
        resource: &Resource,
    ) -> Result<bool> {
        self.resources
            .delete(txn, &resource_key(namespace, lease, resource))
            .map_err(db_error)
    }

    /// A lease's resources, in key order.
    pub fn resources_of(&self, txn: &RoTxn, namespace: &str, lease: &str) -> Result<Vec<Resource>> {
        let prefix = resource_prefix(namespace, lease);
        let mut out = Vec::new();
        for item in self.resources.prefix_iter(txn, &prefix).map_err(db_error)? {
            let (key, ()) = item.map_err(db_error)?;
            out.push(parse_resource(&key[prefix.len()..])?);
        }
        Ok(out)
    }

    /// Deletes a lease and its resources; false if there was no lease.
    /// While a collection lists the daemons, the lease is also kept aside
    /// for it ([`Records::keep_deleted_leases`]).
    pub fn delete_lease(&self, txn: &mut RwTxn, namespace: &str, lease: &str) -> Result<bool> {
        if let Some(kept) = self.deleted_leases().as_mut() {
            if let Some(record) = self.leases.get(txn, namespace, lease)? {
                kept.push((
                    namespace.to_string(),
                    LeaseRoots {
                        id: lease.to_string(),
                        created_at: to_system_time(record.created_at),
                        labels: record.labels,
                        resources: self.resources_of(txn, namespace, lease)?,
                    },
                ));
            }
        }
        let existed = self.leases.delete(txn, namespace, lease)?;
        let prefix = resource_prefix(namespace, lease);
        let end = resource_end(&prefix);
        let range = (
            Bound::Included(prefix.as_str()),
            Bound::Excluded(end.as_str()),
        );
        self.resources.delete_range(txn, &range).map_err(db_error)?;
        Ok(existed)
    }

    /// Every lease resource, as (namespace, lease, resource).
    pub fn all_resources(&self, txn: &RoTxn) -> Result<Vec<(String, String, Resource)>> {
        let mut out = Vec::new();
        for item in self.resources.iter(txn).map_err(db_error)? {
            let (key, ()) = item.map_err(db_error)?;
            let mut parts = key.splitn(3, '/');
            let (Some(namespace), Some(lease), Some(rest)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(Error::internal(format!(
                    "corrupt lease resource key {key:?}"
                )));
            };
            out.push((
                namespace.to_string(),
                lease.to_string(),
                parse_resource(rest)?,
            ));
        }
        Ok(out)
    }
}

/// The first key after every key that starts with `prefix` (which ends in
/// `/`): the same prefix with its `/` replaced by the next character.
fn resource_end(prefix: &str) -> String {
    let mut end = prefix[..prefix.len() - 1].to_string();
    end.push('0'); // '/' + 1
    end
}

pub fn commit(txn: RwTxn) -> Result<()> {
    txn.commit().map_err(db_error)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn resource_keys_round_trip_and_stay_inside_their_lease() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::open(dir.path()).unwrap();
        let mut txn = records.write().unwrap();
        let snap = Resource {
            kind: "snapshots/overlayfs".into(),
            id: "sha256:abc".into(),
        };
        let ingest = Resource {
            kind: "ingests".into(),
            id: "layer-1".into(),
        };
        records.put_resource(&mut txn, "ns", "l", &snap).unwrap();
        records.put_resource(&mut txn, "ns", "l", &ingest).unwrap();
        // Leases whose ids extend "l" must not be touched.
        records
            .put_resource(&mut txn, "ns", "l-2", &ingest)
            .unwrap();
        records.put_resource(&mut txn, "ns", "l0", &ingest).unwrap();
        records
            .leases
            .put(
                &mut txn,
                "ns",
                "l",
                &LeaseRecord {
                    created_at: 1,
                    labels: Labels::new(),
                },
            )
            .unwrap();
        assert_eq!(
            records.resources_of(&txn, "ns", "l").unwrap(),
            vec![ingest.clone(), snap.clone()]
        );
        assert!(records.delete_lease(&mut txn, "ns", "l").unwrap());
        assert!(records.resources_of(&txn, "ns", "l").unwrap().is_empty());
        assert_eq!(
            records.resources_of(&txn, "ns", "l-2").unwrap(),
            vec![ingest.clone()]
        );
        assert_eq!(
            records.resources_of(&txn, "ns", "l0").unwrap(),
            vec![ingest.clone()]
        );
        let all = records.all_resources(&txn).unwrap();
        assert_eq!(all.len(), 2);
        commit(txn).unwrap();
    }
}
