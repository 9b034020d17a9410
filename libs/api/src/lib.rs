//! berth's wire API: the ttrpc services in `proto/`, generated at build time.

/// The ttrpc metadata key that carries a request's namespace (containerd's).
pub const NAMESPACE_KEY: &str = "containerd-namespace";

/// The ttrpc metadata key that names the lease a request works under
/// (containerd's). contentd and snapd label what they create for such a call
/// with [`lease_label`], which is how metad's collector sees it held.
pub const LEASE_KEY: &str = "containerd-lease";

/// The label that ties a blob or snapshot to a lease (see
/// [`labels::lease`]).
pub use labels::lease as lease_label;
/// Prefix of [`lease_label`] keys.
pub use labels::LEASE_PREFIX as LEASE_LABEL_PREFIX;

/// Largest data payload berth puts in one message: well under ttrpc's 4 MiB
/// frame limit, large enough that per-message costs vanish.
pub const MAX_CHUNK: usize = 1024 * 1024;

/// Where each daemon listens unless told otherwise (its `--address`, and
/// the CLI's and the other daemons' default for it).
pub mod sockets {
    /// The directory of all five; each socket is named `<daemon>.sock`.
    pub const RUN_DIR: &str = "/run/berth";
    pub const CONTENTD: &str = "/run/berth/contentd.sock";
    pub const SNAPD: &str = "/run/berth/snapd.sock";
    pub const METAD: &str = "/run/berth/metad.sock";
    pub const TASKD: &str = "/run/berth/taskd.sock";
    /// berth-crid's, which speaks gRPC (the CRI), not ttrpc.
    pub const CRI: &str = "/run/berth/cri.sock";

    #[cfg(test)]
    mod tests {
        #[test]
        fn every_socket_is_named_after_its_daemon_in_the_run_dir() {
            for (daemon, socket) in [
                ("contentd", super::CONTENTD),
                ("snapd", super::SNAPD),
                ("metad", super::METAD),
                ("taskd", super::TASKD),
                ("cri", super::CRI),
            ] {
                assert_eq!(socket, format!("{}/{daemon}.sock", super::RUN_DIR));
            }
        }
    }
}

/// Encoded bytes per batch of a streamed List reply: with no record near
/// 2 MiB, a batch stays well under ttrpc's 4 MiB frame.
pub const LIST_BATCH_BYTES: usize = 1024 * 1024;

/// Splits a List reply into batches of about [`LIST_BATCH_BYTES`] each (at
/// least one item per batch), for a server stream.
pub fn list_batches<T: protobuf::Message>(items: Vec<T>) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    for item in items {
        let size = item.compute_size() as usize;
        if !batch.is_empty() && bytes + size > LIST_BATCH_BYTES {
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

#[allow(
    clippy::all,
    clippy::unwrap_used,
    clippy::expect_used,
    dead_code,
    unused_attributes,
    unknown_lints,
    non_camel_case_types,
    non_upper_case_globals,
    unused_imports,
    unused_results,
    unused_mut,
    trivial_casts,
    clippy::undocumented_unsafe_blocks,
    missing_debug_implementations,
    unused_qualifications,
    unsafe_op_in_unsafe_fn
)]
mod generated {
    pub mod content {
        include!(concat!(env!("OUT_DIR"), "/content.rs"));
    }
    pub mod content_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/content_ttrpc.rs"));
    }
    pub mod transfer {
        include!(concat!(env!("OUT_DIR"), "/transfer.rs"));
    }
    pub mod transfer_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/transfer_ttrpc.rs"));
    }
    pub mod snapshots {
        include!(concat!(env!("OUT_DIR"), "/snapshots.rs"));
    }
    pub mod snapshots_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/snapshots_ttrpc.rs"));
    }
    pub mod namespaces {
        include!(concat!(env!("OUT_DIR"), "/namespaces.rs"));
    }
    pub mod namespaces_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/namespaces_ttrpc.rs"));
    }
    pub mod images {
        include!(concat!(env!("OUT_DIR"), "/images.rs"));
    }
    pub mod images_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/images_ttrpc.rs"));
    }
    pub mod containers {
        include!(concat!(env!("OUT_DIR"), "/containers.rs"));
    }
    pub mod containers_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/containers_ttrpc.rs"));
    }
    pub mod leases {
        include!(concat!(env!("OUT_DIR"), "/leases.rs"));
    }
    pub mod leases_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/leases_ttrpc.rs"));
    }
    pub mod events {
        include!(concat!(env!("OUT_DIR"), "/events.rs"));
    }
    pub mod events_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/events_ttrpc.rs"));
    }
    pub mod gc {
        include!(concat!(env!("OUT_DIR"), "/gc.rs"));
    }
    pub mod gc_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/gc_ttrpc.rs"));
    }
    pub mod tasks {
        include!(concat!(env!("OUT_DIR"), "/tasks.rs"));
    }
    pub mod tasks_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/tasks_ttrpc.rs"));
    }
}

/// `berth.content.v1`: messages and the `Content` service.
pub mod content {
    pub use crate::generated::content::*;
    pub use crate::generated::content_ttrpc::*;
}

/// `berth.transfer.v1`: messages and the `Transfer` service.
pub mod transfer {
    pub use crate::generated::transfer::*;
    pub use crate::generated::transfer_ttrpc::*;
}

/// `berth.snapshots.v1`: messages and the `Snapshots` service.
pub mod snapshots {
    pub use crate::generated::snapshots::*;
    pub use crate::generated::snapshots_ttrpc::*;
}

/// `berth.namespaces.v1`: messages and the `Namespaces` service.
pub mod namespaces {
    pub use crate::generated::namespaces::*;
    pub use crate::generated::namespaces_ttrpc::*;
}

/// `berth.images.v1`: messages and the `Images` service.
pub mod images {
    pub use crate::generated::images::*;
    pub use crate::generated::images_ttrpc::*;
}

/// `berth.containers.v1`: messages and the `Containers` service.
pub mod containers {
    pub use crate::generated::containers::*;
    pub use crate::generated::containers_ttrpc::*;
}

/// `berth.leases.v1`: messages and the `Leases` service.
pub mod leases {
    pub use crate::generated::leases::*;
    pub use crate::generated::leases_ttrpc::*;
}

/// `berth.events.v1`: messages and the `Events` service.
pub mod events {
    pub use crate::generated::events::*;
    pub use crate::generated::events_ttrpc::*;
}

/// `berth.gc.v1`: messages and the `GC` service.
pub mod gc {
    pub use crate::generated::gc::*;
    pub use crate::generated::gc_ttrpc::*;
}

/// `berth.tasks.v1`: messages and the `Tasks` service.
pub mod tasks {
    pub use crate::generated::tasks::*;
    pub use crate::generated::tasks_ttrpc::*;
}

pub mod labels;
pub mod time;

pub use protobuf;
pub use ttrpc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_batches_stay_under_the_limit_and_keep_every_item() {
        let items: Vec<images::Image> = (0..50)
            .map(|i| images::Image {
                name: format!("{i}{}", "x".repeat(100 * 1024)),
                ..Default::default()
            })
            .collect();
        let split = list_batches(items);
        assert!(split.len() > 1);
        let mut seen = 0;
        for batch in &split {
            let bytes: u64 = batch.iter().map(protobuf::Message::compute_size).sum();
            assert!(bytes as usize <= LIST_BATCH_BYTES);
            for item in batch {
                assert!(item.name.starts_with(&seen.to_string()));
                seen += 1;
            }
        }
        assert_eq!(seen, 50);
        assert!(list_batches(Vec::<images::Image>::new()).is_empty());
    }
}
