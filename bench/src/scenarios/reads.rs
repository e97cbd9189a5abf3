//! The `random` and `files` scenarios: the read path against a bare handler and nginx.

use super::*;

/// Seed 000: `GET /v1/images/random?count=25`, against a bare axum handler answering the
/// same bytes from memory.
pub async fn random(sizes: Sizes, command: &str) -> anyhow::Result<Report> {
    let mut report = report("random", command);
    let corral = servers::corral(&[]).await?;
    let token = admin_token(corral.addr).await?;
    seed_tagged_images(corral.addr, &token, sizes.images).await?;
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
    // The reference answers every path with one untagged answer: the same size as a
    // tagged one (25 entries of one shape), so it stands for both.
    let reference = servers::reference(body_file.path(), "application/json").await?;
    let wrk = crate::wrk::binary().filter(|_| sizes.duration >= Duration::from_secs(1));
    // Untagged, and by a tag a quarter of the images carry (drawn from the sample's
    // per-tag index).
    let variants = [
        ("count=25", path),
        (
            "count=25&tag=alpaca",
            "/v1/images/random?count=25&tag=alpaca",
        ),
    ];
    for (what, path) in variants {
        if let Some(wrk) = &wrk {
            // Throughput by wrk, which has the headroom the bench's own generator lacks.
            let paths = [path.to_owned()];
            let mut levels = vec![64, sizes.connections];
            levels.dedup();
            for connections in levels {
                let against = (&reference, "bare axum handler");
                alternate(
                    &mut report,
                    wrk,
                    &corral,
                    against,
                    what,
                    connections,
                    sizes.duration,
                    (&paths, &paths),
                )
                .await?;
            }
        } else {
            let work = load::gets(vec![path.to_owned()]);
            let label = format!("corral, {what}");
            report
                .results
                .push(measure(&corral, &label, mode, &sizes, work.clone()).await);
            let label = format!("bare axum handler, {what}");
            report
                .results
                .push(measure(&reference, &label, mode, &sizes, work).await);
            let n = report.results.len();
            ratio(&mut report, n - 2, n - 1, "req/s");
        }
    }
    if wrk.is_none() {
        report.notes.push(without_wrk());
    }
    reference.stop().await;
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
    if let Some(rss) = corral.pid().map(servers::rss_mib) {
        report.notes.push(format!(
            "Corral's resident memory after the runs: {rss:.0} MiB"
        ));
    }
    corral.stop().await;
    report.notes.push(format!(
        "{} images seeded; closed loop, {:?} each; server and generator share the machine",
        sizes.images, sizes.duration
    ));
    Ok(report)
}

fn without_wrk() -> String {
    "wrk is not installed (apt-get install wrk): throughput by the bench's own generator, \
     which tops out below a bare handler on two cores, so ratios are understated"
        .into()
}

/// File sizes the `files` scenario serves (with wrk): (label, PNG side, how many).
const FILE_SIZES: [(&str, u32, u64); 3] =
    [("~10 KB", 58, 16), ("~270 KB", 300, 8), ("~2 MB", 816, 4)];

/// `GET /i/{name}` of seeded images, against nginx serving the same files: with wrk, at
/// three file sizes; without it, small files by the bench's own generator.
pub async fn files(sizes: Sizes, command: &str) -> anyhow::Result<Report> {
    let mut report = report("files", command);
    let corral = servers::corral(&[]).await?;
    let token = admin_token(corral.addr).await?;
    let wrk = crate::wrk::binary().filter(|_| sizes.duration >= Duration::from_secs(1));
    let mut sets = Vec::new();
    if wrk.is_some() {
        for (label, side, count) in FILE_SIZES {
            let pngs = (0..count).map(|n| noise_png(side, 1000 * u64::from(side) + n));
            sets.push((label, upload_all(corral.addr, &token, pngs).await?));
        }
    } else {
        sets.push((
            "48x48 PNGs",
            seed_images(corral.addr, &token, sizes.images).await?,
        ));
    }
    let connections = sizes.connections.min(64);
    let images = corral
        .data_dir
        .as_ref()
        .map(|d| d.path().join("images"))
        .context("corral's data dir")?;
    let Some(binary) = servers::nginx_binary() else {
        report.notes.push(
            "nginx is not installed (apt-get install nginx-light), so there is no reference".into(),
        );
        corral.stop().await;
        return Ok(report);
    };
    let work_dir = tempfile::TempDir::new()?;
    let nginx = servers::nginx(&binary, &images, work_dir.path()).await?;
    for (label, names) in &sets {
        let paths: Vec<String> = names.iter().map(|n| format!("/i/{n}")).collect();
        match &wrk {
            Some(wrk) => {
                let against = (&nginx, "nginx");
                alternate(
                    &mut report,
                    wrk,
                    &corral,
                    against,
                    label,
                    connections,
                    sizes.duration,
                    (&paths, &paths),
                )
                .await?;
            }
            None => {
                let mode = Mode::Closed { connections };
                let work = load::gets(paths);
                report
                    .results
                    .push(measure(&corral, "corral", mode, &sizes, work.clone()).await);
                report
                    .results
                    .push(measure(&nginx, "nginx", mode, &sizes, work).await);
                ratio(&mut report, 0, 1, "req/s");
                report.notes.push(without_wrk());
            }
        }
    }
    nginx.stop().await;
    if let Some(rss) = corral.pid().map(servers::rss_mib) {
        report.notes.push(format!("Corral's resident memory after the runs: {rss:.0} MiB (file cache: images.file_cache_mib = 64)"));
    }
    corral.stop().await;
    report.notes.push(format!(
        "{connections} connections, closed loop, {:?} each; nginx with sendfile and open_file_cache",
        sizes.duration
    ));
    Ok(report)
}
