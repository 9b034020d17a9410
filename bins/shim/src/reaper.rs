//! The child subreaper: one SIGCHLD handler reaps every child with
//! `waitpid(-1)` and routes each exit either to the runtime command that is
//! waiting for it or to the process monitor.
//!
//! The shim runs on a single thread, so registering a command's pid right
//! after spawning it (with no await in between) cannot race with the reaper.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Result, ShimError};

/// A reaped child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: i32,
    /// The exit code, or 128 + signal number when a signal killed it.
    pub status: u32,
    pub at: SystemTime,
}

#[derive(Debug)]
pub struct Reaper {
    commands: Mutex<HashMap<i32, oneshot::Sender<u32>>>,
    monitor: mpsc::UnboundedSender<Exit>,
}

impl Reaper {
    /// A reaper and the receiving end of every exit no command waits for.
    pub fn new() -> (Reaper, mpsc::UnboundedReceiver<Exit>) {
        let (monitor, exits) = mpsc::unbounded_channel();
        let reaper = Reaper {
            commands: Mutex::new(HashMap::new()),
            monitor,
        };
        (reaper, exits)
    }

    /// Makes the calling process a child subreaper, so container processes
    /// whose parent (`runc`) exits are re-parented to the shim.
    pub fn become_subreaper() -> Result<()> {
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes a plain integer and
        // touches no memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(ShimError::io(
                "setting child subreaper",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Registers interest in the exit of a command the shim just spawned.
    /// Call it before the next await point after `spawn`.
    pub fn watch_command(&self, pid: u32) -> oneshot::Receiver<u32> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut commands) = self.commands.lock() {
            commands.insert(pid as i32, tx);
        }
        rx
    }

    /// Reaps every child that has exited; call on SIGCHLD.
    pub fn reap(&self) {
        loop {
            let exit = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => Exit {
                    pid: pid.as_raw(),
                    status: code as u32,
                    at: SystemTime::now(),
                },
                Ok(WaitStatus::Signaled(pid, signal, _)) => Exit {
                    pid: pid.as_raw(),
                    status: 128 + signal as u32,
                    at: SystemTime::now(),
                },
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            self.dispatch(exit);
        }
    }

    fn dispatch(&self, exit: Exit) {
        let waiter = self
            .commands
            .lock()
            .ok()
            .and_then(|mut commands| commands.remove(&exit.pid));
        match waiter {
            Some(tx) => {
                let _ = tx.send(exit.status);
            }
            None => {
                let _ = self.monitor.send(exit);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reaper waits for any child (`waitpid(-1)`): among this binary's
    /// other tests, running on threads beside it, it would reap their
    /// children too (and they would find theirs gone), and they its. So
    /// the test runs again in a process of its own, this binary with only
    /// itself selected.
    #[test]
    fn routes_command_exits_to_their_waiter_and_others_to_the_monitor() {
        if crate::in_a_process_of_its_own(
            "reaper::tests::routes_command_exits_to_their_waiter_and_others_to_the_monitor",
        ) {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(routes_exits());
        }
    }

    // The children are reaped by the reaper under test, not by `wait`.
    #[allow(clippy::zombie_processes)]
    async fn routes_exits() {
        let (reaper, mut exits) = Reaper::new();
        let watched = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        let rx = reaper.watch_command(watched.id());
        let other = std::process::Command::new("sh")
            .args(["-c", "kill -9 $$"])
            .spawn()
            .unwrap();
        // Give both children time to exit, then reap (as SIGCHLD would).
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut seen_other = None;
        while std::time::Instant::now() < give_up {
            reaper.reap();
            if let Ok(exit) = exits.try_recv() {
                seen_other = Some(exit);
            }
            if seen_other.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let mut rx = rx;
        let mut status = None;
        while std::time::Instant::now() < give_up {
            reaper.reap();
            if let Ok(s) = rx.try_recv() {
                status = Some(s);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(status, Some(3));
        let other_exit = seen_other.unwrap();
        assert_eq!(other_exit.pid, other.id() as i32);
        assert_eq!(other_exit.status, 128 + 9);
    }
}
