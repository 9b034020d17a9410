//! berth's own sandbox image, so a node needs no registry for its pods'
//! pause processes: a static `pause` (pause/pause.c, built by build.rs and
//! embedded here) in one layer, run as 65535:65535, made into an OCI image
//! in memory and imported into the `k8s.io` namespace the first time a pod
//! needs it. The same bytes give the same digests every time.

use std::io::Write;

use berth_errdefs::{Error, Result};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::daemons::Daemons;
use crate::images::NAMESPACE;

/// The built-in sandbox image's name (crid's default `sandbox_image`).
pub const BUILTIN_PAUSE: &str = concat!("berth.local/pause:", env!("CARGO_PKG_VERSION"));

/// The static pause program.
const PAUSE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pause"));

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The image as an OCI image layout in a tar archive.
pub fn archive() -> Result<Vec<u8>> {
    let io = |e: std::io::Error| Error::internal(format!("building the pause image: {e}"));
    // The layer: /pause, owned by root, no timestamps to vary.
    let mut layer = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_path("pause").map_err(io)?;
    header.set_size(PAUSE.len() as u64);
    header.set_mode(0o755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    layer.append(&header, PAUSE).map_err(io)?;
    let layer = layer.into_inner().map_err(io)?;
    let diff_id = digest(&layer);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&layer).map_err(io)?;
    let compressed = gz.finish().map_err(io)?;

    let config = json!({
        "architecture": architecture(),
        "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    })
    .to_string()
    .into_bytes();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest(&compressed),
            "size": compressed.len(),
        }],
    })
    .to_string()
    .into_bytes();
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "annotations": {berth_api::labels::OCI_REF_NAME: BUILTIN_PAUSE},
        }],
    })
    .to_string()
    .into_bytes();

    let mut out = tar::Builder::new(Vec::new());
    let mut add = |name: String, data: &[u8]| -> Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_path(&name).map_err(io)?;
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        out.append(&header, data).map_err(io)
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    for blob in [&compressed, &config, &manifest] {
        let name = format!("blobs/sha256/{}", &digest(blob)["sha256:".len()..]);
        add(name, blob)?;
    }
    add("index.json".into(), &index)?;
    out.into_inner().map_err(io)
}

/// Imports the built-in image into `k8s.io` and records it by name and by
/// id, all under a lease (through berth-image's importer): until the
/// records hold the content, a collection meanwhile (say, one that the end
/// of another client's lease started) must not take it.
pub async fn import(daemons: &Daemons) -> Result<()> {
    let content = daemons.content().await?;
    let images = daemons.images().await?;
    let leases = daemons.leases().await?;
    let importer = berth_image::Importer {
        content: &content,
        images: &images,
        leases: &leases,
        unpacker: None,
    };
    let options = berth_image::ImportOptions {
        record_ids: true,
        ..Default::default()
    };
    let imported = importer
        .import(
            NAMESPACE,
            Box::new(std::io::Cursor::new(archive()?)),
            &options,
            &mut |event| tracing::warn!(?event, "importing the pause image"),
        )
        .await?;
    if !imported
        .iter()
        .any(|i| i.name.as_deref() == Some(BUILTIN_PAUSE))
    {
        return Err(Error::internal("the pause image did not import"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_program_is_static_and_the_image_reproducible() {
        assert_eq!(&PAUSE[..4], b"\x7fELF");
        // No program interpreter (PT_INTERP): nothing to load from the image.
        let u16_at = |at: usize| u16::from_le_bytes([PAUSE[at], PAUSE[at + 1]]) as usize;
        let mut offset = [0u8; 8];
        offset.copy_from_slice(&PAUSE[32..40]);
        let phoff = u64::from_le_bytes(offset) as usize;
        let (size, count) = (u16_at(54), u16_at(56));
        for i in 0..count {
            let at = phoff + i * size;
            let kind = u32::from_le_bytes([PAUSE[at], PAUSE[at + 1], PAUSE[at + 2], PAUSE[at + 3]]);
            assert_ne!(kind, 3, "pause asks for a dynamic loader");
        }
        let a = archive().unwrap_or_else(|e| panic!("{e}"));
        let b = archive().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(digest(&a), digest(&b), "the same bytes each time");
        let mut names = Vec::new();
        let mut reader = tar::Archive::new(std::io::Cursor::new(&a));
        for entry in reader.entries().unwrap_or_else(|e| panic!("{e}")) {
            let entry = entry.unwrap_or_else(|e| panic!("{e}"));
            names.push(entry.path().unwrap_or_default().display().to_string());
        }
        assert!(names.contains(&"index.json".to_string()), "{names:?}");
        assert_eq!(names.iter().filter(|n| n.starts_with("blobs/")).count(), 3);
    }
}
