//! `containerd-shim-berth-v2`: a containerd runtime v2 shim that runs a
//! container (or the containers of one pod) through runc (or any
//! runc-compatible runtime), usable by upstream containerd 1.6+ and by
//! berth-taskd.

pub mod cgroups;
pub mod container;
pub mod delete;
pub mod error;
pub mod events;
pub mod exits;
#[cfg(test)]
mod fake_runtime;
pub mod flags;
pub mod info;
pub mod layout;
pub mod log;
pub mod options;
pub mod process;
pub mod reaper;
pub mod runc;
pub mod runtime;
pub mod serve;
pub mod service;
pub mod signals;
pub mod start;
pub mod stdio;
pub mod tasks;
