//! `berth check`: what this host has and lacks for berth, one line per
//! item with how to fix what is missing.

use std::path::{Path, PathBuf};

use anyhow::Result;
use berth_client::local::{probe, Daemon};

use super::up::{find_executable, on_path};
use crate::global::Global;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Where the daemons keep their stores (for the free-space check).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/berth")]
    root: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    Warn,
    Fail,
}

struct Line {
    verdict: Verdict,
    what: String,
    detail: String,
}

fn line(verdict: Verdict, what: impl Into<String>, detail: impl Into<String>) -> Line {
    Line {
        verdict,
        what: what.into(),
        detail: detail.into(),
    }
}

/// Runs every check, prints them; fails (exit 1) if any failed.
pub async fn run(global: &Global, args: CheckArgs) -> Result<u8> {
    let mut lines = vec![kernel(), overlay(), cgroups(), clock()];
    lines.extend(runtimes());
    lines.push(disk(&args.root));
    for (daemon, socket) in [
        (Daemon::Contentd, global.contentd_socket()),
        (Daemon::Snapd, global.snapd_socket()),
        (Daemon::Metad, global.metad_socket()),
        (Daemon::Taskd, global.taskd_socket()),
    ] {
        let what = daemon.binary();
        lines.push(match probe(daemon, socket).await {
            Ok(()) => line(Verdict::Ok, what, format!("answers on {}", socket.display())),
            Err(e) => line(
                Verdict::Fail,
                what,
                format!(
                    "does not answer on {} ({}): start it with `berth up` or `systemctl start berth.target`",
                    socket.display(),
                    e.message()
                ),
            ),
        });
    }
    for l in &lines {
        let verdict = match l.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        println!("{verdict}  {:<16} {}", l.what, l.detail);
    }
    Ok(u8::from(lines.iter().any(|l| l.verdict == Verdict::Fail)))
}

fn kernel_release() -> Option<(u32, u32, String)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let release = release.trim().to_string();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor, release))
}

fn kernel() -> Line {
    match kernel_release() {
        Some((major, minor, release)) if (major, minor) >= (5, 4) => {
            line(Verdict::Ok, "kernel", release)
        }
        Some((_, _, release)) => line(
            Verdict::Warn,
            "kernel",
            format!("{release}: older than 5.4, which berth is tested against"),
        ),
        None => line(
            Verdict::Warn,
            "kernel",
            "cannot read /proc/sys/kernel/osrelease",
        ),
    }
}

fn overlay() -> Line {
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        return line(
            Verdict::Fail,
            "overlayfs",
            "not available: `modprobe overlay` (or use --snapshotter native)",
        );
    }
    // lowerdir+ (one layer per mount option, so no page-size limit on the
    // number of layers) came with Linux 6.8.
    match kernel_release() {
        Some((major, minor, _)) if (major, minor) >= (6, 8) => {
            line(Verdict::Ok, "overlayfs", "available, with lowerdir+")
        }
        _ => line(
            Verdict::Ok,
            "overlayfs",
            "available (without lowerdir+, before Linux 6.8: layers limited by one page of mount options)",
        ),
    }
}

/// The cgroup setup, from what /sys/fs/cgroup is.
#[derive(Debug, PartialEq, Eq)]
enum CgroupMode {
    Unified,
    Hybrid,
    Legacy,
    Unknown,
}

fn cgroup_mode(root_fs_type: Option<&str>, unified_beside: bool) -> CgroupMode {
    match root_fs_type {
        Some("cgroup2") => CgroupMode::Unified,
        Some("tmpfs") if unified_beside => CgroupMode::Hybrid,
        Some("tmpfs") => CgroupMode::Legacy,
        _ => CgroupMode::Unknown,
    }
}

/// The type of the filesystem mounted exactly at `path`, from
/// /proc/self/mounts.
fn mount_type(path: &str) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 2 && f[1] == path).then(|| f[2].to_string())
        })
        .next_back()
}

fn cgroups() -> Line {
    let mode = cgroup_mode(
        mount_type("/sys/fs/cgroup").as_deref(),
        mount_type("/sys/fs/cgroup/unified").as_deref() == Some("cgroup2"),
    );
    let wanted = ["cpu", "memory", "pids"];
    match mode {
        CgroupMode::Unified => {
            let controllers =
                std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
            let missing: Vec<&str> = wanted
                .iter()
                .copied()
                .filter(|c| !controllers.split_whitespace().any(|have| have == *c))
                .collect();
            if missing.is_empty() {
                line(
                    Verdict::Ok,
                    "cgroups",
                    format!("v2 (unified): {}", controllers.trim()),
                )
            } else {
                line(
                    Verdict::Warn,
                    "cgroups",
                    format!(
                        "v2 (unified) without {}: --memory, --cpus and --pids-limit need them",
                        missing.join(", ")
                    ),
                )
            }
        }
        CgroupMode::Hybrid | CgroupMode::Legacy => {
            let missing: Vec<&str> = wanted
                .iter()
                .copied()
                .filter(|c| mount_type(&format!("/sys/fs/cgroup/{c}")).as_deref() != Some("cgroup"))
                .collect();
            let which = if mode == CgroupMode::Hybrid {
                "v1 controllers with v2 beside (hybrid; crun refuses this, runc works)"
            } else {
                "v1"
            };
            if missing.is_empty() {
                line(Verdict::Ok, "cgroups", which)
            } else {
                line(
                    Verdict::Warn,
                    "cgroups",
                    format!("{which}, without {} mounted", missing.join(", ")),
                )
            }
        }
        CgroupMode::Unknown => line(
            Verdict::Fail,
            "cgroups",
            "nothing recognisable at /sys/fs/cgroup: mount cgroup2 there",
        ),
    }
}

fn version_of(tool: &Path) -> String {
    std::process::Command::new(tool)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "version unknown".to_string())
}

fn runtimes() -> Vec<Line> {
    let runc = match on_path("runc") {
        Some(path) => line(
            Verdict::Ok,
            "runc",
            format!("{} ({})", path.display(), version_of(&path)),
        ),
        None => line(
            Verdict::Fail,
            "runc",
            "not on PATH: `apt-get install runc` (containers run through it)",
        ),
    };
    let shim = match find_executable("containerd-shim-berth-v2") {
        Some(path) => line(Verdict::Ok, "shim", path.display().to_string()),
        None => line(
            Verdict::Warn,
            "shim",
            "containerd-shim-berth-v2 is neither beside berth nor on PATH: install it where berth-taskd is",
        ),
    };
    vec![runc, shim]
}

fn disk(root: &Path) -> Line {
    // The nearest existing directory: the store may not exist yet.
    let mut dir = root.to_path_buf();
    while !dir.exists() {
        if !dir.pop() {
            break;
        }
    }
    match nix::sys::statvfs::statvfs(&dir) {
        Ok(stat) => {
            let free = stat.blocks_available().saturating_mul(stat.fragment_size());
            let gib = free as f64 / f64::from(1 << 30);
            let detail = format!("{gib:.1} GiB free at {}", dir.display());
            if free < 2 << 30 {
                line(
                    Verdict::Warn,
                    "disk",
                    format!("{detail}: images and containers need more"),
                )
            } else {
                line(Verdict::Ok, "disk", detail)
            }
        }
        Err(e) => line(
            Verdict::Warn,
            "disk",
            format!("cannot read {}: {e}", dir.display()),
        ),
    }
}

fn clock() -> Line {
    // modes 0: read only.
    let mut timex = zeroed_timex();
    // SAFETY: adjtimex with modes 0 only reads the kernel's clock state
    // into the struct we own.
    let state = unsafe { libc::adjtimex(&mut timex) };
    if state == libc::TIME_ERROR || timex.status & libc::STA_UNSYNC != 0 {
        line(
            Verdict::Warn,
            "clock",
            "not synchronised: registries' TLS certificates and lease expiry need a correct clock (enable NTP, e.g. systemd-timesyncd)",
        )
    } else if state < 0 {
        line(Verdict::Warn, "clock", "cannot read the clock's state")
    } else {
        line(Verdict::Ok, "clock", "synchronised")
    }
}

fn zeroed_timex() -> libc::timex {
    // SAFETY: timex is a plain C struct of integers (and padding), for
    // which all zeroes is a valid value.
    unsafe { std::mem::zeroed() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_modes_are_told_apart_by_what_is_mounted() {
        assert_eq!(cgroup_mode(Some("cgroup2"), false), CgroupMode::Unified);
        assert_eq!(cgroup_mode(Some("tmpfs"), true), CgroupMode::Hybrid);
        assert_eq!(cgroup_mode(Some("tmpfs"), false), CgroupMode::Legacy);
        assert_eq!(cgroup_mode(None, false), CgroupMode::Unknown);
        assert_eq!(cgroup_mode(Some("ext4"), true), CgroupMode::Unknown);
    }

    #[test]
    fn this_host_has_a_kernel_release_and_a_mounted_root() {
        assert!(kernel_release().is_some());
        assert!(mount_type("/").is_some());
    }
}
