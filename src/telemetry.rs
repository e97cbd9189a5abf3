//! Process-wide telemetry: the Prometheus recorder and tracing subscriber.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds, for every `*_seconds` histogram: from 50 µs (most routes
/// answer well under a millisecond) to 10 s (uploads, mail, late reminders).
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];
/// Size buckets, in bytes, for every `*_bytes` histogram: 1 KiB to 64 MiB.
const SIZE_BUCKETS: &[f64] = &[
    1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0,
];
/// Writes per group commit of the embedded store.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Every metric the server exports: type, HELP text, and which series exist from the
/// start (at 0, so dashboards and alerts see them before the first event).
const CATALOGUE: &[(&str, Kind, Series, &str)] = &[
    (
        "corral_http_requests_total",
        Kind::Counter,
        Series::Later,
        "HTTP requests answered, by method, matched route and status",
    ),
    (
        "corral_http_request_duration_seconds",
        Kind::Histogram,
        Series::Later,
        "Time to answer an HTTP request, by method and matched route",
    ),
    (
        "corral_http_requests_in_flight",
        Kind::Gauge,
        Series::One,
        "HTTP requests being answered now",
    ),
    (
        "corral_http_connections",
        Kind::Gauge,
        Series::One,
        "Open HTTP connections, WebSockets included",
    ),
    (
        "corral_http_connections_shed_total",
        Kind::Counter,
        Series::By("reason", &["max_connections", "per_address"]),
        "Connections refused with 503 at once, by reason",
    ),
    (
        "corral_http_connections_timed_out_total",
        Kind::Counter,
        Series::By("reason", &["header_read", "idle"]),
        "Connections closed for slowness, by reason",
    ),
    (
        "corral_rate_limited_total",
        Kind::Counter,
        Series::By("class", &["reads", "writes", "uploads", "auth"]),
        "Requests refused with 429 by a rate limit, by class",
    ),
    (
        "corral_uploads_total",
        Kind::Counter,
        Series::By(
            "outcome",
            &[
                "created",
                "deduplicated",
                "too_large",
                "unsupported",
                "invalid",
                "bad_request",
                "too_slow",
                "overloaded",
                "failed",
            ],
        ),
        "Uploads answered, by outcome",
    ),
    (
        "corral_upload_bytes_total",
        Kind::Counter,
        Series::One,
        "Bytes of images stored by uploads",
    ),
    (
        "corral_upload_size_bytes",
        Kind::Histogram,
        Series::Later,
        "Size of each stored upload",
    ),
    (
        "corral_upload_duration_seconds",
        Kind::Histogram,
        Series::Later,
        "Time from an upload's admission to its answer: receiving, checking and storing it",
    ),
    (
        "corral_upload_slots_in_use",
        Kind::Gauge,
        Series::One,
        "Uploads admitted and not yet done, against uploads.max_in_flight",
    ),
    (
        "corral_upload_decodes_waiting",
        Kind::Gauge,
        Series::One,
        "Uploads waiting for a decoder (uploads.decoders)",
    ),
    (
        "corral_reservoir_size",
        Kind::Gauge,
        Series::One,
        "Images in the random sample",
    ),
    (
        "corral_random_tag_store_reads_total",
        Kind::Counter,
        Series::One,
        "Draws by tag made from the store's tag index, the sample holding too few images with the tag",
    ),
    (
        "corral_drafts_attached_total",
        Kind::Counter,
        Series::One,
        "Drafts published by POST /v1/images/attach",
    ),
    (
        "corral_drafts_expired_total",
        Kind::Counter,
        Series::One,
        "Drafts deleted by the sweeper, unattached past uploads.draft_ttl_secs",
    ),
    (
        "corral_file_cache_bytes",
        Kind::Gauge,
        Series::One,
        "Bytes of image files served from memory by GET /i/, against images.file_cache_mib",
    ),
    (
        "corral_variants_made_total",
        Kind::Counter,
        Series::Later,
        "Image variants made (resized, re-encoded), on their first request or by the optimizer, by format",
    ),
    (
        "corral_variant_make_seconds",
        Kind::Histogram,
        Series::Later,
        "Time to make one image variant: decoding the original, shrinking, encoding, storing",
    ),
    (
        "corral_optimizer_in_window",
        Kind::Gauge,
        Series::Later,
        "1 while the optimizer's window (optimizer.window) is open, else 0; set at its first step",
    ),
    (
        "corral_optimizer_images_total",
        Kind::Counter,
        Series::One,
        "Images the optimizer went through, making the eager variants they lacked",
    ),
    (
        "corral_optimizer_passes_total",
        Kind::Counter,
        Series::One,
        "Passes of the optimizer through every image that it finished",
    ),
    (
        "corral_optimizer_placeholders_total",
        Kind::Counter,
        Series::One,
        "Placeholders (BlurHash) the optimizer filled in for images stored without one",
    ),
    (
        "corral_optimizer_recompressed_total",
        Kind::Counter,
        Series::One,
        "PNG originals the optimizer replaced with a smaller file of the same pixels",
    ),
    (
        "corral_optimizer_bytes_saved_total",
        Kind::Counter,
        Series::One,
        "Bytes of disk the optimizer's recompression saved",
    ),
    (
        "corral_actor_restarts_total",
        Kind::Counter,
        Series::Later,
        "Restarts of a supervised actor after it failed, by actor",
    ),
    (
        "corral_store_commit_duration_seconds",
        Kind::Histogram,
        Series::Later,
        "Time of one group commit of the embedded store, fsync included",
    ),
    (
        "corral_store_commit_batch_writes",
        Kind::Histogram,
        Series::Later,
        "Writes committed together by one group commit of the embedded store",
    ),
    (
        "corral_reminders_scheduled_total",
        Kind::Counter,
        Series::One,
        "Reminders created or moved to another time",
    ),
    (
        "corral_reminders_fired_total",
        Kind::Counter,
        Series::One,
        "Reminders fired (their mail queued)",
    ),
    (
        "corral_reminders_pending",
        Kind::Gauge,
        Series::One,
        "Reminders this node's scheduler holds timers for (due within reminders.lookahead_secs)",
    ),
    (
        "corral_reminder_lateness_seconds",
        Kind::Histogram,
        Series::Later,
        "Time from a reminder's remind_at to its mail being accepted",
    ),
    (
        "corral_reminder_lease_takeovers_total",
        Kind::Counter,
        Series::One,
        "Due-reminder buckets taken over from a node whose lease ran out",
    ),
    (
        "corral_mails_sent_total",
        Kind::Counter,
        Series::By("kind", &["reminder", "welcome"]),
        "Mails delivered, by kind",
    ),
    (
        "corral_mail_retries_total",
        Kind::Counter,
        Series::By("kind", &["reminder", "welcome"]),
        "Mail deliveries that failed and will be retried, by kind",
    ),
    (
        "corral_mails_dead_total",
        Kind::Counter,
        Series::By("kind", &["reminder", "welcome"]),
        "Mails given up on (dead letters), by kind",
    ),
    (
        "corral_mail_delivery_duration_seconds",
        Kind::Histogram,
        Series::Later,
        "Time of one delivery attempt (SMTP or file), by kind",
    ),
    (
        "corral_mail_queue_depth",
        Kind::Gauge,
        Series::One,
        "Mails queued on this node, not yet delivered",
    ),
    (
        "corral_ws_connections",
        Kind::Gauge,
        Series::One,
        "Open WebSocket connections",
    ),
    (
        "corral_ws_subscriptions",
        Kind::Gauge,
        Series::By("topic", &["images", "reminders"]),
        "WebSocket subscriptions, by topic",
    ),
    (
        "corral_ws_messages_sent_total",
        Kind::Counter,
        Series::One,
        "Frames sent to WebSocket clients",
    ),
    (
        "corral_ws_lagged_total",
        Kind::Counter,
        Series::One,
        "Frames dropped for WebSocket clients that read too slowly",
    ),
    (
        "corral_push_feed_relayed_total",
        Kind::Counter,
        Series::One,
        "Notices of other nodes read from the push feed and told to this node",
    ),
    (
        "corral_push_feed_errors_total",
        Kind::Counter,
        Series::By("op", &["append", "read"]),
        "Push feed appends and reads that failed (appends: notices dropped)",
    ),
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Which series of a metric exist from the start.
#[derive(Clone, Copy)]
enum Series {
    /// The one without labels.
    One,
    /// One per value of the label.
    By(&'static str, &'static [&'static str]),
    /// None: the labels (routes, actors) or the samples come with the first event.
    Later,
}

/// HELP text for every metric, the series known up front at 0, and the build's info.
fn describe() {
    for &(name, kind, series, help) in CATALOGUE {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
        let labels: Vec<Vec<(&str, &str)>> = match series {
            Series::One => vec![vec![]],
            Series::By(label, values) => values.iter().map(|v| vec![(label, *v)]).collect(),
            Series::Later => vec![],
        };
        for labels in labels {
            let labels: Vec<metrics::Label> = labels
                .into_iter()
                .map(|(k, v)| metrics::Label::new(k, v))
                .collect();
            match kind {
                Kind::Counter => metrics::counter!(name, labels).increment(0),
                Kind::Gauge => metrics::gauge!(name, labels).increment(0.0),
                Kind::Histogram => {}
            }
        }
    }
    metrics::describe_gauge!("corral_build_info", "Always 1; the version is a label");
    metrics::gauge!("corral_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    process().describe();
}

/// Process metrics (`process_resident_memory_bytes`, `process_cpu_seconds_total`,
/// `process_open_fds`, ...), read from /proc when `/metrics` is scraped.
pub fn process() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// The Prometheus handle. The recorder is global, so it is installed once per process
/// (several apps in one test process share it).
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), SIZE_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_writes".into()), BATCH_BUCKETS)
                })
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
                    describe();
                    handle
                }
                Err(e) => unreachable_buckets(e),
            }
        })
        .clone()
}

#[cold]
fn unreachable_buckets(e: metrics_exporter_prometheus::BuildError) -> PrometheusHandle {
    // The bucket lists above are non-empty constants, so this cannot happen.
    panic!("latency buckets rejected: {e}")
}

/// Logs to stderr, filtered by `RUST_LOG` if set, else by `filter`; one JSON object a
/// line when `format` is JSON.
pub fn init_tracing(filter: &str, format: crate::config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    // Colours only for a terminal: in a file or a pipe they are escape-code noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    let _ = match format {
        crate::config::LogFormat::Human => builder.try_init(),
        crate::config::LogFormat::Json => builder.json().try_init(),
    };
}
