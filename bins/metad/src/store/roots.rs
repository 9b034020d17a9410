//! What metad's records contribute to a garbage collection.

use std::collections::BTreeMap;

use berth_daemon::lmdb::to_system_time;
use berth_errdefs::Result;

use super::records::{commit, Records};
use crate::gc::{LeaseRoots, NamespaceRoots, RootSource, Roots};

fn entry<'a>(
    by_namespace: &'a mut BTreeMap<String, NamespaceRoots>,
    namespace: &str,
) -> &'a mut NamespaceRoots {
    by_namespace
        .entry(namespace.to_string())
        .or_insert_with(|| NamespaceRoots {
            namespace: namespace.to_string(),
            ..Default::default()
        })
}

impl RootSource for Records {
    fn begin_collection(&self) {
        self.keep_deleted_leases();
    }

    fn roots(&self) -> Result<Roots> {
        let txn = self.read()?;
        // Taken after the read began: a lease deleted after that is still
        // in what this transaction reads.
        let deleted_while_listing = self.take_deleted_leases();
        let mut by_namespace: BTreeMap<String, NamespaceRoots> = BTreeMap::new();
        for (namespace, _) in self.all_namespaces(&txn)? {
            entry(&mut by_namespace, &namespace);
        }
        for (namespace, _, image) in self.images.all(&txn)? {
            entry(&mut by_namespace, &namespace)
                .images
                .push(image.digest()?);
        }
        for (namespace, _, container) in self.containers.all(&txn)? {
            if !container.snapshotter.is_empty() && !container.snapshot_key.is_empty() {
                entry(&mut by_namespace, &namespace)
                    .containers
                    .push((container.snapshotter, container.snapshot_key));
            }
        }
        let mut leases: BTreeMap<(String, String), LeaseRoots> = BTreeMap::new();
        for (namespace, id, lease) in self.leases.all(&txn)? {
            leases.insert(
                (namespace, id.clone()),
                LeaseRoots {
                    id,
                    created_at: to_system_time(lease.created_at),
                    labels: lease.labels,
                    resources: Vec::new(),
                },
            );
        }
        for (namespace, lease, resource) in self.all_resources(&txn)? {
            // Resources of a lease that is gone hold nothing.
            if let Some(roots) = leases.get_mut(&(namespace, lease)) {
                roots.resources.push(resource);
            }
        }
        for ((namespace, _), lease) in leases {
            entry(&mut by_namespace, &namespace).leases.push(lease);
        }
        for (namespace, lease) in deleted_while_listing {
            entry(&mut by_namespace, &namespace).leases.push(lease);
        }
        Ok(Roots {
            namespaces: by_namespace.into_values().collect(),
        })
    }

    fn namespaces(&self) -> Result<Vec<String>> {
        // Every namespace with a record here has its own namespace record
        // (created on first use), so the namespaces database is the list.
        let txn = self.read()?;
        Ok(self
            .all_namespaces(&txn)?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }

    fn delete_leases(&self, leases: &[(String, String)]) -> Result<()> {
        let mut txn = self.write()?;
        for (namespace, id) in leases {
            self.delete_lease(&mut txn, namespace, id)?;
        }
        commit(txn)
    }
}
