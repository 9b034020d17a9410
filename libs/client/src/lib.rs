//! Clients for berth's daemons.
//!
//! Each client implements the same trait as the daemon's local store
//! ([`RemoteContentStore`] is a [`berth_content::ContentStore`]), so callers
//! and the conformance suites do not care which side of the socket they are
//! on. Errors come back with their kind (see `berth-errdefs`).

mod connection;
mod content;
mod credentials;
mod snapshots;
mod transfer;

pub use connection::{connect, request_context};
pub use content::RemoteContentStore;
pub use credentials::{
    docker_config_path, docker_credentials, from_docker_config, RegistryCredentials,
};
pub use snapshots::{RemoteSnapshotter, UnpackResult};
pub use transfer::RemoteTransfer;
