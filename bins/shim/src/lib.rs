//! `containerd-shim-berth-v2`: a containerd runtime v2 shim that runs a
//! container (or the containers of one pod) through runc (or any
//! runc-compatible runtime), usable by upstream containerd 1.6+ and by
//! berth-taskd.

pub mod cgroups;
pub mod container;
pub mod delete;
pub mod error;
pub mod events;
pub mod exits;
#[cfg(test)]
mod fake_runtime;
pub mod flags;
pub mod info;
pub mod layout;
pub mod log;
pub mod options;
pub mod process;
pub mod reaper;
pub mod runc;
pub mod runtime;
pub mod serve;
pub mod service;
pub mod signals;
pub mod start;
pub mod stdio;
pub mod tasks;

/// For a test whose body acts on the whole process (reaping any child,
/// moving the working directory): true in a process of the test's own,
/// where the body runs; otherwise runs this test binary again with only
/// the test `name` (its path under the crate) selected, asserts that it
/// passed there, and returns false.
#[cfg(test)]
pub(crate) fn in_a_process_of_its_own(name: &str) -> bool {
    const ALONE: &str = "BERTH_SHIM_TEST_ALONE";
    if std::env::var(ALONE).as_deref() == Ok(name) {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(ALONE, name)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("1 passed"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    false
}
