//! The optimizer (issue 17) on the real binary: with its window shut it makes nothing;
//! with it open it makes the eager variants of the images that lack them; killed with
//! SIGKILL in the middle of a pass, it resumes where it was rather than starting over.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::child::{Corral, Running};
use crate::common::{files_under, png};
use serde_json::Value;
use tempfile::TempDir;

/// The one eager variant here (the defaults make two).
const EAGER: &str = "w=64&format=webp";
const IMAGES: u32 = 6;
const STOP_WITHIN: Duration = Duration::from_secs(30);

/// Where the eager variant of the image stored as `name` (`<sha1>.png`) is kept.
fn variant_path(data: &Path, name: &str) -> PathBuf {
    let sha1 = &name[..40];
    data.join("variants")
        .join(&sha1[..2])
        .join(&sha1[2..4])
        .join(sha1)
        .join("64x0-contain.webp")
}

/// The optimizer's kept place: the last image done in the pass, and whether it ended.
fn place(data: &Path) -> (Option<String>, bool) {
    let Ok(bytes) = std::fs::read(data.join("optimizer.json")) else {
        return (None, false);
    };
    let cursor: Value = serde_json::from_slice(&bytes).expect("optimizer.json is JSON");
    (
        cursor["after"].as_str().map(str::to_owned),
        !cursor["finished_at"].is_null(),
    )
}

/// The value of an unlabelled series in `/metrics`, if it is there.
async fn series(server: &Running, name: &str) -> Option<f64> {
    let text = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits (at most `within`) until `done` holds, checking every 20 ms.
async fn until(within: Duration, what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_optimizer_works_in_its_window_and_resumes_after_a_kill() {
    let root = TempDir::new().unwrap();
    // A window that is shut now: it opens in two hours, in the server's (this machine's)
    // time zone.
    let now = chrono::Local::now().time();
    let shut = format!(
        "{}-{}",
        (now + chrono::Duration::hours(2)).format("%H:%M"),
        (now + chrono::Duration::hours(3)).format("%H:%M")
    );
    let mut corral = Corral::new(root.path())
        .env("CORRAL_RATE_LIMITS__ENABLED", "false")
        .env("CORRAL_UPLOADS__ALLOW_ANONYMOUS", "true")
        .env("CORRAL_OPTIMIZER__EAGER", EAGER)
        .env("CORRAL_OPTIMIZER__WINDOW", &shut);
    let data = corral.data_dir().to_owned();

    // Images uploaded while the window is shut.
    let server = corral.start().await;
    let mut images: Vec<(String, String)> = Vec::new();
    for seed in 0..IMAGES {
        let response = server
            .client
            .post(server.url("/v1/images"))
            .header("content-type", "image/png")
            .body(png(96, 64, seed))
            .send()
            .await
            .expect("upload");
        assert_eq!(response.status(), 201);
        let image: Value = response.json().await.unwrap();
        images.push((
            image["id"].as_str().unwrap().to_owned(),
            image["name"].as_str().unwrap().to_owned(),
        ));
    }
    server.stop(STOP_WITHIN).await;

    // Started again with the images there and the window still shut: its first step
    // (which sets `corral_optimizer_in_window`) finds the window shut and makes nothing.
    let server = corral.start().await;
    until(
        Duration::from_secs(10),
        "the optimizer's first step",
        async || {
            series(&server, "corral_optimizer_in_window")
                .await
                .is_some()
        },
    )
    .await;
    assert_eq!(
        series(&server, "corral_optimizer_in_window").await,
        Some(0.0)
    );
    assert_eq!(
        series(&server, "corral_optimizer_images_total").await,
        Some(0.0)
    );
    assert!(files_under(&data.join("variants")).is_empty());
    server.stop(STOP_WITHIN).await;

    // The window open, one image a step, slowly: killed once two or more are done.
    let mut corral = corral
        .env("CORRAL_OPTIMIZER__WINDOW", "always")
        .env("CORRAL_OPTIMIZER__BATCH", 1)
        .env("CORRAL_OPTIMIZER__PAUSE_MS", 300);
    let server = corral.start().await;
    let done_before = |after: &Option<String>| -> usize {
        // Ids are UUIDv7, and the embedded store scans them in order: the pass goes in
        // upload order.
        images
            .iter()
            .filter(|(id, _)| after.as_ref().is_some_and(|a| id <= a))
            .count()
    };
    until(Duration::from_secs(30), "two images done", async || {
        done_before(&place(&data).0) >= 2
    })
    .await;
    server.kill();
    let (after, finished) = place(&data);
    let done = done_before(&after);
    assert!(
        !finished && done < images.len(),
        "killed in the middle of the pass: {done} of {} done",
        images.len()
    );
    for (_, name) in &images[..done] {
        let made = variant_path(&data, name);
        assert!(made.exists(), "{name} is done, so its variant is made");
        // Removed, to see that the pass does not come back to it.
        std::fs::remove_file(made).unwrap();
    }

    // Restarted: the pass goes on from its place and ends.
    let mut corral = corral.env("CORRAL_OPTIMIZER__PAUSE_MS", 10);
    let server = corral.start().await;
    until(Duration::from_secs(30), "the pass ends", async || {
        place(&data).1
    })
    .await;
    assert_eq!(
        series(&server, "corral_optimizer_passes_total").await,
        Some(1.0)
    );
    assert_eq!(
        series(&server, "corral_optimizer_images_total").await,
        Some((images.len() - done) as f64),
        "only the images after its place were looked at again"
    );
    for (i, (_, name)) in images.iter().enumerate() {
        let path = variant_path(&data, name);
        if i < done {
            assert!(
                !path.exists(),
                "{name} was done before the kill: not made again"
            );
            continue;
        }
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{name}'s variant: {e}"));
        let variant =
            image::load_from_memory_with_format(&bytes, image::ImageFormat::WebP).expect("a WebP");
        assert_eq!((variant.width(), variant.height()), (64, 43));
    }
    // Served from what the optimizer made: the same bytes.
    let (_, last) = images.last().unwrap();
    let served = server
        .client
        .get(server.url(&format!("/i/{last}?{EAGER}")))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.bytes().await.unwrap(),
        std::fs::read(variant_path(&data, last)).unwrap()
    );
    server.stop(STOP_WITHIN).await;
}

/// A PNG stored uncompressed and unfiltered, with an ICC profile: much larger than it
/// needs to be.
fn wasteful_png(profile: &[u8]) -> Vec<u8> {
    use image::ImageEncoder;
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let picture = image::RgbImage::from_fn(128, 96, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 2) as u8, ((x + y) % 7 * 30) as u8])
    });
    let mut out = Vec::new();
    let mut encoder = PngEncoder::new_with_quality(
        &mut out,
        CompressionType::Uncompressed,
        FilterType::NoFilter,
    );
    encoder.set_icc_profile(profile.to_vec()).unwrap();
    encoder
        .write_image(&picture, 128, 96, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

#[tokio::test]
async fn recompression_keeps_the_name_the_pixels_and_the_profile_and_changes_the_etag() {
    use crate::common::{TestApp, jpeg};
    use image::ImageDecoder;
    let app = TestApp::spawn_with(|s| {
        s.optimizer.window = corral::config::Window::Always;
        s.optimizer.eager.clear();
        s.optimizer.recompress = true;
        s.optimizer.pause_ms = 10;
        // Passes a second apart, so the uploads below are met by the next.
        s.optimizer.rest_secs = 1;
    })
    .await;
    let stored = |name: &str| {
        let sha1 = &name[..40];
        app.data_dir
            .path()
            .join(format!("images/{}/{}/{name}", &sha1[..2], &sha1[2..4]))
    };
    let a_jpeg = jpeg(64, 48, 1);
    let response = app.upload_raw(a_jpeg, "image/jpeg").await;
    assert_eq!(response.status(), 201);
    let jpeg_name = response.json::<Value>().await.unwrap()["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let jpeg_bytes = std::fs::read(stored(&jpeg_name)).unwrap();

    let profile = b"a stand-in ICC profile, kept as it is".to_vec();
    let wasteful = wasteful_png(&profile);
    let image = app.upload_png(wasteful.clone()).await;
    let name = image["name"].as_str().unwrap().to_owned();
    let url = format!("/i/{name}");
    let before = app.get(&url).await;
    let old_etag = before.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(before.bytes().await.unwrap(), wasteful);

    let path = stored(&name);
    until(
        Duration::from_secs(30),
        "the PNG recompressed",
        async || std::fs::metadata(&path).unwrap().len() < wasteful.len() as u64,
    )
    .await;
    let smaller = std::fs::read(&path).unwrap();
    assert!(
        smaller.len() * 2 < wasteful.len(),
        "{} bytes",
        smaller.len()
    );

    // The same pixels and profile, under the same name; the metadata is unchanged.
    let decoded = |bytes: &[u8]| {
        let mut decoder =
            image::codecs::png::PngDecoder::new(std::io::Cursor::new(bytes)).expect("a PNG");
        let icc = decoder.icc_profile().unwrap();
        let pixels = image::DynamicImage::from_decoder(decoder)
            .unwrap()
            .to_rgba16();
        (pixels, icc)
    };
    assert_eq!(decoded(&smaller), decoded(&wasteful));
    let meta: Value = app
        .get(&format!("/v1/images/{}", image["id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(meta["name"], name.as_str());
    assert_eq!(meta["bytes"], wasteful.len(), "the size as uploaded");

    // Served: the new bytes, under an ETag the old one does not match.
    let after = app
        .client
        .get(app.url(&url))
        .header("if-none-match", &old_etag)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200);
    assert_eq!(
        after.headers()["etag"].to_str().unwrap(),
        format!("\"{}-{}\"", &name[..40], smaller.len())
    );
    assert_eq!(after.bytes().await.unwrap(), smaller);
    // A range asked for with the old validator gets the whole new file, not a piece of it.
    let ranged = app
        .client
        .get(app.url(&url))
        .header("range", "bytes=100-")
        .header("if-range", &old_etag)
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 200);

    // The JPEG was passed over, untouched.
    assert_eq!(std::fs::read(stored(&jpeg_name)).unwrap(), jpeg_bytes);
}

/// An image stored before placeholders existed gets one from the optimizer, in its JSON
/// and in `/random` (the sample it was loaded into at start is updated).
#[tokio::test]
async fn the_optimizer_fills_in_missing_placeholders() {
    use crate::common::TestApp;
    use corral::domain::{Image, ImageFormat, ImageId, Tags};
    let app = TestApp::spawn().await;
    let uploaded = app.upload_png(png(48, 32, 11)).await;
    let hash = uploaded["blurhash"]
        .as_str()
        .expect("a placeholder at ingest");
    // A record as an older version wrote it: the same file, no placeholder.
    let legacy = Image {
        id: ImageId::new(),
        name: uploaded["name"].as_str().unwrap().to_owned(),
        sha1: uploaded["sha1"].as_str().unwrap().to_owned(),
        format: ImageFormat::Png,
        width: 48,
        height: 32,
        bytes: uploaded["bytes"].as_u64().unwrap(),
        tags: Tags::default(),
        owner: None,
        created_at: chrono::Utc::now(),
        blurhash: None,
        draft: None,
    };
    app.store.insert_image(&legacy).await.unwrap();
    let path = format!("/v1/images/{}", legacy.id);
    let shown: Value = app.get(&path).await.json().await.unwrap();
    assert!(shown["blurhash"].is_null());

    // Started again with the window open: the sample loads the record without one.
    let data = app.stop().await;
    let app = TestApp::spawn_in(data, |s| {
        s.optimizer.window = corral::config::Window::Always;
        s.optimizer.eager.clear();
    })
    .await;
    let in_random = async || -> Value {
        let random: Value = app
            .get("/v1/images/random?count=2")
            .await
            .json()
            .await
            .unwrap();
        let entry = random["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == legacy.id.to_string())
            .cloned();
        entry.unwrap_or_else(|| panic!("the legacy image is in the sample: {random}"))
    };
    until(
        Duration::from_secs(30),
        "the placeholder filled in",
        async || {
            let shown: Value = app.get(&path).await.json().await.unwrap();
            shown["blurhash"] == hash && in_random().await["blurhash"] == hash
        },
    )
    .await;
}
