//! The `scale` scenario: millions of image rows, then reads and resident memory.

use super::*;

/// Seed 001: millions of image rows (seeded with `corral seed`'s code, straight through
/// the store), then `GET /v1/images/{id}` latency and the server's resident memory.
pub async fn scale(sizes: Sizes, command: &str) -> anyhow::Result<Report> {
    use corral::config::{Overrides, Settings};

    let mut report = report("scale", command);
    let dir = tempfile::TempDir::new()?;
    let overrides = Overrides {
        bind: None,
        data_dir: Some(dir.path().to_owned()),
    };
    let settings = Settings::load(None, &overrides)?;
    let t = Instant::now();
    corral::seed::seed(&settings, sizes.scale_images, 0).await?;
    let seeded_in = t.elapsed();
    let t = Instant::now();
    let corral = servers::corral_in(dir, &[]).await?;
    let ready_in = t.elapsed();
    let addr = corral.addr;
    let (status, sample) = json_call(
        addr,
        "GET",
        "/v1/images/random?count=100",
        None,
        Value::Null,
    )
    .await?;
    if status != 200 {
        bail!("/random answered {status}");
    }
    let paths: Vec<String> = sample["images"]
        .as_array()
        .context("images")?
        .iter()
        .filter_map(|i| i["id"].as_str().map(|id| format!("/v1/images/{id}")))
        .collect();
    if paths.is_empty() {
        bail!("no images in the sample: {sample}");
    }
    let mode = Mode::Closed {
        connections: sizes.connections.min(64),
    };
    report.results.push(
        measure(
            &corral,
            "corral GET /v1/images/{id}",
            mode,
            &sizes,
            load::gets(paths),
        )
        .await,
    );
    let rss = corral.pid().map_or(0.0, servers::rss_mib);
    corral.stop().await;
    report.notes.push(format!(
        "{} image rows seeded in {:.1?} ({:.0}/s); ready (random sample filled) {:.1?} after start; server RSS after the run {rss:.0} MiB",
        sizes.scale_images,
        seeded_in,
        sizes.scale_images as f64 / seeded_in.as_secs_f64(),
        ready_in,
    ));
    Ok(report)
}
