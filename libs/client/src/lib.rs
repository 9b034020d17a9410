//! Clients for berth's daemons.
//!
//! Each client implements the same trait as the daemon's local store
//! ([`RemoteContentStore`] is a [`berth_content::ContentStore`]), so callers
//! and the conformance suites do not care which side of the socket they are
//! on. Errors come back with their kind (see `berth-errdefs`).

mod connection;
mod containers;
mod content;
mod credentials;
mod gc;
mod images;
mod leases;
mod namespaces;
mod snapshots;
mod tasks;
mod transfer;

pub use connection::{
    connect, connect_passing_files, request_context, request_context_leased, FileOutbox,
};
pub use containers::RemoteContainers;
pub use content::RemoteContentStore;
pub use credentials::{
    docker_config_path, docker_credentials, from_docker_config, RegistryCredentials,
};
pub use gc::RemoteGc;
pub use images::RemoteImages;
pub use leases::RemoteLeases;
pub use namespaces::RemoteNamespaces;
pub use snapshots::{RemoteSnapshotter, UnpackResult};
pub use tasks::RemoteTasks;
pub use transfer::RemoteTransfer;
pub mod events;
pub mod local;
