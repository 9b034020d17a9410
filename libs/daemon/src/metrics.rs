//! Prometheus metrics, served over HTTP when a daemon is given
//! `--metrics-address` (host:port, or an absolute path for a unix socket).
//!
//! Every daemon gets the same base: a request counter and a latency
//! histogram per ttrpc method (every service is wrapped by
//! [`Metrics::instrument`], so no handler counts for itself), the process's
//! own figures (`process_*`, as Prometheus' other clients name them) and
//! `berth_build_info`. A daemon adds its own counters to
//! [`Metrics::registry`] and, for values that are read rather than counted
//! (store sizes, a container's cgroup figures), a [`Sampler`] that runs
//! before each scrape.
//!
//! The endpoint answers `GET /metrics` (and `/v1/metrics`, containerd's
//! path) in the OpenMetrics text format.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Instant;

use async_trait::async_trait;
use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use ttrpc::r#async::{MethodHandler, Service, StreamHandler, TtrpcContext};

use crate::DaemonError;

/// Where the metrics endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAddress {
    /// `host:port` (a name is resolved when binding).
    Tcp(String),
    /// A unix socket at this absolute path (mode 0660, like the daemon's).
    Unix(PathBuf),
}

impl std::str::FromStr for MetricsAddress {
    type Err = DaemonError;

    fn from_str(text: &str) -> Result<MetricsAddress, DaemonError> {
        let invalid = || {
            DaemonError::InvalidSetting(format!(
                "metrics address must be host:port or an absolute socket path, not {text:?}"
            ))
        };
        if let Some(path) = text.strip_prefix("unix://").or(Some(text)) {
            if path.starts_with('/') {
                return Ok(MetricsAddress::Unix(PathBuf::from(path)));
            }
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(invalid)?;
        if port.parse::<u16>().is_err() || host.contains('/') {
            return Err(invalid());
        }
        Ok(MetricsAddress::Tcp(text.to_string()))
    }
}

/// Values read at scrape time rather than counted as work happens.
#[async_trait]
pub trait Sampler: Send + Sync {
    /// Adds this sampler's current values to `out`. Failures to read a
    /// value are logged and the value left out; a scrape never fails.
    async fn sample(&self, out: &mut Sampled);
}

/// The families one scrape's samplers produced.
#[derive(Debug, Default)]
pub struct Sampled {
    families: Vec<SampledFamily>,
}

#[derive(Debug)]
struct SampledFamily {
    name: String,
    help: String,
    kind: MetricType,
    samples: Vec<(Vec<(String, String)>, f64)>,
}

impl Sampled {
    /// Sets a gauge's value for one label set.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.push(name, help, MetricType::Gauge, labels, value);
    }

    /// Sets a counter's value (`name` without `_total`, which the encoding
    /// appends) for one label set.
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.push(name, help, MetricType::Counter, labels, value);
    }

    fn push(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match self.families.iter_mut().find(|f| f.name == name) {
            Some(family) => family.samples.push((labels, value)),
            None => self.families.push(SampledFamily {
                name: name.to_string(),
                help: help.to_string(),
                kind,
                samples: vec![(labels, value)],
            }),
        }
    }

    /// The value of `name` with exactly `labels`, if sampled (for tests).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let family = self.families.iter().find(|f| f.name == name)?;
        family
            .samples
            .iter()
            .find(|(have, _)| {
                have.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
            })
            .map(|(_, value)| *value)
    }
}

/// Hands the last scrape's samples to the registry's encoder.
#[derive(Debug, Default)]
struct SampledCollector(Arc<StdMutex<Sampled>>);

impl Collector for SampledCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sampled = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for family in &sampled.families {
            let mut metric =
                encoder.encode_descriptor(&family.name, &family.help, None, family.kind)?;
            for (labels, value) in &family.samples {
                let sample = metric.encode_family(labels)?;
                match family.kind {
                    MetricType::Counter => ConstCounter::new(*value).encode(sample)?,
                    _ => ConstGauge::new(*value).encode(sample)?,
                }
            }
        }
        Ok(())
    }
}

type MethodLabels = [(&'static str, String); 2];
type RequestLabels = [(&'static str, String); 3];

fn latency_histogram() -> Histogram {
    // 50 µs to about 13 s: a metadata read to a layer unpack.
    Histogram::new(exponential_buckets(0.00005, 2.5, 14))
}

#[derive(Clone)]
struct TtrpcMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: Family<MethodLabels, Histogram, fn() -> Histogram>,
}

impl TtrpcMetrics {
    fn record(&self, service: &str, method: &str, code: &str, started: Instant) {
        self.requests
            .get_or_create(&[
                ("service", service.to_string()),
                ("method", method.to_string()),
                ("code", code.to_string()),
            ])
            .inc();
        self.durations
            .get_or_create(&[
                ("service", service.to_string()),
                ("method", method.to_string()),
            ])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// A daemon's metrics: its registry, the ttrpc instrumentation and the
/// samplers that run before each scrape.
pub struct Metrics {
    registry: Registry,
    ttrpc: TtrpcMetrics,
    samplers: Vec<Arc<dyn Sampler>>,
    sampled: Arc<StdMutex<Sampled>>,
    /// One scrape at a time: each replaces the samples the next encodes.
    scrape: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("samplers", &self.samplers.len())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// The base every daemon serves, labelled with the daemon's name.
    pub fn new(daemon: &str) -> Metrics {
        let mut registry = Registry::default();
        let ttrpc = TtrpcMetrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(latency_histogram),
        };
        registry.register(
            "berth_ttrpc_requests",
            "ttrpc requests served, by service, method and status code",
            ttrpc.requests.clone(),
        );
        registry.register(
            "berth_ttrpc_request_duration_seconds",
            "Time from a ttrpc request's arrival at its handler to its reply",
            ttrpc.durations.clone(),
        );
        registry.register(
            "berth_build",
            "The daemon's name and version",
            Info::new(vec![
                ("daemon".to_string(), daemon.to_string()),
                ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            ]),
        );
        let sampled = Arc::new(StdMutex::new(Sampled::default()));
        registry.register_collector(Box::new(SampledCollector(sampled.clone())));
        Metrics {
            registry,
            ttrpc,
            samplers: vec![Arc::new(ProcessSampler)],
            sampled,
            scrape: tokio::sync::Mutex::new(()),
        }
    }

    /// The daemon's metrics when `config` asks for them (a metrics
    /// address), built with `register` adding the daemon's own; None
    /// otherwise, and then nothing of the metrics code runs (a daemon's
    /// idle memory is mostly the code it has touched).
    pub fn when_enabled(
        config: &crate::DaemonConfig,
        daemon: &str,
        register: impl FnOnce(&mut Metrics),
    ) -> Option<Metrics> {
        config.metrics_address.as_ref()?;
        let mut metrics = Metrics::new(daemon);
        register(&mut metrics);
        Some(metrics)
    }

    /// Where a daemon registers its own counters and histograms.
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Runs `sampler` before every scrape.
    pub fn add_sampler(&mut self, sampler: Arc<dyn Sampler>) {
        self.samplers.push(sampler);
    }

    /// Wraps every method of `services` so each request is counted and
    /// timed under its service and method name.
    pub fn instrument(&self, services: HashMap<String, Service>) -> HashMap<String, Service> {
        let route = |service: &str, method: &str| Route {
            service: service.to_string(),
            method: method.to_string(),
            metrics: self.ttrpc.clone(),
        };
        services
            .into_iter()
            .map(|(name, service)| {
                let methods = service
                    .methods
                    .into_iter()
                    .map(|(method, inner)| {
                        let route = route(&name, &method);
                        let handler: Box<dyn MethodHandler + Send + Sync> =
                            Box::new(CountedMethod { inner, route });
                        (method, handler)
                    })
                    .collect();
                let streams = service
                    .streams
                    .into_iter()
                    .map(|(method, inner)| {
                        let route = route(&name, &method);
                        let handler: Arc<dyn StreamHandler + Send + Sync> =
                            Arc::new(CountedStream { inner, route });
                        (method, handler)
                    })
                    .collect();
                (name, Service { methods, streams })
            })
            .collect()
    }

    /// The current metrics in the OpenMetrics text format.
    pub async fn render(&self) -> String {
        let _one_at_a_time = self.scrape.lock().await;
        let mut fresh = Sampled::default();
        for sampler in &self.samplers {
            sampler.sample(&mut fresh).await;
        }
        *self
            .sampled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        text
    }
}

/// Where a request went, for counting it.
struct Route {
    service: String,
    method: String,
    metrics: TtrpcMetrics,
}

impl Route {
    fn record(&self, code: &str, started: Instant) {
        self.metrics
            .record(&self.service, &self.method, code, started);
    }
}

struct CountedMethod {
    inner: Box<dyn MethodHandler + Send + Sync>,
    route: Route,
}

#[async_trait]
impl MethodHandler for CountedMethod {
    async fn handler(
        &self,
        ctx: TtrpcContext,
        req: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        let started = Instant::now();
        let result = self.inner.handler(ctx, req).await;
        let code = match &result {
            Ok(response) => code_name(response.status.as_ref()),
            Err(e) => error_code_name(e),
        };
        self.route.record(&code, started);
        result
    }
}

struct CountedStream {
    inner: Arc<dyn StreamHandler + Send + Sync>,
    route: Route,
}

#[async_trait]
impl StreamHandler for CountedStream {
    async fn handler(
        &self,
        ctx: TtrpcContext,
        stream: ttrpc::r#async::StreamInner,
    ) -> ttrpc::Result<Option<ttrpc::Response>> {
        let started = Instant::now();
        let result = self.inner.handler(ctx, stream).await;
        let code = match &result {
            Ok(Some(response)) => code_name(response.status.as_ref()),
            Ok(None) => "OK".to_string(),
            Err(e) => error_code_name(e),
        };
        self.route.record(&code, started);
        result
    }
}

fn error_code_name(error: &ttrpc::Error) -> String {
    match error {
        ttrpc::Error::RpcStatus(status) => code_name(Some(status)),
        _ => "UNKNOWN".to_string(),
    }
}

fn code_name(status: Option<&ttrpc::Status>) -> String {
    match status.map(|s| s.code.enum_value()) {
        None => "OK".to_string(),
        Some(Ok(code)) => format!("{code:?}"),
        Some(Err(number)) => number.to_string(),
    }
}

/// The process's own figures, named as Prometheus' other clients name them.
struct ProcessSampler;

#[async_trait]
impl Sampler for ProcessSampler {
    async fn sample(&self, out: &mut Sampled) {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            for (key, name, help) in [
                (
                    "VmRSS:",
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes",
                ),
                (
                    "VmSize:",
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes",
                ),
            ] {
                if let Some(kib) = status
                    .lines()
                    .find_map(|line| line.strip_prefix(key))
                    .and_then(|rest| {
                        rest.trim()
                            .trim_end_matches("kB")
                            .trim()
                            .parse::<f64>()
                            .ok()
                    })
                {
                    out.gauge(name, help, &[], kib * 1024.0);
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            out.gauge(
                "process_open_fds",
                "Number of open file descriptors",
                &[],
                entries.count() as f64,
            );
        }
        if let Ok((soft, _)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            out.gauge(
                "process_max_fds",
                "Maximum number of open file descriptors",
                &[],
                soft as f64,
            );
        }
        if let Some((cpu, start)) = cpu_and_start_seconds() {
            out.counter(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                &[],
                cpu,
            );
            out.gauge(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                &[],
                start,
            );
        }
    }
}

/// CPU time used and start time (Unix seconds) from /proc/self/stat.
fn cpu_and_start_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces), from 3 on.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (utime, stime, starttime) = (field(14)?, field(15)?, field(22)?);
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse::<f64>()
        .ok()?;
    Some(((utime + stime) / ticks, boot + starttime / ticks))
}

/// Serves `metrics` at `address` until the process ends. Returns once
/// listening, so a bad address fails the daemon's start.
pub async fn serve_metrics(
    metrics: Arc<Metrics>,
    address: &MetricsAddress,
    socket_group: Option<&str>,
) -> Result<(), DaemonError> {
    match address {
        MetricsAddress::Tcp(host_port) => {
            let listener = tokio::net::TcpListener::bind(host_port.as_str())
                .await
                .map_err(|e| DaemonError::io("binding metrics address", host_port, e))?;
            tracing::info!(address = %host_port, "serving metrics");
            tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((stream, _)) => spawn_http(stream, metrics.clone()),
                        Err(e) => accept_failed(e).await,
                    }
                }
            });
        }
        MetricsAddress::Unix(path) => {
            let listener = crate::socket::bind_socket(path, socket_group)?;
            listener
                .set_nonblocking(true)
                .map_err(|e| DaemonError::io("setting non-blocking", path, e))?;
            let listener = tokio::net::UnixListener::from_std(listener)
                .map_err(|e| DaemonError::io("listening on", path, e))?;
            tracing::info!(address = %path.display(), "serving metrics");
            tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((stream, _)) => spawn_http(stream, metrics.clone()),
                        Err(e) => accept_failed(e).await,
                    }
                }
            });
        }
    }
    Ok(())
}

async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accepting a metrics connection");
    // Out of descriptors, most likely: give the daemon room before retrying.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

fn spawn_http<S>(stream: S, metrics: Arc<Metrics>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |request| {
            let metrics = metrics.clone();
            async move { Ok::<_, Infallible>(respond(&metrics, request).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "metrics connection");
        }
    });
}

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn respond<B>(metrics: &Metrics, request: hyper::Request<B>) -> hyper::Response<Full<Bytes>> {
    let reply = |status: u16, content_type: &str, body: String| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
    };
    if !matches!(request.uri().path(), "/metrics" | "/v1/metrics") {
        return reply(404, "text/plain", "not found: try /metrics\n".to_string());
    }
    match *request.method() {
        hyper::Method::GET => reply(200, CONTENT_TYPE, metrics.render().await),
        hyper::Method::HEAD => reply(200, CONTENT_TYPE, String::new()),
        _ => reply(405, "text/plain", "only GET\n".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_port_or_absolute_socket_paths() {
        let parse = |s: &str| s.parse::<MetricsAddress>();
        assert_eq!(
            parse("127.0.0.1:9100").unwrap(),
            MetricsAddress::Tcp("127.0.0.1:9100".into())
        );
        assert_eq!(
            parse("[::1]:9100").unwrap(),
            MetricsAddress::Tcp("[::1]:9100".into())
        );
        assert_eq!(
            parse("localhost:1").unwrap(),
            MetricsAddress::Tcp("localhost:1".into())
        );
        assert_eq!(
            parse("/run/berth/metrics.sock").unwrap(),
            MetricsAddress::Unix("/run/berth/metrics.sock".into())
        );
        assert_eq!(
            parse("unix:///run/m.sock").unwrap(),
            MetricsAddress::Unix("/run/m.sock".into())
        );
        for bad in [
            "",
            "9100",
            "host:",
            "host:port",
            "relative/m.sock",
            "h:70000",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    struct Fixed(f64);

    #[async_trait]
    impl Sampler for Fixed {
        async fn sample(&self, out: &mut Sampled) {
            out.gauge(
                "berth_test_things",
                "Things",
                &[("kind", "a \"quoted\" one")],
                self.0,
            );
            out.gauge("berth_test_things", "Things", &[("kind", "b")], 2.0);
        }
    }

    #[tokio::test]
    async fn a_scrape_has_the_base_families_and_each_samplers_fresh_values() {
        let mut metrics = Metrics::new("testd");
        metrics.add_sampler(Arc::new(Fixed(7.0)));
        let text = metrics.render().await;
        assert!(text.contains("berth_build_info{daemon=\"testd\""), "{text}");
        // (The ttrpc families appear with their first request: the daemons'
        // end-to-end tests scrape them.)
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("process_open_fds "), "{text}");
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
        assert!(
            text.contains("berth_test_things{kind=\"a \\\"quoted\\\" one\"} 7"),
            "{text}"
        );
        assert!(text.contains("berth_test_things{kind=\"b\"} 2"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        // A second scrape replaces, not appends, the sampled values.
        let again = metrics.render().await;
        assert_eq!(again.matches("berth_test_things{kind=\"b\"}").count(), 1);
    }

    #[test]
    fn sampled_values_are_found_by_their_exact_labels() {
        let mut sampled = Sampled::default();
        sampled.gauge("g", "h", &[("a", "1"), ("b", "2")], 3.0);
        assert_eq!(sampled.value("g", &[("b", "2"), ("a", "1")]), Some(3.0));
        assert_eq!(sampled.value("g", &[("a", "1")]), None);
        assert_eq!(sampled.value("other", &[]), None);
    }

    #[test]
    fn status_codes_are_named_as_grpc_names_them() {
        assert_eq!(code_name(None), "OK");
        let status = ttrpc::get_status(ttrpc::Code::NOT_FOUND, "gone");
        assert_eq!(code_name(Some(&status)), "NOT_FOUND");
    }
}
