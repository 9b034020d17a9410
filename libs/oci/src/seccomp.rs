//! berth's default seccomp profile: an allow list equivalent to
//! containerd's (`contrib/seccomp`), generated from tables and adjusted to
//! the container's capabilities; and caller-supplied profiles.
//!
//! Every syscall not listed fails with `EPERM`. The list follows
//! containerd 2.x: `io_uring_*` are not allowed (they bypass seccomp);
//! `ptrace`, `process_vm_readv` and `process_vm_writev` are, since the
//! kernels berth runs on (openat2 needs 5.6) are past 4.8, where ptrace
//! could no longer be used to escape a seccomp filter. `socket` is allowed
//! for every address family but `AF_ALG` and `AF_VSOCK`. The filter
//! covers the native architecture and the compat ABIs the running kernel
//! has ([`crate::syscall_abis`]).

use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg,
    LinuxSeccompArgBuilder, LinuxSeccompOperator, LinuxSyscall,
};

use crate::capabilities;
use crate::error::{OciError, Result};
use crate::options::Seccomp;
use crate::syscall_abis::syscall_abis;

/// The largest profile [`Seccomp::parse_profile_json`] reads.
const MAX_PROFILE_BYTES: usize = 1 << 20;

/// Syscalls every container may make.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lsm_get_self_attr",
    "lsm_list_modules",
    "lsm_set_self_attr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "process_vm_readv",
    "process_vm_writev",
    "pselect6",
    "pselect6_time64",
    "ptrace",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Syscalls of this architecture only.
#[cfg(target_arch = "x86_64")]
const ARCH_ALLOWED: &[&str] = &["arch_prctl", "modify_ldt"];
#[cfg(target_arch = "aarch64")]
const ARCH_ALLOWED: &[&str] = &[
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "sync_file_range2",
    "breakpoint",
    "cacheflush",
    "set_tls",
];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCH_ALLOWED: &[&str] = &[];

/// The architectures the filter covers: the native one and the compat
/// ABIs the kernel runs (32-bit x86 and x32 beside x86_64, where built in;
/// [`syscall_abis`] says why the others are left out).
fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        let abis = syscall_abis();
        let mut arches = vec![Arch::ScmpArchX86_64];
        if abis.ia32 {
            arches.push(Arch::ScmpArchX86);
        }
        if abis.x32 {
            arches.push(Arch::ScmpArchX32);
        }
        arches
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        Vec::new()
    }
}

/// Syscalls a capability brings.
const BY_CAPABILITY: &[(Capability, &[&str])] = &[
    (Capability::DacReadSearch, &["open_by_handle_at"]),
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (
        Capability::SysModule,
        &["delete_module", "init_module", "finit_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (
        Capability::SysTime,
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (
        Capability::SysNice,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
];

/// `personality(2)` values allowed: `PER_LINUX`, `PER_LINUX32`,
/// `UNAME26`, `PER_LINUX32|UNAME26` and the query `0xffffffff`.
const PERSONALITIES: &[u64] = &[0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];

/// The clone flags that make namespaces.
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// The argument of `clone(2)` holding the flags (the second on s390).
const CLONE_FLAGS_ARG: usize = if cfg!(target_arch = "s390x") { 1 } else { 0 };

/// The default profile for containerd's default capability set.
pub fn default_seccomp() -> LinuxSeccomp {
    profile_for(&capabilities::defaults())
}

/// The default profile for a container with these (bounding) capabilities.
pub(crate) fn profile_for(caps: &Capabilities) -> LinuxSeccomp {
    let mut allowed: Vec<&str> = ALLOWED.iter().chain(ARCH_ALLOWED).copied().collect();
    let mut syscalls = Vec::new();
    let mut by_capability: Vec<&str> = Vec::new();
    for (cap, names) in BY_CAPABILITY {
        if caps.contains(cap) {
            for name in *names {
                if !allowed.contains(name) && !by_capability.contains(name) {
                    by_capability.push(name);
                }
            }
        }
    }
    allowed.extend(by_capability);
    syscalls.push(rule(&allowed, LinuxSeccompAction::ScmpActAllow, None, None));

    // socket(2) for every family but AF_ALG (38) and AF_VSOCK (40): three
    // single-condition rules, as libseccomp ORs conditions on one argument
    // index.
    let (alg, vsock) = (libc::AF_ALG as u64, libc::AF_VSOCK as u64);
    for (value, op) in [
        (alg, LinuxSeccompOperator::ScmpCmpLt),
        (alg + 1, LinuxSeccompOperator::ScmpCmpEq),
        (vsock, LinuxSeccompOperator::ScmpCmpGt),
    ] {
        syscalls.extend(allow_if("socket", 0, value, op));
    }
    for persona in PERSONALITIES {
        syscalls.extend(allow_if(
            "personality",
            0,
            *persona,
            LinuxSeccompOperator::ScmpCmpEq,
        ));
    }
    if !caps.contains(&Capability::SysAdmin) {
        // clone(2) without namespace flags; clone3(2) hides its flags in a
        // struct seccomp cannot read, so it fails with ENOSYS and libc
        // falls back to clone(2).
        syscalls.extend(allow_if(
            "clone",
            CLONE_FLAGS_ARG,
            NAMESPACE_FLAGS,
            LinuxSeccompOperator::ScmpCmpMaskedEq,
        ));
        syscalls.push(rule(
            &["clone3"],
            LinuxSeccompAction::ScmpActErrno,
            Some(libc::ENOSYS as u32),
            None,
        ));
    }

    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(LinuxSeccompAction::ScmpActErrno);
    profile.set_default_errno_ret(Some(libc::EPERM as u32));
    let arches = architectures();
    profile.set_architectures(if arches.is_empty() {
        None
    } else {
        Some(arches)
    });
    profile.set_syscalls(Some(syscalls));
    profile
}

fn rule(
    names: &[&str],
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    args: Option<Vec<LinuxSeccompArg>>,
) -> LinuxSyscall {
    let mut r = LinuxSyscall::default();
    r.set_names(names.iter().map(|n| n.to_string()).collect());
    r.set_action(action);
    r.set_errno_ret(errno_ret);
    r.set_args(args);
    r
}

/// Allows `name` when argument `index` compares to `value` by `op` (for
/// the masked comparison, `arg & value == 0`). The builder cannot fail
/// (every field has a default); were it to, the rule is left out and the
/// syscall stays denied.
fn allow_if(
    name: &str,
    index: usize,
    value: u64,
    op: LinuxSeccompOperator,
) -> Option<LinuxSyscall> {
    let arg = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .value_two(0u64)
        .op(op)
        .build()
        .ok()?;
    Some(rule(
        &[name],
        LinuxSeccompAction::ScmpActAllow,
        None,
        Some(vec![arg]),
    ))
}

impl Seccomp {
    /// Reads a profile in the OCI form (`defaultAction`, `architectures`,
    /// `syscalls` of `names`, `action`, `args`), which is also the form of
    /// docker's profiles without conditions: docker's `includes` and
    /// `excludes` (rules that depend on capabilities or kernel versions)
    /// are refused rather than applied unconditionally, and its `archMap`
    /// is ignored (the filter then covers the native architecture only).
    /// At most 1 MiB.
    pub fn parse_profile_json(bytes: &[u8]) -> Result<Seccomp> {
        if bytes.len() > MAX_PROFILE_BYTES {
            return Err(OciError::invalid(format!(
                "seccomp profile is larger than {MAX_PROFILE_BYTES} bytes"
            )));
        }
        let bad = |e: serde_json::Error| OciError::invalid(format!("seccomp profile: {e}"));
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(bad)?;
        if let Some(syscalls) = value.get("syscalls").and_then(|s| s.as_array()) {
            for syscall in syscalls {
                for key in ["includes", "excludes"] {
                    let conditional = match syscall.get(key) {
                        None | Some(serde_json::Value::Null) => false,
                        Some(serde_json::Value::Object(o)) => !o.is_empty(),
                        Some(_) => true,
                    };
                    if conditional {
                        return Err(OciError::invalid(format!(
                            "seccomp profile: conditional rules ({key}) are not supported"
                        )));
                    }
                }
            }
        }
        let profile: LinuxSeccomp = serde_json::from_value(value).map_err(bad)?;
        Ok(Seccomp::Profile(profile))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// How a profile treats a syscall.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) enum Verdict {
        Allowed,
        Conditional,
        Denied,
    }

    pub(crate) fn verdict(profile: &LinuxSeccomp, name: &str) -> Verdict {
        let mut conditional = false;
        for r in profile.syscalls().as_ref().unwrap() {
            if r.action() == LinuxSeccompAction::ScmpActAllow && r.names().iter().any(|n| n == name)
            {
                if r.args().as_ref().is_none_or(|a| a.is_empty()) {
                    return Verdict::Allowed;
                }
                conditional = true;
            }
        }
        if conditional {
            Verdict::Conditional
        } else {
            Verdict::Denied
        }
    }

    #[test]
    fn defaults_to_eperm() {
        let p = default_seccomp();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(1));
    }

    #[test]
    fn architectures_are_native_and_compat() {
        let arches = default_seccomp()
            .architectures()
            .clone()
            .unwrap_or_default();
        #[cfg(target_arch = "x86_64")]
        {
            let abis = syscall_abis();
            let expected: Vec<Arch> = [
                Some(Arch::ScmpArchX86_64),
                abis.ia32.then_some(Arch::ScmpArchX86),
                abis.x32.then_some(Arch::ScmpArchX32),
            ]
            .into_iter()
            .flatten()
            .collect();
            assert_eq!(arches, expected);
        }
        #[cfg(target_arch = "aarch64")]
        assert_eq!(arches, [Arch::ScmpArchAarch64, Arch::ScmpArchArm]);
        let _ = arches;
    }

    #[test]
    fn dangerous_syscalls_are_denied_by_default() {
        let p = default_seccomp();
        for name in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "keyctl",
            "add_key",
            "request_key",
            "reboot",
            "kexec_load",
            "kexec_file_load",
            "swapon",
            "swapoff",
            "init_module",
            "finit_module",
            "delete_module",
            "bpf",
            "perf_event_open",
            "open_by_handle_at",
            "acct",
            "settimeofday",
            "clock_settime",
            "iopl",
            "ioperm",
            "syslog",
            "userfaultfd",
            "io_uring_setup",
            "io_uring_enter",
            "pivot_root",
            "vhangup",
            "kcmp",
            "fsopen",
            "open_tree",
            "sethostname",
            "mbind",
            "lookup_dcookie",
            "quotactl",
            "nfsservctl",
        ] {
            assert_eq!(verdict(&p, name), Verdict::Denied, "{name}");
        }
    }

    #[test]
    fn everyday_syscalls_are_allowed() {
        let p = default_seccomp();
        for name in [
            "read",
            "write",
            "openat",
            "execve",
            "futex",
            "mmap",
            "exit_group",
            "ptrace",
        ] {
            assert_eq!(verdict(&p, name), Verdict::Allowed, "{name}");
        }
        // clone only without namespace flags; socket and personality for
        // some arguments.
        for name in ["clone", "socket", "personality"] {
            assert_eq!(verdict(&p, name), Verdict::Conditional, "{name}");
        }
        let clone = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .find(|r| r.names() == &["clone"])
            .unwrap();
        let a = clone.args().as_ref().unwrap()[0];
        assert_eq!(a.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(a.value(), 0x7e02_0000);
        assert_eq!(a.value_two(), Some(0));
        let clone3 = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .find(|r| r.names() == &["clone3"])
            .unwrap();
        assert_eq!(clone3.action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3.errno_ret(), Some(38));
    }

    #[test]
    fn capabilities_unlock_their_syscalls() {
        let mut caps = capabilities::defaults();
        caps.insert(Capability::SysAdmin);
        let p = profile_for(&caps);
        for name in ["mount", "unshare", "setns", "clone", "clone3", "bpf"] {
            assert_eq!(verdict(&p, name), Verdict::Allowed, "{name}");
        }
        // No leftover clone3 ENOSYS rule.
        assert!(!p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .any(|r| r.action() == LinuxSeccompAction::ScmpActErrno));
        assert_eq!(verdict(&p, "reboot"), Verdict::Denied);

        let mut caps = capabilities::defaults();
        caps.insert(Capability::SysBoot);
        caps.insert(Capability::SysTime);
        caps.remove(&Capability::SysChroot);
        let p = profile_for(&caps);
        assert_eq!(verdict(&p, "reboot"), Verdict::Allowed);
        assert_eq!(verdict(&p, "clock_settime"), Verdict::Allowed);
        assert_eq!(verdict(&p, "chroot"), Verdict::Denied);
        assert_eq!(verdict(&default_seccomp(), "chroot"), Verdict::Allowed);
    }

    #[test]
    fn no_syscall_is_listed_twice_even_with_every_capability() {
        let p = profile_for(&capabilities::all());
        let allow = &p.syscalls().as_ref().unwrap()[0];
        let mut names = allow.names().clone();
        let total = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), total);
    }

    #[test]
    fn parses_a_small_profile() {
        let json = br#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]}
            ]
        }"#;
        let Seccomp::Profile(p) = Seccomp::parse_profile_json(json).unwrap() else {
            panic!("not a profile");
        };
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(verdict(&p, "read"), Verdict::Allowed);
        assert_eq!(verdict(&p, "personality"), Verdict::Conditional);
        assert_eq!(verdict(&p, "mount"), Verdict::Denied);
        // A docker profile without conditions reads the same way.
        let docker = br#"{"defaultAction": "SCMP_ACT_ERRNO", "archMap": [],
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                          "includes": {}, "excludes": {}}]}"#;
        assert!(Seccomp::parse_profile_json(docker).is_ok());
    }

    #[test]
    fn refuses_garbage_conditions_and_huge_profiles() {
        for bad in [
            &b"not json"[..],
            b"{}",
            b"[]",
            br#"{"defaultAction": "SCMP_ACT_MAYBE"}"#,
            br#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"name": "read", "action": "SCMP_ACT_ALLOW"}]}"#,
            br#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["mount"],
                "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}}]}"#,
            br#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["mount"],
                "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]}}]}"#,
        ] {
            assert!(
                matches!(Seccomp::parse_profile_json(bad), Err(OciError::InvalidArgument(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut huge = br#"{"defaultAction": "SCMP_ACT_ALLOW", "x": ""#.to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_PROFILE_BYTES));
        huge.extend(br#""}"#);
        assert!(matches!(
            Seccomp::parse_profile_json(&huge),
            Err(OciError::InvalidArgument(m)) if m.contains("larger")
        ));
    }
}
