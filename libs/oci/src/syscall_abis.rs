//! Which of the native architecture's compat syscall ABIs this kernel
//! runs, so the default seccomp filter covers only those.
//!
//! A filter covers every architecture it lists, and libseccomp's compile
//! time (inside every `runc init`) grows faster than the number of
//! architectures: on x86_64 the 370-odd rules take about 1 ms of CPU for
//! x86_64 alone, 9 ms with 32-bit x86 added and 17 ms with x32 as well.
//! Most kernels are built without x32 (`CONFIG_X86_X32_ABI`), and some
//! without 32-bit x86 (`CONFIG_IA32_EMULATION`, or `ia32_emulation=0`).
//! Syscalls of an ABI the kernel lacks can never run: left out of the
//! filter, they meet its bad-architecture action (the thread is killed)
//! instead of failing with `ENOSYS` in the kernel. Nothing that could run
//! is refused, and nothing refused before is let through.
//!
//! The probe makes one syscall of each ABI in a forked child, so a kernel
//! without 32-bit entry (a `SIGSEGV` on `int 0x80`) costs only the child.
//! An ABI counts as present when its `getpid` returned the child's pid.
//! It speaks for the kernel only when berth itself runs under no seccomp
//! filter: a filter of its own (a systemd unit's
//! `SystemCallArchitectures=native`, say) is not the containers', whose
//! processes descend from the shims. Filtered, or when the probe cannot
//! run, every compat ABI stays in the filter.

use std::sync::OnceLock;

/// The compat ABIs of the running kernel beside the native one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SyscallAbis {
    /// 32-bit x86 (`int 0x80`), on x86_64.
    pub ia32: bool,
    /// x32 (x86_64 syscalls with bit 30 set), on x86_64.
    pub x32: bool,
}

impl SyscallAbis {
    /// Both kept: what a filter covers when the kernel cannot be asked.
    const UNKNOWN: SyscallAbis = SyscallAbis {
        ia32: true,
        x32: true,
    };
}

/// The running kernel's compat ABIs, probed once per process.
pub(crate) fn syscall_abis() -> SyscallAbis {
    static ABIS: OnceLock<SyscallAbis> = OnceLock::new();
    *ABIS.get_or_init(|| {
        if runs_unfiltered() {
            probe()
        } else {
            SyscallAbis::UNKNOWN
        }
    })
}

/// Whether this process runs under no seccomp filter (`Seccomp: 0` in
/// /proc/self/status).
fn runs_unfiltered() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .any(|line| line.split_whitespace().eq(["Seccomp:", "0"]))
    })
}

#[cfg(target_arch = "x86_64")]
fn probe() -> SyscallAbis {
    use nix::fcntl::OFlag;
    use nix::sys::wait::waitpid;
    use nix::unistd::{fork, pipe2, read, ForkResult};

    // Close-on-exec: a process another thread starts meanwhile must not
    // hold the write end open, or a probe that dies would leave the read
    // below waiting for that process to end.
    let Ok((reader, writer)) = pipe2(OFlag::O_CLOEXEC) else {
        return SyscallAbis::UNKNOWN;
    };
    // SAFETY: the child only makes raw syscalls (getpid, write, the two
    // probes, _exit): no allocation and no lock another thread could hold,
    // so forking a multi-threaded caller is sound.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            use std::os::fd::AsRawFd;
            let fd = writer.as_raw_fd();
            // SAFETY: getpid and write take no pointers but the one-byte
            // buffer, which outlives the call.
            unsafe {
                let pid = libc::getpid() as i64;
                // Each answer is written before the next probe, which may
                // kill the child.
                let x32 = u8::from(x32_getpid() == pid);
                libc::write(fd, (&x32 as *const u8).cast(), 1);
                let ia32 = u8::from(ia32_getpid() == pid);
                libc::write(fd, (&ia32 as *const u8).cast(), 1);
                libc::_exit(0)
            }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(writer);
            let mut answers = [0u8; 2];
            let mut got = 0;
            while got < answers.len() {
                match read(&reader, &mut answers[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => break,
                }
            }
            let _ = waitpid(child, None);
            // The child is unfiltered, so only `int 0x80` can kill it:
            // a missing second answer is a kernel without 32-bit entry.
            // No answer at all tells nothing.
            match got {
                0 => SyscallAbis::UNKNOWN,
                1 => SyscallAbis {
                    x32: answers[0] == 1,
                    ia32: false,
                },
                _ => SyscallAbis {
                    x32: answers[0] == 1,
                    ia32: answers[1] == 1,
                },
            }
        }
        Err(_) => SyscallAbis::UNKNOWN,
    }
}

/// `getpid` through the x32 ABI: the pid, or a negative errno.
#[cfg(target_arch = "x86_64")]
fn x32_getpid() -> i64 {
    const X32_SYSCALL_BIT: libc::c_long = 0x4000_0000;
    // SAFETY: getpid takes no arguments; a kernel without x32 answers
    // ENOSYS.
    let ret = unsafe { libc::syscall(X32_SYSCALL_BIT | libc::SYS_getpid) };
    if ret < 0 {
        -i64::from(nix::errno::Errno::last_raw())
    } else {
        ret
    }
}

/// `getpid` through the 32-bit x86 entry (`int 0x80`, syscall 20): the
/// pid, or a negative errno.
#[cfg(target_arch = "x86_64")]
fn ia32_getpid() -> i64 {
    const IA32_GETPID: u32 = 20;
    let ret: u32;
    // SAFETY: `int 0x80` with eax = 20 is the 32-bit getpid, which reads
    // no memory; the kernel returns in eax and clears r8-r11. Without
    // 32-bit entry the instruction faults (SIGSEGV in the child).
    unsafe {
        std::arch::asm!(
            "int 0x80",
            inlateout("eax") IA32_GETPID => ret,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            options(nostack),
        );
    }
    i64::from(ret as i32)
}

/// Other architectures keep every compat ABI their filter lists.
#[cfg(not(target_arch = "x86_64"))]
fn probe() -> SyscallAbis {
    SyscallAbis::UNKNOWN
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The kernel's build configuration, where it is published.
    fn kernel_config() -> Option<String> {
        let gz = std::process::Command::new("zcat")
            .arg("/proc/config.gz")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        gz.or_else(|| {
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
            std::fs::read_to_string(format!("/boot/config-{}", release.trim())).ok()
        })
    }

    #[test]
    fn a_filtered_process_keeps_every_abi() {
        if !runs_unfiltered() {
            assert_eq!(syscall_abis(), SyscallAbis::UNKNOWN);
        }
    }

    #[test]
    fn probe_agrees_with_the_kernel_build() {
        // The probe itself, whether or not this test runs filtered (a
        // filter that kills foreign ABIs would read as "absent" here).
        let abis = probe();
        let Some(config) = kernel_config() else {
            eprintln!("no kernel config to compare with; probe said {abis:?}");
            return;
        };
        if config.contains("# CONFIG_X86_X32_ABI is not set") {
            assert!(!abis.x32, "x32 reported on a kernel built without it");
        }
        if config.contains("# CONFIG_IA32_EMULATION is not set") {
            assert!(!abis.ia32, "ia32 reported on a kernel built without it");
        }
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        if config.contains("CONFIG_IA32_EMULATION=y")
            && !config.contains("CONFIG_IA32_EMULATION_DEFAULT_DISABLED=y")
            && !cmdline.contains("ia32_emulation=")
        {
            assert!(abis.ia32, "ia32 missed on a kernel that runs it");
        }
    }

    #[test]
    fn probing_twice_answers_the_same() {
        assert_eq!(probe(), probe());
    }
}
