#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `sync_fs`: a layer applied with it is on the disk when the apply
//! returns; without it, its data is still only in the page cache. Measured
//! by what ext4 reports written to its device
//! (`/sys/fs/ext4/DEV/session_write_kbytes`) on a fresh loop filesystem.

use berth_snapd::apply::{ApplyOptions, Host};
use berth_snapd::unpack::apply_layer;
use common::LoopMount;

mod common;

const FILE_BYTES: usize = 32 << 20;

fn layer() -> Vec<u8> {
    let data: Vec<u8> = (0..FILE_BYTES).map(|i| (i % 251) as u8 + 1).collect();
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, "big", &data[..]).unwrap();
    builder.into_inner().unwrap()
}

fn written_kib(device: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/fs/ext4/{device}/session_write_kbytes"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_layer_applied_with_sync_fs_is_on_disk_when_the_apply_returns() {
    if !berth_snapshot::testsuite::require_root() {
        return;
    }
    let Some(mount) = LoopMount::new("mkfs.ext4", &["-q", "-F"], 256 << 20) else {
        return;
    };
    let device = mount.device_name();
    let layer = layer();
    let apply = |name: &str, sync_fs: bool| {
        let dir = mount.dir.join(name);
        std::fs::create_dir(&dir).unwrap();
        nix::unistd::sync();
        let before = written_kib(&device);
        let options = ApplyOptions {
            sync_fs,
            ..Default::default()
        };
        apply_layer(&layer[..], None, &dir, &options, &Host).unwrap();
        written_kib(&device) - before
    };
    // Without: the 32 MiB wait in the page cache (writeback starts after
    // 30 s, or under memory pressure).
    let lazy = apply("lazy", false);
    assert!(lazy < (FILE_BYTES as u64 >> 10), "{lazy} KiB written");
    let synced = apply("synced", true);
    assert!(synced >= (FILE_BYTES as u64 >> 10), "{synced} KiB written");
}
