//! The garbage collector: decides what berth-contentd and berth-snapd may
//! delete, as containerd's GC does (see docs/gc.md).
//!
//! - `mark`: the rules, a pure function from metad's roots and the
//!   daemons' listings to what is garbage (`labels`: what each label
//!   means).
//! - [`Collector`]: one collection — list the daemons, hold metad's
//!   writers back, read the roots, mark, delete, let go.
//! - [`Scheduler`]: when collections run (after deletions, within a pause
//!   budget, or now when asked), never two at once.
//! - [`ttrpc_service`]: `berth.gc.v1.GC` over ttrpc.

mod collector;
mod labels;
mod mark;
mod roots;
mod schedule;
mod service;

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant as StdInstant;

use async_trait::async_trait;
use berth_errdefs::Result;
use tokio::sync::{Notify, RwLock};
use tokio::time::Instant;

pub use crate::peers::{ContentDaemon, Daemons, SnapshotDaemon, Sockets, CONTENTD, SNAPD};
pub use collector::{Collector, CollectorConfig, Removed, Report};
pub use roots::{LeaseRoots, NamespaceRoots, RootSource, Roots};
pub use schedule::ScheduleConfig;
pub use service::ttrpc_service;

use schedule::{Due, Policy};

/// What the scheduler runs; the [`Collector`] in metad, a stand-in in
/// tests.
#[async_trait]
trait Collection: Send + Sync {
    async fn collect(&self, gate: &RwLock<()>) -> Result<Report>;
}

#[async_trait]
impl Collection for Collector {
    async fn collect(&self, gate: &RwLock<()>) -> Result<Report> {
        Collector::collect(self, gate).await
    }
}

/// The last collection's number and outcome.
#[derive(Debug, Default)]
struct LastRun {
    number: u64,
    outcome: Option<Result<Report>>,
}

/// What the records side tells the collector, and how it asks for a
/// collection now.
pub struct Scheduler {
    gate: RwLock<()>,
    /// None: a scheduler that never collects (records tests).
    collection: Option<Arc<dyn Collection>>,
    policy: Mutex<Policy>,
    /// Wakes the background loop when the policy changed.
    wake: Arc<Notify>,
    /// Held while a collection runs, so that none overlap.
    running: tokio::sync::Mutex<LastRun>,
    /// How many collections have started.
    started: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("collects", &self.collection.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Scheduler {
    /// A scheduler without a collector: it counts nothing and
    /// `collect_now` has nothing to do.
    fn default() -> Self {
        Scheduler::build(ScheduleConfig::default(), None)
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // Lets the background loop see that the scheduler is gone.
        self.wake.notify_one();
    }
}

impl Scheduler {
    /// A scheduler that runs `collector` as `config` says, from a
    /// background task spawned on the current tokio runtime (call it from
    /// within one); the task ends when the scheduler is dropped.
    pub fn new(config: ScheduleConfig, collector: Collector) -> Arc<Scheduler> {
        Scheduler::start(config, Arc::new(collector))
    }

    fn start(config: ScheduleConfig, collection: Arc<dyn Collection>) -> Arc<Scheduler> {
        let scheduler = Arc::new(Scheduler::build(config, Some(collection)));
        tokio::spawn(run(Arc::downgrade(&scheduler), scheduler.wake.clone()));
        scheduler
    }

    fn build(config: ScheduleConfig, collection: Option<Arc<dyn Collection>>) -> Scheduler {
        Scheduler {
            gate: RwLock::new(()),
            collection,
            policy: Mutex::new(Policy::new(config, Instant::now())),
            wake: Arc::new(Notify::new()),
            running: tokio::sync::Mutex::new(LastRun::default()),
            started: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A record was deleted (images, containers, leases): counts toward the
    /// next scheduled collection.
    pub fn note_deletion(&self) {
        if self.collection.is_some() && self.policy().note_deletion(Instant::now()) {
            self.wake.notify_one();
        }
    }

    /// Held (shared) by every record mutation that can add a reference
    /// (creating or updating images, containers, leases and their
    /// resources); a collection holds it exclusively from reading the roots
    /// until its deletions are done, so nothing it is about to delete gains
    /// a reference meanwhile. That hold is the collection's pause.
    pub async fn hold_mutations(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        if self.collection.is_some() && self.policy().note_mutation(Instant::now()) {
            self.wake.notify_one();
        }
        self.gate.read().await
    }

    /// Runs a collection now (after any running one) and waits for it.
    pub async fn collect_now(&self) -> berth_errdefs::Result<()> {
        self.collect_now_report().await.map(|_| ())
    }

    /// Runs a collection now (after any running one) and says what it did.
    /// Callers that arrive while one runs share the next one.
    pub async fn collect_now_report(&self) -> Result<Report> {
        let Some(collection) = &self.collection else {
            return Ok(Report::default());
        };
        let arrived = self.started.load(std::sync::atomic::Ordering::SeqCst);
        let mut last = self.running.lock().await;
        // One that started after we arrived saw everything we did.
        if last.number > arrived {
            if let Some(outcome) = &last.outcome {
                return outcome.clone();
            }
        }
        self.run_collection(collection.as_ref(), &mut last).await
    }

    /// Runs one collection; the caller holds `running`.
    async fn run_collection(
        &self,
        collection: &dyn Collection,
        last: &mut LastRun,
    ) -> Result<Report> {
        let number = self
            .started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let taken = self.policy().started();
        let began = StdInstant::now();
        let outcome = collection.collect(&self.gate).await;
        if let Err(e) = &outcome {
            tracing::warn!(error = %e, elapsed = ?began.elapsed(), "garbage collection failed");
        }
        crate::metrics::collection_finished(&outcome, began.elapsed());
        let pause = outcome.as_ref().ok().map(|report| report.pause);
        self.policy().finished(Instant::now(), taken, pause);
        *last = LastRun {
            number,
            outcome: Some(outcome.clone()),
        };
        outcome
    }

    /// Runs a scheduled collection if it is still due once no other runs.
    async fn collect_if_due(&self) {
        let Some(collection) = &self.collection else {
            return;
        };
        let mut last = self.running.lock().await;
        // One asked for may have run while we waited.
        if self.policy().poll(Instant::now()) == Due::Now {
            let _ = self.run_collection(collection.as_ref(), &mut last).await;
        }
    }

    fn policy(&self) -> MutexGuard<'_, Policy> {
        // The policy is plain data updated in place; a panic elsewhere
        // cannot leave it half-changed, so a poisoned lock is still usable.
        self.policy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The background loop: collects when the policy says so, sleeping until
/// then or until something is noted. Ends when the scheduler is dropped.
async fn run(scheduler: Weak<Scheduler>, wake: Arc<Notify>) {
    loop {
        let due = {
            let Some(scheduler) = scheduler.upgrade() else {
                return;
            };
            let due = scheduler.policy().poll(Instant::now());
            if due == Due::Now {
                scheduler.collect_if_due().await;
                continue;
            }
            due
        };
        match due {
            Due::At(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = wake.notified() => {}
                }
            }
            Due::Idle | Due::Now => wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests;
