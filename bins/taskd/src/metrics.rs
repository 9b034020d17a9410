//! taskd's metrics: tasks by status, and each task's cgroup figures under
//! the names containerd's cgroups collector gives them
//! (`container_cpu_total_nanoseconds`, `container_memory_usage_bytes`, ...
//! labelled `container_id` and `namespace`), so dashboards built for
//! containerd read berth unchanged. All are read from the shims at scrape
//! time, as containerd does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use berth_daemon::{Metrics, Sampled, Sampler};
use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::Message;

use crate::manager::{TaskManager, TaskSample};

/// How long one scrape waits for a shim.
const SHIM_TIMEOUT: Duration = Duration::from_secs(2);

/// Registers taskd's sampler with `metrics`.
pub fn register(metrics: &mut Metrics, manager: Arc<TaskManager>) {
    metrics.add_sampler(Arc::new(TaskSampler(manager)));
}

struct TaskSampler(Arc<TaskManager>);

#[async_trait]
impl Sampler for TaskSampler {
    async fn sample(&self, out: &mut Sampled) {
        let samples = self.0.samples(SHIM_TIMEOUT).await;
        sample_tasks(&samples, out);
    }
}

/// Turns what the shims reported into families.
pub fn sample_tasks(samples: &[TaskSample], out: &mut Sampled) {
    let mut by_status: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for sample in samples {
        *by_status
            .entry((sample.namespace.as_str(), sample.status.as_str()))
            .or_default() += 1;
    }
    for ((namespace, status), count) in by_status {
        out.gauge(
            "berth_tasks",
            "Tasks, by namespace and status",
            &[("namespace", namespace), ("status", status)],
            count as f64,
        );
    }
    for sample in samples {
        let Some(stats) = &sample.stats else { continue };
        let labels = [
            ("container_id", sample.id.as_str()),
            ("namespace", sample.namespace.as_str()),
        ];
        let decoded = match stats.type_url.trim_start_matches('/') {
            "io.containerd.cgroups.v1.Metrics" => {
                v1::Metrics::parse_from_bytes(&stats.value).map(|m| cgroup_v1(&m, &labels, out))
            }
            "io.containerd.cgroups.v2.Metrics" => {
                v2::Metrics::parse_from_bytes(&stats.value).map(|m| cgroup_v2(&m, &labels, out))
            }
            other => {
                tracing::debug!(id = %sample.id, type_url = other, "metrics of an unknown type");
                Ok(())
            }
        };
        if let Err(e) = decoded {
            tracing::debug!(id = %sample.id, error = %e, "undecodable task metrics");
        }
    }
}

fn cgroup_v1(m: &v1::Metrics, labels: &[(&str, &str)], out: &mut Sampled) {
    let mut gauge = |name: &str, help: &str, value: u64| {
        out.gauge(name, help, labels, value as f64);
    };
    if let Some(cpu) = m.cpu.as_ref() {
        if let Some(usage) = cpu.usage.as_ref() {
            gauge(
                "container_cpu_total_nanoseconds",
                "The total cpu time",
                usage.total,
            );
            gauge(
                "container_cpu_kernel_nanoseconds",
                "The total kernel cpu time",
                usage.kernel,
            );
            gauge(
                "container_cpu_user_nanoseconds",
                "The total user cpu time",
                usage.user,
            );
        }
        if let Some(throttling) = cpu.throttling.as_ref() {
            gauge(
                "container_cpu_throttle_periods_total",
                "The total cpu throttle periods",
                throttling.periods,
            );
            gauge(
                "container_cpu_throttled_periods_total",
                "The total cpu throttled periods",
                throttling.throttled_periods,
            );
            gauge(
                "container_cpu_throttled_time_nanoseconds",
                "The total cpu throttled time",
                throttling.throttled_time,
            );
        }
    }
    if let Some(memory) = m.memory.as_ref() {
        gauge(
            "container_memory_cache_bytes",
            "The cache amount used",
            memory.cache,
        );
        gauge(
            "container_memory_rss_bytes",
            "The rss amount used",
            memory.rss,
        );
        if let Some(usage) = memory.usage.as_ref() {
            gauge(
                "container_memory_usage_usage_bytes",
                "The memory usage",
                usage.usage,
            );
            gauge(
                "container_memory_usage_limit_bytes",
                "The memory limit",
                usage.limit,
            );
            gauge(
                "container_memory_usage_max_bytes",
                "The memory maximum usage",
                usage.max,
            );
            gauge(
                "container_memory_usage_failcnt_total",
                "The usage failcnt",
                usage.failcnt,
            );
        }
        if let Some(swap) = memory.swap.as_ref() {
            gauge(
                "container_memory_swap_usage_bytes",
                "The swap usage",
                swap.usage,
            );
            gauge(
                "container_memory_swap_limit_bytes",
                "The swap limit",
                swap.limit,
            );
        }
    }
    if let Some(pids) = m.pids.as_ref() {
        pids_gauges(&mut gauge, pids.current, pids.limit);
    }
    if let Some(cpu_usage) = m.cpu.as_ref().and_then(|cpu| cpu.usage.as_ref()) {
        for (cpu, value) in cpu_usage.per_cpu.iter().enumerate() {
            let cpu = cpu.to_string();
            let mut with_cpu = labels.to_vec();
            with_cpu.push(("cpu", &cpu));
            out.gauge(
                "container_per_cpu_nanoseconds",
                "The total cpu time per cpu",
                &with_cpu,
                *value as f64,
            );
        }
    }
}

fn cgroup_v2(m: &v2::Metrics, labels: &[(&str, &str)], out: &mut Sampled) {
    let mut gauge = |name: &str, help: &str, value: u64| {
        out.gauge(name, help, labels, value as f64);
    };
    if let Some(cpu) = m.cpu.as_ref() {
        gauge(
            "container_cpu_usage_usec_microseconds",
            "Total cpu usage (cgroup v2)",
            cpu.usage_usec,
        );
        gauge(
            "container_cpu_user_usec_microseconds",
            "Current cpu usage in user space (cgroup v2)",
            cpu.user_usec,
        );
        gauge(
            "container_cpu_system_usec_microseconds",
            "Current cpu usage in kernel space (cgroup v2)",
            cpu.system_usec,
        );
        gauge(
            "container_cpu_nr_periods_total",
            "Current cpu number of periods (only if controller is enabled)",
            cpu.nr_periods,
        );
        gauge(
            "container_cpu_nr_throttled_total",
            "Total number of times tasks have been throttled (only if controller is enabled)",
            cpu.nr_throttled,
        );
        gauge("container_cpu_throttled_usec_microseconds", "Total time duration for which tasks have been throttled. (only if controller is enabled)", cpu.throttled_usec);
    }
    if let Some(memory) = m.memory.as_ref() {
        gauge(
            "container_memory_usage_bytes",
            "Current memory usage (cgroup v2)",
            memory.usage,
        );
        gauge(
            "container_memory_usage_limit_bytes",
            "Current memory usage limit (cgroup v2)",
            memory.usage_limit,
        );
        gauge(
            "container_memory_swap_usage_bytes",
            "Current swap usage (cgroup v2)",
            memory.swap_usage,
        );
        gauge(
            "container_memory_swap_limit_bytes",
            "Current swap usage limit (cgroup v2)",
            memory.swap_limit,
        );
        gauge(
            "container_memory_anon_bytes",
            "Amount of memory used in anonymous mappings",
            memory.anon,
        );
        gauge(
            "container_memory_file_bytes",
            "Amount of memory used to cache filesystem data",
            memory.file,
        );
    }
    if let Some(events) = m.memory_events.as_ref() {
        gauge(
            "container_memory_oom_total",
            "The number of times a container has received an oom event",
            events.oom,
        );
    }
    if let Some(pids) = m.pids.as_ref() {
        pids_gauges(&mut gauge, pids.current, pids.limit);
    }
}

/// The pids controller's figures, named alike under v1 and v2.
fn pids_gauges(gauge: &mut impl FnMut(&str, &str, u64), current: u64, limit: u64) {
    gauge(
        "container_pids_current",
        "The current number of pids",
        current,
    );
    gauge(
        "container_pids_limit",
        "The limit to the number of pids allowed",
        limit,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_tasks::Status;

    fn sample(id: &str, status: Status, stats: Option<(&str, Vec<u8>)>) -> TaskSample {
        TaskSample {
            namespace: "ns".into(),
            id: id.into(),
            status,
            stats: stats.map(|(type_url, value)| berth_metadata::Any {
                type_url: type_url.into(),
                value,
            }),
        }
    }

    #[test]
    fn v1_and_v2_cgroup_figures_get_containerds_names_and_labels() {
        let mut one = v1::Metrics::new();
        let mut usage = v1::CPUUsage::new();
        usage.total = 1500;
        usage.per_cpu = vec![1000, 500];
        let mut cpu = v1::CPUStat::new();
        cpu.usage = Some(usage).into();
        one.cpu = Some(cpu).into();
        let mut memory = v1::MemoryStat::new();
        let mut entry = v1::MemoryEntry::new();
        entry.usage = 4096;
        entry.limit = 1 << 20;
        memory.usage = Some(entry).into();
        one.memory = Some(memory).into();
        let mut pids = v1::PidsStat::new();
        pids.current = 3;
        one.pids = Some(pids).into();

        let mut two = v2::Metrics::new();
        let mut memory = v2::MemoryStat::new();
        memory.usage = 8192;
        two.memory = Some(memory).into();
        let mut cpu = v2::CPUStat::new();
        cpu.usage_usec = 77;
        two.cpu = Some(cpu).into();

        let samples = [
            sample(
                "a",
                Status::Running,
                Some((
                    "io.containerd.cgroups.v1.Metrics",
                    one.write_to_bytes().unwrap(),
                )),
            ),
            sample(
                "b",
                Status::Running,
                Some((
                    "io.containerd.cgroups.v2.Metrics",
                    two.write_to_bytes().unwrap(),
                )),
            ),
            sample("c", Status::Stopped, None),
            sample(
                "d",
                Status::Running,
                Some(("io.containerd.cgroups.v1.Metrics", vec![0xff])),
            ),
        ];
        let mut out = Sampled::default();
        sample_tasks(&samples, &mut out);
        let a = [("container_id", "a"), ("namespace", "ns")];
        let b = [("container_id", "b"), ("namespace", "ns")];
        assert_eq!(
            out.value("container_cpu_total_nanoseconds", &a),
            Some(1500.0)
        );
        assert_eq!(
            out.value("container_memory_usage_usage_bytes", &a),
            Some(4096.0)
        );
        assert_eq!(
            out.value("container_memory_usage_limit_bytes", &a),
            Some(1048576.0)
        );
        assert_eq!(out.value("container_pids_current", &a), Some(3.0));
        assert_eq!(
            out.value(
                "container_per_cpu_nanoseconds",
                &[("container_id", "a"), ("namespace", "ns"), ("cpu", "1")]
            ),
            Some(500.0)
        );
        assert_eq!(out.value("container_memory_usage_bytes", &b), Some(8192.0));
        assert_eq!(
            out.value("container_cpu_usage_usec_microseconds", &b),
            Some(77.0)
        );
        assert_eq!(out.value("container_cpu_total_nanoseconds", &b), None);
        assert_eq!(
            out.value("berth_tasks", &[("namespace", "ns"), ("status", "running")]),
            Some(3.0)
        );
        assert_eq!(
            out.value("berth_tasks", &[("namespace", "ns"), ("status", "stopped")]),
            Some(1.0)
        );
        // Undecodable figures are left out, not guessed.
        let d = [("container_id", "d"), ("namespace", "ns")];
        assert_eq!(out.value("container_pids_current", &d), None);
    }
}
