//! A task's resource usage in the few figures its users ask for (the CRI's
//! container stats, `berth stats`), read from the cgroup metrics its shim
//! reports: containerd's `io.containerd.cgroups.v1.Metrics` or
//! `io.containerd.cgroups.v2.Metrics`.

use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::Message;

use crate::Metric;

/// One sample of a task's usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time used since the task started, in nanoseconds.
    pub cpu_nanos: u64,
    /// Memory charged to the cgroup (page cache included).
    pub memory_bytes: u64,
    /// What the kubelet evicts by: memory minus inactive file pages.
    pub working_set_bytes: u64,
    /// Anonymous memory.
    pub rss_bytes: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// Processes (and threads) in the cgroup.
    pub processes: u64,
    /// The memory limit; `None` when there is none.
    pub memory_limit_bytes: Option<u64>,
    /// The limit on processes; `None` when there is none.
    pub pids_limit: Option<u64>,
}

/// A limit as the metrics say it: `None` for the ways they say "none":
/// 0 (v1's pids limit of "max"), the largest u64 (v2's "max"), and v1's
/// memory ceiling of 2^63 rounded down to a page (anything from 2^62 up
/// is no real limit).
fn limit(value: u64) -> Option<u64> {
    (value != 0 && value < 1 << 62).then_some(value)
}

impl std::iter::Sum for Usage {
    /// The usage of several cgroups together (a pod's containers).
    fn sum<I: Iterator<Item = Usage>>(usages: I) -> Usage {
        usages.fold(Usage::default(), |a, u| Usage {
            cpu_nanos: a.cpu_nanos + u.cpu_nanos,
            memory_bytes: a.memory_bytes + u.memory_bytes,
            working_set_bytes: a.working_set_bytes + u.working_set_bytes,
            rss_bytes: a.rss_bytes + u.rss_bytes,
            page_faults: a.page_faults + u.page_faults,
            major_page_faults: a.major_page_faults + u.major_page_faults,
            processes: a.processes + u.processes,
            // Several cgroups' limits do not add up to one.
            memory_limit_bytes: None,
            pids_limit: None,
        })
    }
}

pub const CGROUPS_V1_METRICS: &str = "io.containerd.cgroups.v1.Metrics";
pub const CGROUPS_V2_METRICS: &str = "io.containerd.cgroups.v2.Metrics";

/// The usage in a metric, when it is one of containerd's cgroup metrics.
pub fn usage(metric: &Metric) -> Option<Usage> {
    let bytes = &metric.data.value;
    match metric.data.type_url.trim_start_matches('/') {
        CGROUPS_V1_METRICS => v1::Metrics::parse_from_bytes(bytes).ok().map(|m| {
            let memory = m.memory.as_ref();
            let usage = memory.and_then(|m| m.usage.as_ref()).map_or(0, |u| u.usage);
            let inactive = memory.map_or(0, |m| m.total_inactive_file);
            Usage {
                cpu_nanos: m
                    .cpu
                    .as_ref()
                    .and_then(|c| c.usage.as_ref())
                    .map_or(0, |u| u.total),
                memory_bytes: usage,
                working_set_bytes: usage.saturating_sub(inactive),
                rss_bytes: memory.map_or(0, |m| m.total_rss),
                page_faults: memory.map_or(0, |m| m.total_pg_fault),
                major_page_faults: memory.map_or(0, |m| m.total_pg_maj_fault),
                processes: m.pids.as_ref().map_or(0, |p| p.current),
                memory_limit_bytes: memory
                    .and_then(|m| m.usage.as_ref())
                    .and_then(|u| limit(u.limit)),
                pids_limit: m.pids.as_ref().and_then(|p| limit(p.limit)),
            }
        }),
        CGROUPS_V2_METRICS => v2::Metrics::parse_from_bytes(bytes).ok().map(|m| {
            let memory = m.memory.as_ref();
            let usage = memory.map_or(0, |m| m.usage);
            let inactive = memory.map_or(0, |m| m.inactive_file);
            Usage {
                cpu_nanos: m
                    .cpu
                    .as_ref()
                    .map_or(0, |c| c.usage_usec.saturating_mul(1000)),
                memory_bytes: usage,
                working_set_bytes: usage.saturating_sub(inactive),
                rss_bytes: memory.map_or(0, |m| m.anon),
                page_faults: memory.map_or(0, |m| m.pgfault),
                major_page_faults: memory.map_or(0, |m| m.pgmajfault),
                processes: m.pids.as_ref().map_or(0, |p| p.current),
                memory_limit_bytes: memory.and_then(|m| limit(m.usage_limit)),
                pids_limit: m.pids.as_ref().and_then(|p| limit(p.limit)),
            }
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_metadata::Any;

    fn metric(type_url: &str, value: Vec<u8>) -> Metric {
        Metric {
            container_id: "c".into(),
            at: std::time::SystemTime::now(),
            data: Any {
                type_url: type_url.into(),
                value,
            },
        }
    }

    #[test]
    fn v1_and_v2_metrics_give_the_same_figures() {
        let mut m1 = v1::Metrics::new();
        let mut cpu = v1::CPUStat::new();
        let mut cpu_usage = v1::CPUUsage::new();
        cpu_usage.total = 5_000;
        cpu.usage = Some(cpu_usage).into();
        m1.cpu = Some(cpu).into();
        let mut mem = v1::MemoryStat::new();
        let mut mem_usage = v1::MemoryEntry::new();
        mem_usage.usage = 1000;
        mem_usage.limit = 64 << 20;
        mem.usage = Some(mem_usage).into();
        mem.total_inactive_file = 300;
        mem.total_rss = 600;
        mem.total_pg_fault = 7;
        mem.total_pg_maj_fault = 1;
        m1.memory = Some(mem).into();
        let mut pids = v1::PidsStat::new();
        pids.current = 3;
        pids.limit = 0; // "max"
        m1.pids = Some(pids).into();
        let from_v1 = usage(&metric(
            CGROUPS_V1_METRICS,
            m1.write_to_bytes().unwrap_or_default(),
        ));

        let mut m2 = v2::Metrics::new();
        let mut cpu = v2::CPUStat::new();
        cpu.usage_usec = 5;
        m2.cpu = Some(cpu).into();
        let mut mem = v2::MemoryStat::new();
        mem.usage = 1000;
        mem.inactive_file = 300;
        mem.anon = 600;
        mem.pgfault = 7;
        mem.pgmajfault = 1;
        mem.usage_limit = 64 << 20;
        m2.memory = Some(mem).into();
        let mut pids = v2::PidsStat::new();
        pids.current = 3;
        pids.limit = u64::MAX; // "max"
        m2.pids = Some(pids).into();
        let from_v2 = usage(&metric(
            &format!("/{CGROUPS_V2_METRICS}"),
            m2.write_to_bytes().unwrap_or_default(),
        ));
        let want = Usage {
            cpu_nanos: 5_000,
            memory_bytes: 1000,
            working_set_bytes: 700,
            rss_bytes: 600,
            page_faults: 7,
            major_page_faults: 1,
            processes: 3,
            memory_limit_bytes: Some(64 << 20),
            pids_limit: None,
        };
        assert_eq!(from_v1, Some(want));
        assert_eq!(from_v2, Some(want));
        assert_eq!(usage(&metric("other", vec![])), None);
    }

    #[test]
    fn the_ways_of_saying_no_limit_are_none() {
        assert_eq!(limit(0), None);
        assert_eq!(limit(u64::MAX), None);
        assert_eq!(limit(9_223_372_036_854_771_712), None);
        assert_eq!(limit(42), Some(42));
    }

    #[test]
    fn usages_add_up_field_by_field() {
        let one = Usage {
            cpu_nanos: 1,
            memory_bytes: 2,
            working_set_bytes: 3,
            rss_bytes: 4,
            page_faults: 5,
            major_page_faults: 6,
            processes: 7,
            memory_limit_bytes: Some(8),
            pids_limit: Some(9),
        };
        let total: Usage = [one, one].into_iter().sum();
        assert_eq!(
            total,
            Usage {
                cpu_nanos: 2,
                memory_bytes: 4,
                working_set_bytes: 6,
                rss_bytes: 8,
                page_faults: 10,
                major_page_faults: 12,
                processes: 14,
                memory_limit_bytes: None,
                pids_limit: None,
            }
        );
    }
}
