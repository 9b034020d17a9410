pub mod archive;
pub mod content;
pub mod transfer;
