//! `berth.gc.v1.GC` over ttrpc: a collection now, and what it did.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use berth_api::gc as pb;
use berth_daemon::reply;
use ttrpc::r#async::TtrpcContext;

use super::{Report, Scheduler};

/// The ttrpc service table to register with metad's server.
pub fn ttrpc_service(scheduler: Arc<Scheduler>) -> HashMap<String, ttrpc::r#async::Service> {
    pb::create_gc(Arc::new(GcService { scheduler }))
}

struct GcService {
    scheduler: Arc<Scheduler>,
}

#[async_trait]
impl pb::Gc for GcService {
    async fn collect(
        &self,
        _ctx: &TtrpcContext,
        _req: pb::CollectRequest,
    ) -> ttrpc::Result<pb::CollectResponse> {
        // Collections span every namespace: the request's is not used.
        reply(
            "Collect",
            self.scheduler.collect_now_report().await.map(|r| to_pb(&r)),
        )
    }
}

/// The wire form of a report.
pub fn to_pb(report: &Report) -> pb::CollectResponse {
    pb::CollectResponse {
        removed: report
            .removed
            .iter()
            .map(|r| pb::Removed {
                type_: r.kind.clone(),
                namespace: r.namespace.clone(),
                id: r.id.clone(),
                ..Default::default()
            })
            .collect(),
        duration_nanos: nanos(report.duration),
        pause_nanos: nanos(report.pause),
        skipped: report.skipped.clone(),
        ..Default::default()
    }
}

fn nanos(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::gc::Removed;

    #[test]
    fn reports_go_on_the_wire_whole() {
        let report = Report {
            removed: vec![
                Removed {
                    kind: "content".into(),
                    namespace: "default".into(),
                    id: "sha256:00".into(),
                },
                Removed {
                    kind: "snapshots/overlayfs".into(),
                    namespace: "other".into(),
                    id: "key".into(),
                },
            ],
            duration: Duration::from_millis(12),
            pause: Duration::from_micros(1500),
            skipped: vec!["berth-snapd".into()],
        };
        let wire = to_pb(&report);
        let removed: Vec<(&str, &str, &str)> = wire
            .removed
            .iter()
            .map(|r| (r.type_.as_str(), r.namespace.as_str(), r.id.as_str()))
            .collect();
        assert_eq!(
            removed,
            [
                ("content", "default", "sha256:00"),
                ("snapshots/overlayfs", "other", "key")
            ]
        );
        assert_eq!(wire.duration_nanos, 12_000_000);
        assert_eq!(wire.pause_nanos, 1_500_000);
        assert_eq!(wire.skipped, ["berth-snapd"]);
        assert_eq!(nanos(Duration::MAX), i64::MAX);
    }
}
