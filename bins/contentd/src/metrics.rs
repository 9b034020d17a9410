//! contentd's metrics: bytes and blobs as they arrive (counted where the
//! work happens), and what the store holds (read at each scrape).

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use berth_daemon::prometheus_client::metrics::counter::Counter;
use berth_daemon::{Metrics, Sampled, Sampler};

use crate::store::LocalStore;

/// Bytes written into ingests (by clients and by registry fetches).
pub static INGESTED_BYTES: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Bytes contentd read from files callers passed it (WRITE_FILE), a part
/// of the ingested bytes.
pub static PASSED_FILE_BYTES: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Ingests committed as new blob records.
pub static COMMITTED_BLOBS: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Bytes received from registries.
pub static FETCHED_BYTES: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Blobs fetched from registries (not those already present).
pub static FETCHED_BLOBS: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Registers contentd's counters and its store sampler with `metrics`.
pub fn register(metrics: &mut Metrics, store: LocalStore) {
    let registry = metrics.registry();
    registry.register(
        "berth_content_ingested_bytes",
        "Bytes written into ingests",
        INGESTED_BYTES.clone(),
    );
    registry.register(
        "berth_content_passed_file_bytes",
        "Bytes read from files callers passed instead of sending their bytes",
        PASSED_FILE_BYTES.clone(),
    );
    registry.register(
        "berth_content_committed_blobs",
        "Ingests committed as new blob records",
        COMMITTED_BLOBS.clone(),
    );
    registry.register(
        "berth_transfer_fetched_bytes",
        "Bytes received from registries",
        FETCHED_BYTES.clone(),
    );
    registry.register(
        "berth_transfer_fetched_blobs",
        "Blobs fetched from registries and stored",
        FETCHED_BLOBS.clone(),
    );
    metrics.add_sampler(Arc::new(StoreSampler(store)));
}

struct StoreSampler(LocalStore);

#[async_trait]
impl Sampler for StoreSampler {
    async fn sample(&self, out: &mut Sampled) {
        let usage = match self.0.usage().await {
            Ok(usage) => usage,
            Err(e) => {
                tracing::warn!(error = %e, "reading the content store's usage for metrics");
                return;
            }
        };
        for (namespace, (blobs, bytes)) in &usage.namespaces {
            let labels = [("namespace", namespace.as_str())];
            out.gauge(
                "berth_content_blobs",
                "Blob records, by namespace",
                &labels,
                *blobs as f64,
            );
            out.gauge(
                "berth_content_blob_bytes",
                "Bytes of the blobs a namespace holds",
                &labels,
                *bytes as f64,
            );
        }
        out.gauge(
            "berth_content_stored_blobs",
            "Distinct blobs on disk",
            &[],
            usage.stored_blobs as f64,
        );
        out.gauge(
            "berth_content_stored_bytes",
            "Bytes of the distinct blobs on disk",
            &[],
            usage.stored_bytes as f64,
        );
        out.gauge(
            "berth_content_ingests",
            "Ingests in progress or left to resume",
            &[],
            usage.ingests as f64,
        );
    }
}
