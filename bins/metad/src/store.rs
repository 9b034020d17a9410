//! metad's local store: namespaces, images, containers and leases in LMDB
//! ([`records`]), behind the `berth-metadata` traits, implemented one
//! module per record type: [`namespaces`], [`images`], [`containers`],
//! [`leases`].
//!
//! Every mutation that can add a reference holds the collector's gate
//! ([`Scheduler::hold_mutations`]) for its transaction; every delete tells
//! the collector ([`Scheduler::note_deletion`]); record changes go to the
//! event exchange after their transaction commits.

pub mod containers;
pub mod images;
pub mod leases;
pub mod namespaces;
pub mod records;
mod roots;

use std::sync::Arc;

use berth_daemon::blocking;
use berth_errdefs::Result;
use berth_ids::validate_namespace;
use protobuf::MessageFull;

use crate::events::Exchange;
use crate::gc::Scheduler;
pub use crate::peers::{MetadOnly, NamespaceHolders};
pub use records::Records;

/// berth-metad's store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MetaStore {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) records: Records,
    pub(crate) scheduler: Arc<Scheduler>,
    pub(crate) exchange: Arc<Exchange>,
    pub(crate) holders: Arc<dyn NamespaceHolders>,
}

impl MetaStore {
    pub fn new(
        records: Records,
        scheduler: Arc<Scheduler>,
        exchange: Arc<Exchange>,
        holders: Arc<dyn NamespaceHolders>,
    ) -> MetaStore {
        MetaStore {
            inner: Arc::new(Inner {
                records,
                scheduler,
                exchange,
                holders,
            }),
        }
    }

    /// A store on `dir` with no collector, a private exchange and no other
    /// daemons: for tests and tools.
    pub fn open_standalone(dir: &std::path::Path) -> Result<MetaStore> {
        Ok(MetaStore::new(
            Records::open(dir)?,
            Arc::new(Scheduler::default()),
            Exchange::new(),
            Arc::new(MetadOnly),
        ))
    }

    pub fn records(&self) -> &Records {
        &self.inner.records
    }

    /// Publishes a record change (see [`Exchange::publish_message`]).
    pub(crate) fn publish<M: MessageFull>(&self, namespace: &str, topic: &str, event: &M) {
        self.inner.exchange.publish_message(namespace, topic, event);
    }

    /// Runs `work` in one read transaction, off the async threads.
    pub(crate) async fn read<T, F>(&self, work: F) -> Result<T>
    where
        F: FnOnce(&Records, &heed::RoTxn<'_, heed::WithTls>) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let records = self.records().clone();
        blocking(move || {
            let txn = records.read()?;
            work(&records, &txn)
        })
        .await
    }

    /// Runs `work` in one write transaction, off the async threads, and
    /// commits it (durably) if `work` succeeds.
    pub(crate) async fn write<T, F>(&self, work: F) -> Result<T>
    where
        F: FnOnce(&Records, &mut heed::RwTxn<'_>) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let records = self.records().clone();
        blocking(move || {
            let mut txn = records.write()?;
            let out = work(&records, &mut txn)?;
            records::commit(txn)?;
            Ok(out)
        })
        .await
    }

    /// Runs a collection after a delete that asked for one.
    pub(crate) async fn collect_if(&self, sync: bool) -> Result<()> {
        if sync {
            self.inner.scheduler.collect_now().await?;
        }
        Ok(())
    }
}

pub(crate) fn check_namespace(namespace: &str) -> Result<()> {
    Ok(validate_namespace(namespace)?)
}
