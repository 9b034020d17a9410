//! berth-metad: namespaces, images, containers and leases in LMDB, the
//! garbage collector that decides what contentd and snapd may delete, and
//! the event exchange every daemon publishes to.

pub mod containers;
pub mod events;
pub mod gc;
pub mod images;
pub mod leases;
pub mod namespaces;
pub mod service;
pub mod store;
