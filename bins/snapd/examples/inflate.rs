//! Decompression throughput of the inflaters snapd uses, on a real layer:
//! `cargo run --release -p berth-snapd --example inflate -- LAYER.tar.gz`
//! (or a .tar.zst). Prints output MB/s for one core.

use std::io::Read;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let Some(path) = std::env::args().nth(1) else {
        anyhow::bail!("usage: inflate LAYER.tar.gz|LAYER.tar.zst");
    };
    let data = std::fs::read(&path)?;
    let mut best = f64::MAX;
    let mut out_len = 0u64;
    for _ in 0..3 {
        let start = Instant::now();
        let mut reader: Box<dyn Read> = if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Box::new(zstd::stream::read::Decoder::new(&data[..])?)
        } else {
            Box::new(flate2::read::MultiGzDecoder::new(&data[..]))
        };
        out_len = std::io::copy(&mut reader, &mut std::io::sink())?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!(
        "{path}: {} bytes in, {out_len} bytes out, {:.3} s, {:.0} MB/s out",
        data.len(),
        best,
        out_len as f64 / best / 1e6
    );
    Ok(())
}
