//! Container networking: network namespaces pinned by bind mounts, and CNI
//! plugins run on them (the CNI 1.0 protocol: a plugin binary per network
//! step, its configuration on stdin, its result on stdout).
//!
//! berth-crid gives every pod sandbox a namespace of its own and runs the
//! first network list of its CNI configuration directory on it, as
//! containerd's CRI does, and brings up its `lo` itself (containerd runs
//! CNI's `loopback` plugin for that: a process per pod). `berth run --net
//! NAME` attaches a container to the network list of that name (the
//! default bridge network is [`bridge_conflist`]), with published ports.

mod bridge;
mod cni;
mod netns;

pub use bridge::{
    bridge_conflist, container_hosts, container_resolv_conf, parse_add_host, render_resolv_conf,
    DnsConfig, DEFAULT_BRIDGE_DEVICE, DEFAULT_BRIDGE_NETWORK, DEFAULT_BRIDGE_SUBNET,
};
pub use cni::{Attachment, Cni, NetworkList, PodNetwork, PortMapping, PLUGIN_PATH, POD_INTERFACE};
pub use netns::{
    create_netns, in_netns, interface_counters, pin_namespace, unpin_namespace, InterfaceCounters,
};
