//! `variants`: a 256 px WebP variant of ~2 MB originals. How long its first request takes
//! (the variant is made then), and how fast it is served once made, beside nginx serving
//! the same variant file; and the originals beside nginx, for scale.

use std::time::{Duration, Instant};

use super::{Sizes, admin_token, alternate, noise_png, report, upload_all};
use crate::load::{Conn, Tally, get};
use crate::report::Report;
use crate::servers;

/// Side of the noise PNG sources: ~2 MB each (as `files`' largest).
const SIDE: u32 = 816;
const RECIPE: &str = "w=256&format=webp";
/// The variant's file name under `variants/ab/cd/<sha1>/` (see Corral's `media::variant`).
const VARIANT_FILE: &str = "256x0-contain.webp";

pub async fn variants(sizes: Sizes, command: &str) -> anyhow::Result<Report> {
    let mut report = report("variants", command);
    let corral = servers::corral(&[]).await?;
    let token = admin_token(corral.addr).await?;
    let sources = (0..sizes.variant_sources as u64).map(|n| noise_png(SIDE, 7_000 + n));
    let names = upload_all(corral.addr, &token, sources).await?;

    // First requests, one at a time: each is one making.
    let mut conn = Conn::new(corral.addr);
    let mut first = Tally::new();
    for name in &names {
        let started = Instant::now();
        let outcome = conn
            .send(get(corral.addr, &format!("/i/{name}?{RECIPE}")))
            .await;
        first.record(started, &outcome);
    }
    let ms = |q: f64| first.latency_us.value_at_quantile(q) as f64 / 1000.0;
    report.notes.push(format!(
        "first request of a 256 px WebP (made then) from a ~2 MB PNG, {} sources one at a \
         time: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {} errors",
        names.len(),
        ms(0.5),
        ms(0.99),
        first.latency_us.max() as f64 / 1000.0,
        first.errors + first.unavailable,
    ));

    let Some(wrk) = crate::wrk::binary().filter(|_| sizes.duration >= Duration::from_secs(1))
    else {
        report
            .notes
            .push("no wrk (not installed, or the run is too short for it): only the first requests were measured".into());
        corral.stop().await;
        return Ok(report);
    };
    let Some(binary) = servers::nginx_binary() else {
        report.notes.push(
            "nginx is not installed (apt-get install nginx-light), so there is no reference".into(),
        );
        corral.stop().await;
        return Ok(report);
    };
    let data = corral
        .data_dir
        .as_ref()
        .map(|d| d.path().to_owned())
        .ok_or_else(|| anyhow::anyhow!("corral's data dir"))?;
    let work_dir = tempfile::TempDir::new()?;
    let nginx = servers::nginx(&binary, &data.join("images"), work_dir.path()).await?;
    let connections = sizes.connections.min(64);
    let made: Vec<String> = names.iter().map(|n| format!("/i/{n}?{RECIPE}")).collect();
    let files: Vec<String> = names
        .iter()
        .map(|n| format!("/v/{}/{VARIANT_FILE}", n.split('.').next().unwrap_or(n)))
        .collect();
    let originals: Vec<String> = names.iter().map(|n| format!("/i/{n}")).collect();
    let against = (&nginx, "nginx");
    let runs = [
        ("256 px WebP variant", (&made, &files)),
        ("~2 MB original", (&originals, &originals)),
    ];
    for (what, (mine, theirs)) in runs {
        alternate(
            &mut report,
            &wrk,
            &corral,
            against,
            what,
            connections,
            sizes.duration,
            (mine, theirs),
        )
        .await?;
    }
    nginx.stop().await;
    if let Some(rss) = corral.pid().map(servers::rss_mib) {
        report.notes.push(format!(
            "Corral's resident memory after the runs: {rss:.0} MiB"
        ));
    }
    corral.stop().await;
    report.notes.push(format!(
        "{connections} connections, closed loop, {:?} each; nginx serves the variant files \
         Corral made (sendfile, open_file_cache)",
        sizes.duration
    ));
    Ok(report)
}
