//! Routing reaped exits to the processes they belong to.
//!
//! Every exit the reaper does not hand to a runtime command comes to
//! [`Tasks::handle_exit`]. It goes to the live process with that pid, if
//! any. Two kinds wait instead of being reported at once:
//!
//! - **held**: the exit of a process whose Start is in progress (the init
//!   during `runc start`) is kept on the process until the start event is
//!   out, then reported, so containerd sees start before exit;
//! - **unmatched**: the exit of a pid no process has yet (an exec that died
//!   before `runc exec` returned and its pid file was read, an init that
//!   died before Create recorded the container) is kept, boundedly, while
//!   a Create or Start is in progress, and claimed by the one that learns
//!   the pid. Exits reaped outside that window (orphans re-parented to the
//!   shim) are dropped.
//!
//! Reporting an exit ([`Tasks::begin_exit`]) kills the rest of a container
//! that shares the host's pid namespace (for init), waits for a terminal's
//! output to drain, then records the exit (Wait returns) and publishes
//! `/tasks/exit`. The init's exit is always the container's last: once it
//! is reaped no exec may start, and it is held until every exec whose
//! Start had begun has had its exit published (containerd's Go shim keeps
//! the same order; containerd issue 10589).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::container::Container;
use crate::events;
use crate::process::ExitInfo;
use crate::reaper::Exit;
use crate::tasks::Tasks;

/// How long a process's exit waits for its terminal output to drain.
const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How many unmatched exits are kept; the oldest go first.
pub const UNMATCHED_EXITS_KEPT: usize = 256;

/// Exits no process has claimed yet, oldest first, at most
/// [`UNMATCHED_EXITS_KEPT`], kept only while a Create or an exec's Start
/// is in progress: only such a call can still learn the pid of a process
/// that has already exited. Outside that window an unclaimed exit is an
/// orphan's, and is dropped, so it can never be matched to a later exec
/// that reuses the pid (containerd's Go shim subscribes to exits only for
/// the length of a start, likewise).
#[derive(Debug, Default)]
pub struct UnmatchedExits {
    kept: VecDeque<Exit>,
    starts_in_progress: usize,
}

impl UnmatchedExits {
    /// Keeps an exit no process has claimed yet, dropping the oldest kept
    /// one when full; drops it when no start is in progress.
    pub fn keep(&mut self, exit: Exit) {
        if self.starts_in_progress == 0 {
            return;
        }
        if self.kept.len() >= UNMATCHED_EXITS_KEPT {
            self.kept.pop_front();
        }
        self.kept.push_back(exit);
    }

    /// Takes the kept exit of `pid`, if there is one.
    pub fn take(&mut self, pid: u32) -> Option<Exit> {
        let index = self.kept.iter().position(|e| e.pid == pid as i32)?;
        self.kept.remove(index)
    }

    /// A Create or an exec's Start begins.
    pub fn start_began(&mut self) {
        self.starts_in_progress += 1;
    }

    /// A Create or an exec's Start has ended (having taken its exit, if
    /// any); with none left in progress, nothing kept can be claimed.
    pub fn start_ended(&mut self) {
        self.starts_in_progress = self.starts_in_progress.saturating_sub(1);
        if self.starts_in_progress == 0 {
            self.kept.clear();
        }
    }

    /// How many are kept (for tests: nothing else needs to know).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

impl Tasks {
    /// Routes one reaped exit to its process. Called for every exit the
    /// reaper does not hand to a runtime command.
    pub fn handle_exit(self: &Arc<Self>, exit: Exit) {
        let mut state = self.lock();
        let Some((container, exec_id)) = state.claimant(exit.pid) else {
            // No process has the pid yet (an init can die right after
            // `runc create`, before Create has recorded its container):
            // keep the exit for the Create or Start that learns it.
            state.unmatched.keep(exit);
            return;
        };
        if exec_id.is_empty() {
            container.init_reaped = true;
        }
        if let Ok(process) = container.process_mut(&exec_id) {
            if process.starting {
                process.held_exit = Some(exit);
                return;
            }
        }
        self.begin_exit(container, &exec_id, exit);
    }

    /// Marks a process as exiting and records its exit once its output has
    /// drained, so a client that stops reading at Wait loses nothing.
    pub(crate) fn begin_exit(
        self: &Arc<Self>,
        container: &mut Container,
        exec_id: &str,
        exit: Exit,
    ) {
        let Ok(process) = container.process_mut(exec_id) else {
            return;
        };
        process.exiting = true;
        let output_done = process.io.take_output_done();
        let kill_all = exec_id.is_empty() && container.shares_host_pid_ns;
        let runtime = container.runtime.clone();
        let id = container.id.clone();
        let this = self.clone();
        let exec_id = exec_id.to_string();
        tokio::spawn(async move {
            if kill_all {
                let _ = runtime.kill(&id, libc::SIGKILL as u32, true).await;
            }
            if let Some(done) = output_done {
                let _ = tokio::time::timeout(OUTPUT_DRAIN_LIMIT, done).await;
            }
            this.finish_exit(&id, &exec_id, exit);
        });
    }

    /// Publishes an exit whose output has drained; the init's waits for
    /// every running exec's to be published first.
    fn finish_exit(&self, id: &str, exec_id: &str, exit: Exit) {
        let mut state = self.lock();
        let Ok(container) = state.container(id) else {
            return;
        };
        if exec_id.is_empty() && container.running_execs > 0 {
            container.held_init_exit = Some(exit);
            return;
        }
        self.publish_exit(container, exec_id, exit);
        if !exec_id.is_empty() {
            self.exec_gone(container);
        }
    }

    /// An exec that was counted as running is gone (its exit published, or
    /// its Start failed); the last one out releases a held init exit.
    pub(crate) fn exec_gone(&self, container: &mut Container) {
        container.running_execs = container.running_execs.saturating_sub(1);
        if container.running_execs == 0 {
            if let Some(exit) = container.held_init_exit.take() {
                self.publish_exit(container, "", exit);
            }
        }
    }

    /// Records the exit (Wait returns) and publishes `/tasks/exit`.
    fn publish_exit(&self, container: &mut Container, exec_id: &str, exit: Exit) {
        let id = container.id.clone();
        let id = id.as_str();
        let Ok(process) = container.process_mut(exec_id) else {
            return;
        };
        process.record_exit(ExitInfo {
            status: exit.status,
            at: exit.at,
        });
        process.exiting = false;
        process.io.close_stdin();
        let event_id = if exec_id.is_empty() { id } else { exec_id };
        self.publisher.publish(
            events::TASK_EXIT,
            &events::task_exit(id, event_id, exit.pid as u32, exit.status, exit.at),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ShimError;
    use crate::fake_runtime::{Harness, EXEC_PID, ID, INIT_PID, OTHER_EXEC_PID, STRANGER_PID};
    use containerd_shim_protos::types::task::Status;

    fn exit(pid: i32) -> Exit {
        Exit {
            pid,
            status: 0,
            at: std::time::SystemTime::now(),
        }
    }

    #[test]
    fn unmatched_exits_are_bounded_and_the_oldest_go_first() {
        let mut kept = UnmatchedExits::default();
        kept.keep(exit(7));
        assert!(kept.is_empty(), "no start in progress: an orphan's exit");
        kept.start_began();
        for pid in 1..=UNMATCHED_EXITS_KEPT as i32 + 1 {
            kept.keep(exit(pid));
        }
        assert_eq!(kept.len(), UNMATCHED_EXITS_KEPT);
        assert_eq!(kept.take(1), None, "the oldest exit was dropped");
        assert_eq!(kept.take(2).map(|e| e.pid), Some(2));
        assert_eq!(kept.take(2), None, "an exit is taken once");
        let last = UNMATCHED_EXITS_KEPT as u32 + 1;
        assert_eq!(kept.take(last).map(|e| e.pid), Some(last as i32));
        kept.keep(exit(3));
        kept.start_began();
        kept.start_ended();
        assert_eq!(kept.len(), UNMATCHED_EXITS_KEPT - 1, "one start still runs");
        kept.start_ended();
        assert!(kept.is_empty(), "the last start to end forgets them");
    }

    /// `runc exec --detach` returns after the exec'd process may already
    /// have died and been reaped: its exit, of a pid nobody knew yet, is
    /// kept and delivered to the exec once Start has read the pid file,
    /// after the exec-started event.
    #[tokio::test(flavor = "current_thread")]
    async fn an_exec_exit_reaped_before_its_pid_is_known_is_delivered_when_start_returns() {
        let mut h = Harness::running().await;
        h.add_exec("e1", EXEC_PID).await;
        let release = h.runtime.gate("exec e1");
        let start = h.start_in_background("e1").await;

        let reaped = h.reap(EXEC_PID, 3);
        h.assert_no_event("an exit no process claims yet").await;
        assert_eq!(h.status("e1"), (Status::CREATED, 0));

        release.send(()).unwrap();
        assert_eq!(start.await.unwrap().unwrap(), EXEC_PID);
        assert_eq!(
            h.next_event().await,
            format!("exec-started {ID} e1 {EXEC_PID}")
        );
        assert_eq!(h.next_event().await, format!("exit {ID} e1 {EXEC_PID} 3"));
        let waited = h.tasks.wait(ID, "e1").await.unwrap().unwrap();
        assert_eq!((waited.status, waited.at), (3, reaped.at));
        assert_eq!(h.status("e1"), (Status::STOPPED, EXEC_PID));
        assert_eq!(h.status(""), (Status::RUNNING, INIT_PID), "init untouched");
        h.assert_no_event("after the exec's exit").await;
    }

    /// The init can die while `runc start` runs: its exit is held on the
    /// init until the start event is out, then reported.
    #[tokio::test(flavor = "current_thread")]
    async fn an_init_exit_during_its_start_is_held_until_the_start_event_is_out() {
        let mut h = Harness::new(true);
        h.create().await;
        let release = h.runtime.gate("start");
        let tasks = h.tasks.clone();
        let start = tokio::spawn(async move { tasks.start(ID, "").await });
        assert_eq!(h.next_call().await, "start");

        h.reap(INIT_PID, 137);
        h.assert_no_event("an exit held while the init starts")
            .await;

        release.send(()).unwrap();
        assert_eq!(start.await.unwrap().unwrap(), INIT_PID);
        assert_eq!(h.next_event().await, format!("start {ID} {INIT_PID}"));
        assert_eq!(
            h.next_event().await,
            format!("exit {ID} {ID} {INIT_PID} 137")
        );
        let waited = h.tasks.wait(ID, "").await.unwrap().unwrap();
        assert_eq!(waited.status, 137);
        assert_eq!(h.status(""), (Status::STOPPED, INIT_PID));
    }

    /// The init dies while an exec's Start is in progress (containerd
    /// issue 10589). As containerd's Go shim: the init's exit is held until
    /// every exec whose Start had begun has exited, so it is the
    /// container's last (exec-started e1, exit e1, exit init); until it is
    /// published an exec may still be created, but no Start is accepted.
    #[tokio::test(flavor = "current_thread")]
    async fn an_init_exit_while_an_exec_starts_is_held_until_the_exec_has_exited() {
        let mut h = Harness::running().await;
        h.add_exec("e1", EXEC_PID).await;
        h.add_exec("e2", OTHER_EXEC_PID).await;
        let release = h.runtime.gate("exec e1");
        let start = h.start_in_background("e1").await;

        h.reap(INIT_PID, 137);
        h.assert_no_event("the init's exit waits for e1").await;
        h.add_exec("e3", STRANGER_PID).await;
        assert!(matches!(
            h.tasks.start(ID, "e2").await,
            Err(ShimError::FailedPrecondition(_))
        ));
        assert!(matches!(
            h.tasks.start(ID, "e3").await,
            Err(ShimError::FailedPrecondition(_))
        ));
        let mut kill = containerd_shim_protos::shim::shim::KillRequest::new();
        kill.id = ID.into();
        kill.signal = 9;
        assert!(
            matches!(h.tasks.kill(&kill).await, Err(ShimError::NotFound(_))),
            "the init is gone, though its exit is not yet published"
        );

        release.send(()).unwrap();
        assert_eq!(start.await.unwrap().unwrap(), EXEC_PID);
        assert_eq!(
            h.next_event().await,
            format!("exec-started {ID} e1 {EXEC_PID}")
        );
        h.assert_no_event("e1 still runs").await;
        assert_eq!(h.status("").0, Status::RUNNING, "the init's exit is held");
        h.reap(EXEC_PID, 137);
        assert_eq!(h.next_event().await, format!("exit {ID} e1 {EXEC_PID} 137"));
        assert_eq!(
            h.next_event().await,
            format!("exit {ID} {ID} {INIT_PID} 137")
        );
        assert_eq!(h.tasks.wait(ID, "").await.unwrap().unwrap().status, 137);
        assert_eq!(h.tasks.wait(ID, "e1").await.unwrap().unwrap().status, 137);
        assert_eq!(h.status("e2"), (Status::CREATED, 0));
        let mut late = containerd_shim_protos::shim::shim::ExecProcessRequest::new();
        late.id = ID.into();
        late.exec_id = "e4".into();
        assert!(
            matches!(
                h.tasks.add_exec(&late),
                Err(ShimError::FailedPrecondition(_))
            ),
            "no exec is created once the init's exit is out"
        );
    }

    /// An exec whose Start fails after the init died no longer holds the
    /// init's exit back.
    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_exec_start_releases_a_held_init_exit() {
        let mut h = Harness::running().await;
        h.add_exec("e1", EXEC_PID).await;
        let release = h.runtime.gate("exec e1");
        h.runtime.fail_exec("e1");
        let start = h.start_in_background("e1").await;
        h.reap(INIT_PID, 137);
        h.assert_no_event("held while e1 starts").await;
        release.send(()).unwrap();
        assert!(start.await.unwrap().is_err());
        assert_eq!(
            h.next_event().await,
            format!("exit {ID} {ID} {INIT_PID} 137")
        );
    }

    /// A Delete of an exec whose Start is in progress waits for the Start,
    /// then refuses a running exec (as the Go shim does) instead of
    /// forgetting a process that is about to run.
    #[tokio::test(flavor = "current_thread")]
    async fn deleting_an_exec_while_it_starts_waits_and_refuses_if_it_runs() {
        let mut h = Harness::running().await;
        h.add_exec("e1", EXEC_PID).await;
        let release = h.runtime.gate("exec e1");
        let start = h.start_in_background("e1").await;
        let tasks = h.tasks.clone();
        let delete = tokio::spawn(async move { tasks.delete(ID, "e1").await });
        h.settle().await;
        assert!(!delete.is_finished(), "the Delete waits for the Start");
        release.send(()).unwrap();
        assert_eq!(start.await.unwrap().unwrap(), EXEC_PID);
        assert!(matches!(
            delete.await.unwrap(),
            Err(ShimError::FailedPrecondition(_))
        ));
        assert_eq!(h.status("e1"), (Status::RUNNING, EXEC_PID));
    }

    /// The init can die and be reaped before Create has recorded the
    /// container: the exit is kept and matched once Create knows the pid.
    #[tokio::test(flavor = "current_thread")]
    async fn an_init_exit_reaped_before_create_returns_is_matched_at_create() {
        let mut h = Harness::new(true);
        h.create_with_init_dying(2).await;
        assert_eq!(h.next_event().await, format!("exit {ID} {ID} {INIT_PID} 2"));
        assert_eq!(h.tasks.wait(ID, "").await.unwrap().unwrap().status, 2);
    }

    /// An exit reaped while no Create or Start runs is an orphan's: it is
    /// not kept, so an exec that later gets the same (recycled) pid is not
    /// taken for exited.
    #[tokio::test(flavor = "current_thread")]
    async fn an_exit_reaped_outside_any_start_is_not_matched_to_a_later_exec() {
        let mut h = Harness::running().await;
        h.reap(EXEC_PID, 9);
        h.run_exec("e1", EXEC_PID).await;
        h.assert_no_event("the old exit is not e1's").await;
        assert_eq!(h.status("e1"), (Status::RUNNING, EXEC_PID));
    }

    /// An exit of a pid that never becomes a process's stays unmatched:
    /// nothing is reported, no process changes, and Delete forgets it, so
    /// a later container whose init reuses the pid does not inherit it.
    #[tokio::test(flavor = "current_thread")]
    async fn an_exit_no_process_ever_claims_is_dropped_at_delete() {
        let mut h = Harness::new(true);
        h.create().await;
        h.reap(STRANGER_PID, 1);
        h.assert_no_event("an exit of a stranger").await;
        assert_eq!(h.status(""), (Status::CREATED, INIT_PID));

        let deleted = h.tasks.delete(ID, "").await.unwrap();
        assert_eq!((deleted.pid, deleted.exit_status), (INIT_PID, 137));
        assert_eq!(h.next_call().await, "delete force");
        assert_eq!(h.next_event().await, format!("delete {ID} {INIT_PID} 137"));

        h.runtime.set_init_pid(STRANGER_PID);
        h.create().await;
        h.assert_no_event("a new init with a recycled pid").await;
        assert_eq!(h.status(""), (Status::CREATED, STRANGER_PID));
    }

    /// Unmatched exits are kept boundedly: with more than
    /// UNMATCHED_EXITS_KEPT reaped after it, an exec's early exit is lost
    /// (the exec stays running); with exactly that many it is delivered.
    #[tokio::test(flavor = "current_thread")]
    async fn unmatched_exits_age_out_oldest_first() {
        let mut h = Harness::running().await;
        h.add_exec("e1", EXEC_PID).await;
        h.add_exec("e2", OTHER_EXEC_PID).await;
        let release1 = h.runtime.gate("exec e1");
        let start1 = h.start_in_background("e1").await;
        let release2 = h.runtime.gate("exec e2");
        let start2 = h.start_in_background("e2").await;

        h.reap(EXEC_PID, 5);
        h.reap(OTHER_EXEC_PID, 6);
        for n in 0..UNMATCHED_EXITS_KEPT as u32 - 1 {
            h.reap(STRANGER_PID + 1 + n, 0);
        }
        h.assert_no_event("only unmatched exits").await;

        release1.send(()).unwrap();
        assert_eq!(start1.await.unwrap().unwrap(), EXEC_PID);
        assert_eq!(
            h.next_event().await,
            format!("exec-started {ID} e1 {EXEC_PID}")
        );
        h.assert_no_event("e1's exit aged out").await;
        assert_eq!(h.status("e1"), (Status::RUNNING, EXEC_PID));

        release2.send(()).unwrap();
        assert_eq!(start2.await.unwrap().unwrap(), OTHER_EXEC_PID);
        assert_eq!(
            h.next_event().await,
            format!("exec-started {ID} e2 {OTHER_EXEC_PID}")
        );
        assert_eq!(
            h.next_event().await,
            format!("exit {ID} e2 {OTHER_EXEC_PID} 6")
        );
    }

    /// Without a pid namespace of its own the container's other processes
    /// outlive its init: they are killed (`kill --all`) before the init's
    /// exit is reported. With one, nothing is killed.
    #[tokio::test(flavor = "current_thread")]
    async fn an_init_exit_in_the_host_pid_namespace_kills_the_rest_first() {
        let mut h = Harness::new(false);
        h.create().await;
        h.tasks.start(ID, "").await.unwrap();
        assert_eq!(h.next_call().await, "start");
        assert_eq!(h.next_event().await, format!("start {ID} {INIT_PID}"));
        let release = h.runtime.gate("kill 9 all");
        h.reap(INIT_PID, 0);
        assert_eq!(h.next_call().await, "kill 9 all");
        h.assert_no_event("the kill has not returned").await;
        release.send(()).unwrap();
        assert_eq!(h.next_event().await, format!("exit {ID} {ID} {INIT_PID} 0"));

        let mut h = Harness::running().await;
        h.reap(INIT_PID, 0);
        assert_eq!(h.next_event().await, format!("exit {ID} {ID} {INIT_PID} 0"));
        h.assert_no_call("an init with its own pid namespace").await;
    }
}
