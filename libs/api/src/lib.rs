//! berth's wire API: the ttrpc services in `proto/`, generated at build time.

/// The ttrpc metadata key that carries a request's namespace (containerd's).
pub const NAMESPACE_KEY: &str = "containerd-namespace";

/// Largest data payload berth puts in one message: well under ttrpc's 4 MiB
/// frame limit, large enough that per-message costs vanish.
pub const MAX_CHUNK: usize = 1024 * 1024;

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

pub mod time;

pub use protobuf;
pub use ttrpc;
