//! Layer apply on its own, without daemons, for profiling:
//! `cargo run --release -p berth-snapd --example apply -- LAYER DIR`
//! applies LAYER (gzip, zstd or plain tar) into the empty directory DIR as
//! an overlay upper directory would be, as root, and prints the time.

use std::time::Instant;

use berth_snapd::apply::{ApplyOptions, Host};
use berth_snapd::unpack::apply_layer;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(layer), Some(dir)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: apply LAYER DIR");
    };
    let file = std::fs::File::open(&layer)?;
    std::fs::create_dir_all(&dir)?;
    let options = ApplyOptions {
        overlay: true,
        lowers: Vec::new(),
        lowers_pending: false,
        devices: true,
        sync_fs: false,
    };
    let start = Instant::now();
    let digest = apply_layer(file, None, dir.as_ref(), &options, &Host)?;
    println!("{digest} in {:.3} s", start.elapsed().as_secs_f64());
    Ok(())
}
