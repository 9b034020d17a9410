//! Media types: what a descriptor points at, OCI's names and Docker
//! schema 2's mapped onto the same kinds.

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_FOREIGN_LAYER_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// The `oci-layout` file of an image layout.
pub const OCI_LAYOUT_VERSION: &str = "1.0.0";

/// What a registry may send for a manifest, in order of preference.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// What a media type says a blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An image index (OCI) or manifest list (Docker): manifests by platform.
    Index,
    /// An image manifest: a config and layers.
    Manifest,
    /// An image config (OCI or Docker).
    Config,
    /// A filesystem layer: a tar, maybe compressed.
    Layer(Compression),
    /// Anything else (attestations, signatures, artifacts).
    Other,
}

/// How a layer's tar is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// The compression a blob's first bytes show (its magic number).
    pub fn sniff(first: &[u8]) -> Compression {
        match first {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            _ => Compression::None,
        }
    }

    /// The media type a Docker schema 2 manifest gives a layer with this
    /// compression (Docker has no zstd type: the OCI one is what
    /// containerd writes).
    pub fn docker_layer(self) -> &'static str {
        match self {
            Compression::None => DOCKER_LAYER,
            Compression::Gzip => DOCKER_LAYER_GZIP,
            Compression::Zstd => OCI_LAYER_ZSTD,
        }
    }
}

/// The kind of blob `media_type` names.
pub fn kind(media_type: &str) -> Kind {
    match media_type {
        OCI_INDEX | DOCKER_LIST => Kind::Index,
        OCI_MANIFEST | DOCKER_MANIFEST => Kind::Manifest,
        OCI_CONFIG | DOCKER_CONFIG => Kind::Config,
        other => match layer_compression(other) {
            Some(c) => Kind::Layer(c),
            None => Kind::Other,
        },
    }
}

/// A layer's compression, if `media_type` is a layer's (OCI's, with or
/// without "nondistributable", or Docker's, foreign or not).
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    let rest = media_type
        .strip_prefix("application/vnd.oci.image.layer.")
        .map(|r| r.strip_prefix("nondistributable.").unwrap_or(r))
        .and_then(|r| r.strip_prefix("v1.tar"))
        .or_else(|| {
            media_type
                .strip_prefix("application/vnd.docker.image.rootfs.")
                .map(|r| r.strip_prefix("foreign.").unwrap_or(r))
                .and_then(|r| r.strip_prefix("diff.tar"))
                .map(|r| match r {
                    ".gzip" => "+gzip",
                    other => other,
                })
        })?;
    match rest {
        "" => Some(Compression::None),
        "+gzip" => Some(Compression::Gzip),
        "+zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

pub fn is_index(media_type: &str) -> bool {
    kind(media_type) == Kind::Index
}

pub fn is_manifest(media_type: &str) -> bool {
    kind(media_type) == Kind::Manifest
}

pub fn is_config(media_type: &str) -> bool {
    kind(media_type) == Kind::Config
}

/// Layers that registries may not serve (Windows base layers and the like).
pub fn is_foreign_layer(media_type: &str) -> bool {
    media_type.contains("foreign") || media_type.contains("nondistributable")
}

/// The word berth's ingest refs and progress use for a blob of this type.
pub fn ingest_kind(media_type: &str) -> &'static str {
    match kind(media_type) {
        Kind::Index => "index",
        Kind::Manifest => "manifest",
        Kind::Config => "config",
        Kind::Layer(_) | Kind::Other => "layer",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_of_oci_and_docker_types() {
        assert_eq!(kind(OCI_INDEX), Kind::Index);
        assert_eq!(kind(DOCKER_LIST), Kind::Index);
        assert_eq!(kind(OCI_MANIFEST), Kind::Manifest);
        assert_eq!(kind(DOCKER_MANIFEST), Kind::Manifest);
        assert_eq!(kind(OCI_CONFIG), Kind::Config);
        assert_eq!(kind(DOCKER_CONFIG), Kind::Config);
        assert_eq!(kind(OCI_LAYER), Kind::Layer(Compression::None));
        assert_eq!(kind(OCI_LAYER_GZIP), Kind::Layer(Compression::Gzip));
        assert_eq!(kind(OCI_LAYER_ZSTD), Kind::Layer(Compression::Zstd));
        assert_eq!(
            kind("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"),
            Kind::Layer(Compression::Gzip)
        );
        assert_eq!(kind(DOCKER_LAYER), Kind::Layer(Compression::None));
        assert_eq!(kind(DOCKER_LAYER_GZIP), Kind::Layer(Compression::Gzip));
        assert_eq!(
            kind(DOCKER_FOREIGN_LAYER_GZIP),
            Kind::Layer(Compression::Gzip)
        );
        for other in [
            "",
            "application/json",
            "application/vnd.oci.image.layer.v1.tar+bzip2",
            "application/vnd.oci.image.layer.v1.tarx",
            "application/vnd.in-toto+json",
        ] {
            assert_eq!(kind(other), Kind::Other, "{other}");
        }
        assert!(is_foreign_layer(DOCKER_FOREIGN_LAYER_GZIP));
        assert!(!is_foreign_layer(OCI_LAYER_GZIP));
        assert_eq!(ingest_kind(DOCKER_CONFIG), "config");
        assert_eq!(ingest_kind(DOCKER_LIST), "index");
    }

    #[test]
    fn compression_from_magic_numbers() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"usr/"), Compression::None);
        assert_eq!(Compression::sniff(&[]), Compression::None);
        assert_eq!(Compression::Gzip.docker_layer(), DOCKER_LAYER_GZIP);
        assert_eq!(Compression::None.docker_layer(), DOCKER_LAYER);
    }
}
