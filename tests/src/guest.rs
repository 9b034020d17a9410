//! Tests again under another kernel: a throwaway virtual machine (qemu,
//! software emulation, so it needs no /dev/kvm) that boots Debian's kernel
//! from an initramfs holding the calling test executable, the workspace's
//! binaries and the few host tools the tests use, runs the named tests of
//! that executable, prints their output on its serial console and powers
//! off.
//!
//! It exists for what this host cannot be: its cgroups are v1 with an
//! empty v2 hierarchy beside (every controller but hugetlb is bound to
//! v1), so the cgroup v2 paths of berth and runc (the unified hierarchy,
//! `memory.max`, `cpu.max`, the freezer in `cgroup.freeze`, the eBPF device
//! filter) would never run here. The guest boots with `cgroup_no_v1=all`:
//! every controller on the unified hierarchy, as on any host with systemd
//! 247 or later.
//!
//! The kernel and its overlay module come from Debian's `linux-image-amd64`
//! (unpacked by scripts/prerequisites.sh into [`KERNEL_DIR`], not
//! installed); qemu from `qemu-system-x86`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Where scripts/prerequisites.sh leaves the guest's kernel (`vmlinuz`) and
/// overlayfs module (`overlay.ko`); `BERTH_GUEST_KERNEL_DIR` overrides it.
pub const KERNEL_DIR: &str = "/var/cache/berth-tests/guest-kernel";

/// How long a guest may run before the test calls it hung: software
/// emulation runs the tests some ten times slower than the host.
const GUEST_LIMIT: Duration = Duration::from_secs(1800);

/// The guest's first process: copies the initramfs into a tmpfs and
/// switches to it (runc's pivot_root cannot leave the initramfs's
/// rootfs), mounts what a host has (cgroup2 alone at /sys/fs/cgroup),
/// loads overlayfs, runs the tests listed in /opt/berth/tests and says
/// how they ended.
const INIT: &str = r#"#!/bin/busybox sh
if [ ! -e /stage2 ]; then
  /bin/busybox mkdir -p /new
  /bin/busybox mount -t tmpfs -o size=80% tmpfs /new
  for d in bin etc lib lib64 usr opt; do /bin/busybox cp -a /$d /new/; done
  /bin/busybox cp -a /init /new/init
  /bin/busybox mkdir -p /new/proc /new/sys /new/dev /new/tmp /new/run /new/root
  /bin/busybox touch /new/stage2
  exec /bin/busybox switch_root /new /init
fi
/bin/busybox --install -s /bin 2>/dev/null
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm /dev/mqueue
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t mqueue mqueue /dev/mqueue
mount -t cgroup2 cgroup2 /sys/fs/cgroup
insmod /lib/modules/overlay.ko
ip link set lo up
echo "guest: cgroup v2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
cd /opt/berth
export BERTH_SHARED_DIR=/opt/berth/shared
CI=true RUST_BACKTRACE=1 /opt/berth/target/debug/deps/tests --exact --test-threads=1 $(cat /opt/berth/tests)
echo "guest: tests exited with $?"
poweroff -f
"#;

/// Where the guest has crictl: under the shared directory its tests are
/// pointed at (`BERTH_SHARED_DIR`).
const GUEST_CRICTL: &str = "/opt/berth/shared/peers/bin/crictl";

/// What a guest needs from this host, when it has it all.
#[derive(Debug)]
pub struct Guest {
    kernel: PathBuf,
    overlay_module: PathBuf,
    qemu: PathBuf,
}

/// How a guest's test run ended.
#[derive(Debug)]
pub struct GuestRun {
    /// Everything the guest printed on its console.
    pub console: String,
    /// The test executable's exit status, if the guest got to say it.
    pub exit: Option<i32>,
    /// How many tests passed, from the harness's summary.
    pub passed: Option<usize>,
}

impl GuestRun {
    /// Fails the calling test unless the guest ran on a cgroup v2 hierarchy
    /// with cpu, memory, pids and io on it, and every one of `tests`
    /// passed there (so a mistyped name cannot pass by matching nothing).
    pub fn assert_all_passed_on_cgroup_v2(&self, tests: &[&str]) {
        let console = &self.console;
        let controllers = console
            .lines()
            .find_map(|l| l.strip_prefix("guest: cgroup v2 controllers: "))
            .unwrap_or_else(|| panic!("the guest did not start its tests:\n{console}"));
        for controller in ["cpu", "memory", "pids", "io"] {
            assert!(
                controllers.split_whitespace().any(|c| c == controller),
                "{controller} is not on the guest's cgroup v2 hierarchy: {controllers}"
            );
        }
        assert_eq!(
            self.exit,
            Some(0),
            "the tests failed in the guest:\n{console}"
        );
        assert_eq!(self.passed, Some(tests.len()), "{console}");
    }
}

impl Guest {
    /// The guest's parts on this host, or what is missing.
    pub fn find() -> Result<Guest, String> {
        if !cfg!(target_arch = "x86_64") {
            return Err("the guest kernel is Debian's amd64 one".into());
        }
        let dir = std::env::var_os("BERTH_GUEST_KERNEL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(KERNEL_DIR));
        let kernel = dir.join("vmlinuz");
        let overlay_module = dir.join("overlay.ko");
        if !kernel.exists() || !overlay_module.exists() {
            return Err(format!(
                "no guest kernel in {} (scripts/prerequisites.sh tests unpacks it)",
                dir.display()
            ));
        }
        let qemu = crate::which("qemu-system-x86_64")
            .ok_or("qemu-system-x86_64 is not installed (package qemu-system-x86)")?;
        for tool in ["objcopy", "ldd"] {
            if !crate::on_path(tool) {
                return Err(format!("{tool} is not installed"));
            }
        }
        Ok(Guest {
            kernel,
            overlay_module,
            qemu,
        })
    }

    /// Boots the guest with `kernel_args` and runs `tests` (exact names) of
    /// the calling test executable in it, one at a time, under `CI=true`.
    /// `dir` holds the initramfs and the console's log.
    pub fn run_tests(&self, dir: &Path, tests: &[&str], kernel_args: &str) -> GuestRun {
        let initramfs = dir.join("initramfs.cpio");
        self.build_initramfs(dir, tests, &initramfs);
        let console = dir.join("console.log");
        let mut qemu = Command::new(&self.qemu);
        qemu.args(["-accel", "tcg,thread=multi", "-smp", "2", "-m", "3072"])
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&initramfs)
            .arg("-append")
            .arg(format!("console=ttyS0 quiet panic=-1 {kernel_args}"));
        let out = crate::hang::output_within(&mut qemu, None, &[], GUEST_LIMIT);
        let console = std::fs::read(&console)
            .map(|c| String::from_utf8_lossy(&c).into_owned())
            .unwrap_or_default();
        assert!(
            out.status.success(),
            "qemu failed: {}\n{console}",
            String::from_utf8_lossy(&out.stderr)
        );
        let exit = console
            .lines()
            .find_map(|l| l.trim().strip_prefix("guest: tests exited with "))
            .and_then(|n| n.trim().parse().ok());
        let passed = console.lines().find_map(|l| {
            let rest = l.trim().strip_prefix("test result: ")?;
            let (_, after) = rest.split_once(". ")?;
            after.split_once(" passed")?.0.trim().parse().ok()
        });
        GuestRun {
            console,
            exit,
            passed,
        }
    }

    /// An initramfs (cpio "newc") of busybox, runc, tar, gzip, script and
    /// crictl (where the host has it) with the libraries they link, the
    /// workspace's binaries (without their debug information, which only
    /// makes the image big) laid out as under target/, the calling test
    /// executable as `deps/tests`, and the list of tests to run.
    fn build_initramfs(&self, dir: &Path, tests: &[&str], to: &Path) {
        let exe = std::env::current_exe().expect("test executable path");
        let stripped = dir.join("stripped");
        std::fs::create_dir_all(&stripped).unwrap();
        let mut image = Initramfs::new(to);
        image.file("/bin/busybox", Path::new("/bin/busybox"), 0o755);
        image.bytes("/init", INIT.as_bytes(), 0o755);
        image.file("/lib/modules/overlay.ko", &self.overlay_module, 0o644);
        image.bytes(
            "/etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
            0o644,
        );
        image.bytes("/etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644);
        image.bytes("/opt/berth/tests", tests.join(" ").as_bytes(), 0o644);
        let mut linked = Vec::new();
        for tool in ["runc", "tar", "gzip", "script"] {
            let path = crate::which(tool).unwrap_or_else(|| panic!("{tool} is not installed"));
            let path = std::fs::canonicalize(&path).unwrap();
            image.file(&format!("/usr/bin/{tool}"), &path, 0o755);
            linked.push(path);
        }
        // crictl, for the CRI's tests, where they look for it.
        let crictl = crate::cri::crictl_path();
        if crictl.exists() {
            image.file(GUEST_CRICTL, &crictl, 0o755);
            linked.push(crictl);
        }
        let mut binaries: Vec<(String, PathBuf)> = [
            "berth",
            "berth-contentd",
            "berth-snapd",
            "berth-metad",
            "berth-taskd",
            "berth-crid",
            "containerd-shim-berth-v2",
        ]
        .iter()
        .map(|name| {
            (
                format!("/opt/berth/target/debug/{name}"),
                crate::binary(name),
            )
        })
        .collect();
        binaries.push(("/opt/berth/target/debug/deps/tests".into(), exe.clone()));
        for (guest_path, host_path) in binaries {
            let name = Path::new(&guest_path).file_name().unwrap();
            let small = stripped.join(name);
            let status = Command::new("objcopy")
                .arg("--strip-debug")
                .arg(&host_path)
                .arg(&small)
                .status()
                .unwrap();
            assert!(status.success(), "objcopy {}", host_path.display());
            image.file(&guest_path, &small, 0o755);
            linked.push(host_path);
        }
        for library in shared_libraries(&linked) {
            let real = std::fs::canonicalize(&library).unwrap();
            image.file(library.to_str().unwrap(), &real, 0o755);
        }
        image.finish();
    }
}

/// The shared libraries `binaries` load, by the paths they load them from
/// (the dynamic loader included), as ldd lists them.
fn shared_libraries(binaries: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    for binary in binaries {
        let out = Command::new("ldd").arg(binary).output().unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(path) = path.filter(|p| p.starts_with('/')) {
                found.insert(PathBuf::from(path));
            }
        }
    }
    found
}

/// A cpio archive in the "newc" format the kernel unpacks as its initial
/// root, written entry by entry; parent directories are added as needed.
struct Initramfs {
    out: std::io::BufWriter<std::fs::File>,
    directories: BTreeSet<String>,
    inode: u32,
}

impl Initramfs {
    fn new(path: &Path) -> Initramfs {
        Initramfs {
            out: std::io::BufWriter::new(std::fs::File::create(path).unwrap()),
            directories: BTreeSet::new(),
            inode: 1,
        }
    }

    fn file(&mut self, guest_path: &str, host_path: &Path, mode: u32) {
        let data = std::fs::read(host_path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", host_path.display()));
        self.bytes(guest_path, &data, mode);
    }

    fn bytes(&mut self, guest_path: &str, data: &[u8], mode: u32) {
        let name = guest_path.trim_start_matches('/');
        if let Some((parent, _)) = name.rsplit_once('/') {
            self.directory(parent);
        }
        self.entry(name, 0o100000 | mode, data);
    }

    fn directory(&mut self, name: &str) {
        if self.directories.contains(name) {
            return;
        }
        if let Some((parent, _)) = name.rsplit_once('/') {
            self.directory(parent);
        }
        self.directories.insert(name.to_string());
        self.entry(name, 0o040755, &[]);
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.inode,
            mode,
            0, // uid
            0, // gid
            if mode & 0o040000 != 0 { 2 } else { 1 },
            0, // mtime
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0, // check
        );
        self.inode += 1;
        self.out.write_all(header.as_bytes()).unwrap();
        self.out.write_all(name.as_bytes()).unwrap();
        self.out.write_all(&[0]).unwrap();
        self.pad(header.len() + name.len() + 1);
        self.out.write_all(data).unwrap();
        self.pad(data.len());
    }

    /// Zeros up to the next multiple of four.
    fn pad(&mut self, written: usize) {
        let zeros = (4 - written % 4) % 4;
        self.out.write_all(&[0; 3][..zeros]).unwrap();
    }

    fn finish(mut self) {
        self.entry("TRAILER!!!", 0, &[]);
        self.out.flush().unwrap();
    }
}
