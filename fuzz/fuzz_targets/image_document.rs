//! Registry and archive JSON (indexes and manifests), as berth-image reads
//! an image's root: with the media type a registry announced, or sniffed.
#![no_main]

use berth_image::document::Document;
use libfuzzer_sys::fuzz_target;

const MEDIA_TYPES: [Option<&str>; 5] = [
    None,
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, data)) = data.split_first() else {
        return;
    };
    let media_type = MEDIA_TYPES[usize::from(pick) % MEDIA_TYPES.len()];
    if let Ok(document) = Document::parse(media_type, data) {
        let _ = document.media_type();
    }
});
