//! Process-wide telemetry: the Prometheus recorder and tracing subscriber.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds, for every `*_seconds` histogram.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The Prometheus handle. The recorder is global, so it is installed once per process
/// (several apps in one test process share it).
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .map(PrometheusBuilder::build_recorder);
            match recorder {
                Ok(recorder) => {
                    let handle = recorder.handle();
                    // Histograms keep every sample until upkeep folds them into their
                    // buckets; without it they grow between scrapes (or forever, unscraped).
                    // A thread, not a task: the recorder outlives any one runtime.
                    let upkeep = handle.clone();
                    let _ = std::thread::Builder::new()
                        .name("metrics-upkeep".into())
                        .spawn(move || {
                            loop {
                                std::thread::sleep(std::time::Duration::from_secs(5));
                                upkeep.run_upkeep();
                            }
                        });
                    // Fails only if another recorder is installed; then ours just renders empty.
                    let _ = metrics::set_global_recorder(recorder);
                    handle
                }
                Err(e) => unreachable_buckets(e),
            }
        })
        .clone()
}

#[cold]
fn unreachable_buckets(e: metrics_exporter_prometheus::BuildError) -> PrometheusHandle {
    // The bucket list above is a non-empty constant, so this cannot happen.
    panic!("latency buckets rejected: {e}")
}

/// Logs to stderr, filtered by `RUST_LOG` if set, else by `filter`; one JSON object a
/// line when `format` is JSON.
pub fn init_tracing(filter: &str, format: crate::config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        crate::config::LogFormat::Human => builder.try_init(),
        crate::config::LogFormat::Json => builder.json().try_init(),
    };
}
