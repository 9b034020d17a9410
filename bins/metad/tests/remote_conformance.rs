#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The metadata conformance suite across the socket: berth-metad started as
//! a process (with the berth-contentd and berth-snapd it asks before
//! deleting a namespace), driven through berth-client's proxies.

use berth_client::{RemoteContainers, RemoteImages, RemoteLeases, RemoteNamespaces};
use berth_e2e::Daemon;
use berth_metadata::testsuite::Stores;

/// The daemons of one case; killed (by pid) when dropped.
#[allow(dead_code)] // Held for their Drop.
struct Stack {
    metad: Daemon,
    contentd: Daemon,
    snapd: Daemon,
    dir: tempfile::TempDir,
}

async fn remote_stores() -> (Stores, Stack) {
    let dir = tempfile::tempdir().expect("temp dir");
    let contentd = Daemon::contentd(&dir.path().join("contentd"));
    let snapd = Daemon::start("berth-snapd", &dir.path().join("snapd"));
    let contentd_socket = contentd.socket.display().to_string();
    let snapd_socket = snapd.socket.display().to_string();
    let metad = Daemon::start_with_args(
        "berth-metad",
        &dir.path().join("metad"),
        &["--contentd", &contentd_socket, "--snapd", &snapd_socket],
    );
    let stores = Stores {
        namespaces: Box::new(RemoteNamespaces::connect(&metad.socket).await.unwrap()),
        images: Box::new(RemoteImages::connect(&metad.socket).await.unwrap()),
        containers: Box::new(RemoteContainers::connect(&metad.socket).await.unwrap()),
        leases: Box::new(RemoteLeases::connect(&metad.socket).await.unwrap()),
    };
    (
        stores,
        Stack {
            metad,
            contentd,
            snapd,
            dir,
        },
    )
}

berth_metadata::metadata_suite!(remote_stores);
