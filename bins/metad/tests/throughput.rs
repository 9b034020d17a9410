#![allow(clippy::unwrap_used, clippy::expect_used)]
//! API-level throughput of a running berth-metad, for bench/metad.sh: one
//! client, one request at a time, through berth-client. Not a test: it is
//! ignored unless asked for, and prints figures instead of asserting them.
//!
//! ```text
//! BERTH_BENCH_METAD=/path/metad.sock BERTH_BENCH_RECORDS=10000 \
//!   cargo test --release -p berth-metad --test throughput -- --ignored --nocapture
//! ```

use std::collections::BTreeMap;
use std::time::{Instant, UNIX_EPOCH};

use berth_client::{RemoteContainers, RemoteImages};
use berth_ids::Digest;
use berth_metadata::{Any, Container, ContainerStore, Descriptor, Image, ImageStore, Runtime};

const NS: &str = "bench";

fn report(what: &str, ops: usize, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "api {what:<18} {ops:>7} ops {secs:>8.3} s {:>10.1} ops/s",
        ops as f64 / secs
    );
}

/// A spec about the size of a real one (~1.5 KiB).
fn spec(id: &str) -> Any {
    let env: Vec<String> = (0..20).map(|i| format!("\"VAR_{i}=value-{i}\"")).collect();
    Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
        value: format!(
            "{{\"ociVersion\":\"1.1.0\",\"hostname\":\"{id}\",\"process\":{{\"args\":[\"sh\"],\"env\":[{}],\"cwd\":\"/\"}},\"root\":{{\"path\":\"rootfs\"}},\"linux\":{{\"namespaces\":[{{\"type\":\"pid\"}},{{\"type\":\"ipc\"}},{{\"type\":\"uts\"}},{{\"type\":\"mount\"}},{{\"type\":\"network\"}}]}}}}",
            env.join(",")
        )
        .into_bytes(),
    }
}

fn container(id: &str) -> Container {
    Container {
        id: id.to_string(),
        labels: Default::default(),
        image: "docker.io/library/bench:1".into(),
        runtime: Runtime {
            name: "io.containerd.runc.v2".into(),
            options: None,
        },
        spec: Some(spec(id)),
        snapshotter: String::new(),
        snapshot_key: String::new(),
        created_at: UNIX_EPOCH,
        updated_at: UNIX_EPOCH,
        extensions: BTreeMap::new(),
        sandbox: String::new(),
    }
}

fn image(name: &str) -> Image {
    Image {
        name: name.to_string(),
        labels: Default::default(),
        target: Descriptor {
            urls: Vec::new(),
            platform: None,
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: Digest::of(b"bench"),
            size: 337,
            annotations: Default::default(),
        },
        created_at: UNIX_EPOCH,
        updated_at: UNIX_EPOCH,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by bench/metad.sh"]
async fn metad_api_throughput() {
    let Some(socket) = std::env::var_os("BERTH_BENCH_METAD") else {
        eprintln!("set BERTH_BENCH_METAD to a berth-metad socket");
        return;
    };
    let records: usize = std::env::var("BERTH_BENCH_RECORDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let lists: usize = std::env::var("BERTH_BENCH_LISTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let socket = std::path::PathBuf::from(socket);
    let containers = RemoteContainers::connect(&socket).await.unwrap();
    let images = RemoteImages::connect(&socket).await.unwrap();
    let ids: Vec<String> = (0..records).map(|i| format!("bench-{i}")).collect();

    let started = Instant::now();
    for i in 0..records {
        images
            .create(NS, image(&format!("docker.io/library/bench:t{i}")))
            .await
            .unwrap();
    }
    report("image-create", records, started);

    let started = Instant::now();
    for _ in 0..lists {
        assert_eq!(images.list(NS, &[]).await.unwrap().len(), records);
    }
    report("image-list", lists, started);
    println!(
        "api list-latency {records} images: {:.1} ms per list",
        started.elapsed().as_secs_f64() * 1000.0 / lists as f64
    );

    let started = Instant::now();
    for id in &ids {
        containers.create(NS, container(id)).await.unwrap();
    }
    report("container-create", records, started);

    let started = Instant::now();
    for id in &ids {
        containers.get(NS, id).await.unwrap();
    }
    report("container-get", records, started);

    let started = Instant::now();
    for id in &ids {
        containers.delete(NS, id).await.unwrap();
    }
    report("container-delete", records, started);
}
