pub mod content;
pub mod fetch;
