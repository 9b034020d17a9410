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

use ttrpc::r#async::Service;

pub use containers::ContainersService;
pub use images::ImagesService;
pub use leases::LeasesService;
pub use namespaces::NamespacesService;

use crate::store::MetaStore;

/// The four record services of `store`, ready to register.
pub fn services(store: &MetaStore) -> HashMap<String, Service> {
    let mut services = NamespacesService::new(Arc::new(store.clone())).into_ttrpc();
    services.extend(ImagesService::new(Arc::new(store.clone())).into_ttrpc());
    services.extend(ContainersService::new(Arc::new(store.clone())).into_ttrpc());
    services.extend(LeasesService::new(Arc::new(store.clone())).into_ttrpc());
    services
}
