//! A container from an image, as `berth run` and `berth containers create`
//! make it (containerd's `NewContainer` with `WithNewSnapshot` and
//! `WithNewSpec`): the image's config read from the content store, an
//! active snapshot prepared on its layers, the OCI spec built from the
//! config and the caller's options (berth-oci), and the record in metad.
//! Whatever was made is undone when a later step fails.

use std::collections::HashMap;

use berth_content::ContentStore;
use berth_errdefs::{Error, ErrorKind, Result};
use berth_image::{Matcher, Platform};
use berth_metadata::{Any, Container, ContainerStore, ImageStore, LeaseManager, Runtime};
use berth_oci::{HostRootfs, ImageDefaults, NoRootfsFiles, OciError, RootfsFiles, SpecOptions};
use berth_snapshot::Snapshotter;

/// The type containerd gives a spec in a container record.
pub const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// The runtime `berth run` uses unless told otherwise.
pub const DEFAULT_RUNTIME: &str = "io.containerd.berth.v2";

/// The type of runc's runtime options (`containerd.runc.v1.Options`), which
/// berth's shim and containerd's runc shim both read.
pub const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";

/// runc's options as `Any`.
pub fn runc_options(options: &containerd_shim_protos::shim::oci::Options) -> Result<Any> {
    use containerd_shim_protos::protobuf::Message;
    Ok(Any {
        type_url: RUNC_OPTIONS_TYPE.to_string(),
        value: options
            .write_to_bytes()
            .map_err(|e| Error::internal(format!("encoding runc's options: {e}")))?,
    })
}

/// The runtime options a container's record carries: the caller's if it
/// gave any; else, under the systemd cgroup driver, runc's with
/// `SystemdCgroup` set, which runc needs to read a `slice:prefix:name`
/// cgroups path as a systemd unit rather than as a directory name (as
/// containerd's `SystemdCgroup = true` and `ctr run --runc-systemd-cgroup`).
fn runtime_options(new: &NewContainer) -> Result<Option<Any>> {
    if new.runtime.options.is_some() || new.options.cgroup != berth_oci::CgroupDriver::Systemd {
        return Ok(new.runtime.options.clone());
    }
    let options = containerd_shim_protos::shim::oci::Options {
        systemd_cgroup: true,
        ..Default::default()
    };
    runc_options(&options).map(Some)
}

/// The services a container is made from.
#[derive(Clone, Copy)]
pub struct ContainerServices<'a> {
    pub content: &'a dyn ContentStore,
    pub images: &'a dyn ImageStore,
    /// The snapshotter the container's snapshot is prepared in.
    pub snapshots: &'a dyn Snapshotter,
    pub snapshotter: &'a str,
    pub containers: &'a dyn ContainerStore,
    /// The snapshot is prepared under a lease until the record holds it:
    /// metad's collector would otherwise take it in between.
    pub leases: &'a dyn LeaseManager,
    /// Unpacks the image when its snapshots are not there yet (an image
    /// imported or pulled without unpacking); None: such an image fails.
    pub unpacker: Option<&'a dyn berth_image::Unpacker>,
}

impl std::fmt::Debug for ContainerServices<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerServices")
            .field("snapshotter", &self.snapshotter)
            .finish_non_exhaustive()
    }
}

/// What to make.
#[derive(Debug, Clone)]
pub struct NewContainer {
    /// An image name recorded in metad (or a manifest/index digest); the
    /// record keeps it.
    pub image: String,
    /// How much of that image the caller has read already.
    pub read: ImageRead,
    pub runtime: Runtime,
    pub labels: HashMap<String, String>,
    /// The id, namespace and every run option; `options.id` is the
    /// container's id and its snapshot's key.
    pub options: SpecOptions,
    /// Where a temporary read-only view of the image is mounted to read
    /// its /etc/passwd and /etc/group (needed only for a user given by
    /// name) and to copy up volumes.
    pub scratch: std::path::PathBuf,
    /// Image directories copied to host directories before the container
    /// exists (the volumes a CRI container gets from its image); the
    /// caller mounts each host directory through `options.mounts`.
    pub copy_up: Vec<CopyUp>,
}

/// How much of a new container's image its maker has read already.
#[derive(Debug, Clone)]
pub enum ImageRead {
    /// Nothing: its name is looked up in metad and the image read here.
    Unread,
    /// Its name is resolved to this index or manifest (`berth run` found
    /// the image there while deciding whether to pull it): read from it.
    Resolved(berth_ids::Digest),
    /// All of it.
    Read(ReadImage),
}

/// What a container is made from of its image, read from the content
/// store once by a caller that keeps images read (crid) and passed on in
/// [`ImageRead::Read`], so that making a container does not read it
/// again. Content addressed: it never changes for one root.
#[derive(Debug, Clone)]
pub struct ReadImage {
    /// The index or manifest the image's record points at.
    pub root: berth_ids::Digest,
    /// What the image's config gives a container.
    pub defaults: ImageDefaults,
    /// The chain ID of its top layer (the parent of a container's
    /// snapshot); None for an image of no layers.
    pub top_layer: Option<String>,
}

impl ReadImage {
    /// Reads the image `name` (a name recorded in metad, or a manifest or
    /// index digest) for this host's platform.
    pub async fn read(
        content: &dyn ContentStore,
        images: &dyn ImageStore,
        namespace: &str,
        name: &str,
    ) -> Result<ReadImage> {
        let root = berth_image::store::image_root(images, namespace, name).await?;
        ReadImage::read_root(content, namespace, root).await
    }

    /// Reads the image whose index or manifest is `root`.
    pub async fn read_root(
        content: &dyn ContentStore,
        namespace: &str,
        root: berth_ids::Digest,
    ) -> Result<ReadImage> {
        let matcher = Matcher::new(vec![Platform::host()]);
        let resolved =
            berth_image::store::resolve_manifest(content, namespace, &root, &matcher).await?;
        let config =
            berth_image::store::read_config(content, namespace, &resolved.manifest).await?;
        Ok(ReadImage::from_config(root, &config))
    }

    /// What the image whose index or manifest is `root` and whose config
    /// is `config` gives a container.
    pub fn from_config(root: berth_ids::Digest, config: &berth_image::Config) -> ReadImage {
        ReadImage {
            root,
            defaults: ImageDefaults::from_config(&config.spec),
            top_layer: berth_snapshot::chain_ids(&config.diff_ids)
                .last()
                .map(ToString::to_string),
        }
    }
}

/// One directory of the image (resolved inside it) copied into an empty
/// host directory. One that turns out to be the image's root is copied
/// but its mount (the one whose source is `host_dir`) is left out.
#[derive(Debug, Clone)]
pub struct CopyUp {
    pub path_in_image: String,
    pub host_dir: std::path::PathBuf,
}

pub fn oci_error(err: OciError) -> Error {
    match err {
        OciError::InvalidArgument(m) => Error::invalid_argument(m),
        OciError::NotFound(m) => Error::not_found(m),
        OciError::Io { context, source } => Error::io(context, &source),
        OciError::Build(m) => Error::internal(m),
    }
}

/// Whether resolving a user string needs the container's own /etc/passwd
/// and /etc/group: a user or group name, or a uid other than root's (its
/// passwd entry gives its primary group, and its name the groups
/// /etc/group lists it in, as containerd's `WithAdditionalGIDs` counts
/// them). Root by number is resolved without reading the image.
pub fn needs_image_files(user: &str) -> bool {
    let names = user
        .split(':')
        .any(|part| !part.bytes().all(|b| b.is_ascii_digit()));
    let uid = user.split(':').next().unwrap_or("");
    !user.is_empty() && (names || !(uid.is_empty() || uid.bytes().all(|b| b == b'0')))
}

/// The label of a container record that names the signal that stops it
/// (its image's `StopSignal`, unless the creator set it), as nerdctl's
/// `nerdctl/stop-signal`.
pub const STOP_SIGNAL_LABEL: &str = "berth.io/stop-signal";

/// Makes the container: reads the image, prepares its snapshot, builds its
/// spec and records it. Returns the record.
pub async fn create_container(
    services: ContainerServices<'_>,
    namespace: &str,
    new: NewContainer,
) -> Result<Container> {
    create_container_then(services, namespace, new, |made| async move { made.record }).await
}

/// A container just made: its record, and the mounts of its new snapshot
/// (what a task's rootfs is made of, as containerd's client passes them
/// to its task's Create).
#[derive(Debug, Clone)]
pub struct MadeContainer {
    pub record: Container,
    pub rootfs: Vec<berth_mount::Mount>,
}

/// As [`create_container`], and then `next` with the container as soon as
/// its record exists, while the lease that held the new snapshot until
/// then is let go (two commits, one in snapd and one in metad, off the way
/// of whatever the caller does next: creating the task, for `berth run`).
/// `next` runs only if the container was made. Returns what `next` gave.
pub async fn create_container_then<T, Next, NextFut>(
    services: ContainerServices<'_>,
    namespace: &str,
    new: NewContainer,
    next: Next,
) -> Result<T>
where
    Next: FnOnce(MadeContainer) -> NextFut,
    NextFut: std::future::Future<Output = T>,
{
    let id = new.options.id.as_str();
    berth_ids::validate_id(id).map_err(|e| Error::invalid_argument(e.to_string()))?;
    let new = &new;
    let (made_tx, made_rx) = tokio::sync::oneshot::channel::<MadeContainer>();
    // Until the record exists nothing else holds the new snapshot: a lease
    // does (expiring on its own if we die before dropping it). Then the
    // record holds the snapshot (or nothing was made): the lease's label
    // comes off and the lease goes. Either failing leaves a lease that
    // expires on its own, so neither fails the creation. The lease is
    // made while the image is read and the spec built, which need none.
    let making = async {
        let (made, _dropped) = berth_metadata::with_lease_taken_during(
            services.leases,
            namespace,
            berth_metadata::CLIENT_LEASE_TTL,
            image_and_spec(services, namespace, new),
            |lease, built| async move {
                let made = create_under_lease(services, namespace, new, id, built, &lease)
                    .await
                    .map(|made| drop(made_tx.send(made)));
                let _ = services.snapshots.release_lease(namespace, &lease).await;
                made
            },
        )
        .await?;
        made
    };
    let then = async {
        match made_rx.await {
            Ok(record) => Some(next(record).await),
            // Not made: `making` has the error.
            Err(_) => None,
        }
    };
    let (made, then) = tokio::join!(making, then);
    made?;
    then.ok_or_else(|| Error::internal(format!("container {id} was made unseen")))
}

/// What a container's record is made of besides its request: the image's
/// top layer (its snapshot's parent), the spec, and the labels with the
/// image's stop signal.
struct BuiltFromImage {
    root: berth_ids::Digest,
    parent: Option<String>,
    spec_json: Vec<u8>,
    labels: HashMap<String, String>,
}

/// Reads the image (unpacking it if its layers are not snapshots yet) and
/// builds the container's spec from it.
async fn image_and_spec(
    services: ContainerServices<'_>,
    namespace: &str,
    new: &NewContainer,
) -> Result<BuiltFromImage> {
    let id = new.options.id.as_str();
    let ReadImage {
        root,
        defaults,
        top_layer: parent,
    } = match &new.read {
        ImageRead::Read(read) => read.clone(),
        ImageRead::Resolved(root) => {
            ReadImage::read_root(services.content, namespace, root.clone()).await?
        }
        ImageRead::Unread => {
            ReadImage::read(services.content, services.images, namespace, &new.image).await?
        }
    };
    // The image's StopSignal is not part of the runtime spec: the record
    // keeps it for whoever stops the container (`berth stop`).
    let mut labels = new.labels.clone();
    if let Some(signal) = &defaults.stop_signal {
        labels
            .entry(STOP_SIGNAL_LABEL.to_string())
            .or_insert_with(|| signal.clone());
    }

    // The user's names are looked up in the image itself, and volumes
    // copied out of it, through a read-only view of its layers.
    let user = new.options.user.clone().unwrap_or(defaults.user.clone());
    let spec = if needs_image_files(&user) || !new.copy_up.is_empty() {
        let view_key = format!("{id}-user-view");
        let mounts = on_image_layers(services, namespace, &root, parent.as_deref(), || {
            services
                .snapshots
                .view(namespace, &view_key, parent.as_deref(), HashMap::new())
        })
        .await
        .map_err(|e| e.context("a view of the image to read its files"))?;
        let built = (|| {
            std::fs::create_dir_all(&new.scratch)
                .map_err(|e| Error::io(format!("creating {}", new.scratch.display()), &e))?;
            let mounted = berth_mount::TempMount::new(&mounts, &new.scratch)
                .map_err(|e| e.context("mounting a view of the image"))?;
            let files = HostRootfs::new(mounted.path());
            let mut options = new.options.clone();
            for copy in &new.copy_up {
                let led_to = files
                    .copy_dir(&copy.path_in_image, &copy.host_dir)
                    .map_err(oci_error)?;
                if led_to.as_deref() == Some("/") {
                    // A volume that is the image's root (a symlink to `/`)
                    // cannot be mounted over it: the copy is not mounted.
                    let source = copy.host_dir.display().to_string();
                    options.mounts.retain(|m| m.source != source);
                }
                if let Some(userns) = &options.user_namespace {
                    // The copy is bound as is (not id-mapped): its files
                    // get the host ids the container's ids are.
                    shift_owners(
                        &copy.host_dir,
                        &id_mappings(&userns.uid_mappings),
                        &id_mappings(&userns.gid_mappings),
                    )?;
                }
            }
            berth_oci::build_spec(&defaults, &options, &files as &dyn RootfsFiles)
                .map_err(oci_error)
        })();
        let _ = services.snapshots.remove(namespace, &view_key).await;
        built?
    } else {
        berth_oci::build_spec(&defaults, &new.options, &NoRootfsFiles).map_err(oci_error)?
    };
    let spec_json = serde_json::to_vec(&spec)
        .map_err(|e| Error::internal(format!("encoding the spec: {e}")))?;
    Ok(BuiltFromImage {
        root,
        parent,
        spec_json,
        labels,
    })
}

/// Runs `make`, which makes a snapshot on the image's top layer `parent`.
/// A new key's only missing piece can be its parent: if `make` finds none,
/// the image's layers are not snapshots yet (it was imported or pulled
/// without unpacking), so they are unpacked and `make` runs again.
async fn on_image_layers<T, Make, Made>(
    services: ContainerServices<'_>,
    namespace: &str,
    root: &berth_ids::Digest,
    parent: Option<&str>,
    make: Make,
) -> Result<T>
where
    Make: Fn() -> Made,
    Made: std::future::Future<Output = Result<T>>,
{
    match make().await {
        Err(e) if e.kind() == ErrorKind::NotFound && parent.is_some() => {
            unpack_image(services, namespace, root).await?;
            make().await
        }
        other => other,
    }
}

/// Unpacks the image's layers into snapshots: an image imported or pulled
/// without unpacking. NotFound when there is no unpacker to do it with.
async fn unpack_image(
    services: ContainerServices<'_>,
    namespace: &str,
    root: &berth_ids::Digest,
) -> Result<()> {
    let Some(unpacker) = services.unpacker else {
        return Err(Error::not_found(format!(
            "the layers of image {root} are not unpacked"
        )));
    };
    // The layers are held until the image's config holds them (a
    // collection that the end of an import's lease started could take
    // them otherwise).
    berth_image::unpack_held(
        services.content,
        unpacker,
        services.leases,
        namespace,
        root,
        &Matcher::new(vec![Platform::host()]),
        &berth_image::UnpackOptions::default(),
    )
    .await
    .map(drop)
}

/// Gives everything under `dir` (itself included, symlinks not followed)
/// the host ids its owners are inside a user namespace with these
/// mappings; an id the mappings leave out is left as it is (the namespace
/// shows it as the overflow id).
pub fn shift_owners(
    dir: &std::path::Path,
    uids: &[berth_mount::IdMapping],
    gids: &[berth_mount::IdMapping],
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let to_host = |mappings: &[berth_mount::IdMapping], id: u32| {
        mappings.iter().find_map(|m| m.to_host(id)).unwrap_or(id)
    };
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| Error::io(format!("reading {}", dir.display()), &e))?;
    std::os::unix::fs::lchown(
        dir,
        Some(to_host(uids, meta.uid())),
        Some(to_host(gids, meta.gid())),
    )
    .map_err(|e| Error::io(format!("changing the owner of {}", dir.display()), &e))?;
    if meta.is_dir() {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| Error::io(format!("reading {}", dir.display()), &e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("reading {}", dir.display()), &e))?;
            shift_owners(&entry.path(), uids, gids)?;
        }
    }
    Ok(())
}

/// The spec's id mappings as the mount library takes them.
pub fn id_mappings(mappings: &[berth_oci::LinuxIdMapping]) -> Vec<berth_mount::IdMapping> {
    mappings
        .iter()
        .map(|m| berth_mount::IdMapping {
            container_id: m.container_id(),
            host_id: m.host_id(),
            size: m.size(),
        })
        .collect()
}

/// The labels of a container's new snapshot: in a user namespace, its
/// mappings, so that snapd gives the snapshot to the container's root and
/// mounts the image's layers id-mapped.
fn snapshot_labels(options: &SpecOptions) -> HashMap<String, String> {
    let Some(userns) = &options.user_namespace else {
        return HashMap::new();
    };
    let text = |mappings: &[berth_oci::LinuxIdMapping]| {
        berth_mount::format_id_mappings(&id_mappings(mappings))
    };
    HashMap::from([
        (
            berth_api::labels::SNAPSHOT_UID_MAPPING.to_string(),
            text(&userns.uid_mappings),
        ),
        (
            berth_api::labels::SNAPSHOT_GID_MAPPING.to_string(),
            text(&userns.gid_mappings),
        ),
    ])
}

/// Prepares the container's snapshot (under `lease`) and records the
/// container, the two at once: the record names its snapshot by key and
/// holds it once both exist, and the lease holds it until then. If either
/// fails, what the other made goes.
async fn create_under_lease(
    services: ContainerServices<'_>,
    namespace: &str,
    new: &NewContainer,
    id: &str,
    built: BuiltFromImage,
    lease: &str,
) -> Result<MadeContainer> {
    let BuiltFromImage {
        root,
        parent,
        spec_json,
        labels,
    } = built;
    let leased = berth_snapshot::Leased::new(services.snapshots, Some(lease.to_string()));
    let prepared = async {
        on_image_layers(services, namespace, &root, parent.as_deref(), || {
            leased.prepare(
                namespace,
                id,
                parent.as_deref(),
                snapshot_labels(&new.options),
            )
        })
        .await
        .map_err(|e| e.context(format!("preparing the snapshot of {id}")))
    };
    let record = Container {
        id: id.to_string(),
        labels,
        image: new.image.clone(),
        runtime: Runtime {
            name: new.runtime.name.clone(),
            options: runtime_options(new)?,
        },
        spec: Some(Any {
            type_url: SPEC_TYPE.to_string(),
            value: spec_json,
        }),
        snapshotter: services.snapshotter.to_string(),
        snapshot_key: id.to_string(),
        created_at: std::time::SystemTime::now(),
        updated_at: std::time::SystemTime::now(),
        extensions: Default::default(),
        sandbox: String::new(),
    };
    let recorded = services.containers.create(namespace, record);
    match tokio::join!(prepared, recorded) {
        (Ok(rootfs), Ok(record)) => Ok(MadeContainer { record, rootfs }),
        (Ok(_), Err(e)) => {
            // The id was taken (or metad failed): the snapshot prepared
            // under this key just now is ours and goes.
            let _ = services.snapshots.remove(namespace, id).await;
            Err(e)
        }
        (Err(e), Ok(_)) => {
            // The record made just now is ours and goes.
            let _ = services.containers.delete(namespace, id).await;
            Err(e)
        }
        // A record already there is not ours to touch: its error says
        // why. Nothing of ours was made otherwise.
        (Err(_), Err(record)) if record.kind() == ErrorKind::AlreadyExists => Err(record),
        (Err(prepare), Err(_)) => Err(prepare),
    }
}

/// Removes a container's record and its snapshot (a snapshot already gone
/// is fine), the two at once: either failing leaves what a failure of
/// containerd's order (the snapshot, then the record) may leave, and a
/// snapshot left without its record is metad's collector's to take.
pub async fn remove_container(
    services: ContainerServices<'_>,
    namespace: &str,
    id: &str,
) -> Result<()> {
    let record = services.containers.get(namespace, id).await?;
    remove_container_and_snapshot(services, namespace, id, &record.snapshot_key).await
}

/// As [`remove_container`], for a caller that knows the container's
/// snapshot key (one [`create_container`] made: its id), without reading
/// the record first. An empty key: the container has no snapshot.
pub async fn remove_container_and_snapshot(
    services: ContainerServices<'_>,
    namespace: &str,
    id: &str,
    snapshot_key: &str,
) -> Result<()> {
    let snapshot = async {
        if snapshot_key.is_empty() {
            return Ok(());
        }
        match services.snapshots.remove(namespace, snapshot_key).await {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other.map_err(|e| e.context(format!("removing the snapshot of {id}"))),
        }
    };
    let (deleted, removed) = tokio::join!(services.containers.delete(namespace, id), snapshot);
    deleted?;
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifted_owners_are_the_host_ids_of_the_container_ids() {
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "needs root (chown)"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("vol");
        std::fs::create_dir_all(top.join("sub")).unwrap();
        std::fs::write(top.join("sub/file"), "x").unwrap();
        std::os::unix::fs::chown(top.join("sub/file"), Some(7), Some(8)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", top.join("link")).unwrap();
        std::os::unix::fs::chown(top.join("sub"), Some(200000), Some(0)).unwrap();
        let uids = berth_mount::parse_id_mappings("0:100000:65536").unwrap();
        let gids = berth_mount::parse_id_mappings("0:300000:65536").unwrap();
        shift_owners(&top, &uids, &gids).unwrap();
        let owner = |p: &str| {
            let m = std::fs::symlink_metadata(top.join(p)).unwrap();
            (m.uid(), m.gid())
        };
        assert_eq!(owner(""), (100000, 300000));
        assert_eq!(owner("sub/file"), (100007, 300008));
        assert_eq!(owner("link"), (100000, 300000));
        // An id outside the mapping stays.
        assert_eq!(owner("sub"), (200000, 300000));
        // The link's target is untouched.
        assert_eq!(std::fs::metadata("/etc/passwd").unwrap().uid(), 0);
    }

    #[test]
    fn users_other_than_root_by_number_need_the_images_files() {
        assert!(!needs_image_files(""));
        assert!(!needs_image_files("0"));
        assert!(!needs_image_files("0:50"));
        assert!(needs_image_files("1234"), "its passwd entry and groups");
        assert!(needs_image_files("1234:1234"));
        assert!(needs_image_files("nobody"));
        assert!(needs_image_files("1000:staff"));
        assert!(needs_image_files("www-data:33"));
    }

    fn new_container(cgroup: berth_oci::CgroupDriver, options: Option<Any>) -> NewContainer {
        let mut spec = SpecOptions::new("default", "web");
        spec.cgroup = cgroup;
        NewContainer {
            image: "busybox".into(),
            read: ImageRead::Unread,
            runtime: Runtime {
                name: DEFAULT_RUNTIME.into(),
                options,
            },
            labels: HashMap::new(),
            options: spec,
            scratch: std::path::PathBuf::new(),
            copy_up: Vec::new(),
        }
    }

    #[test]
    fn the_systemd_driver_asks_runc_for_its_systemd_cgroup_manager() {
        use containerd_shim_protos::protobuf::Message;
        let options = runtime_options(&new_container(berth_oci::CgroupDriver::Systemd, None))
            .unwrap()
            .expect("runc's options");
        assert_eq!(options.type_url, RUNC_OPTIONS_TYPE);
        let runc =
            containerd_shim_protos::shim::oci::Options::parse_from_bytes(&options.value).unwrap();
        assert!(runc.systemd_cgroup);
        assert!(runc.root.is_empty(), "taskd picks the root");

        assert_eq!(
            runtime_options(&new_container(berth_oci::CgroupDriver::Cgroupfs, None)).unwrap(),
            None
        );
        let given = Any {
            type_url: "example.com/Options".into(),
            value: vec![7],
        };
        assert_eq!(
            runtime_options(&new_container(
                berth_oci::CgroupDriver::Systemd,
                Some(given.clone())
            ))
            .unwrap(),
            Some(given),
            "what the caller gives is kept"
        );
    }
}
