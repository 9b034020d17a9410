//! berth-taskd: containers made into running processes through v2 shims.
//!
//! - [`shim`]: the caller side of the shim protocol (binaries, `start`,
//!   `delete`, the task API v2/v3 over ttrpc).
//! - [`bundle`]: a task's directory and taskd's record in it.
//! - [`manager`]: the task table, supervision and recovery; implements the
//!   `berth_tasks::Tasks` contract.
//! - [`events`]: what shims forward, relayed to metad.
//! - [`service`]: the ttrpc edge.

pub mod bundle;
pub mod events;
pub mod manager;
pub mod metrics;
pub mod peers;
pub mod service;
pub mod shim;
