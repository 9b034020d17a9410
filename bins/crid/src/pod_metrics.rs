//! `ListMetricDescriptors` and `ListPodSandboxMetrics`: the usage crid
//! gathers for `PodSandboxStats`, as metrics named as cAdvisor names them,
//! for a kubelet that serves `/metrics/cadvisor` from the runtime
//! (`PodAndContainerStatsFromCRI`). Labels are containerd's: the id and
//! the name of the pod or container (and the interface for network
//! counters). The values are whole numbers, as the CRI carries them: CPU
//! time in whole seconds, like containerd's.

use k8s_cri::v1 as cri;

/// How one metric is read from a pod's or a container's stats.
struct Definition {
    name: &'static str,
    help: &'static str,
    kind: cri::MetricType,
    per_interface: bool,
}

const fn counter(name: &'static str, help: &'static str) -> Definition {
    Definition {
        name,
        help,
        kind: cri::MetricType::Counter,
        per_interface: false,
    }
}

const fn gauge(name: &'static str, help: &'static str) -> Definition {
    Definition {
        name,
        help,
        kind: cri::MetricType::Gauge,
        per_interface: false,
    }
}

const fn interface_counter(name: &'static str, help: &'static str) -> Definition {
    Definition {
        name,
        help,
        kind: cri::MetricType::Counter,
        per_interface: true,
    }
}

const CPU_SECONDS: Definition = counter(
    "container_cpu_usage_seconds_total",
    "Cumulative CPU time consumed in seconds.",
);
const MEMORY_USAGE: Definition = gauge(
    "container_memory_usage_bytes",
    "Current memory usage in bytes, including all memory regardless of when it was accessed.",
);
const MEMORY_WORKING_SET: Definition = gauge(
    "container_memory_working_set_bytes",
    "Current working set in bytes.",
);
const MEMORY_RSS: Definition = gauge("container_memory_rss", "Size of RSS in bytes.");
const MEMORY_SWAP: Definition = gauge("container_memory_swap", "Container swap usage in bytes.");
const PROCESSES: Definition = gauge(
    "container_processes",
    "Number of processes running inside the container.",
);
const FS_USAGE: Definition = gauge(
    "container_fs_usage_bytes",
    "Number of bytes that are consumed by the container on this filesystem.",
);
const RECEIVE_BYTES: Definition = interface_counter(
    "container_network_receive_bytes_total",
    "Cumulative count of bytes received.",
);
const RECEIVE_ERRORS: Definition = interface_counter(
    "container_network_receive_errors_total",
    "Cumulative count of errors encountered while receiving.",
);
const TRANSMIT_BYTES: Definition = interface_counter(
    "container_network_transmit_bytes_total",
    "Cumulative count of bytes transmitted.",
);
const TRANSMIT_ERRORS: Definition = interface_counter(
    "container_network_transmit_errors_total",
    "Cumulative count of errors encountered while transmitting.",
);

const ALL: &[&Definition] = &[
    &CPU_SECONDS,
    &MEMORY_USAGE,
    &MEMORY_WORKING_SET,
    &MEMORY_RSS,
    &MEMORY_SWAP,
    &PROCESSES,
    &FS_USAGE,
    &RECEIVE_BYTES,
    &RECEIVE_ERRORS,
    &TRANSMIT_BYTES,
    &TRANSMIT_ERRORS,
];

impl Definition {
    fn label_keys(&self) -> Vec<String> {
        let mut keys = vec!["id".to_string(), "name".to_string()];
        if self.per_interface {
            keys.push("interface".to_string());
        }
        keys
    }

    fn metric(&self, timestamp: i64, labels: &[&str], value: u64) -> cri::Metric {
        cri::Metric {
            name: self.name.to_string(),
            timestamp,
            metric_type: self.kind as i32,
            label_values: labels.iter().map(|l| l.to_string()).collect(),
            value: Some(cri::UInt64Value { value }),
        }
    }
}

/// Every metric `pod_metrics` may report.
pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    ALL.iter()
        .map(|d| cri::MetricDescriptor {
            name: d.name.to_string(),
            help: d.help.to_string(),
            label_keys: d.label_keys(),
        })
        .collect()
}

fn value(v: &Option<cri::UInt64Value>) -> Option<u64> {
    v.as_ref().map(|v| v.value)
}

/// CPU and memory of one pod or container.
fn usage_metrics(
    cpu: Option<&cri::CpuUsage>,
    memory: Option<&cri::MemoryUsage>,
    labels: &[&str],
    out: &mut Vec<cri::Metric>,
) {
    if let Some(cpu) = cpu {
        if let Some(nanos) = value(&cpu.usage_core_nano_seconds) {
            out.push(CPU_SECONDS.metric(cpu.timestamp, labels, nanos / 1_000_000_000));
        }
    }
    if let Some(memory) = memory {
        for (definition, v) in [
            (&MEMORY_USAGE, &memory.usage_bytes),
            (&MEMORY_WORKING_SET, &memory.working_set_bytes),
            (&MEMORY_RSS, &memory.rss_bytes),
        ] {
            if let Some(v) = value(v) {
                out.push(definition.metric(memory.timestamp, labels, v));
            }
        }
    }
}

/// The `id` and `name` labels of a pod or a container (its name empty
/// when its metadata is missing).
fn id_and_name(id: &str, name: Option<&String>) -> (String, String) {
    (id.to_string(), name.cloned().unwrap_or_default())
}

/// A pod's metrics from its stats: the pod's own (CPU, memory, processes,
/// network per interface) and each container's (CPU, memory, swap, its
/// writable layer).
pub fn pod_metrics(stats: &cri::PodSandboxStats) -> cri::PodSandboxMetrics {
    let (id, name) = stats
        .attributes
        .as_ref()
        .map_or_else(Default::default, |a| {
            id_and_name(&a.id, a.metadata.as_ref().map(|m| &m.name))
        });
    let pod_labels = [id.as_str(), name.as_str()];
    let mut metrics = Vec::new();
    let mut container_metrics = Vec::new();
    if let Some(linux) = &stats.linux {
        usage_metrics(
            linux.cpu.as_ref(),
            linux.memory.as_ref(),
            &pod_labels,
            &mut metrics,
        );
        if let Some(process) = &linux.process {
            if let Some(count) = value(&process.process_count) {
                metrics.push(PROCESSES.metric(process.timestamp, &pod_labels, count));
            }
        }
        if let Some(network) = &linux.network {
            for interface in network.default_interface.iter().chain(&network.interfaces) {
                let labels = [id.as_str(), name.as_str(), interface.name.as_str()];
                for (definition, v) in [
                    (&RECEIVE_BYTES, &interface.rx_bytes),
                    (&RECEIVE_ERRORS, &interface.rx_errors),
                    (&TRANSMIT_BYTES, &interface.tx_bytes),
                    (&TRANSMIT_ERRORS, &interface.tx_errors),
                ] {
                    if let Some(v) = value(v) {
                        metrics.push(definition.metric(network.timestamp, &labels, v));
                    }
                }
            }
        }
        for container in &linux.containers {
            let (container_id, container_name) = container
                .attributes
                .as_ref()
                .map_or_else(Default::default, |a| {
                    id_and_name(&a.id, a.metadata.as_ref().map(|m| &m.name))
                });
            let labels = [container_id.as_str(), container_name.as_str()];
            let mut own = Vec::new();
            usage_metrics(
                container.cpu.as_ref(),
                container.memory.as_ref(),
                &labels,
                &mut own,
            );
            if let Some(swap) = &container.swap {
                if let Some(v) = value(&swap.swap_usage_bytes) {
                    own.push(MEMORY_SWAP.metric(swap.timestamp, &labels, v));
                }
            }
            if let Some(layer) = &container.writable_layer {
                if let Some(v) = value(&layer.used_bytes) {
                    own.push(FS_USAGE.metric(layer.timestamp, &labels, v));
                }
            }
            container_metrics.push(cri::ContainerMetrics {
                container_id,
                metrics: own,
            });
        }
    }
    cri::PodSandboxMetrics {
        pod_sandbox_id: id,
        metrics,
        container_metrics,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn n(value: u64) -> Option<cri::UInt64Value> {
        Some(cri::UInt64Value { value })
    }

    fn stats() -> cri::PodSandboxStats {
        let container = cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: "c1".into(),
                metadata: Some(cri::ContainerMetadata {
                    name: "web".into(),
                    attempt: 0,
                }),
                ..Default::default()
            }),
            cpu: Some(cri::CpuUsage {
                timestamp: 7,
                usage_core_nano_seconds: n(2_500_000_000),
                usage_nano_cores: n(1),
            }),
            memory: Some(cri::MemoryUsage {
                timestamp: 7,
                working_set_bytes: n(300),
                usage_bytes: n(400),
                rss_bytes: n(200),
                ..Default::default()
            }),
            writable_layer: Some(cri::FilesystemUsage {
                timestamp: 7,
                used_bytes: n(4096),
                ..Default::default()
            }),
            swap: None,
        };
        let eth0 = cri::NetworkInterfaceUsage {
            name: "eth0".into(),
            rx_bytes: n(10),
            rx_errors: n(0),
            tx_bytes: n(20),
            tx_errors: n(1),
        };
        cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: "p1".into(),
                metadata: Some(cri::PodSandboxMetadata {
                    name: "pod".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: Some(cri::CpuUsage {
                    timestamp: 5,
                    usage_core_nano_seconds: n(3_900_000_000),
                    usage_nano_cores: None,
                }),
                memory: None,
                network: Some(cri::NetworkUsage {
                    timestamp: 5,
                    default_interface: Some(eth0),
                    interfaces: Vec::new(),
                }),
                process: Some(cri::ProcessUsage {
                    timestamp: 5,
                    process_count: n(3),
                }),
                containers: vec![container],
            }),
            windows: None,
        }
    }

    fn find<'m>(metrics: &'m [cri::Metric], name: &str) -> &'m cri::Metric {
        metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn a_pods_stats_become_its_metrics_and_its_containers() {
        let metrics = pod_metrics(&stats());
        assert_eq!(metrics.pod_sandbox_id, "p1");
        let cpu = find(&metrics.metrics, "container_cpu_usage_seconds_total");
        assert_eq!(cpu.value.as_ref().unwrap().value, 3);
        assert_eq!(cpu.label_values, ["p1", "pod"]);
        assert_eq!(cpu.metric_type, cri::MetricType::Counter as i32);
        assert_eq!(cpu.timestamp, 5);
        let tx = find(&metrics.metrics, "container_network_transmit_bytes_total");
        assert_eq!(tx.label_values, ["p1", "pod", "eth0"]);
        assert_eq!(tx.value.as_ref().unwrap().value, 20);
        assert_eq!(
            find(&metrics.metrics, "container_processes")
                .value
                .as_ref()
                .unwrap()
                .value,
            3
        );
        assert!(
            metrics.metrics.iter().all(|m| !m.name.contains("memory")),
            "no memory stats, no memory metrics"
        );

        assert_eq!(metrics.container_metrics.len(), 1);
        let web = &metrics.container_metrics[0];
        assert_eq!(web.container_id, "c1");
        let working_set = find(&web.metrics, "container_memory_working_set_bytes");
        assert_eq!(working_set.value.as_ref().unwrap().value, 300);
        assert_eq!(working_set.label_values, ["c1", "web"]);
        assert_eq!(working_set.metric_type, cri::MetricType::Gauge as i32);
        assert_eq!(
            find(&web.metrics, "container_cpu_usage_seconds_total")
                .value
                .as_ref()
                .unwrap()
                .value,
            2
        );
        assert_eq!(
            find(&web.metrics, "container_fs_usage_bytes")
                .value
                .as_ref()
                .unwrap()
                .value,
            4096
        );
    }

    #[test]
    fn every_metric_reported_has_a_descriptor_with_as_many_labels() {
        let descriptors = descriptors();
        let mut names: Vec<_> = descriptors.iter().map(|d| d.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), descriptors.len(), "names are unique");
        let metrics = pod_metrics(&stats());
        let all = metrics
            .metrics
            .iter()
            .chain(metrics.container_metrics.iter().flat_map(|c| &c.metrics));
        for metric in all {
            let descriptor = descriptors
                .iter()
                .find(|d| d.name == metric.name)
                .unwrap_or_else(|| panic!("{} has no descriptor", metric.name));
            assert_eq!(
                descriptor.label_keys.len(),
                metric.label_values.len(),
                "{}",
                metric.name
            );
        }
    }
}
