//! What metad's own records contribute to a collection.

use std::time::SystemTime;

use berth_errdefs::Result;
use berth_ids::Digest;
use berth_metadata::{Labels, Resource};

/// A lease as the collector sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRoots {
    pub id: String,
    pub created_at: SystemTime,
    pub labels: Labels,
    pub resources: Vec<Resource>,
}

/// One namespace's roots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceRoots {
    pub namespace: String,
    /// Each image's target digest.
    pub images: Vec<Digest>,
    /// Each container's (snapshotter, snapshot key), where it has one.
    pub containers: Vec<(String, String)>,
    pub leases: Vec<LeaseRoots>,
}

/// Every namespace's roots, read in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roots {
    pub namespaces: Vec<NamespaceRoots>,
}

/// metad's store, as the collector reads and trims it. Blocking: called
/// from `spawn_blocking`.
pub trait RootSource: Send + Sync {
    /// A collection is about to list contentd and snapd: leases deleted
    /// from now on must still count as roots in its [`RootSource::roots`],
    /// which is read after the listings (a lease handed over to a label
    /// that the listing missed would otherwise hold nothing).
    fn begin_collection(&self) {}
    /// All namespaces' roots in one read transaction, with the leases
    /// deleted since [`RootSource::begin_collection`] (whose keeping ends
    /// here).
    fn roots(&self) -> Result<Roots>;
    /// The namespaces a collection lists contentd and snapd in, read before
    /// it lists them (objects in a namespace metad does not know are never
    /// collected). The default reads every root; a store may answer cheaper.
    fn namespaces(&self) -> Result<Vec<String>> {
        Ok(self
            .roots()?
            .namespaces
            .into_iter()
            .map(|namespace| namespace.namespace)
            .collect())
    }
    /// Deletes these leases (expired ones), `(namespace, id)`; ones already
    /// gone are skipped.
    fn delete_leases(&self, leases: &[(String, String)]) -> Result<()>;
}
