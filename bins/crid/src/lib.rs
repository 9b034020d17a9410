//! berth-crid: Kubernetes' Container Runtime Interface (CRI v1) over gRPC,
//! done through berth's daemons like any other client.
//!
//! - [`service`]: the gRPC edge (RuntimeService, ImageService);
//! - [`runtime`]: pod sandboxes and containers; [`images`]: the CRI's
//!   view of images in metad's `k8s.io` namespace;
//! - [`spec`]: CRI configs to berth-oci spec options; [`logs`]: container
//!   output in the kubelet's log format; [`namespaces`]: the pod
//!   namespaces crid pins; [`state`]: what crid keeps on
//!   disk; [`daemons`]: the sockets it works through.

// tonic's generated traits return `Result<_, tonic::Status>` by value.
#![allow(clippy::result_large_err)]

pub mod daemons;
pub mod error;
pub mod images;
pub mod logs;
pub mod namespaces;
pub mod pause;
pub mod pod_metrics;
pub mod runtime;
pub mod service;
pub mod spec;
pub mod state;
pub mod streaming;
