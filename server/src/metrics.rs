//! Prometheus metrics: HTTP requests, inference stages, batching, queue depth, index size,
//! the recent-result cache, gallery events and Redis reachability.

use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Every metric the server exports at `/metrics`.
pub struct Metrics {
    registry: Registry,
    /// Requests by route pattern, method and status.
    pub http_requests: IntCounterVec,
    /// Request latency by route pattern.
    pub http_latency: HistogramVec,
    /// Time per pipeline stage (`decode`, `detect`, `landmarks`, `align`, `embed`, `match`, `store`).
    pub stage_seconds: HistogramVec,
    /// Images per batch the queue ran.
    pub batch_size: HistogramVec,
    /// Requests waiting in the recognition queue.
    pub queue_depth: IntGauge,
    /// Faces in the index.
    pub index_size: IntGauge,
    /// Recognised faces by outcome (`known`, `unknown`, `low_quality`).
    pub faces: IntCounterVec,
    /// Recent-result cache lookups by outcome (`hit`, `miss`).
    pub result_cache: IntCounterVec,
    /// Gallery events applied from the stream, by kind (`upsert`, `remove_user`, `resync`).
    pub index_events: IntCounterVec,
    /// 1 while Redis answers; 0 while it does not, or without Redis.
    pub redis_up: IntGauge,
}

impl Metrics {
    /// Registers all metrics.
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "rollcall_http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let http_latency = HistogramVec::new(
            HistogramOpts::new(
                "rollcall_http_request_duration_seconds",
                "HTTP request latency by route",
            )
            .buckets(exponential_buckets(0.001, 2.0, 16).expect("valid buckets")),
            &["route"],
        )
        .expect("valid metric");
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new(
                "rollcall_stage_duration_seconds",
                "Time per recognition stage",
            )
            .buckets(exponential_buckets(0.0005, 2.0, 16).expect("valid buckets")),
            &["stage"],
        )
        .expect("valid metric");
        let batch_size = HistogramVec::new(
            HistogramOpts::new("rollcall_batch_size", "Images per inference batch")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            &[],
        )
        .expect("valid metric");
        let queue_depth = IntGauge::new("rollcall_queue_depth", "Requests waiting for inference")
            .expect("valid metric");
        let index_size = IntGauge::new("rollcall_index_faces", "Faces in the recognition index")
            .expect("valid metric");
        let faces = IntCounterVec::new(
            Opts::new("rollcall_faces_total", "Faces seen by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        let result_cache = IntCounterVec::new(
            Opts::new(
                "rollcall_result_cache_total",
                "Recent-result cache lookups by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        for outcome in ["hit", "miss"] {
            result_cache.with_label_values(&[outcome]);
        }
        let index_events = IntCounterVec::new(
            Opts::new(
                "rollcall_index_events_total",
                "Gallery events applied from the shared stream",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let redis_up = IntGauge::new("rollcall_redis_up", "Whether Redis answers (1) or not (0)")
            .expect("valid metric");
        for c in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_latency.clone()),
            Box::new(stage_seconds.clone()),
            Box::new(batch_size.clone()),
            Box::new(queue_depth.clone()),
            Box::new(index_size.clone()),
            Box::new(faces.clone()),
            Box::new(result_cache.clone()),
            Box::new(index_events.clone()),
            Box::new(redis_up.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            http_requests,
            http_latency,
            stage_seconds,
            batch_size,
            queue_depth,
            index_size,
            faces,
            result_cache,
            index_events,
            redis_up,
        }
    }

    /// Records one stage duration.
    pub fn stage(&self, stage: &str, seconds: f64) {
        self.stage_seconds
            .with_label_values(&[stage])
            .observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
