//! A guard against commands that never return.
//!
//! A `berth` command that hangs would hold its test, and the whole test
//! run, until CI's own limit ends it with nothing to say why. Commands run
//! through [`output_bounded`] instead fail their test after
//! [`HANG_LIMIT`], with what each process involved was doing: its threads'
//! kernel wait channels and stacks, and their user stacks when gdb is
//! installed. The limit only tells a hang from slowness (every command the
//! tests run takes seconds at most); it measures nothing.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long one command may run before its test calls it hung.
pub const HANG_LIMIT: Duration = Duration::from_secs(300);

/// Runs `command` to its end with `stdin` as its input (or none) and its
/// output captured, like `Command::output`. When it has not ended after
/// [`HANG_LIMIT`], describes it and the processes of `watched` (the
/// daemons it talks to) with [`hang_report`], kills it and the processes
/// it started, and panics.
pub fn output_bounded(command: &mut Command, stdin: Option<Vec<u8>>, watched: &[u32]) -> Output {
    output_within(command, stdin, watched, HANG_LIMIT)
}

/// [`output_bounded`] with a limit of `limit`.
pub fn output_within(
    command: &mut Command,
    stdin: Option<Vec<u8>>,
    watched: &[u32],
    limit: Duration,
) -> Output {
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    let pid = child.id();
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // On a thread of its own: the command may stop reading before the
        // end, and its broken pipe is no failure.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let (done, ended) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match ended.recv_timeout(limit) {
        Ok(output) => output.unwrap_or_else(|e| panic!("waiting for {command:?}: {e}")),
        Err(_) => {
            let mut started = vec![pid];
            started.extend(descendants(pid));
            let mut pids = started.clone();
            pids.extend_from_slice(watched);
            let report = hang_report(&pids);
            // Straight to the process's stderr as well: the test harness
            // captures a panic's message and would lose it if the panic
            // came during another's unwinding (a Drop's command hanging)
            // and aborted the process.
            let _ = std::io::stderr().write_all(
                format!("{command:?} did not end within {limit:?}\n{report}").as_bytes(),
            );
            // Only the command and what it started, by pid.
            for pid in started {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let output = ended.recv_timeout(Duration::from_secs(10)).ok();
            let stderr = output
                .and_then(|o| o.ok())
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default();
            panic!("{command:?} did not end within {limit:?}; its stderr: {stderr}\n{report}");
        }
    }
}

/// The processes descended from `pid`, found through /proc's children
/// lists.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut next = vec![pid];
    while let Some(parent) = next.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                found.push(child);
                next.push(child);
            }
        }
    }
    found
}

/// What each process of `pids` is doing: its command line, and for each
/// thread its name, kernel wait channel and kernel stack; then, when gdb is
/// on PATH, every thread's user stack.
pub fn hang_report(pids: &[u32]) -> String {
    let mut report = String::new();
    for &pid in pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_else(|_| "(gone)".to_string());
        report.push_str(&format!("=== process {pid}: {cmdline}\n"));
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let read = |name: &str| {
                std::fs::read_to_string(task.path().join(name))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            };
            report.push_str(&format!(
                "--- thread {} ({}) waiting in {}\n{}\n",
                task.file_name().to_string_lossy(),
                read("comm"),
                read("wchan"),
                read("stack")
            ));
        }
        if crate::on_path("gdb") {
            let stacks = Command::new("timeout")
                .args(["60", "gdb", "-p", &pid.to_string(), "-batch", "-nx"])
                .args(["-ex", "thread apply all bt"])
                .stdin(Stdio::null())
                .output();
            if let Ok(stacks) = stacks {
                report.push_str(&String::from_utf8_lossy(&stacks.stdout));
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_that_ends_gives_its_output_and_one_that_hangs_fails_with_its_stacks() {
        let out = output_within(
            &mut Command::new("cat"),
            Some(b"through".to_vec()),
            &[],
            Duration::from_secs(60),
        );
        assert!(out.status.success());
        assert_eq!(out.stdout, b"through");

        // A shell whose child sleeps: both are described, and the shell is
        // killed (its pid gone once the guard has failed).
        let mut command = Command::new("sh");
        command.args(["-c", "echo started >&2; sleep 600; true"]);
        let hung = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            output_within(&mut command, None, &[], Duration::from_millis(500))
        }));
        let message = match hung {
            Ok(out) => panic!("a sleeping command ended: {out:?}"),
            Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
        };
        assert!(message.contains("did not end within 500ms"), "{message}");
        assert!(message.contains("its stderr: started"), "{message}");
        assert!(
            message.contains("sleep 600"),
            "the child is described: {message}"
        );
        assert!(message.contains("--- thread"), "{message}");
    }
}
