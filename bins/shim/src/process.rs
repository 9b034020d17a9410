//! A process the shim runs: the container's init or an exec'd process.

use std::time::SystemTime;

use containerd_shim_protos::types::task::Status;
use tokio::sync::watch;

use crate::reaper::Exit;
use crate::stdio::{ProcessIo, StdioPaths};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessStatus {
    Created,
    Running,
    Paused,
    Stopped,
}

impl ProcessStatus {
    pub fn to_proto(self) -> Status {
        match self {
            ProcessStatus::Created => Status::CREATED,
            ProcessStatus::Running => Status::RUNNING,
            ProcessStatus::Paused => Status::PAUSED,
            ProcessStatus::Stopped => Status::STOPPED,
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub status: u32,
    pub at: SystemTime,
}

#[derive(Debug)]
pub struct Process {
    /// "" for init.
    pub exec_id: String,
    pub pid: u32,
    pub status: ProcessStatus,
    pub stdio: StdioPaths,
    pub io: ProcessIo,
    /// The OCI process spec (JSON) of an exec.
    pub spec: Vec<u8>,
    /// Start is in progress: an exit seen now is held back until the start
    /// event is out.
    pub starting: bool,
    pub held_exit: Option<Exit>,
    /// The exit was seen and is being recorded (output draining).
    pub exiting: bool,
    exited: watch::Sender<Option<ExitInfo>>,
}

impl Process {
    pub fn new(exec_id: String, stdio: StdioPaths, spec: Vec<u8>) -> Process {
        Process {
            exec_id,
            pid: 0,
            status: ProcessStatus::Created,
            stdio,
            io: ProcessIo::default(),
            spec,
            starting: false,
            held_exit: None,
            exiting: false,
            exited: watch::channel(None).0,
        }
    }

    pub fn exit(&self) -> Option<ExitInfo> {
        *self.exited.borrow()
    }

    /// Whether an exit of `pid` belongs to this process.
    pub fn claims(&self, pid: i32) -> bool {
        self.pid != 0 && self.pid as i32 == pid && !self.exiting && self.exit().is_none()
    }

    pub fn is_live(&self) -> bool {
        self.exit().is_none() && !self.exiting
    }

    pub fn record_exit(&mut self, exit: ExitInfo) {
        self.status = ProcessStatus::Stopped;
        self.exited.send_replace(Some(exit));
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<ExitInfo>> {
        self.exited.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn waiters_see_the_exit_once_it_is_recorded() {
        let mut process = Process::new(String::new(), StdioPaths::default(), Vec::new());
        process.pid = 10;
        assert!(process.claims(10));
        assert!(!process.claims(11));
        let mut rx = process.subscribe();
        let at = SystemTime::now();
        process.record_exit(ExitInfo { status: 7, at });
        let seen = *rx.wait_for(Option::is_some).await.unwrap();
        assert_eq!(seen, Some(ExitInfo { status: 7, at }));
        assert_eq!(process.status, ProcessStatus::Stopped);
        assert!(!process.claims(10), "an exit is reported once");
    }
}
