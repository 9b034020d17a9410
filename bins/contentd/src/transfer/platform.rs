//! Platforms: `os/arch[/variant]`, the host's, and which manifests match.

use berth_errdefs::{Error, Result};

use super::oci::Platform;

/// `linux/amd64`, `linux/arm64/v8`, `linux/arm/v7`.
pub fn parse(spec: &str) -> Result<Platform> {
    let parts: Vec<&str> = spec.split('/').collect();
    let ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    match parts.as_slice() {
        [os, arch] if ok(os) && ok(arch) => Ok(normalize(Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: None,
        })),
        [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => Ok(normalize(Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: Some(variant.to_string()),
        })),
        _ => Err(Error::invalid_argument(format!(
            "platform {spec:?}: expected os/arch[/variant]"
        ))),
    }
}

/// The platform this daemon runs on.
pub fn host() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    normalize(Platform {
        os: std::env::consts::OS.to_string(),
        architecture: architecture.to_string(),
        variant: None,
    })
}

fn normalize(mut p: Platform) -> Platform {
    p.os = p.os.to_ascii_lowercase();
    p.architecture = match p.architecture.to_ascii_lowercase().as_str() {
        "x86_64" | "x86-64" => "amd64".to_string(),
        "aarch64" => "arm64".to_string(),
        other => other.to_string(),
    };
    if p.architecture == "arm64" && p.variant.as_deref() == Some("v8") {
        p.variant = None;
    }
    p
}

/// Whether an image for `candidate` runs on `wanted` (a missing variant
/// matches any).
pub fn matches(wanted: &Platform, candidate: &Platform) -> bool {
    let (w, c) = (normalize(wanted.clone()), normalize(candidate.clone()));
    w.os == c.os
        && w.architecture == c.architecture
        && (w.variant.is_none() || c.variant.is_none() || w.variant == c.variant)
}

pub fn display(p: &Platform) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_and_matching() {
        let amd = parse("linux/amd64").unwrap();
        let arm = parse("linux/arm64/v8").unwrap();
        assert_eq!(arm.variant, None);
        assert!(matches(&amd, &parse("linux/x86_64").unwrap()));
        assert!(!matches(&amd, &arm));
        assert!(matches(
            &parse("linux/arm/v7").unwrap(),
            &parse("linux/arm").unwrap()
        ));
        assert!(!matches(
            &parse("linux/arm/v7").unwrap(),
            &parse("linux/arm/v6").unwrap()
        ));
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/../x"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(display(&host()), format!("linux/{}", host().architecture));
    }
}
