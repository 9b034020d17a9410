#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The scheduler's runtime: collections never overlap, `collect_now` waits
//! and runs a fresh one, the background loop collects when the policy says
//! so. (The policy's timing is tested with an injected clock in
//! schedule.rs.) Tests run on a single-threaded runtime, where yielding
//! lets every other ready task run up to its next wait.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use berth_errdefs::Error;
use tokio::sync::{mpsc, Semaphore};

use super::*;

/// A collection that announces its start, then waits to be released, and
/// reports its own number as the one object it removed.
struct Gated {
    started: mpsc::UnboundedSender<usize>,
    release: Semaphore,
    count: AtomicUsize,
    active: AtomicUsize,
    most_active: AtomicUsize,
    /// Holds metad's writers back while it waits.
    hold_gate: bool,
}

impl Gated {
    fn new(hold_gate: bool) -> (Arc<Gated>, mpsc::UnboundedReceiver<usize>) {
        let (started, rx) = mpsc::unbounded_channel();
        let gated = Gated {
            started,
            release: Semaphore::new(0),
            count: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            most_active: AtomicUsize::new(0),
            hold_gate,
        };
        (Arc::new(gated), rx)
    }

    fn release_one(&self) {
        self.release.add_permits(1);
    }
}

#[async_trait]
impl Collection for Gated {
    async fn collect(&self, gate: &RwLock<()>) -> Result<Report> {
        let number = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        let active = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_active.fetch_max(active, Ordering::SeqCst);
        let held = if self.hold_gate {
            Some(gate.write().await)
        } else {
            None
        };
        self.started.send(number).unwrap();
        let permit = self.release.acquire().await.unwrap();
        permit.forget();
        drop(held);
        self.active.fetch_sub(1, Ordering::SeqCst);
        if number == 99 {
            return Err(Error::internal("never"));
        }
        Ok(Report {
            removed: vec![Removed {
                kind: "content".into(),
                namespace: "default".into(),
                id: number.to_string(),
            }],
            pause: Duration::from_millis(1),
            ..Default::default()
        })
    }
}

/// Only asked-for collections: no startup collection, no thresholds.
fn manual_only() -> ScheduleConfig {
    ScheduleConfig {
        startup_delay: Duration::ZERO,
        deletion_threshold: 0,
        mutation_threshold: 0,
        ..Default::default()
    }
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

fn number(report: &Report) -> &str {
    &report.removed[0].id
}

#[tokio::test]
async fn collect_now_waits_for_a_running_collection_then_runs_a_fresh_one() {
    let (gated, mut started) = Gated::new(false);
    let scheduler = Scheduler::start(manual_only(), gated.clone());

    let first = tokio::spawn({
        let s = scheduler.clone();
        async move { s.collect_now_report().await }
    });
    assert_eq!(started.recv().await, Some(1));

    // Arrives while the first runs: must not take the first's result.
    let second = tokio::spawn({
        let s = scheduler.clone();
        async move { s.collect_now_report().await }
    });
    settle().await;
    assert!(!second.is_finished());
    gated.release_one();
    assert_eq!(number(&first.await.unwrap().unwrap()), "1");

    assert_eq!(started.recv().await, Some(2));
    gated.release_one();
    assert_eq!(number(&second.await.unwrap().unwrap()), "2");
    assert_eq!(gated.most_active.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn callers_waiting_together_share_the_next_collection() {
    let (gated, mut started) = Gated::new(false);
    let scheduler = Scheduler::start(manual_only(), gated.clone());
    let call = || {
        let s = scheduler.clone();
        tokio::spawn(async move { s.collect_now_report().await })
    };

    let first = call();
    assert_eq!(started.recv().await, Some(1));
    let waiting: Vec<_> = (0..3).map(|_| call()).collect();
    settle().await;
    gated.release_one();
    assert_eq!(started.recv().await, Some(2));
    gated.release_one();
    assert_eq!(number(&first.await.unwrap().unwrap()), "1");
    for w in waiting {
        assert_eq!(number(&w.await.unwrap().unwrap()), "2");
    }
    assert_eq!(gated.count.load(Ordering::SeqCst), 2);
    assert_eq!(gated.most_active.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn reaching_the_deletion_threshold_starts_a_collection() {
    let (gated, mut started) = Gated::new(false);
    let scheduler = Scheduler::start(
        ScheduleConfig {
            deletion_threshold: 2,
            ..manual_only()
        },
        gated.clone(),
    );
    // Before anything was collected a deletion alone does not wait for a
    // tick (there is none), but with a threshold it waits for the threshold.
    scheduler.note_deletion();
    settle().await;
    assert_eq!(gated.count.load(Ordering::SeqCst), 0);
    scheduler.note_deletion();
    assert_eq!(started.recv().await, Some(1));

    // Asked for while the scheduled one runs: waits, then runs its own.
    let manual = tokio::spawn({
        let s = scheduler.clone();
        async move { s.collect_now_report().await }
    });
    settle().await;
    assert!(!manual.is_finished());
    gated.release_one();
    assert_eq!(started.recv().await, Some(2));
    gated.release_one();
    assert_eq!(number(&manual.await.unwrap().unwrap()), "2");
    assert_eq!(gated.most_active.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn writers_wait_while_a_collection_holds_them_back() {
    let (gated, mut started) = Gated::new(true);
    let scheduler = Scheduler::start(manual_only(), gated.clone());
    let collection = tokio::spawn({
        let s = scheduler.clone();
        async move { s.collect_now_report().await }
    });
    assert_eq!(started.recv().await, Some(1));
    let writer = tokio::spawn({
        let s = scheduler.clone();
        async move {
            let _held = s.hold_mutations().await;
        }
    });
    settle().await;
    assert!(!writer.is_finished());
    gated.release_one();
    writer.await.unwrap();
    collection.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_failed_collection_fails_its_callers() {
    let (gated, mut started) = Gated::new(false);
    gated.count.store(98, Ordering::SeqCst);
    let scheduler = Scheduler::start(manual_only(), gated.clone());
    let call = tokio::spawn({
        let s = scheduler.clone();
        async move { s.collect_now().await }
    });
    assert_eq!(started.recv().await, Some(99));
    gated.release_one();
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), berth_errdefs::ErrorKind::Internal);
}

#[tokio::test]
async fn a_scheduler_without_a_collector_does_nothing() {
    let scheduler = Scheduler::default();
    scheduler.note_deletion();
    drop(scheduler.hold_mutations().await);
    scheduler.collect_now().await.unwrap();
    assert_eq!(
        scheduler.collect_now_report().await.unwrap(),
        Report::default()
    );
}
