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
//!   died before Create recorded the container, an orphan re-parented to
//!   the shim) is kept, boundedly, and claimed by the Create or Start that
//!   learns the pid. Deleting the container forgets them all.
//!
//! Reporting an exit ([`Tasks::begin_exit`]) kills the rest of a container
//! that shares the host's pid namespace (for init), waits for a terminal's
//! output to drain, then records the exit (Wait returns) and publishes
//! `/tasks/exit`.

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
/// [`UNMATCHED_EXITS_KEPT`].
#[derive(Debug, Default)]
pub struct UnmatchedExits(VecDeque<Exit>);

impl UnmatchedExits {
    /// Keeps an exit no process has claimed yet, dropping the oldest kept
    /// one when full.
    pub fn keep(&mut self, exit: Exit) {
        if self.0.len() >= UNMATCHED_EXITS_KEPT {
            self.0.pop_front();
        }
        self.0.push_back(exit);
    }

    /// Takes the kept exit of `pid`, if there is one.
    pub fn take(&mut self, pid: u32) -> Option<Exit> {
        let index = self.0.iter().position(|e| e.pid == pid as i32)?;
        self.0.remove(index)
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Tasks {
    /// Routes one reaped exit to its process. Called for every exit the
    /// reaper does not hand to a runtime command.
    pub fn handle_exit(self: &Arc<Self>, exit: Exit) {
        let mut state = self.lock();
        let Some(container) = state.container.as_mut() else {
            // Create has not recorded the container yet (its init can die
            // right after `runc create`): keep the exit for it to find.
            state.unmatched.keep(exit);
            return;
        };
        let Some(exec_id) = container.claimant(exit.pid) else {
            state.unmatched.keep(exit);
            return;
        };
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

    fn finish_exit(&self, id: &str, exec_id: &str, exit: Exit) {
        let mut state = self.lock();
        let Ok(container) = state.container(id) else {
            return;
        };
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
