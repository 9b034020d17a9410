//! Platforms: `os/arch[/variant]`, this machine's, and which of an index's
//! manifests run here, the way containerd's `platforms` package decides.

pub use berth_ids::Platform;

/// Reading a platform from `oci-spec`'s types.
pub trait PlatformExt {
    /// The platform an OCI descriptor or config names.
    fn from_spec(p: &oci_spec::image::Platform) -> Platform;
}

impl PlatformExt for Platform {
    fn from_spec(p: &oci_spec::image::Platform) -> Platform {
        Platform::new(
            &p.os().to_string(),
            &p.architecture().to_string(),
            p.variant().clone(),
        )
    }
}

/// Decides which platforms' images run where one of `wanted` is asked for,
/// and which of several fits best.
///
/// As containerd's `platforms.Only`: a platform matches itself; a wanted
/// platform without a variant takes any variant; a candidate without a
/// variant runs anywhere its os and architecture match; and an older
/// variant runs on a newer CPU (amd64 `v1`..`v4`, arm `v5`..`v8`), the
/// newest such preferred.
#[derive(Debug, Clone)]
pub struct Matcher {
    wanted: Vec<Platform>,
}

impl Matcher {
    pub fn new(wanted: Vec<Platform>) -> Matcher {
        Matcher { wanted }
    }

    /// Only the host's platform.
    pub fn host() -> Matcher {
        Matcher::new(vec![Platform::host()])
    }

    pub fn wanted(&self) -> &[Platform] {
        &self.wanted
    }

    pub fn matches(&self, candidate: &Platform) -> bool {
        self.rank(candidate).is_some()
    }

    /// How well `candidate` fits, lower is better; `None` if it does not
    /// run on any wanted platform.
    pub fn rank(&self, candidate: &Platform) -> Option<u32> {
        self.wanted
            .iter()
            .enumerate()
            .filter_map(|(i, w)| variant_distance(w, candidate).map(|d| i as u32 * 100 + d))
            .min()
    }

    /// The best of `candidates` (by [`Matcher::rank`]), first on ties.
    pub fn best<'a, T>(
        &self,
        candidates: impl IntoIterator<Item = (&'a Platform, T)>,
    ) -> Option<T> {
        candidates
            .into_iter()
            .filter_map(|(p, item)| self.rank(p).map(|r| (r, item)))
            .fold(None, |best: Option<(u32, T)>, (r, item)| match best {
                Some((b, _)) if b <= r => best,
                _ => Some((r, item)),
            })
            .map(|(_, item)| item)
    }
}

/// How far `candidate`'s variant is from `wanted`'s (0 exact; `None` if it
/// does not run there).
fn variant_distance(wanted: &Platform, candidate: &Platform) -> Option<u32> {
    if wanted.os != candidate.os || wanted.architecture != candidate.architecture {
        return None;
    }
    match (&wanted.variant, &candidate.variant) {
        (_, None) => Some(if wanted.variant.is_none() { 0 } else { 50 }),
        (None, Some(_)) => Some(1),
        (Some(w), Some(c)) if w == c => Some(0),
        (Some(w), Some(c)) => {
            // Older variants of the same family run on newer CPUs.
            let level = |v: &str| v.strip_prefix('v').and_then(|n| n.parse::<u32>().ok());
            let compatible = matches!(wanted.architecture.as_str(), "amd64" | "arm");
            match (compatible, level(w), level(c)) {
                (true, Some(w), Some(c)) if c < w => Some(w - c),
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    #[test]
    fn parsing_normalises() {
        assert_eq!(p("linux/arm64/v8"), p("linux/arm64"));
        assert_eq!(p("linux/x86_64"), p("linux/amd64"));
        assert_eq!(p("Linux/AARCH64").to_string(), "linux/arm64");
        assert_eq!(p("linux/arm/v7").to_string(), "linux/arm/v7");
        for bad in [
            "linux",
            "linux/",
            "/amd64",
            "a/b/c/d",
            "linux/../x",
            "linux/amd 64",
        ] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Platform::host().to_string(),
            format!("linux/{}", Platform::host().architecture)
        );
        let spec: oci_spec::image::Platform =
            serde_json::from_str(r#"{"architecture":"arm64","os":"linux","variant":"v8"}"#)
                .unwrap();
        assert_eq!(Platform::from_spec(&spec), p("linux/arm64"));
    }

    #[test]
    fn matching_follows_containerd() {
        let amd = Matcher::new(vec![p("linux/amd64")]);
        assert!(amd.matches(&p("linux/amd64")));
        assert!(amd.matches(&p("linux/amd64/v3")));
        assert!(!amd.matches(&p("linux/arm64")));
        assert!(!amd.matches(&p("windows/amd64")));

        let v3 = Matcher::new(vec![p("linux/amd64/v3")]);
        assert!(v3.matches(&p("linux/amd64/v2")));
        assert!(v3.matches(&p("linux/amd64")));
        assert!(!v3.matches(&p("linux/amd64/v4")));

        let arm7 = Matcher::new(vec![p("linux/arm/v7")]);
        assert!(arm7.matches(&p("linux/arm/v6")));
        assert!(arm7.matches(&p("linux/arm")));
        assert!(!arm7.matches(&p("linux/arm/v8")));
        // arm64's variants are not an ordered family here.
        assert!(!Matcher::new(vec![p("linux/arm64/v9")]).matches(&p("linux/arm64/v10")));
    }

    #[test]
    fn the_best_candidate_is_the_nearest_variant_of_the_first_wanted() {
        let v3 = Matcher::new(vec![p("linux/amd64/v3")]);
        let candidates = [
            p("linux/amd64/v1"),
            p("linux/amd64/v2"),
            p("linux/amd64/v4"),
        ];
        assert_eq!(
            v3.best(candidates.iter().enumerate().map(|(i, c)| (c, i))),
            Some(1)
        );
        let exact_over_plain = [p("linux/amd64"), p("linux/amd64/v3")];
        assert_eq!(
            v3.best(exact_over_plain.iter().enumerate().map(|(i, c)| (c, i))),
            Some(1)
        );
        let two = Matcher::new(vec![p("linux/arm64"), p("linux/amd64")]);
        let both = [p("linux/amd64"), p("linux/arm64")];
        assert_eq!(
            two.best(both.iter().enumerate().map(|(i, c)| (c, i))),
            Some(1)
        );
        let none = [p("linux/s390x")];
        assert_eq!(two.best(none.iter().map(|c| (c, ()))), None);
    }
}
