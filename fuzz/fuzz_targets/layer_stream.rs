//! A compressed (or plain) layer stream as snapd unpacks it: the first
//! byte picks gzip, zstd, plain or sniffing; the rest is the blob. The
//! decompressor runs on its own thread ahead of the applier. Whatever the
//! stream holds, nothing is made outside the target, and when it is read
//! as plain tar the diff ID returned is the SHA-256 of every byte, the
//! padding after the tar's end included.
#![no_main]

mod confined;

use berth_image::media::Compression;
use berth_snapd::apply::{ApplyOptions, Unprivileged};
use berth_snapd::unpack::apply_layer;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, blob)) = data.split_first() else {
        return;
    };
    let compression = match pick % 4 {
        0 => None,
        1 => Some(Compression::Gzip),
        2 => Some(Compression::Zstd),
        _ => Some(Compression::None),
    };
    let Some(target) = confined::Confined::new() else {
        return;
    };
    let applied = apply_layer(
        blob,
        compression,
        &target.root,
        &ApplyOptions::default(),
        &Unprivileged,
    );
    let plain = compression == Some(Compression::None)
        || (compression.is_none() && Compression::sniff(blob) == Compression::None);
    if let (Ok(diff_id), true) = (&applied, plain) {
        let expected: String = Sha256::digest(blob)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(diff_id.hex(), expected, "the diff ID of a plain layer");
    }
    target.assert_nothing_outside();
});
