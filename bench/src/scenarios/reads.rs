//! The `random` and `files` scenarios: the read path against a bare handler and nginx.

use super::*;

/// Seed 000: `GET /v1/images/random?count=25`, against a bare axum handler answering the
/// same bytes from memory.
pub async fn random(sizes: Sizes, command: &str) -> anyhow::Result<Report> {
    let mut report = report("random", command);
    let corral = servers::corral(&[]).await?;
    let token = admin_token(corral.addr).await?;
    seed_images(corral.addr, &token, sizes.images).await?;
    let path = "/v1/images/random?count=25";
    let sample = Conn::new(corral.addr)
        .send(load::get(corral.addr, path))
        .await?;
    let body_file = tempfile::NamedTempFile::new()?;
    std::fs::write(body_file.path(), sample.body())?;
    let mode = Mode::Closed {
        connections: sizes.connections,
    };
    let work = load::gets(vec![path.to_owned()]);
    report
        .results
        .push(measure(&corral, "corral", mode, &sizes, work.clone()).await);
    // Open loop at a fixed rate, latency from each request's intended send time.
    let rate = if sizes.connections > 16 { 5000 } else { 100 };
    let open = Mode::Open {
        connections: sizes.connections,
        rate,
    };
    let label = format!("corral, open loop {rate}/s");
    report
        .results
        .push(measure(&corral, &label, open, &sizes, work.clone()).await);
    corral.stop().await;

    let reference = servers::reference(body_file.path(), "application/json").await?;
    report
        .results
        .push(measure(&reference, "bare axum handler", mode, &sizes, work).await);
    reference.stop().await;
    ratio(&mut report, 0, 2, "req/s");
    report.notes.push(format!(
        "{} images seeded; {} connections, closed loop, {:?} each; server and generator share the machine",
        sizes.images, sizes.connections, sizes.duration
    ));
    Ok(report)
}

/// `GET /i/{name}` of seeded images, against nginx serving the same files.
pub async fn files(sizes: Sizes, command: &str) -> anyhow::Result<Report> {
    let mut report = report("files", command);
    let corral = servers::corral(&[]).await?;
    let token = admin_token(corral.addr).await?;
    let names = seed_images(corral.addr, &token, sizes.images).await?;
    let paths: Vec<String> = names.iter().map(|n| format!("/i/{n}")).collect();
    let connections = sizes.connections.min(64);
    let mode = Mode::Closed { connections };
    let work = load::gets(paths);
    report
        .results
        .push(measure(&corral, "corral", mode, &sizes, work.clone()).await);
    let images = corral
        .data_dir
        .as_ref()
        .map(|d| d.path().join("images"))
        .context("corral's data dir")?;
    match servers::nginx_binary() {
        Some(binary) => {
            let work_dir = tempfile::TempDir::new()?;
            let nginx = servers::nginx(&binary, &images, work_dir.path()).await?;
            report
                .results
                .push(measure(&nginx, "nginx", mode, &sizes, work).await);
            nginx.stop().await;
            ratio(&mut report, 0, 1, "req/s");
        }
        None => report.notes.push(
            "nginx is not installed (apt-get install nginx-light), so there is no reference".into(),
        ),
    }
    corral.stop().await;
    report.notes.push(format!(
        "{} images of ~{} bytes; {connections} connections, closed loop, {:?} each",
        sizes.images,
        png(0).len(),
        sizes.duration
    ));
    Ok(report)
}
