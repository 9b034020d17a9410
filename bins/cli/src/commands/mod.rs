pub mod content;
pub mod transfer;
