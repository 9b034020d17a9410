//! berth-metad: namespaces, images, containers and leases in LMDB, the
//! garbage collector that decides what contentd and snapd may delete, and
//! the event exchange every daemon publishes to.

pub mod events;
pub mod gc;
pub mod metrics;
pub mod peers;
pub mod service;
pub mod store;
