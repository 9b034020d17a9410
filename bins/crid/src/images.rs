//! The CRI's images, as containerd's CRI keeps them: one image (its id is
//! its config's digest) is several records in metad's `k8s.io` namespace —
//! each tag (`docker.io/library/busybox:1.36`), the repository digest
//! (`docker.io/library/busybox@sha256:<root>`) and the id itself
//! (`sha256:<config>`) — all with the same root, so `berth images ls -n
//! k8s.io` shows what the kubelet sees.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use berth_api::transfer as pb;
use berth_errdefs::{Error, ErrorKind, Result};
use berth_ids::Digest;
use berth_image::{Matcher, Platform, PullOptions, Puller, Unpacker};
use berth_metadata::ImageStore;
use berth_reference::Reference;
use k8s_cri::v1 as cri;

use crate::daemons::Daemons;

/// The namespace of everything the CRI makes, as in containerd.
pub const NAMESPACE: &str = "k8s.io";
/// containerd's label for an image the kubelet must not collect.
pub const PINNED_LABEL: &str = "io.cri-containerd.pinned";

/// One CRI image: its id and every name it is recorded under.
#[derive(Debug, Clone)]
pub struct CriImage {
    /// The config's digest.
    pub id: Digest,
    /// The root (index or manifest) the records point at.
    pub root: Digest,
    pub tags: BTreeSet<String>,
    pub repo_digests: BTreeSet<String>,
    /// Every record name (tags, repository digests, the id).
    pub names: BTreeSet<String>,
    /// The compressed size of its layers and config.
    pub size: u64,
    /// The image config's `User`.
    pub user: String,
    pub pinned: bool,
    pub defaults: berth_oci::ImageDefaults,
    /// The chain ID of its top layer: a container's snapshot's parent.
    pub top_layer: Option<String>,
}

impl CriImage {
    /// The image as a container is made from it, for berth-tasks, which
    /// then does not read it again.
    pub fn read_image(&self) -> berth_tasks::container::ReadImage {
        berth_tasks::container::ReadImage {
            root: self.root.clone(),
            defaults: self.defaults.clone(),
            top_layer: self.top_layer.clone(),
        }
    }

    /// What a container record names the image by: a tag, else the root.
    pub fn record_name(&self) -> String {
        self.tags
            .iter()
            .next()
            .cloned()
            .unwrap_or_else(|| self.root.to_string())
    }

    pub fn to_cri(&self) -> cri::Image {
        let (uid, username) = user_of(&self.user);
        cri::Image {
            id: self.id.to_string(),
            repo_tags: self.tags.iter().cloned().collect(),
            repo_digests: self.repo_digests.iter().cloned().collect(),
            size: self.size,
            uid: uid.map(|value| cri::Int64Value { value }),
            username,
            spec: Some(cri::ImageSpec {
                image: self.id.to_string(),
                ..Default::default()
            }),
            pinned: self.pinned,
        }
    }
}

/// The CRI's `uid` and `username` of an image's `User` (`uid[:gid]` or
/// `name[:group]`).
fn user_of(user: &str) -> (Option<i64>, String) {
    let name = user.split(':').next().unwrap_or("");
    if name.is_empty() {
        return (None, String::new());
    }
    match name.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, name.to_string()),
    }
}

/// What a root resolves to on this platform: content addressed, so it
/// never changes and is read from contentd once.
#[derive(Debug, Clone)]
struct Resolved {
    id: Digest,
    size: u64,
    /// What a container takes from it.
    read: berth_tasks::container::ReadImage,
}

/// The roots resolved so far (bounded: cleared when it grows past a
/// node's worth of images).
fn resolved_roots() -> &'static std::sync::Mutex<HashMap<Digest, Resolved>> {
    static ROOTS: std::sync::OnceLock<std::sync::Mutex<HashMap<Digest, Resolved>>> =
        std::sync::OnceLock::new();
    ROOTS.get_or_init(Default::default)
}

const MAX_RESOLVED: usize = 4096;

async fn resolve(
    content: &berth_client::RemoteContentStore,
    root: &Digest,
    matcher: &Matcher,
) -> Result<Resolved> {
    if let Some(known) = resolved_roots()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(root)
    {
        return Ok(known.clone());
    }
    let manifest = berth_image::store::resolve_manifest(content, NAMESPACE, root, matcher)
        .await?
        .manifest;
    let config = berth_image::store::read_config(content, NAMESPACE, &manifest).await?;
    let resolved = Resolved {
        id: manifest.config.digest.clone(),
        size: manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>(),
        read: berth_tasks::container::ReadImage::from_config(root.clone(), &config),
    };
    let mut roots = resolved_roots().lock().unwrap_or_else(|p| p.into_inner());
    if roots.len() >= MAX_RESOLVED {
        roots.clear();
    }
    roots.insert(root.clone(), resolved.clone());
    Ok(resolved)
}

/// Every image of the namespace, grouped by id.
pub async fn list(daemons: &Daemons) -> Result<Vec<CriImage>> {
    let images = daemons.images().await?;
    let content = daemons.content().await?;
    let records = images.list(NAMESPACE, &[]).await?;
    let mut by_root: HashMap<Digest, Vec<berth_metadata::Image>> = HashMap::new();
    for record in records {
        by_root
            .entry(record.target.digest.clone())
            .or_default()
            .push(record);
    }
    let matcher = Matcher::new(vec![Platform::host()]);
    let mut by_id: BTreeMap<Digest, CriImage> = BTreeMap::new();
    for (root, records) in by_root {
        let resolved = match resolve(&content, &root, &matcher).await {
            Ok(resolved) => resolved,
            Err(e) => {
                // A record whose content is missing or not for this
                // platform is no image the kubelet can run.
                tracing::debug!(%root, "not a CRI image: {e}");
                continue;
            }
        };
        let Resolved {
            id,
            size,
            read:
                berth_tasks::container::ReadImage {
                    defaults,
                    top_layer,
                    ..
                },
        } = resolved;
        let image = by_id.entry(id.clone()).or_insert_with(|| CriImage {
            id: id.clone(),
            root: root.clone(),
            tags: BTreeSet::new(),
            repo_digests: BTreeSet::new(),
            names: BTreeSet::new(),
            size,
            user: defaults.user.clone(),
            pinned: false,
            defaults,
            top_layer,
        });
        for record in records {
            image.names.insert(record.name.clone());
            if record.labels.get(PINNED_LABEL).map(String::as_str) == Some("pinned") {
                image.pinned = true;
            }
            if let Ok(reference) = Reference::parse(&record.name) {
                if reference.digest().is_some() {
                    image.repo_digests.insert(reference.to_string());
                } else if reference.tag().is_some() && !record.name.starts_with("sha256:") {
                    image.tags.insert(reference.to_string());
                    image
                        .repo_digests
                        .insert(reference.with_digest(root.clone()).to_string());
                }
            }
        }
    }
    Ok(by_id.into_values().collect())
}

/// The image an image argument names: its id (or an unambiguous prefix of
/// it), a name as recorded, or a reference that normalises to one.
pub async fn find(daemons: &Daemons, image: &str) -> Result<Option<CriImage>> {
    if image.is_empty() {
        return Err(Error::invalid_argument("no image given"));
    }
    let all = list(daemons).await?;
    let normalised = Reference::parse(image).ok().map(|r| r.to_string());
    let by_name = all.iter().find(|i| {
        i.names.contains(image)
            || normalised.as_ref().is_some_and(|n| i.names.contains(n))
            || i.repo_digests.contains(image)
            || normalised
                .as_ref()
                .is_some_and(|n| i.repo_digests.contains(n))
    });
    if let Some(found) = by_name {
        return Ok(Some(found.clone()));
    }
    let hex = image.strip_prefix("sha256:").unwrap_or(image);
    if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let matches: Vec<&CriImage> = all.iter().filter(|i| i.id.hex().starts_with(hex)).collect();
        if matches.len() == 1 {
            return Ok(Some(matches[0].clone()));
        }
    }
    Ok(None)
}

/// Pulls `image` into the namespace and records it under its tag (or
/// digest), its repository digest and its id; returns the id.
pub async fn pull(
    daemons: &Daemons,
    image: &str,
    auth: Option<&cri::AuthConfig>,
) -> Result<Digest> {
    let reference = Reference::parse(image).map_err(|e| Error::invalid_argument(e.to_string()))?;
    let credentials = match auth {
        Some(auth) => credentials(auth)?,
        None => None,
    };
    let content = daemons.content().await?;
    let transfer = daemons.transfer().await?;
    let images = daemons.images().await?;
    let leases = daemons.leases().await?;
    let snapshots = daemons.snapshots().await?;
    let puller = Puller {
        content: &content,
        transfer: &transfer,
        images: &images,
        leases: &leases,
        unpacker: Some(&snapshots as &dyn Unpacker),
    };
    let options = PullOptions {
        request: pb::FetchRequest {
            reference: reference.to_string(),
            credentials: credentials.into(),
            ..Default::default()
        },
        unpack_platform: None,
        sync_fs: false,
    };
    let pulled = puller.pull(NAMESPACE, &options, &mut |_| {}).await?;
    let matcher = Matcher::new(vec![Platform::host()]);
    let resolved =
        berth_image::store::resolve_manifest(&content, NAMESPACE, &pulled.root.digest, &matcher)
            .await?;
    let id = resolved.manifest.config.digest.clone();
    // The tag's record is the pull's own; the others name the same root.
    let repo_digest = reference
        .with_digest(pulled.root.digest.clone())
        .to_string();
    for name in [repo_digest, id.to_string()] {
        berth_image::store::record_image(&images, NAMESPACE, &name, &pulled.root).await?;
    }
    Ok(id)
}

fn credentials(auth: &cri::AuthConfig) -> Result<Option<pb::Credentials>> {
    if !auth.username.is_empty() || !auth.password.is_empty() {
        return Ok(Some(pb::Credentials {
            username: auth.username.clone(),
            secret: auth.password.clone(),
            ..Default::default()
        }));
    }
    if !auth.auth.is_empty() {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.auth.trim())
            .map_err(|_| Error::invalid_argument("auth is not base64"))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| Error::invalid_argument("auth is not user:password"))?;
        let (user, password) = text
            .split_once(':')
            .ok_or_else(|| Error::invalid_argument("auth is not user:password"))?;
        return Ok(Some(pb::Credentials {
            username: user.to_string(),
            secret: password.to_string(),
            ..Default::default()
        }));
    }
    if !auth.identity_token.is_empty() || !auth.registry_token.is_empty() {
        // A token stands in for a password, with an empty user.
        let token = if auth.registry_token.is_empty() {
            &auth.identity_token
        } else {
            &auth.registry_token
        };
        return Ok(Some(pb::Credentials {
            username: String::new(),
            secret: token.clone(),
            ..Default::default()
        }));
    }
    Ok(None)
}

/// Removes every record of the image (a missing image is not an error, as
/// the CRI requires).
pub async fn remove(daemons: &Daemons, image: &str) -> Result<()> {
    let Some(found) = find(daemons, image).await? else {
        return Ok(());
    };
    let images = daemons.images().await?;
    for name in &found.names {
        match images.delete(NAMESPACE, name, false).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The image of a container being created: found, or NotFound.
pub async fn require(daemons: &Daemons, image: &str) -> Result<CriImage> {
    find(daemons, image)
        .await?
        .ok_or_else(|| Error::not_found(format!("image {image:?} is not here: pull it first")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_split_into_uid_or_name() {
        assert_eq!(user_of(""), (None, String::new()));
        assert_eq!(user_of("1002"), (Some(1002), String::new()));
        assert_eq!(user_of("1003:1004"), (Some(1003), String::new()));
        assert_eq!(user_of("www-data"), (None, "www-data".to_string()));
        assert_eq!(user_of("www-data:1004"), (None, "www-data".to_string()));
    }

    #[test]
    fn auth_strings_are_user_and_password() {
        let auth = cri::AuthConfig {
            auth: "dXNlcjpwYXNz".into(),
            ..Default::default()
        };
        let c = credentials(&auth)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("none"));
        assert_eq!((c.username.as_str(), c.secret.as_str()), ("user", "pass"));
        let bad = cri::AuthConfig {
            auth: "!!".into(),
            ..Default::default()
        };
        assert!(credentials(&bad).is_err());
        assert!(credentials(&cri::AuthConfig::default())
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none());
    }
}
