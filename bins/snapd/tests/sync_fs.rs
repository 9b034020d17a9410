#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `sync_fs`: a layer applied with it is on the disk when the apply
//! returns; without it, its data is still only in the page cache. Measured
//! by what ext4 reports written to its device
//! (`/sys/fs/ext4/DEV/session_write_kbytes`) on a fresh loop filesystem.

use berth_snapd::apply::{ApplyOptions, Host};
use berth_snapd::unpack::apply_layer;
use berth_snapshot::loop_mount::LoopMount;

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

#[test]
fn a_layer_applied_with_sync_fs_is_on_disk_when_the_apply_returns() {
    let Some(mount) = LoopMount::ext4(256 << 20) else {
        return;
    };
    let layer = layer();
    let apply = |name: &str, sync_fs: bool| {
        let dir = mount.dir.join(name);
        std::fs::create_dir(&dir).unwrap();
        let options = ApplyOptions {
            sync_fs,
            ..Default::default()
        };
        let (written, applied) =
            mount.ext4_kib_written_by(|| apply_layer(&layer[..], None, &dir, &options, &Host));
        applied.unwrap();
        written
    };
    // Without: the 32 MiB wait in the page cache (writeback starts after
    // 30 s, or under memory pressure).
    let lazy = apply("lazy", false);
    assert!(lazy < (FILE_BYTES as u64 >> 10), "{lazy} KiB written");
    let synced = apply("synced", true);
    assert!(synced >= (FILE_BYTES as u64 >> 10), "{synced} KiB written");
}
