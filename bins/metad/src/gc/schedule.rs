//! When to collect, decided as containerd's GC scheduler decides: a
//! collection soon after startup, then at intervals that keep the time
//! metad's writers are paused under a fraction of real time, and only when
//! something may have become garbage. Pure: every method takes `now`.

use std::time::Duration;

use tokio::time::Instant;

/// When collections run (containerd's `[plugins."io.containerd.gc.v1.scheduler"]`,
/// with its defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleConfig {
    /// The largest share of real time scheduled collections may pause
    /// metad's writers: collections are spaced so that the average pause
    /// over the time between them stays under it. Clamped to 0..=0.5; 0
    /// spaces them one second apart.
    pub pause_threshold: f64,
    /// After this many deletions, collect right away (after
    /// `schedule_delay`), regardless of the pause budget. 0: deletions wait
    /// for the next scheduled collection.
    pub deletion_threshold: u64,
    /// After this many record mutations, the next scheduled collection runs
    /// even if nothing was deleted. 0: mutations alone never cause one.
    pub mutation_threshold: u64,
    /// How long after a threshold is reached the collection runs.
    pub schedule_delay: Duration,
    /// The first collection, which sets the base for the pause budget, runs
    /// this long after startup. Zero: none until something triggers one.
    pub startup_delay: Duration,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            pause_threshold: 0.02,
            deletion_threshold: 0,
            mutation_threshold: 100,
            schedule_delay: Duration::ZERO,
            startup_delay: Duration::from_millis(100),
        }
    }
}

/// Pauses shorter than this count as this long when spacing collections,
/// so that very fast collections still are not back to back.
const MINIMUM_PAUSE: Duration = Duration::from_millis(5);
/// The spacing before the first collection has measured a pause, and when
/// there is no pause budget.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// What the scheduler should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Collect now.
    Now,
    /// Look again at this instant (or when something is noted).
    At(Instant),
    /// Nothing scheduled: wait for something to be noted.
    Idle,
}

/// What a collection took from the counters when it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken {
    deletions: u64,
    mutations: u64,
}

/// The scheduler's state.
#[derive(Debug)]
pub(crate) struct Policy {
    config: ScheduleConfig,
    next: Option<Instant>,
    last_finished: Option<Instant>,
    interval: Duration,
    pause_total: Duration,
    collections: u32,
    deletions: u64,
    mutations: u64,
}

impl Policy {
    pub(crate) fn new(mut config: ScheduleConfig, now: Instant) -> Policy {
        config.pause_threshold = if config.pause_threshold.is_nan() {
            0.0
        } else {
            config.pause_threshold.clamp(0.0, 0.5)
        };
        let next = (!config.startup_delay.is_zero()).then(|| now + config.startup_delay);
        Policy {
            config,
            next,
            last_finished: None,
            interval: DEFAULT_INTERVAL,
            pause_total: Duration::ZERO,
            collections: 0,
            deletions: 0,
            mutations: 0,
        }
    }

    /// A record was deleted. True if that moved the next collection
    /// earlier.
    pub(crate) fn note_deletion(&mut self, now: Instant) -> bool {
        self.deletions += 1;
        let reached =
            self.config.deletion_threshold > 0 && self.deletions >= self.config.deletion_threshold;
        // Before any collection is scheduled there is no tick to wait for.
        let unscheduled = self.next.is_none() && self.config.deletion_threshold == 0;
        (reached || unscheduled) && self.schedule_soon(now)
    }

    /// A record that can add references changed. True if that moved the
    /// next collection earlier.
    pub(crate) fn note_mutation(&mut self, now: Instant) -> bool {
        self.mutations += 1;
        self.next.is_none() && self.mutations_reached() && self.schedule_soon(now)
    }

    fn mutations_reached(&self) -> bool {
        self.config.mutation_threshold > 0 && self.mutations >= self.config.mutation_threshold
    }

    /// Schedules a collection `schedule_delay` from now unless one is due
    /// sooner.
    fn schedule_soon(&mut self, now: Instant) -> bool {
        let at = now + self.config.schedule_delay;
        if self.next.is_some_and(|next| next <= at) {
            return false;
        }
        self.next = Some(at);
        true
    }

    /// Whether to collect now; a due collection with nothing to do is
    /// skipped and the next one scheduled an interval later.
    pub(crate) fn poll(&mut self, now: Instant) -> Due {
        let Some(next) = self.next else {
            return Due::Idle;
        };
        if next > now {
            return Due::At(next);
        }
        let nothing_to_do =
            self.last_finished.is_some() && self.deletions == 0 && !self.mutations_reached();
        if nothing_to_do {
            let next = now + self.interval;
            self.next = Some(next);
            return Due::At(next);
        }
        Due::Now
    }

    /// A collection (scheduled or asked for) starts: what was noted so far
    /// is its to handle; what is noted from now on counts for the next.
    pub(crate) fn started(&mut self) -> Taken {
        Taken {
            deletions: self.deletions,
            mutations: self.mutations,
        }
    }

    /// A collection ended at `now`; `pause` is how long it held the
    /// writers back, None if it failed (what it took is left for the next
    /// try, a second later than the usual interval).
    pub(crate) fn finished(&mut self, now: Instant, taken: Taken, pause: Option<Duration>) {
        self.last_finished = Some(now);
        let Some(pause) = pause else {
            self.next = Some(now + self.interval + Duration::from_secs(1));
            return;
        };
        self.deletions = self.deletions.saturating_sub(taken.deletions);
        self.mutations = self.mutations.saturating_sub(taken.mutations);
        self.pause_total += pause;
        self.collections = self.collections.saturating_add(1);
        if self.config.pause_threshold > 0.0 {
            // Space collections so that pause / (pause + interval) is the
            // threshold, for the average pause so far.
            let average = (self.pause_total / self.collections).max(MINIMUM_PAUSE);
            let cycle = (average.as_nanos() as f64 / self.config.pause_threshold).round();
            self.interval = Duration::from_nanos(cycle as u64).saturating_sub(average);
        }
        self.next = Some(now + self.interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn policy(config: ScheduleConfig) -> (Policy, Instant) {
        let start = Instant::now();
        (Policy::new(config, start), start)
    }

    /// Runs a collection from `at` that pauses for `pause`, as the
    /// scheduler does; returns when it ended.
    fn collect(policy: &mut Policy, at: Instant, pause: Duration) -> Instant {
        let taken = policy.started();
        let end = at + pause;
        policy.finished(end, taken, Some(pause));
        end
    }

    #[test]
    fn the_first_collection_runs_after_the_startup_delay() {
        let (mut p, start) = policy(ScheduleConfig::default());
        assert_eq!(p.poll(start), Due::At(start + 100 * MS));
        assert_eq!(p.poll(start + 99 * MS), Due::At(start + 100 * MS));
        // Due even with nothing noted: it sets the base for the budget.
        assert_eq!(p.poll(start + 100 * MS), Due::Now);
    }

    #[test]
    fn without_a_startup_delay_nothing_runs_until_something_happens() {
        let (mut p, start) = policy(ScheduleConfig {
            startup_delay: Duration::ZERO,
            ..Default::default()
        });
        assert_eq!(p.poll(start), Due::Idle);
        assert!(p.note_deletion(start + MS));
        assert_eq!(p.poll(start + MS), Due::Now);
    }

    #[test]
    fn a_due_collection_with_nothing_to_do_is_skipped() {
        let (mut p, start) = policy(ScheduleConfig::default());
        let end = collect(&mut p, start + 100 * MS, 2 * MS);
        // The interval for a 2 ms pause (counted as the 5 ms minimum) at
        // 2%: 5 / 0.02 - 5 = 245 ms.
        let tick = end + 245 * MS;
        assert_eq!(p.poll(end), Due::At(tick));
        assert_eq!(p.poll(tick), Due::At(tick + 245 * MS));
        // Mutations under the threshold do not make one due either.
        for _ in 0..99 {
            p.note_mutation(tick);
        }
        assert_eq!(p.poll(tick + 245 * MS), Due::At(tick + 490 * MS));
    }

    #[test]
    fn deletions_wait_for_the_pause_budget() {
        let (mut p, start) = policy(ScheduleConfig::default());
        let pause = 40 * MS;
        let end = collect(&mut p, start + 100 * MS, pause);
        assert!(!p.note_deletion(end));
        // 40 ms at 2%: the next may start 40 / 0.02 - 40 = 1960 ms later.
        let earliest = end + 1960 * MS;
        assert_eq!(p.poll(end + 1959 * MS), Due::At(earliest));
        assert_eq!(p.poll(earliest), Due::Now);
        // The budget holds: pause over the time since the last one began.
        let since_last_began = earliest - (end - pause);
        assert!(pause.as_secs_f64() / since_last_began.as_secs_f64() <= 0.02);
    }

    #[test]
    fn the_budget_follows_the_average_pause() {
        let (mut p, start) = policy(ScheduleConfig {
            pause_threshold: 0.1,
            ..Default::default()
        });
        let end = collect(&mut p, start, 10 * MS);
        let end = collect(&mut p, end, 30 * MS);
        // Average 20 ms at 10%: 200 - 20 ms apart.
        p.note_deletion(end);
        assert_eq!(p.poll(end), Due::At(end + 180 * MS));
    }

    #[test]
    fn the_pause_threshold_is_clamped() {
        let (mut p, start) = policy(ScheduleConfig {
            pause_threshold: 3.0,
            ..Default::default()
        });
        let end = collect(&mut p, start, 10 * MS);
        // At most half the time: 10 / 0.5 - 10.
        assert_eq!(p.poll(end), Due::At(end + 10 * MS));

        let (mut p, start) = policy(ScheduleConfig {
            pause_threshold: -1.0,
            ..Default::default()
        });
        let end = collect(&mut p, start, 10 * MS);
        assert_eq!(p.poll(end), Due::At(end + DEFAULT_INTERVAL));
    }

    #[test]
    fn the_deletion_threshold_triggers_a_collection() {
        let (mut p, start) = policy(ScheduleConfig {
            deletion_threshold: 3,
            schedule_delay: 7 * MS,
            ..Default::default()
        });
        let end = collect(&mut p, start, 40 * MS);
        let tick = end + 1960 * MS;
        assert!(!p.note_deletion(end + MS));
        assert!(!p.note_deletion(end + 2 * MS));
        assert_eq!(p.poll(end + 3 * MS), Due::At(tick));
        // The third: due schedule_delay later, not at the budgeted tick.
        assert!(p.note_deletion(end + 3 * MS));
        assert_eq!(p.poll(end + 3 * MS), Due::At(end + 10 * MS));
        assert_eq!(p.poll(end + 10 * MS), Due::Now);
    }

    #[test]
    fn enough_mutations_make_the_next_tick_collect() {
        let (mut p, start) = policy(ScheduleConfig::default());
        let end = collect(&mut p, start, MS);
        for _ in 0..100 {
            // Not sooner than the tick: mutations never bypass the budget.
            assert!(!p.note_mutation(end));
        }
        assert_eq!(p.poll(end + 244 * MS), Due::At(end + 245 * MS));
        assert_eq!(p.poll(end + 245 * MS), Due::Now);
    }

    #[test]
    fn what_is_noted_during_a_collection_counts_for_the_next() {
        let (mut p, start) = policy(ScheduleConfig::default());
        p.note_deletion(start);
        let taken = p.started();
        p.note_deletion(start + MS);
        let end = start + 2 * MS;
        p.finished(end, taken, Some(MS));
        assert_eq!(p.poll(end + 245 * MS), Due::Now);
        let end = collect(&mut p, end + 245 * MS, MS);
        assert_eq!(p.poll(end + 245 * MS), Due::At(end + 490 * MS));
    }

    #[test]
    fn a_failed_collection_is_retried_later_with_its_work() {
        let (mut p, start) = policy(ScheduleConfig::default());
        let end = collect(&mut p, start, MS);
        p.note_deletion(end);
        let tick = end + 245 * MS;
        assert_eq!(p.poll(tick), Due::Now);
        let taken = p.started();
        let failed = tick + MS;
        p.finished(failed, taken, None);
        let retry = failed + 245 * MS + Duration::from_secs(1);
        assert_eq!(p.poll(failed), Due::At(retry));
        assert_eq!(p.poll(retry), Due::Now);
    }
}
