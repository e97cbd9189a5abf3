//! The `uploads` scenario: uploads at fixed arrival rates, against fsynced writes.

use super::*;

/// `png` with a tEXt chunk naming `n` after its header: the same pixels, a new sha1.
fn tagged(png: &[u8], n: u64) -> Vec<u8> {
    const AFTER_IHDR: usize = 8 + 25;
    let mut data = b"bench\0".to_vec();
    data.extend_from_slice(n.to_string().as_bytes());
    let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = b"tEXt".to_vec();
    body.extend_from_slice(&data);
    chunk.extend_from_slice(&body);
    chunk.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    let mut out = png[..AFTER_IHDR].to_vec();
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&png[AFTER_IHDR..]);
    out
}

/// Seed 002: uploads of 96 KB to 2.6 MB images in open loop at several rates, each one
/// distinct content; 503s (admission control) counted apart from errors. The reference
/// writes the same bytes to the same disk with an fsync per file.
pub async fn uploads(sizes: Sizes, command: &str) -> anyhow::Result<Report> {
    let mut report = report("uploads", command);
    // Sides from ~96 KB to ~2.6 MB of PNG.
    let sides: &[u32] = if sizes.uploads_per_rate < 10 {
        &[180, 240]
    } else {
        &[180, 300, 420, 540, 660, 780, 930]
    };
    let bases: Arc<Vec<Vec<u8>>> = Arc::new(
        sides
            .iter()
            .enumerate()
            .map(|(i, side)| noise_png(*side, i as u64 + 1))
            .collect(),
    );
    let mean = bases.iter().map(Vec::len).sum::<usize>() as f64 / bases.len() as f64;
    let count = sizes.uploads_per_rate.clamp(2, 500);
    let mut before = None;
    let corral = servers::corral(&[]).await?;
    let addr = corral.addr;
    let token = Arc::new(admin_token(addr).await?);
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let work: Work = {
        let bases = bases.clone();
        Arc::new(move |conn, i, intended, tally| {
            let (bases, token, counter) = (bases.clone(), token.clone(), counter.clone());
            Box::pin(async move {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let body = tagged(&bases[i as usize % bases.len()], n);
                let mut req = request("POST", addr, "/v1/images", Some(&token), Bytes::from(body));
                req.headers_mut()
                    .insert("content-type", "image/png".parse().expect("header"));
                let out = conn.send(req).await;
                tally.record(intended, &out);
            })
        })
    };
    let mut best_mb_s = 0.0_f64;
    let closed = Mode::Closed {
        connections: 8.min(sizes.connections.max(1)),
    };
    let open = sizes.upload_rates.iter().map(|&rate| Mode::Open {
        connections: 64.min(sizes.connections.max(2)),
        rate,
    });
    for mode in open.chain([closed]) {
        let (label, rate) = match mode {
            Mode::Open { rate, .. } => (format!("corral, {rate} uploads/s offered"), rate),
            Mode::Closed { connections } => {
                // The disk's speed drifts from minute to minute on a shared machine, so
                // the reference runs right before and right after the closed loop it is
                // compared with (Corral sits idle meanwhile).
                before = Some(fsync_reference(&bases, count, "fsync'd file writes, before").await?);
                (format!("corral, closed loop x{connections}"), u64::MAX / 4)
            }
        };
        let per_rate = rate.saturating_mul(sizes.duration.as_secs().max(1));
        let total = Some(sizes.uploads_per_rate.min(per_rate));
        let me = std::process::id();
        let (server_before, me_before) = (corral.cpu_seconds(), servers::proc_cpu(me));
        let run = load::run(addr, mode, sizes.duration * 3, total, work.clone()).await;
        let m = Measured::of(
            &label,
            mode,
            &run,
            corral.cpu_seconds() - server_before,
            servers::proc_cpu(me) - me_before,
        );
        let mb_s = m.ok as f64 * mean / run.elapsed.as_secs_f64() / 1e6;
        best_mb_s = best_mb_s.max(mb_s);
        report.notes.push(format!(
            "{}: {:.1} MB/s stored ({} stored, {} refused with 503, {} errors)",
            m.target, mb_s, m.ok, m.unavailable, m.errors
        ));
        report.results.push(m);
    }
    corral.stop().await;

    // The reference: the same bytes, written and fsynced one file after another, before
    // and after the closed loop; the ratio is taken against the faster of the two.
    let after = fsync_reference(&bases, count, "fsync'd file writes, after").await?;
    let mut ref_mb_s = 0.0_f64;
    for (reference, mb_s) in before.into_iter().chain([after]) {
        report.notes.push(format!(
            "{}: {mb_s:.1} MB/s ({count} files)",
            reference.target
        ));
        report.results.push(reference);
        ref_mb_s = ref_mb_s.max(mb_s);
    }
    if ref_mb_s > 0.0 {
        report.ratios.push((
            "best corral MB/s / faster fsync'd write MB/s".into(),
            best_mb_s / ref_mb_s,
        ));
    }
    report.notes.push(format!(
        "offered {} uploads/s (open loop), then as fast as 8 connections go (closed loop); each upload a distinct PNG, {:.0} KB on average ({} to {} KB), fully decoded to be checked",
        sizes.upload_rates.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", "),
        mean / 1024.0,
        bases.iter().map(Vec::len).min().unwrap_or(0) / 1024,
        bases.iter().map(Vec::len).max().unwrap_or(0) / 1024,
    ));
    Ok(report)
}

/// Writes `count` of the upload bodies to fresh files, one after another, each fsynced:
/// what the disk can store without Corral. Returns the measurement and its MB/s.
async fn fsync_reference(
    bases: &Arc<Vec<Vec<u8>>>,
    count: u64,
    label: &str,
) -> anyhow::Result<(Measured, f64)> {
    let dir = tempfile::TempDir::new()?;
    let mean = bases.iter().map(Vec::len).sum::<usize>() as f64 / bases.len() as f64;
    let me_before = servers::proc_cpu(std::process::id());
    let (bases, dir_path) = (bases.clone(), dir.path().to_owned());
    let (tally, elapsed) = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut tally = load::Tally::new();
        let start = Instant::now();
        for n in 0..count {
            let t = Instant::now();
            let bytes = tagged(&bases[n as usize % bases.len()], n);
            let path = dir_path.join(format!("{n}.png"));
            let written = std::fs::File::create(&path).and_then(|mut f| {
                f.write_all(&bytes)?;
                f.sync_all()
            });
            let outcome = written
                .map(|()| hyper::Response::new(Bytes::new()))
                .map_err(anyhow::Error::from);
            tally.record(t, &outcome);
        }
        (tally, start.elapsed())
    })
    .await?;
    let run = load::Run { tally, elapsed };
    let me_cpu = servers::proc_cpu(std::process::id()) - me_before;
    let reference = Measured::of(label, Mode::Closed { connections: 1 }, &run, 0.0, me_cpu);
    let mb_s = reference.ok as f64 * mean / elapsed.as_secs_f64() / 1e6;
    Ok((reference, mb_s))
}
