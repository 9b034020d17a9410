//! Image references, parsed and normalised the way containerd and docker do.
//!
//! `busybox` is `docker.io/library/busybox:latest`; `library/busybox:1.36`
//! is `docker.io/library/busybox:1.36`; `localhost:5000/team/app@sha256:...`
//! names a registry on a port by digest. The grammar follows the
//! distribution project's reference package.

use std::fmt;
use std::str::FromStr;

use berth_ids::Digest;

pub const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
pub const DEFAULT_TAG: &str = "latest";
/// Longest repository name (domain and path), as in distribution.
pub const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reference {reference:?}: {why}")]
pub struct ParseError {
    reference: String,
    why: String,
}

impl From<ParseError> for berth_errdefs::Error {
    fn from(err: ParseError) -> Self {
        berth_errdefs::Error::invalid_argument(err.to_string())
    }
}

/// A normalised image reference: always a domain and a path, and a tag, a
/// digest, or both.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises a reference; a bare name gets the tag `latest`.
    pub fn parse(input: &str) -> Result<Reference, ParseError> {
        let error = |why: &str| ParseError {
            reference: input.chars().take(300).collect(),
            why: why.to_string(),
        };
        if input.is_empty() {
            return Err(error("empty"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => (
                rest,
                Some(Digest::parse(digest).map_err(|e| error(&e.to_string()))?),
            ),
            None => (input, None),
        };
        // A tag follows the last ':' after the last '/'; an earlier ':' is a
        // port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&rest[..at], Some(rest[at + 1..].to_string()))
            }
            None => (rest, None),
        };
        if let Some(tag) = &tag {
            validate_tag(tag).map_err(&error)?;
        }
        let (domain, path) = split_domain(name);
        if domain != domain.to_ascii_lowercase() && domain == DEFAULT_DOMAIN {
            return Err(error("the domain must be lower case"));
        }
        validate_domain(&domain).map_err(&error)?;
        validate_path(&path).map_err(&error)?;
        if domain.len() + 1 + path.len() > MAX_NAME_LEN {
            return Err(error("the name is longer than 255 characters"));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            _ => tag,
        };
        Ok(Reference {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// The registry host (and port): `docker.io`, `localhost:5000`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path within the registry: `library/busybox`.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `domain/path`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// What to ask the registry for: the digest if there is one, else the
    /// tag.
    pub fn object(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// The same repository with another digest and no tag.
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// The same repository with another tag (and no digest).
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ParseError> {
        validate_tag(tag).map_err(|why| ParseError {
            reference: tag.to_string(),
            why: why.to_string(),
        })?;
        Ok(Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: Some(tag.to_string()),
            digest: None,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Reference, ParseError> {
        Reference::parse(s)
    }
}

/// Splits off the domain as docker does: the first component is a domain if
/// it has a '.' or a ':' or is `localhost`, or has upper-case letters.
fn split_domain(name: &str) -> (String, String) {
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
    };
    let domain = if domain == LEGACY_DEFAULT_DOMAIN {
        DEFAULT_DOMAIN.to_string()
    } else {
        domain
    };
    let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
        format!("{OFFICIAL_REPO_PREFIX}{path}")
    } else {
        path
    };
    (domain, path)
}

fn validate_tag(tag: &str) -> Result<(), &'static str> {
    let mut chars = tag.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() || c == '_' => {}
        _ => return Err("a tag starts with a letter, digit or '_'"),
    }
    if tag.len() > MAX_TAG_LEN {
        return Err("a tag is at most 128 characters");
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err("a tag has only letters, digits, '_', '.' and '-'");
    }
    Ok(())
}

fn validate_domain(domain: &str) -> Result<(), &'static str> {
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.chars().all(|c| c.is_ascii_digit()) {
            return Err("the registry port must be a number");
        }
    }
    let ipv6 = host.starts_with('[') && host.ends_with(']');
    let valid_host = !host.is_empty()
        && (ipv6
            && host[1..host.len() - 1]
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':')
            || host.split('.').all(|label| {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            }));
    if !valid_host {
        return Err("the registry host is not a valid host name");
    }
    Ok(())
}

/// Path components: lower-case letters and digits, separated by '.', '_',
/// '__' or runs of '-'.
fn validate_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("the repository name is empty");
    }
    for component in path.split('/') {
        let bytes = component.as_bytes();
        if bytes.is_empty() {
            return Err("the repository name has an empty component");
        }
        if !bytes[0].is_ascii_lowercase() && !bytes[0].is_ascii_digit()
            || !bytes[bytes.len() - 1].is_ascii_lowercase()
                && !bytes[bytes.len() - 1].is_ascii_digit()
        {
            return Err("repository components start and end with a lower-case letter or digit");
        }
        let mut i = 0;
        while i < bytes.len() {
            let c = bytes[i];
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                i += 1;
                continue;
            }
            let separator_len = match c {
                b'.' => 1,
                b'_' if bytes.get(i + 1) == Some(&b'_') => 2,
                b'_' => 1,
                b'-' => bytes[i..].iter().take_while(|b| **b == b'-').count(),
                _ => {
                    return Err(
                        "repository names have only lower-case letters, digits and separators",
                    )
                }
            };
            i += separator_len;
            if i < bytes.len() && !(bytes[i].is_ascii_lowercase() || bytes[i].is_ascii_digit()) {
                return Err("repository name separators cannot repeat");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalises_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("library/busybox:1.36", "docker.io/library/busybox:1.36"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/library/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("team/app:v1", "docker.io/team/app:v1"),
            ("localhost/app", "localhost/app:latest"),
            (
                "localhost:5000/team/app:v1.2-rc_3",
                "localhost:5000/team/app:v1.2-rc_3",
            ),
            ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest"),
            ("ghcr.io/org/sub/app:x", "ghcr.io/org/sub/app:x"),
            ("[::1]:5000/app", "[::1]:5000/app:latest"),
            ("a__b/c.d/e--f:t", "docker.io/a__b/c.d/e--f:t"),
        ];
        for (input, want) in cases {
            let r = Reference::parse(input).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(r.to_string(), want, "{input}");
        }
    }

    #[test]
    fn digests_and_tags() {
        let r = Reference::parse(&format!("localhost:5000/app@{D}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().unwrap().as_str(), D);
        assert_eq!(r.object(), D);
        assert_eq!(r.domain(), "localhost:5000");
        assert_eq!(r.path(), "app");
        let r = Reference::parse(&format!("busybox:1.36@{D}")).unwrap();
        assert_eq!(r.tag(), Some("1.36"));
        assert_eq!(r.object(), D);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox:1.36@{D}"));
        let r = Reference::parse("busybox:1.36").unwrap();
        assert_eq!(r.object(), "1.36");
        assert_eq!(r.name(), "docker.io/library/busybox");
    }

    #[test]
    fn malformed_references_are_refused() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-tag",
            "busybox@sha256:abc",
            "busybox@md5:d41d8cd98f00b204e9800998ecf8427e",
            "a//b",
            "/busybox",
            "busybox/",
            "bu..sybox",
            "bu___sybox",
            "localhost:port/app",
            "-host.com/app",
            "host.com/app:tag with space",
            "host.com/../etc",
            "host.com/app/..",
            &format!("x/{}", "a".repeat(300)),
            &format!("busybox:{}", "t".repeat(129)),
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
