//! metad's ttrpc services: thin edges over the `berth-metadata` traits.
//! Requests are parsed here (the namespace from the request metadata);
//! the store validates them; every error leaves as the ttrpc status of its
//! kind.

mod containers;
mod images;
mod leases;
mod namespaces;

use std::collections::HashMap;
use std::sync::Arc;

use protobuf::Message;
use ttrpc::r#async::Service;

pub use containers::ContainersService;
pub use images::ImagesService;
pub use leases::LeasesService;
pub use namespaces::NamespacesService;

use crate::store::MetaStore;

/// Encoded bytes per List batch: with no record above 2 MiB (see
/// `berth_metadata::MAX_CONTAINER_PAYLOAD`), a batch stays well under
/// ttrpc's 4 MiB frame.
const BATCH_BYTES: usize = 1024 * 1024;

/// The four record services of `store`, ready to register.
pub fn services(store: &MetaStore) -> HashMap<String, Service> {
    let mut services = NamespacesService::new(Arc::new(store.clone())).into_ttrpc();
    services.extend(ImagesService::new(Arc::new(store.clone())).into_ttrpc());
    services.extend(ContainersService::new(Arc::new(store.clone())).into_ttrpc());
    services.extend(LeasesService::new(Arc::new(store.clone())).into_ttrpc());
    services
}

/// Splits a List reply into batches of about [`BATCH_BYTES`] each (at least
/// one item per batch).
fn batches<T: Message>(items: Vec<T>) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    for item in items {
        let size = item.compute_size() as usize;
        if !batch.is_empty() && bytes + size > BATCH_BYTES {
            out.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += size;
        batch.push(item);
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::images as pb;

    #[test]
    fn batches_stay_under_the_limit_and_keep_every_item() {
        let items: Vec<pb::Image> = (0..50)
            .map(|i| pb::Image {
                name: format!("{i}{}", "x".repeat(100 * 1024)),
                ..Default::default()
            })
            .collect();
        let split = batches(items);
        assert!(split.len() > 1);
        let mut seen = 0;
        for batch in &split {
            let bytes: u64 = batch.iter().map(|i| i.compute_size()).sum();
            assert!(bytes as usize <= BATCH_BYTES);
            seen += batch.len();
        }
        assert_eq!(seen, 50);
        assert!(batches(Vec::<pb::Image>::new()).is_empty());
    }
}
