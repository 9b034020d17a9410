//! The content descriptor — a blob's media type, digest and size, as OCI
//! manifests, indexes and berth's records name it — and the platform an
//! index entry or image config runs on. One model for every crate: the
//! metadata and snapshot contracts, the image library and the daemons.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Digest;

/// A descriptor whose digest is checked: it can name a blob in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
}

impl Descriptor {
    /// A descriptor with no urls, platform or annotations.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            urls: Vec::new(),
            platform: None,
            annotations: HashMap::new(),
        }
    }
}

/// An image's platform, normalised (`x86_64` is `amd64`, `aarch64` is
/// `arm64`, and arm64's default variant `v8` is no variant).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// `linux/amd64`, `linux/arm64/v8`, `linux/arm/v7`.
    pub fn parse(spec: &str) -> berth_errdefs::Result<Platform> {
        let parts: Vec<&str> = spec.split('/').collect();
        let ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        let (os, arch, variant) = match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => (os, arch, None),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => {
                (os, arch, Some(variant.to_string()))
            }
            _ => {
                return Err(berth_errdefs::Error::invalid_argument(format!(
                    "platform {spec:?}: expected os/arch[/variant]"
                )))
            }
        };
        Ok(Platform::new(os, arch, variant))
    }

    /// A normalised platform.
    pub fn new(os: &str, architecture: &str, variant: Option<String>) -> Platform {
        let os = os.to_ascii_lowercase();
        let architecture = match architecture.to_ascii_lowercase().as_str() {
            "x86_64" | "x86-64" => "amd64".to_string(),
            "aarch64" => "arm64".to_string(),
            "i386" => "386".to_string(),
            other => other.to_string(),
        };
        let variant = variant.map(|v| v.to_ascii_lowercase()).filter(|v| {
            // arm64's only variant worth naming is a newer one.
            let default_variant = architecture == "arm64" && v == "v8";
            !v.is_empty() && !default_variant
        });
        Platform {
            architecture,
            os,
            variant,
        }
    }

    /// The platform this process runs on.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86" => "386",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            other => other,
        };
        Platform::new(std::env::consts::OS, architecture, None)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.variant {
            Some(v) => write!(f, "{}/{}/{v}", self.os, self.architecture),
            None => write!(f, "{}/{}", self.os, self.architecture),
        }
    }
}
