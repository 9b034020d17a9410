#![allow(clippy::unwrap_used, clippy::expect_used)]

//! berth-taskd through its client (`RemoteTasks`) and the container
//! library: the status codes containerd gives, and nothing half-made left
//! behind by a call that fails.

use berth_client::{
    RemoteContainers, RemoteContentStore, RemoteImages, RemoteLeases, RemoteSnapshotter,
    RemoteTasks,
};
use berth_e2e::images::RUN_IMAGE;
use berth_e2e::stack::Stack;
use berth_errdefs::ErrorKind;
use berth_metadata::{ContainerStore, Runtime};
use berth_snapshot::Snapshotter;
use berth_tasks::container::{
    create_container, remove_container, ContainerServices, ImageRead, NewContainer, ReadImage,
};
use berth_tasks::{CreateTask, ExecProcess, KillProcess, Stdio, Tasks};

fn prerequisites() -> bool {
    berth_e2e::run_prerequisites()
}

struct Clients {
    content: RemoteContentStore,
    images: RemoteImages,
    snapshots: RemoteSnapshotter,
    containers: RemoteContainers,
    leases: RemoteLeases,
    tasks: RemoteTasks,
}

impl Clients {
    async fn connect(stack: &Stack) -> Clients {
        Clients {
            content: RemoteContentStore::connect(&stack.contentd.socket)
                .await
                .unwrap(),
            images: RemoteImages::connect(&stack.metad.socket).await.unwrap(),
            snapshots: RemoteSnapshotter::connect(&stack.snapd.socket, "overlayfs")
                .await
                .unwrap(),
            containers: RemoteContainers::connect(&stack.metad.socket)
                .await
                .unwrap(),
            leases: RemoteLeases::connect(&stack.metad.socket).await.unwrap(),
            tasks: RemoteTasks::connect(&stack.taskd.socket).await.unwrap(),
        }
    }

    fn services(&self) -> ContainerServices<'_> {
        ContainerServices {
            content: &self.content,
            images: &self.images,
            snapshots: &self.snapshots,
            snapshotter: "overlayfs",
            containers: &self.containers,
            leases: &self.leases,
            unpacker: None,
        }
    }

    async fn container(&self, stack: &Stack, id: &str, runtime: &str, args: &[&str]) {
        self.container_in_group(stack, id, runtime, args, None)
            .await
    }

    /// A container whose spec names a shim group (as the CRI names a
    /// pod's containers): its task joins the group's shim.
    async fn container_in_group(
        &self,
        stack: &Stack,
        id: &str,
        runtime: &str,
        args: &[&str],
        group: Option<&str>,
    ) {
        let mut options = berth_oci::SpecOptions::new("default", id);
        options.args = args.iter().map(|s| s.to_string()).collect();
        if let Some(group) = group {
            options
                .annotations
                .insert("io.kubernetes.cri.sandbox-id".into(), group.into());
        }
        let new = NewContainer {
            image: RUN_IMAGE.to_string(),
            read: ImageRead::Unread,
            runtime: Runtime {
                name: runtime.to_string(),
                options: None,
            },
            labels: Default::default(),
            options,
            scratch: stack.dir.join("scratch"),
            copy_up: Vec::new(),
        };
        create_container(self.services(), "default", new)
            .await
            .unwrap();
    }
}

fn bundles(stack: &Stack) -> Vec<String> {
    std::fs::read_dir(
        stack
            .taskd
            .state
            .join("io.containerd.runtime.v2.task")
            .join("default"),
    )
    .map(|d| {
        d.flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    })
    .unwrap_or_default()
}

/// A stack on a temporary directory (kept until the first value drops)
/// with the run image imported, and clients of its daemons.
async fn stack_with_image() -> (tempfile::TempDir, Stack, Clients) {
    let (dir, stack) = Stack::with_run_image("berth-taskd-");
    let clients = Clients::connect(&stack).await;
    (dir, stack, clients)
}

/// A container running `true` from `image`, as much of it read as `read`
/// says.
fn true_container(stack: &Stack, id: &str, image: &str, read: ImageRead) -> NewContainer {
    let mut options = berth_oci::SpecOptions::new("default", id);
    options.args = vec!["true".to_string()];
    NewContainer {
        image: image.to_string(),
        read,
        runtime: Runtime {
            name: "io.containerd.berth.v2".to_string(),
            options: None,
        },
        labels: Default::default(),
        options,
        scratch: stack.dir.join("scratch"),
        copy_up: Vec::new(),
    }
}

fn create(id: &str) -> CreateTask {
    CreateTask {
        container_id: id.to_string(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_containerds_codes_and_leave_nothing_behind() {
    if !prerequisites() {
        return;
    }
    let (_dir, stack, c) = stack_with_image().await;
    let tasks = &c.tasks;

    // No such container.
    let err = tasks.create("default", create("ghost")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    // Ids and stdio that could become paths are refused.
    let err = tasks.create("default", create("../x")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    c.container(
        &stack,
        "plain",
        "io.containerd.berth.v2",
        &["sleep", "1000"],
    )
    .await;
    let mut relative = create("plain");
    relative.stdio = Stdio {
        stdout: "relative/path".into(),
        ..Default::default()
    };
    let err = tasks.create("default", relative).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");

    // A runtime that resolves to nothing.
    c.container(&stack, "noshim", "io.containerd.nosuch.v9", &["true"])
        .await;
    let err = tasks.create("default", create("noshim")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.message().contains("containerd-shim-nosuch-v9"), "{err}");
    c.container(
        &stack,
        "nopath",
        "/nonexistent/containerd-shim-x-v2",
        &["true"],
    )
    .await;
    let err = tasks.create("default", create("nopath")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");

    // A container whose snapshot is gone.
    c.container(&stack, "nosnap", "io.containerd.berth.v2", &["true"])
        .await;
    c.snapshots.remove("default", "nosnap").await.unwrap();
    let err = tasks.create("default", create("nosnap")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.message().contains("snapshot"), "{err}");

    // A process that cannot start: the shim's Create fails; no bundle,
    // no shim, no mount stays.
    c.container(
        &stack,
        "broken",
        "io.containerd.berth.v2",
        &["/no/such/binary"],
    )
    .await;
    let err = tasks.create("default", create("broken")).await.unwrap_err();
    assert!(err.message().contains("/no/such/binary"), "{err}");
    assert!(
        bundles(&stack).is_empty(),
        "bundles left: {:?}",
        bundles(&stack)
    );

    // A task created and never started can be deleted, as with containerd
    // (its init, waiting in runc, goes with it).
    c.container(
        &stack,
        "unstarted",
        "io.containerd.berth.v2",
        &["sleep", "100"],
    )
    .await;
    let unstarted = tasks.create("default", create("unstarted")).await.unwrap();
    assert!(unstarted > 0);
    let deleted = tasks.delete("default", "unstarted").await.unwrap();
    assert_eq!(deleted.pid, unstarted);
    assert!(
        !std::path::Path::new(&format!("/proc/{unstarted}")).exists()
            || std::fs::read_to_string(format!("/proc/{unstarted}/stat"))
                .is_ok_and(|s| s.contains(") Z")),
        "the unstarted init survived its delete"
    );
    c.containers.delete("default", "unstarted").await.unwrap();

    // The good path, with its refusals.
    let pid = tasks.create("default", create("plain")).await.unwrap();
    assert!(pid > 0);
    let err = tasks.create("default", create("plain")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    tasks.start("default", "plain", "").await.unwrap();
    let err = tasks.delete("default", "plain").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    let process = serde_json::json!({
        "args": ["sleep", "100"], "cwd": "/", "user": {"uid": 0, "gid": 0},
        "env": ["PATH=/bin"]
    });
    let exec = ExecProcess {
        container_id: "plain".into(),
        exec_id: "e1".into(),
        stdio: Stdio::default(),
        spec: serde_json::to_vec(&process).unwrap(),
    };
    tasks.exec("default", exec.clone()).await.unwrap();
    let err = tasks.exec("default", exec.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    let mut bad_exec = exec.clone();
    bad_exec.exec_id = "../e".into();
    let err = tasks.exec("default", bad_exec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    let err = tasks.get("default", "plain", "nosuch").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = tasks.get("default", "ghost", "").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let kill = |signal: u32| KillProcess {
        container_id: "plain".into(),
        exec_id: String::new(),
        signal,
        all: true,
    };
    let err = tasks.kill("default", kill(0)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    tasks.kill("default", kill(9)).await.unwrap();
    let exit = tasks.wait("default", "plain", "").await.unwrap();
    assert_eq!(exit.status, 137);
    let err = tasks
        .kill(
            "default",
            KillProcess {
                all: false,
                ..kill(9)
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    // Two Deletes at once, from two clients: one deletes, the other finds
    // no task (not a runtime error from deleting twice).
    let other_client = RemoteTasks::connect(&stack.taskd.socket).await.unwrap();
    let (first, second) = tokio::join!(
        tasks.delete("default", "plain"),
        other_client.delete("default", "plain")
    );
    let (deleted, err) = match (first, second) {
        (Ok(deleted), Err(err)) | (Err(err), Ok(deleted)) => (deleted, err),
        other => panic!("two Deletes at once: {other:?}"),
    };
    assert_eq!((deleted.pid, deleted.exit.status), (pid, 137));
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = tasks.delete("default", "plain").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        bundles(&stack).is_empty(),
        "bundles left: {:?}",
        bundles(&stack)
    );

    // Checkpoint is refused outright.
    let client = berth_client::connect(&stack.taskd.socket).await.unwrap();
    let raw = berth_api::tasks::TasksClient::new(client);
    let err = raw
        .checkpoint(
            berth_client::request_context("default"),
            &berth_api::tasks::CheckpointTaskRequest {
                container_id: "plain".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ttrpc::Error::RpcStatus(s) if s.code() == ttrpc::Code::UNIMPLEMENTED),
        "{err:?}"
    );

    for id in ["plain", "noshim", "nopath", "nosnap", "broken"] {
        let record = c.containers.get("default", id).await.unwrap();
        c.containers.delete("default", id).await.unwrap();
        let _ = c.snapshots.remove("default", &record.snapshot_key).await;
    }
}

/// A pod's shim exits once its last task is deleted. A container of that
/// pod whose task is created at that very moment finds the shim serving,
/// then gone: taskd starts a shim again rather than fail the create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_created_as_its_groups_shim_exits_gets_a_shim_again() {
    if !prerequisites() {
        return;
    }
    let (_dir, stack, c) = stack_with_image().await;
    let tasks = &c.tasks;
    let runtime = "io.containerd.berth.v2";
    let rounds = 25;
    let mut previous: Option<String> = None;
    for round in 0..rounds {
        let id = format!("member{round}");
        c.container_in_group(&stack, &id, runtime, &["sleep", "1000"], Some("pod1"))
            .await;
        // The previous member has stopped; it is deleted (its shim then
        // asked to exit) while this one's task is created in the same
        // group, the create a little later each round to sweep the window.
        if let Some(old) = &previous {
            berth_tasks::kill_all_and_wait(
                tasks,
                "default",
                old,
                std::time::Duration::from_secs(10),
            )
            .await;
        }
        let deleting = async {
            match &previous {
                Some(old) => tasks.delete("default", old).await.map(|_| ()),
                None => Ok(()),
            }
        };
        let creating = async {
            tokio::time::sleep(std::time::Duration::from_millis(round % 10 * 2)).await;
            tasks.create("default", create(&id)).await
        };
        let (deleted, created) = tokio::join!(deleting, creating);
        deleted.unwrap();
        let pid = created.unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(pid > 0);
        assert!(tasks.start("default", &id, "").await.unwrap() > 0);
        if let Some(old) = previous.take() {
            c.containers.delete("default", &old).await.unwrap();
        }
        previous = Some(id);
    }
    let last = previous.unwrap();
    berth_tasks::kill_all_and_wait(tasks, "default", &last, std::time::Duration::from_secs(10))
        .await;
    tasks.delete("default", &last).await.unwrap();
    assert!(bundles(&stack).is_empty(), "{:?}", bundles(&stack));
}

/// A container made from an image its caller read before (as crid passes
/// the images it keeps read) is the one made by the image's name: the same
/// record, spec and snapshot parent. The image is not read again: a name
/// no record has makes a container too when the image comes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_from_an_image_read_before_is_the_one_made_by_its_name() {
    if !prerequisites() {
        return;
    }
    let (_dir, stack, c) = stack_with_image().await;
    let read = ReadImage::read(&c.content, &c.images, "default", RUN_IMAGE)
        .await
        .unwrap();
    assert!(read.top_layer.is_some(), "{read:?}");
    let new = |id: &str, image: &str, read: ImageRead| true_container(&stack, id, image, read);
    let by_name = create_container(
        c.services(),
        "default",
        new("byname", RUN_IMAGE, ImageRead::Unread),
    )
    .await
    .unwrap();
    let given = create_container(
        c.services(),
        "default",
        new("given", RUN_IMAGE, ImageRead::Read(read.clone())),
    )
    .await
    .unwrap();
    assert_eq!(given.image, by_name.image);
    assert_eq!(given.labels, by_name.labels);
    assert_eq!(given.runtime, by_name.runtime);
    // The spec, its id made the same and its capability sets (sets, in
    // no fixed order) sorted.
    let spec = |record: &berth_metadata::Container| {
        let text = String::from_utf8(record.spec.as_ref().unwrap().value.clone()).unwrap();
        let mut spec: serde_json::Value =
            serde_json::from_str(&text.replace(&record.id, "ID")).unwrap();
        for set in spec["process"]["capabilities"]
            .as_object_mut()
            .unwrap()
            .values_mut()
        {
            set.as_array_mut()
                .unwrap()
                .sort_by_key(|cap| cap.to_string());
        }
        spec
    };
    assert_eq!(spec(&given), spec(&by_name));
    // Its name resolved before (as `berth run` finds it): the same.
    let resolved = create_container(
        c.services(),
        "default",
        new(
            "resolved",
            RUN_IMAGE,
            ImageRead::Resolved(read.root.clone()),
        ),
    )
    .await
    .unwrap();
    assert_eq!(resolved.image, by_name.image);
    assert_eq!(spec(&resolved), spec(&by_name));
    for id in ["byname", "given", "resolved"] {
        let info = c.snapshots.stat("default", id).await.unwrap();
        assert_eq!(info.parent, read.top_layer, "{id}");
    }
    let unrecorded = create_container(
        c.services(),
        "default",
        new(
            "unrecorded",
            "example.com/not/recorded:1",
            ImageRead::Read(read.clone()),
        ),
    )
    .await
    .unwrap();
    assert_eq!(unrecorded.image, "example.com/not/recorded:1");
    let info = c.snapshots.stat("default", "unrecorded").await.unwrap();
    assert_eq!(info.parent, read.top_layer);
    // Without the image, that name is no image.
    let err = create_container(
        c.services(),
        "default",
        new("nothing", "example.com/not/recorded:1", ImageRead::Unread),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    for id in ["byname", "given", "resolved", "unrecorded"] {
        remove_container(c.services(), "default", id).await.unwrap();
    }
    assert!(c.containers.list("default", &[]).await.unwrap().is_empty());
}

/// The container's snapshot and its record are made at once: when either
/// cannot be, what the other made goes, and what was there before stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_id_or_snapshot_key_makes_no_container_and_touches_nothing() {
    if !prerequisites() {
        return;
    }
    let (_dir, stack, c) = stack_with_image().await;
    let top = ReadImage::read(&c.content, &c.images, "default", RUN_IMAGE)
        .await
        .unwrap()
        .top_layer;
    let new = |id: &str| true_container(&stack, id, RUN_IMAGE, ImageRead::Unread);
    let snapshot_keys = || async {
        let mut keys: Vec<String> = c
            .snapshots
            .list("default", &[])
            .await
            .unwrap()
            .into_iter()
            .filter(|info| info.kind != berth_snapshot::Kind::Committed)
            .map(|info| info.name)
            .collect();
        keys.sort();
        keys
    };

    // The id taken by a container with its snapshot.
    let first = create_container(c.services(), "default", new("taken"))
        .await
        .unwrap();
    let err = create_container(c.services(), "default", new("taken"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    let still = c.containers.get("default", "taken").await.unwrap();
    assert_eq!(still.created_at, first.created_at);
    assert_eq!(still.spec, first.spec);
    assert_eq!(snapshot_keys().await, ["taken"]);

    // The id taken by a record without a snapshot: the snapshot prepared
    // for the new one goes, the record stays as it was.
    let mut bare = first.clone();
    bare.id = "bare".to_string();
    bare.snapshot_key = "bare".to_string();
    c.containers.create("default", bare).await.unwrap();
    let err = create_container(c.services(), "default", new("bare"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert!(c.containers.get("default", "bare").await.is_ok());
    assert_eq!(snapshot_keys().await, ["taken"]);

    // The key taken by a snapshot without a record (what a crash between
    // the two leaves): the record made for the new one goes, the snapshot
    // stays.
    c.snapshots
        .prepare("default", "orphan", top.as_deref(), Default::default())
        .await
        .unwrap();
    let err = create_container(c.services(), "default", new("orphan"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    let err = c.containers.get("default", "orphan").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(snapshot_keys().await, ["orphan", "taken"]);

    for id in ["taken", "bare"] {
        remove_container(c.services(), "default", id).await.unwrap();
    }
    c.snapshots.remove("default", "orphan").await.unwrap();
    assert!(snapshot_keys().await.is_empty());
}

/// An image whose layers are not snapshots (imported or pulled without
/// unpacking) is unpacked when a container is made from it, if the maker
/// can unpack; otherwise the making fails and leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_of_an_image_not_unpacked_unpacks_it() {
    if !prerequisites() {
        return;
    }
    let (_dir, stack, c) = stack_with_image().await;
    let read = ReadImage::read(&c.content, &c.images, "default", RUN_IMAGE)
        .await
        .unwrap();
    let top = read.top_layer.clone().expect("a layer");
    // Back to an image never unpacked (its one layer is its top).
    c.snapshots.remove("default", &top).await.unwrap();
    let err = c.snapshots.stat("default", &top).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let new = |id: &str| {
        true_container(
            &stack,
            id,
            RUN_IMAGE,
            ImageRead::Resolved(read.root.clone()),
        )
    };

    // No unpacker: NotFound, and no record or snapshot of it.
    let err = create_container(c.services(), "default", new("cannot"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = c.containers.get("default", "cannot").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = c.snapshots.stat("default", "cannot").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");

    let services = ContainerServices {
        unpacker: Some(&c.snapshots as &dyn berth_image::Unpacker),
        ..c.services()
    };
    let made = create_container(services, "default", new("unpacks"))
        .await
        .unwrap();
    assert_eq!(made.snapshot_key, "unpacks");
    let info = c.snapshots.stat("default", "unpacks").await.unwrap();
    assert_eq!(info.parent.as_deref(), Some(top.as_str()));
    assert_eq!(
        c.snapshots.stat("default", &top).await.unwrap().kind,
        berth_snapshot::Kind::Committed
    );
    remove_container(c.services(), "default", "unpacks")
        .await
        .unwrap();

    // A user given by name is looked up through a view of the image's
    // layers, which unpacks them the same way.
    c.snapshots.remove("default", &top).await.unwrap();
    let mut by_name = new("by-name");
    by_name.options.user = Some("root".to_string());
    let made = create_container(services, "default", by_name)
        .await
        .unwrap();
    let info = c
        .snapshots
        .stat("default", &made.snapshot_key)
        .await
        .unwrap();
    assert_eq!(info.parent.as_deref(), Some(top.as_str()));
    let err = c
        .snapshots
        .stat("default", "by-name-user-view")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "the view stays: {err}");
    remove_container(c.services(), "default", "by-name")
        .await
        .unwrap();
}
