//! The metadata contract: what berth-metad keeps.
//!
//! Each record type has a trait ([`NamespaceStore`], [`ImageStore`],
//! [`ContainerStore`], [`LeaseManager`]) implemented twice: by berth-metad's
//! local store (LMDB) and by berth-client's ttrpc proxies. The conformance
//! suite in `testsuite` (feature `testsuite`) runs against both.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use async_trait::async_trait;
use berth_errdefs::Result;

mod event_payload;
mod fields;
mod held_lease;
mod rfc3339;
#[cfg(feature = "testsuite")]
pub mod testsuite;
mod update;
mod validate;
pub mod wire;

pub use fields::{ContainerFields, ImageFields, LeaseFields, NamespaceFields};
pub use held_lease::{with_held_lease, with_lease_taken_during, CLIENT_LEASE_TTL};
pub use rfc3339::{format_rfc3339, format_rfc3339_nanos, parse_rfc3339};
pub use update::{
    apply_container_update, apply_image_update, apply_lease_update, apply_namespace_update,
    drop_empty_values,
};
pub use validate::{
    lease_expiry, validate_container, validate_descriptor, validate_image, validate_image_name,
    validate_lease_labels, validate_resource, validate_snapshotter, MAX_CONTAINER_PAYLOAD,
    MAX_IMAGE_NAME_LEN, RESOURCE_CONTENT, RESOURCE_INGESTS, RESOURCE_SNAPSHOTS, SNAPSHOTTERS,
};

/// Labels on a record.
pub type Labels = HashMap<String, String>;

/// A protobuf `Any`: a type URL and the encoded message. Specs, runtime
/// options, extensions and event payloads travel as these, opaque to metad.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Any {
    pub type_url: String,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

/// An OCI content descriptor (the one model: [`berth_ids::Descriptor`]).
pub use berth_ids::Descriptor;

/// A name bound to an image's root descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    pub labels: Labels,
    pub target: Descriptor,
    /// Set by the store; ignored on create and update.
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Runtime {
    pub name: String,
    pub options: Option<Any>,
}

/// What a container is made of; its running task lives in taskd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub labels: Labels,
    pub image: String,
    pub runtime: Runtime,
    /// The OCI runtime spec.
    pub spec: Option<Any>,
    pub snapshotter: String,
    pub snapshot_key: String,
    /// Set by the store; ignored on create and update.
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub extensions: BTreeMap<String, Any>,
    pub sandbox: String,
}

/// A hold on resources against garbage collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: String,
    pub created_at: SystemTime,
    pub labels: Labels,
}

/// A resource a lease holds, named as containerd names them: kind
/// `content` (id: a digest), `ingests` (id: an ingest ref) or
/// `snapshots/<snapshotter>` (id: a snapshot key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resource {
    pub id: String,
    pub kind: String,
}

/// Label on a lease: when it expires (RFC 3339); see [`berth_api::labels`].
pub use berth_api::labels::GC_EXPIRE as LABEL_GC_EXPIRE;
/// Label on a lease: hold only what the lease names, not what that refers to.
pub use berth_api::labels::GC_FLAT as LABEL_GC_FLAT;
/// Label on any object: a root of the collection.
pub use berth_api::labels::GC_ROOT as LABEL_GC_ROOT;

/// Namespaces. Every namespace-scoped method elsewhere takes the namespace
/// as its first argument; implementations validate it.
#[async_trait]
pub trait NamespaceStore: Send + Sync {
    async fn get(&self, name: &str) -> Result<Namespace>;
    /// Namespaces matching any of the filters (all if none).
    async fn list(&self, filters: &[String]) -> Result<Vec<Namespace>>;
    /// AlreadyExists if it exists.
    async fn create(&self, namespace: Namespace) -> Result<Namespace>;
    /// Replaces the labels, or with `paths` ("labels", "labels.KEY") only
    /// those.
    async fn update(&self, namespace: Namespace, paths: &[String]) -> Result<Namespace>;
    /// FailedPrecondition while the namespace holds anything.
    async fn delete(&self, name: &str) -> Result<()>;
}

#[async_trait]
pub trait ImageStore: Send + Sync {
    async fn get(&self, namespace: &str, name: &str) -> Result<Image>;
    /// Images matching any of the filters (all if none), by name.
    async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Image>>;
    /// AlreadyExists if the name is taken.
    async fn create(&self, namespace: &str, image: Image) -> Result<Image>;
    /// With `paths` ("labels", "labels.KEY", "target", "annotations") only
    /// those fields change; without, labels and target are replaced.
    async fn update(&self, namespace: &str, image: Image, paths: &[String]) -> Result<Image>;
    /// `sync`: collect garbage before returning.
    async fn delete(&self, namespace: &str, name: &str, sync: bool) -> Result<()>;
}

#[async_trait]
pub trait ContainerStore: Send + Sync {
    async fn get(&self, namespace: &str, id: &str) -> Result<Container>;
    /// Containers matching any of the filters (all if none), by id.
    async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Container>>;
    /// AlreadyExists if the id is taken.
    async fn create(&self, namespace: &str, container: Container) -> Result<Container>;
    /// With `paths` ("labels", "labels.KEY", "image", "spec", "snapshot_key",
    /// "runtime", "extensions", "extensions.KEY"; containerd's
    /// "snapshotkey" too) only those fields change; without, all of them are
    /// replaced, and a change of snapshotter or runtime name is refused
    /// (InvalidArgument), as containerd refuses it. id, snapshotter and
    /// created_at never change.
    async fn update(
        &self,
        namespace: &str,
        container: Container,
        paths: &[String],
    ) -> Result<Container>;
    async fn delete(&self, namespace: &str, id: &str) -> Result<()>;
}

#[async_trait]
pub trait LeaseManager: Send + Sync {
    /// An empty id gets a generated one. AlreadyExists if the id is taken.
    async fn create(&self, namespace: &str, id: &str, labels: Labels) -> Result<Lease>;
    /// With `paths` ("labels", "labels.KEY") only those labels change;
    /// without, the labels are replaced. NotFound if the lease is gone. A
    /// holder renews its lease by moving its `containerd.io/gc.expire`.
    async fn update(&self, namespace: &str, lease: Lease, paths: &[String]) -> Result<Lease>;
    /// `sync`: collect garbage before returning.
    async fn delete(&self, namespace: &str, id: &str, sync: bool) -> Result<()>;
    /// Leases matching any of the filters (all if none), by id.
    async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Lease>>;
    async fn add_resource(&self, namespace: &str, id: &str, resource: Resource) -> Result<()>;
    async fn delete_resource(&self, namespace: &str, id: &str, resource: Resource) -> Result<()>;
    async fn list_resources(&self, namespace: &str, id: &str) -> Result<Vec<Resource>>;
}

/// containerd's event payloads, decoded (see [`event_payload`]).
pub use event_payload::KnownEvent;

/// An event as the exchange carries it (containerd's envelope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub timestamp: SystemTime,
    pub namespace: String,
    /// e.g. `/images/create`, `/tasks/exit`.
    pub topic: String,
    pub event: Any,
}
