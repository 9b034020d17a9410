//! snapd's metrics: layers unpacked (counted as they are applied) and the
//! snapshots each snapshotter holds (read at each scrape).

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use berth_daemon::prometheus_client::metrics::counter::Counter;
use berth_daemon::prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use berth_daemon::{Metrics, Sampled, Sampler};

use crate::local::Backend;
use crate::records::{Records, StoredKind};

/// Layers applied into new snapshots.
pub static LAYERS_APPLIED: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Compressed bytes of the layers applied (their blobs' sizes).
pub static LAYER_BYTES_APPLIED: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Time to apply one layer, from its first byte read to its last written.
pub static LAYER_APPLY_SECONDS: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(0.001, 2.0, 16)));

/// Counts one applied layer of `blob_size` bytes that took `took`.
pub fn layer_applied(blob_size: u64, took: Duration) {
    LAYERS_APPLIED.inc();
    LAYER_BYTES_APPLIED.inc_by(blob_size);
    LAYER_APPLY_SECONDS.observe(took.as_secs_f64());
}

/// Registers snapd's counters and its snapshot sampler with `metrics`.
pub fn register(metrics: &mut Metrics, records: Records) {
    let registry = metrics.registry();
    registry.register(
        "berth_unpack_layers",
        "Layers applied into new snapshots",
        LAYERS_APPLIED.clone(),
    );
    registry.register(
        "berth_unpack_layer_bytes",
        "Compressed bytes of the layers applied (rate() is the unpack throughput)",
        LAYER_BYTES_APPLIED.clone(),
    );
    registry.register(
        "berth_unpack_layer_duration_seconds",
        "Time to apply one layer",
        LAYER_APPLY_SECONDS.clone(),
    );
    metrics.add_sampler(Arc::new(SnapshotSampler(records)));
}

struct SnapshotSampler(Records);

#[async_trait]
impl Sampler for SnapshotSampler {
    async fn sample(&self, out: &mut Sampled) {
        let records = self.0.clone();
        let counted = tokio::task::spawn_blocking(move || -> berth_errdefs::Result<_> {
            let mut counts = BTreeMap::new();
            for backend in [Backend::Overlay, Backend::Native] {
                for (namespace, _, record) in records.all(backend.name())? {
                    let kind = match record.kind {
                        StoredKind::View => "view",
                        StoredKind::Active => "active",
                        StoredKind::Committed => "committed",
                    };
                    *counts
                        .entry((backend.name(), namespace, kind))
                        .or_insert(0u64) += 1;
                }
            }
            Ok(counts)
        })
        .await;
        let counts = match counted {
            Ok(Ok(counts)) => counts,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "counting snapshots for metrics");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "counting snapshots for metrics");
                return;
            }
        };
        for ((snapshotter, namespace, kind), count) in counts {
            out.gauge(
                "berth_snapshots",
                "Snapshots, by snapshotter, namespace and kind",
                &[
                    ("snapshotter", snapshotter),
                    ("namespace", &namespace),
                    ("kind", kind),
                ],
                count as f64,
            );
        }
    }
}
