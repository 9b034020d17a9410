//! The `start` action: bind the shim's socket, write the `address` file,
//! launch the long-lived server on the socket, and report the address the
//! way the calling containerd understands.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use crate::cgroups::Hierarchies;
use crate::error::{Result, ShimError};
use crate::flags::{Action, Flags};
use crate::layout;
use crate::options::StartInput;

/// The bundle: `-bundle` if given, else the working directory containerd
/// started us in.
pub fn bundle_dir(flags: &Flags) -> Result<PathBuf> {
    if !flags.bundle.is_empty() {
        return Ok(PathBuf::from(&flags.bundle));
    }
    std::env::current_dir().map_err(|e| ShimError::io("reading the working directory", e))
}

/// Binds a filesystem socket with mode 0600 in a directory of mode 0700.
/// A stale socket file (nobody listening) is replaced; one that is
/// listened on never is: None then (another shim bound it first, e.g. for
/// a container of the same pod started at the same moment). The binding
/// is done holding a lock on the directory: a socket another start has
/// bound but not yet listened on would otherwise look stale, and be
/// replaced under it.
pub fn bind_socket(path: &Path) -> Result<Option<UnixListener>> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| ShimError::io(format!("creating {}", dir.display()), e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| ShimError::io(format!("setting the mode of {}", dir.display()), e))?;
    // Released when the file closes, at the end of this call.
    let _locked = lock_dir(dir)?;
    let listener = match UnixListener::bind(path) {
        Ok(listener) => listener,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if someone_listens(path) {
                return Ok(None);
            }
            let _ = std::fs::remove_file(path);
            UnixListener::bind(path)
                .map_err(|e| ShimError::io(format!("binding {}", path.display()), e))?
        }
        Err(e) => return Err(ShimError::io(format!("binding {}", path.display()), e)),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ShimError::io(format!("setting the mode of {}", path.display()), e))?;
    Ok(Some(listener))
}

/// Whether a process listens on the socket at `path`, asked without
/// blocking (the directory lock is held: a shim whose backlog is full must
/// not stall every start behind it). A full backlog means someone listens.
fn someone_listens(path: &Path) -> bool {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let Ok(address) = UnixAddr::new(path) else {
        return false;
    };
    let Ok(probe) = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return false;
    };
    match connect(probe.as_raw_fd(), &address) {
        Ok(()) => true,
        Err(nix::errno::Errno::EAGAIN) => true,
        Err(_) => false,
    }
}

/// An exclusive flock on `dir`, held while the returned file is open.
fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    let file = std::fs::File::open(dir)
        .map_err(|e| ShimError::io(format!("opening {}", dir.display()), e))?;
    loop {
        // SAFETY: flock on a descriptor `file` owns and keeps open.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(file);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(ShimError::io(format!("locking {}", dir.display()), e));
        }
    }
}

/// Writes `<bundle>/address` atomically, without a trailing newline.
pub fn write_address(bundle: &Path, address: &str) -> Result<()> {
    let temp = bundle.join(".address");
    std::fs::write(&temp, address)
        .map_err(|e| ShimError::io(format!("writing {}", temp.display()), e))?;
    std::fs::rename(&temp, bundle.join("address"))
        .map_err(|e| ShimError::io("renaming the address file", e))
}

/// Runs the action; returns what to print on stdout. `stdin` is what
/// containerd wrote there: the runtime options, bare or (2.3+) inside its
/// bootstrap parameters.
pub fn run(flags: &Flags, stdin: &[u8]) -> Result<String> {
    let input = StartInput::parse(stdin, &flags.id, &flags.namespace)?;
    let version = bootstrap_version(
        std::env::var("MAX_SHIM_VERSION").ok().as_deref(),
        input.containerd_version.is_some(),
    );
    let bundle = bundle_dir(flags)?;
    let group = shim_group(&bundle).unwrap_or_else(|| flags.id.clone());
    let socket = layout::socket_path(&bundle, &flags.address, &flags.namespace, &group);
    let address = layout::address_of(&socket);

    let served = |bundle: &Path| -> Result<String> {
        // A shim for this container (or its group) already serves there.
        write_address(bundle, &address)?;
        Ok(reply(&address, version))
    };
    if socket.exists() && someone_listens(&socket) {
        return served(&bundle);
    }
    let Some(listener) = bind_socket(&socket)? else {
        // Another start of this group bound it since the check above.
        return served(&bundle);
    };
    if let Err(e) = write_address(&bundle, &address) {
        let _ = std::fs::remove_file(&socket);
        return Err(e);
    }
    let child = match spawn_server(flags, &bundle, &listener) {
        Ok(child) => child,
        Err(e) => {
            let _ = std::fs::remove_file(&socket);
            return Err(e);
        }
    };
    drop(listener);
    if !input.options.shim_cgroup.is_empty() {
        // As the Go shim: a shim that cannot join the cgroup it was given
        // is not left running outside it.
        if let Err(e) = move_to_cgroup(child, &input.options.shim_cgroup) {
            kill_server(child);
            let _ = std::fs::remove_file(&socket);
            return Err(e);
        }
    }
    adjust_oom_score(child);
    Ok(reply(&address, version))
}

/// Set to `1` in `start`'s environment (berth-taskd does), `start` forks
/// its server instead of executing the shim again: a container's task is
/// made about 2 ms sooner (and with 3 ms less CPU), and each idle shim
/// keeps 8-12 KiB more memory, what `start` used. Unset (as containerd
/// runs shims), the server is executed: the smallest idle shim.
pub const FORK_SERVER_ENV: &str = "BERTH_SHIM_FORK_SERVER";

/// Starts the server with the socket as fd 3: forked or executed, see
/// [`FORK_SERVER_ENV`].
fn spawn_server(flags: &Flags, bundle: &Path, listener: &UnixListener) -> Result<u32> {
    if std::env::var_os(FORK_SERVER_ENV).is_some_and(|value| value == "1") {
        fork_server(flags, bundle, listener)
    } else {
        exec_server(flags, bundle, listener)
    }
}

/// Executes the shim again as the server.
fn exec_server(flags: &Flags, bundle: &Path, listener: &UnixListener) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe().map_err(|e| ShimError::io("finding our binary", e))?;
    let mut cmd = Command::new(exe);
    cmd.args(server_args(flags))
        .current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let fd = listener.as_raw_fd();
    // SAFETY: runs in the forked child before exec; dup2 is
    // async-signal-safe and `fd` stays open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec set.
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| ShimError::io("starting the shim server", e))?;
    Ok(child.id())
}

/// Starts the server: this process, forked. `start` is single-threaded
/// (no runtime, no thread made), so the child may go on as the server
/// without an exec, which would start the program over: a few hundred
/// page faults, and the C library's start-up, whose CPUID instructions
/// each trap to the hypervisor in a VM (docs/benchmarks.md).
fn fork_server(flags: &Flags, bundle: &Path, listener: &UnixListener) -> Result<u32> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| ShimError::io("opening /dev/null", e))?;
    let server = Flags {
        action: Action::Serve,
        bundle: String::new(),
        socket: String::new(),
        ..flags.clone()
    };
    let mut argv = vec![std::env::args()
        .next()
        .unwrap_or_else(|| "containerd-shim-berth-v2".to_string())];
    argv.extend(server_args(&server));
    // SAFETY: no other thread exists in this process (see above), so the
    // child's copy of it is whole: nothing it uses is held mid-update.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            u32::try_from(child.as_raw()).map_err(|_| {
                ShimError::io(
                    "forking the shim server",
                    std::io::Error::other(format!("pid {child}")),
                )
            })
        }
        Ok(nix::unistd::ForkResult::Child) => {
            // SAFETY: the child never returns from here, so the parent's
            // `listener` (this process's copy of it) is never dropped: the
            // descriptor has this one owner.
            let listener = unsafe { OwnedFd::from_raw_fd(listener.as_raw_fd()) };
            let status = match serve_in_child(&server, bundle, listener, null, &argv) {
                Ok(()) => 0,
                Err(e) => {
                    crate::log_warn!("the shim server failed: {e}");
                    1
                }
            };
            std::process::exit(status)
        }
        Err(e) => Err(ShimError::sys("forking the shim server", e)),
    }
}

/// What the forked child does to become the server the Go shim would exec:
/// a process group of its own, the bundle as its directory, /dev/null for
/// stdio (the caller reads `start`'s output to its end: the server must
/// not hold it open), and the server's command line.
fn serve_in_child(
    flags: &Flags,
    bundle: &Path,
    listener: OwnedFd,
    null: std::fs::File,
    argv: &[String],
) -> Result<()> {
    use nix::unistd::{chdir, dup2_stderr, dup2_stdin, dup2_stdout, setpgid, Pid};
    setpgid(Pid::from_raw(0), Pid::from_raw(0))
        .map_err(|e| ShimError::sys("making the server's process group", e))?;
    chdir(bundle).map_err(|e| ShimError::sys(format!("entering {}", bundle.display()), e))?;
    dup2_stdin(&null)
        .and_then(|()| dup2_stdout(&null))
        .and_then(|()| dup2_stderr(&null))
        .map_err(|e| ShimError::sys("redirecting stdio to /dev/null", e))?;
    drop(null);
    show_command_line(argv);
    // What `start` freed goes back to the kernel rather than stay resident
    // in the server for its life.
    // SAFETY: malloc_trim only returns free heap memory; this thread is
    // the only one.
    unsafe { libc::malloc_trim(0) };
    crate::serve::run(flags, Some(UnixListener::from(listener)))
}

/// The server's arguments, executed or forked: the flags it serves with,
/// no action word.
fn server_args(flags: &Flags) -> Vec<String> {
    let mut argv = vec![
        "-namespace".to_string(),
        flags.namespace.clone(),
        "-id".to_string(),
        flags.id.clone(),
        "-address".to_string(),
        flags.address.clone(),
    ];
    if !flags.publish_binary.is_empty() {
        argv.push("-publish-binary".to_string());
        argv.push(flags.publish_binary.clone());
    }
    if flags.debug {
        argv.push("-debug".to_string());
    }
    argv
}

/// Rewrites this process's command line (what `ps` and /proc/PID/cmdline
/// show) to `argv`, as setproctitle does: the kernel shows the memory the
/// arguments were passed in, so the new words go there, the rest zeroed.
/// Left as it was if they do not fit (they always do: the server's words
/// are some of `start`'s).
fn show_command_line(argv: &[String]) {
    let Some((start, end)) = argument_area() else {
        return;
    };
    let mut words: Vec<u8> = Vec::new();
    for arg in argv {
        words.extend_from_slice(arg.as_bytes());
        words.push(0);
    }
    let Some(len) = end.checked_sub(start) else {
        return;
    };
    if words.len() > len {
        return;
    }
    // SAFETY: [start, end) is this process's argument area as the kernel
    // reports it: memory at the top of the main thread's stack, mapped
    // read-write for the process's life. Nothing reads it meanwhile (the
    // flags were parsed from it before; only this thread exists).
    let area = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, len) };
    area[..words.len()].copy_from_slice(&words);
    area[words.len()..].fill(0);
}

/// Where this process's arguments are: fields 48 and 49 (`arg_start`,
/// `arg_end`) of /proc/self/stat, counted after the command name, which
/// may hold spaces and parentheses.
fn argument_area() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // `after_name` starts at field 3 (the state).
    let start = fields.get(48 - 3)?.parse().ok()?;
    let end = fields.get(49 - 3)?.parse().ok()?;
    Some((start, end))
}

/// The annotations that put containers in one shim, as containerd's Go
/// shim reads them: an explicit group, else the pod's sandbox id (the CRI
/// plugin annotates every container of a pod, the sandbox included, with
/// it). Containers of one group share a socket and so one shim.
const GROUP_ANNOTATIONS: [&str; 2] = [
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
];

/// The group the bundle's container belongs to, if its spec names one.
fn shim_group(bundle: &Path) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Spec {
        #[serde(default)]
        annotations: Option<std::collections::HashMap<String, String>>,
    }
    let text = std::fs::read(bundle.join("config.json")).ok()?;
    let annotations = serde_json::from_slice::<Spec>(&text).ok()?.annotations?;
    GROUP_ANNOTATIONS
        .iter()
        .find_map(|key| annotations.get(*key))
        .filter(|group| berth_ids::validate_id(group).is_ok())
        .cloned()
}

/// The bootstrap a caller understands: 3 (JSON, task API v3) when it
/// says it takes version 3 (`MAX_SHIM_VERSION`; berth-taskd does) or sent
/// containerd 2.3's bootstrap parameters; 2 (JSON, task API v2) for
/// containerd 1.7–2.2, which set `MAX_SHIM_VERSION=2`; otherwise 1, the
/// plain address containerd 1.6 needs (it dials anything without
/// `unix://` as an abstract socket and knows no JSON).
fn bootstrap_version(max_shim_version: Option<&str>, bootstrap_params: bool) -> u32 {
    let max: u32 = max_shim_version.and_then(|v| v.parse().ok()).unwrap_or(0);
    if bootstrap_params || max >= 3 {
        3
    } else if max >= 2 {
        2
    } else {
        1
    }
}

fn reply(address: &str, version: u32) -> String {
    #[derive(serde::Serialize)]
    struct Bootstrap<'a> {
        version: u32,
        address: &'a str,
        protocol: &'a str,
    }
    if version >= 2 {
        let reply = Bootstrap {
            version,
            address,
            protocol: "ttrpc",
        };
        serde_json::to_string(&reply).unwrap_or_else(|_| address.to_string())
    } else {
        address.to_string()
    }
}

/// Moves the server into `cgroup` in every hierarchy that has it (the
/// unified one on a cgroup v2 host, the legacy ones otherwise, found
/// from the mount table). A cgroup no hierarchy has is an error.
fn move_to_cgroup(pid: u32, cgroup: &str) -> Result<()> {
    if !cgroup.starts_with('/') || cgroup.split('/').any(|part| part == "..") {
        return Err(ShimError::InvalidArgument(format!(
            "shim cgroup {cgroup:?} is not an absolute cgroup path"
        )));
    }
    let dirs: Vec<PathBuf> = Hierarchies::of_this_host()?
        .dirs(cgroup)
        .into_iter()
        .filter(|dir| dir.is_dir())
        .collect();
    if dirs.is_empty() {
        return Err(ShimError::NotFound(format!(
            "shim cgroup {cgroup} does not exist"
        )));
    }
    for dir in dirs {
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .map_err(|e| ShimError::io(format!("moving the shim into {}", procs.display()), e))?;
    }
    Ok(())
}

fn kill_server(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The server is a little more killable than containerd, like the Go shim.
fn adjust_oom_score(pid: u32) {
    let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let score = (own + 1).min(1000);
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/oom_score_adj"))
    {
        let _ = file.write_all(score.to_string().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CVE-2020-15257: the shim's socket was abstract in containerd, open
    /// to any root process in the host's network namespace. Here it is a
    /// file, 0600 in a 0700 directory.
    #[test]
    fn socket_is_0600_in_a_0700_dir_and_replaces_stale_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s").join("sock");
        let first = bind_socket(&path).unwrap().unwrap();
        // A live one is never replaced: its shim serves there.
        assert!(bind_socket(&path).unwrap().is_none());
        drop(first);
        // The file is left behind with nobody listening: stale.
        let listener = bind_socket(&path).unwrap().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        drop(listener);
    }

    /// Starts of one group at the same moment (two containers of a pod
    /// started at once): exactly one binds the socket, whatever the
    /// interleaving. Without the directory lock, a start that came
    /// between another's bind and listen took the path as stale, replaced
    /// it, and two shims served the group (the first unreachable).
    #[test]
    fn concurrent_binds_of_one_socket_make_one_listener() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..300 {
            let path = dir.path().join("s").join(format!("sock{round}"));
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
            let binders: Vec<_> = (0..4)
                .map(|_| {
                    let (path, barrier) = (path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        bind_socket(&path).unwrap()
                    })
                })
                .collect();
            let bound: Vec<UnixListener> = binders
                .into_iter()
                .filter_map(|b| b.join().unwrap())
                .collect();
            assert_eq!(bound.len(), 1, "round {round}: {} listeners", bound.len());
        }
    }

    #[test]
    fn address_file_has_no_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        write_address(dir.path(), "unix:///run/x/s/abc").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("address")).unwrap(),
            "unix:///run/x/s/abc"
        );
        assert!(!dir.path().join(".address").exists());
    }

    #[test]
    fn the_bootstrap_is_what_the_caller_understands() {
        // containerd 1.6 sets no MAX_SHIM_VERSION and needs the bare address.
        assert_eq!(bootstrap_version(None, false), 1);
        assert_eq!(reply("unix:///s/a", 1), "unix:///s/a");
        // 1.7 to 2.2 set 2.
        assert_eq!(bootstrap_version(Some("2"), false), 2);
        let v2: serde_json::Value = serde_json::from_str(&reply("unix:///s/a", 2)).unwrap();
        assert_eq!(
            v2,
            serde_json::json!({"version": 2, "address": "unix:///s/a", "protocol": "ttrpc"})
        );
        // berth-taskd sets 3; containerd 2.3 sends bootstrap parameters.
        assert_eq!(bootstrap_version(Some("3"), false), 3);
        assert_eq!(bootstrap_version(Some("2"), true), 3);
        assert_eq!(bootstrap_version(Some("junk"), false), 1);
        let v3: serde_json::Value = serde_json::from_str(&reply("unix:///s/a", 3)).unwrap();
        assert_eq!(v3["version"], 3);
    }

    #[test]
    fn a_shim_cgroup_must_be_an_absolute_path_that_exists() {
        for bad in ["shims", "/a/../../etc", ""] {
            assert!(matches!(
                move_to_cgroup(1, bad),
                Err(ShimError::InvalidArgument(_))
            ));
        }
        assert!(matches!(
            move_to_cgroup(1, "/berth-test-no-such-cgroup-anywhere"),
            Err(ShimError::NotFound(_))
        ));
    }
}
