//! metad's metrics: garbage collections (counted as they finish) and the
//! records each namespace holds (read at each scrape).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use berth_daemon::prometheus_client::metrics::counter::Counter;
use berth_daemon::prometheus_client::metrics::family::Family;
use berth_daemon::prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use berth_daemon::{Metrics, Sampled, Sampler};

use crate::gc::Report;
use crate::store::records::Records;

type Labels = [(&'static str, String); 1];

/// Collections run, by result (`ok` or `failed`).
pub static GC_RUNS: LazyLock<Family<Labels, Counter>> = LazyLock::new(Family::default);
/// Objects removed by collections, by kind (`content`, `snapshots/<name>`, `leases`).
pub static GC_REMOVED: LazyLock<Family<Labels, Counter>> = LazyLock::new(Family::default);
/// How long each collection held metad's writers back.
pub static GC_PAUSE_SECONDS: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(0.00005, 2.5, 12)));
/// How long each collection took in all.
pub static GC_DURATION_SECONDS: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(0.0005, 2.5, 12)));

/// Counts one finished collection.
pub fn collection_finished(outcome: &berth_errdefs::Result<Report>, took: Duration) {
    let result = if outcome.is_ok() { "ok" } else { "failed" };
    GC_RUNS
        .get_or_create(&[("result", result.to_string())])
        .inc();
    GC_DURATION_SECONDS.observe(took.as_secs_f64());
    if let Ok(report) = outcome {
        GC_PAUSE_SECONDS.observe(report.pause.as_secs_f64());
        for removed in &report.removed {
            GC_REMOVED
                .get_or_create(&[("kind", removed.kind.clone())])
                .inc();
        }
    }
}

/// Registers metad's counters and its records sampler with `metrics`.
pub fn register(metrics: &mut Metrics, records: Records) {
    let registry = metrics.registry();
    registry.register(
        "berth_gc_runs",
        "Garbage collections run, by result",
        GC_RUNS.clone(),
    );
    registry.register(
        "berth_gc_removed",
        "Objects garbage collections removed, by kind",
        GC_REMOVED.clone(),
    );
    registry.register(
        "berth_gc_pause_seconds",
        "How long each collection held metadata writers back",
        GC_PAUSE_SECONDS.clone(),
    );
    registry.register(
        "berth_gc_duration_seconds",
        "How long each collection took",
        GC_DURATION_SECONDS.clone(),
    );
    metrics.add_sampler(Arc::new(RecordSampler(records)));
}

struct RecordSampler(Records);

#[async_trait]
impl Sampler for RecordSampler {
    async fn sample(&self, out: &mut Sampled) {
        let records = self.0.clone();
        let counted = tokio::task::spawn_blocking(move || -> berth_errdefs::Result<_> {
            let txn = records.read()?;
            let namespaces = records.all_namespaces(&txn)?.len();
            let per_kind = [
                ("image", records.images.count_by_namespace(&txn)?),
                ("container", records.containers.count_by_namespace(&txn)?),
                ("lease", records.leases.count_by_namespace(&txn)?),
            ];
            Ok((namespaces, per_kind))
        })
        .await;
        let (namespaces, per_kind) = match counted {
            Ok(Ok(counted)) => counted,
            Ok(Err(e)) => return tracing::warn!(error = %e, "counting records for metrics"),
            Err(e) => return tracing::warn!(error = %e, "counting records for metrics"),
        };
        out.gauge("berth_namespaces", "Namespaces", &[], namespaces as f64);
        for (kind, counts) in per_kind {
            for (namespace, count) in counts {
                out.gauge(
                    "berth_metadata_records",
                    "Metadata records, by kind and namespace",
                    &[("kind", kind), ("namespace", &namespace)],
                    count as f64,
                );
            }
        }
    }
}
