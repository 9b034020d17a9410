//! The garbage collector. (Interface fixed; the implementation is being
//! written.)

mod roots;

pub use roots::{LeaseRoots, NamespaceRoots, RootSource, Roots};

/// What the records side tells the collector, and how it asks for a
/// collection now.
#[derive(Debug, Default)]
pub struct Scheduler {
    gate: tokio::sync::RwLock<()>,
}

impl Scheduler {
    /// A record was deleted (images, containers, leases): counts toward the
    /// next scheduled collection.
    pub fn note_deletion(&self) {}

    /// Held (shared) by every record mutation that can add a reference
    /// (creating or updating images, containers, leases and their
    /// resources); a collection holds it exclusively from reading the roots
    /// until its deletions are done, so nothing it is about to delete gains
    /// a reference meanwhile. That hold is the collection's pause.
    pub async fn hold_mutations(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().await
    }

    /// Runs a collection now (after any running one) and waits for it.
    pub async fn collect_now(&self) -> berth_errdefs::Result<()> {
        Ok(())
    }
}
