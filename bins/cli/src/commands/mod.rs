pub mod archive;
pub mod content;
pub mod snapshots;
pub mod transfer;
