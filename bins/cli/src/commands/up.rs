//! `berth up` and `berth down`: berth's four daemons (and, with `--cri`,
//! berth-crid) as background processes, for a machine without systemd (see berth-client's `local`
//! module for where everything goes).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use berth_client::local::{self, Daemon, DownState, Layout, UpOptions, UpState};

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Keep the stores, state, sockets and logs under DIR instead of
    /// /var/lib/berth, /run/berth and /var/log/berth.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Where the berth-* daemons are [default: beside this berth, else on
    /// PATH].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Seconds each daemon may take to answer.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    timeout: u64,
    /// `--log-level` for every daemon (error, warn, info, debug, trace).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Start berth-crid too, Kubernetes' CRI on the other daemons (its
    /// socket: RUN_DIR/cri.sock, printed as CONTAINER_RUNTIME_ENDPOINT for
    /// crictl; its settings: its defaults).
    #[arg(long)]
    cri: bool,
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    /// The root given to `berth up`.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Stop every container first (kill and delete its task); without it
    /// they keep running and the next `berth up` finds them again.
    #[arg(long)]
    all: bool,
    /// Seconds each daemon may take to stop before it is killed.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    timeout: u64,
}

/// An absolute root (the printed environment must work from any directory).
fn layout(root: Option<PathBuf>, create: bool) -> Result<Layout> {
    let Some(root) = root else {
        return Ok(Layout::new(None));
    };
    if create {
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    }
    let root = root
        .canonicalize()
        .with_context(|| format!("the root {}", root.display()))?;
    Ok(Layout::new(Some(root)))
}

pub(crate) fn binaries_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir);
    }
    let first = Daemon::ALL[0].binary();
    find_executable(&first)
        .and_then(|path| path.parent().map(Path::to_path_buf))
        .with_context(|| format!("{first} is neither beside berth nor on PATH (--bin-dir DIR)"))
}

/// One of berth's executables: beside this berth (as installed together),
/// else on PATH.
pub(crate) fn find_executable(name: &str) -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .filter(|path| path.is_file())
        .or_else(|| on_path(name))
}

/// `name` in the first directory of PATH that has it.
pub(crate) fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}

/// Single-quoted for a POSIX shell.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

pub async fn up(args: UpArgs) -> Result<()> {
    if let Some(level) = &args.log_level {
        if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
            bail!("--log-level {level:?}: one of error, warn, info, debug, trace");
        }
    }
    let layout = layout(args.root, true)?;
    let options = UpOptions {
        binaries: binaries_dir(args.bin_dir)?,
        ready_timeout: Duration::from_secs(args.timeout),
        log_level: args.log_level,
        cri: args.cri,
    };
    let states = local::up(&layout, &options).await?;
    for (daemon, state) in &states {
        let what = match state {
            UpState::Started { pid } => format!("started (pid {pid})"),
            UpState::Running { pid } => format!("already running (pid {pid})"),
            UpState::ServedElsewhere => "served by a process berth up did not start".to_string(),
        };
        eprintln!(
            "{:<15} {what:<28} {}  log {}",
            daemon.binary(),
            layout.socket(*daemon).display(),
            layout.log_file(*daemon).display()
        );
    }
    // For `eval "$(berth up --root DIR)"`: the CLI finds these daemons.
    println!(
        "BERTH_RUN_DIR={}; export BERTH_RUN_DIR;",
        shell_quote(&layout.run_dir())
    );
    if args.cri {
        // crictl's own variable.
        let endpoint = format!("unix://{}", layout.socket(Daemon::Crid).display());
        println!(
            "CONTAINER_RUNTIME_ENDPOINT={}; export CONTAINER_RUNTIME_ENDPOINT;",
            shell_quote(Path::new(&endpoint))
        );
    }
    if let Some(logs) = layout.container_log_dir() {
        println!(
            "BERTH_LOG_DIR={}; export BERTH_LOG_DIR;",
            shell_quote(&logs)
        );
    }
    Ok(())
}

pub async fn down(args: DownArgs) -> Result<()> {
    let layout = layout(args.root, false)?;
    let (containers, states) =
        local::down(&layout, args.all, Duration::from_secs(args.timeout)).await?;
    if args.all {
        eprintln!("stopped {containers} container(s)");
    }
    for (daemon, state) in states {
        let what = match state {
            DownState::Stopped { pid } => format!("stopped (pid {pid})"),
            DownState::Killed { pid } => format!("killed after {} s (pid {pid})", args.timeout),
            DownState::NotRunning => "not running".to_string(),
        };
        eprintln!("{:<15} {what}", daemon.binary());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_for_the_shell() {
        assert_eq!(shell_quote(Path::new("/a b/run")), "'/a b/run'");
        assert_eq!(shell_quote(Path::new("/it's")), r"'/it'\''s'");
    }
}
