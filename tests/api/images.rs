//! Uploads, reads, caching, the random sample and who may change an image, through a real
//! server and client.

use std::collections::HashSet;

use crate::common::{TestApp, png, png_claiming, problem, random_ids, sha1_hex};
use reqwest::Method;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

#[tokio::test]
async fn a_raw_upload_round_trips_byte_for_byte_under_its_sha1_name() {
    let app = TestApp::spawn().await;
    let bytes = png(64, 48, 1);
    let response = app.upload_raw(bytes.clone(), "image/png").await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let image: Value = response.json().await.unwrap();
    let sha1 = sha1_hex(&bytes);
    assert_eq!(image["sha1"], sha1);
    assert_eq!(image["name"], format!("{sha1}.png"));
    assert_eq!(image["format"], "png");
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(64), Some(48))
    );
    assert_eq!(image["bytes"], bytes.len());
    assert_eq!(
        location,
        format!("/v1/images/{}", image["id"].as_str().unwrap())
    );

    // The file sits in its shard directories.
    let on_disk =
        app.data_dir
            .path()
            .join(format!("images/{}/{}/{sha1}.png", &sha1[..2], &sha1[2..4]));
    assert_eq!(std::fs::read(on_disk).unwrap(), bytes);

    let served = app.get(image["url"].as_str().unwrap()).await;
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["content-type"], "image/png");
    assert_eq!(
        served.headers()["etag"],
        format!("\"{sha1}-{}\"", bytes.len())
    );
    assert_eq!(
        served.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(served.headers()["x-content-type-options"], "nosniff");
    assert_eq!(served.bytes().await.unwrap(), bytes);

    let by_id: Value = app.get(&location).await.json().await.unwrap();
    assert_eq!(by_id, image);
}

#[tokio::test]
async fn a_multipart_upload_round_trips_with_its_tags() {
    let app = TestApp::spawn().await;
    let bytes = crate::common::jpeg(40, 30, 2);
    let form = reqwest::multipart::Form::new()
        .text("tags", "Llama, cute")
        .part(
            "file",
            reqwest::multipart::Part::bytes(bytes.clone())
                .file_name("llama.jpg")
                .mime_str("image/jpeg")
                .unwrap(),
        );
    let response = app
        .authed(reqwest::Method::POST, "/v1/images")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let image: Value = response.json().await.unwrap();
    assert_eq!(image["format"], "jpeg");
    assert_eq!(image["name"], format!("{}.jpg", sha1_hex(&bytes)));
    assert_eq!(image["tags"], serde_json::json!(["cute", "llama"]));
    let served = app.get(image["url"].as_str().unwrap()).await;
    assert_eq!(served.headers()["content-type"], "image/jpeg");
    assert_eq!(served.bytes().await.unwrap(), bytes);
}

#[tokio::test]
async fn identical_content_is_stored_once_and_recorded_twice() {
    let app = TestApp::spawn().await;
    let bytes = png(20, 20, 3);
    let first = app.upload_png(bytes.clone()).await;
    let second = app.upload_png(bytes).await;
    assert_eq!(first["name"], second["name"]);
    assert_ne!(first["id"], second["id"]);
    assert_eq!(app.files_under("images").len(), 1);
    assert!(app.files_under("tmp").is_empty());
}

#[tokio::test]
async fn one_byte_over_the_limit_is_rejected_with_413_and_leaves_no_file() {
    let limit = 4096;
    let app = TestApp::spawn_with(|s| s.uploads.max_bytes = limit).await;
    let mut bytes = png(8, 8, 4);
    bytes.resize(limit as usize + 1, 0);
    problem(app.upload_raw(bytes.clone(), "image/png").await, 413).await;

    // Streamed without a Content-Length, the limit is enforced as bytes arrive.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(1000).map(|c| Ok(c.to_vec())).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let response = app.upload_body(body).await;
    problem(response, 413).await;
    assert!(app.files_under("images").is_empty());
    assert!(app.files_under("tmp").is_empty());

    // Exactly at the limit is fine (a PNG with trailing bytes still decodes).
    bytes.truncate(limit as usize);
    assert_eq!(app.upload_raw(bytes, "image/png").await.status(), 201);
}

#[tokio::test]
async fn content_that_is_not_an_accepted_image_gets_415_whatever_its_content_type() {
    let app = TestApp::spawn().await;
    let pdf =
        b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF".to_vec();
    problem(app.upload_raw(pdf, "image/png").await, 415).await;
    let svg = b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>".to_vec();
    problem(app.upload_raw(svg, "image/svg+xml").await, 415).await;
    problem(
        app.upload_raw(b"<html></html>".to_vec(), "image/png").await,
        415,
    )
    .await;
    problem(app.upload_raw(Vec::new(), "image/png").await, 415).await;
    problem(app.upload_raw(png(4, 4, 5), "text/plain").await, 415).await;
    assert!(app.files_under("images").is_empty());
    assert!(app.files_under("tmp").is_empty());
}

#[tokio::test]
async fn truncated_files_and_decompression_bombs_get_422_and_leave_nothing() {
    let app = TestApp::spawn().await;
    let whole = png(200, 200, 6);
    let truncated = whole[..whole.len() / 2].to_vec();
    let body = problem(app.upload_raw(truncated, "image/png").await, 422).await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("corrupt or truncated"),
        "{body}"
    );

    let bomb = png_claiming(100_000, 100_000);
    assert!(bomb.len() < 200, "the bomb is a tiny file");
    problem(app.upload_raw(bomb, "image/png").await, 422).await;
    assert!(app.files_under("images").is_empty());
    assert!(app.files_under("tmp").is_empty());
}

#[tokio::test]
async fn traversal_and_malformed_names_are_404() {
    let app = TestApp::spawn().await;
    let image = app.upload_png(png(5, 5, 8)).await;
    let name = image["name"].as_str().unwrap();
    for path in [
        "/i/..%2F..%2Fcorral.redb".to_owned(),
        "/i/%2e%2e%2fcorral.redb".to_owned(),
        "/i/..%252Fcorral.redb".to_owned(),
        "/i/corral.redb".to_owned(),
        format!("/i/{}", name.to_uppercase()),
        format!("/i/{name}.png"),
        format!("/i/{}.gif", &name[..40]),
        "/i/0000000000000000000000000000000000000000.png".to_owned(),
        "/v1/images/not-a-uuid".to_owned(),
        "/v1/images/0190b6a0-0000-7000-8000-000000000000".to_owned(),
    ] {
        problem(app.get(&path).await, 404).await;
    }
    // The raw, unnormalised form too, straight over TCP.
    let raw = raw_get(app.addr, "/i/../../corral.redb").await;
    assert!(raw.starts_with("HTTP/1.1 404"), "{raw}");
}

async fn raw_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn a_matching_if_none_match_gets_304_and_ranges_get_206() {
    let app = TestApp::spawn().await;
    let bytes = png(30, 30, 9);
    let image = app.upload_png(bytes.clone()).await;
    let url = app.url(image["url"].as_str().unwrap());
    let etag = format!("\"{}-{}\"", image["sha1"].as_str().unwrap(), bytes.len());

    let cached = app
        .client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);
    assert_eq!(cached.headers()["etag"], etag.as_str());
    assert!(cached.bytes().await.unwrap().is_empty());
    let other = app
        .client
        .get(&url)
        .header("if-none-match", "\"nope\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);

    let part = app
        .client
        .get(&url)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 10-19/{}", bytes.len())
    );
    assert_eq!(part.bytes().await.unwrap(), bytes[10..20]);
    let tail = app
        .client
        .get(&url)
        .header("range", "bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.bytes().await.unwrap(), bytes[bytes.len() - 5..]);
    let past = app
        .client
        .get(&url)
        .header("range", format!("bytes={}-", bytes.len()))
        .send()
        .await
        .unwrap();
    problem(past, 416).await;
}

/// A PNG of noise, `side`² pixels: about 3 bytes a pixel (noise does not compress).
fn noise_png(side: u32) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let img = image::RgbImage::from_fn(side, side, |_, _| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        image::Rgb([x as u8, (x >> 8) as u8, (x >> 16) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[tokio::test]
async fn files_from_memory_and_files_streamed_from_disk_are_served_exactly() {
    // A 1 MiB cache keeps files up to 128 KiB: the large one is streamed from disk.
    let app = TestApp::spawn_with(|s| s.images.file_cache_mib = 1).await;
    let large = noise_png(330);
    assert!(large.len() > 300_000, "{}", large.len());
    let small = png(40, 40, 11);
    for bytes in [large, small] {
        let image = app.upload_png(bytes.clone()).await;
        let url = app.url(image["url"].as_str().unwrap());
        for _ in 0..2 {
            // The first read fills the cache (when the file fits it), the second uses it.
            let whole = app.client.get(&url).send().await.unwrap();
            assert_eq!(whole.status(), 200);
            assert_eq!(
                whole.headers()["content-length"],
                bytes.len().to_string().as_str()
            );
            assert_eq!(whole.bytes().await.unwrap(), bytes);
            let (from, to) = (bytes.len() / 2, bytes.len() / 2 + 99);
            let part = app
                .client
                .get(&url)
                .header("range", format!("bytes={from}-{to}"))
                .send()
                .await
                .unwrap();
            assert_eq!(part.status(), 206);
            assert_eq!(part.bytes().await.unwrap(), bytes[from..=to]);
        }
    }
}

#[tokio::test]
async fn random_returns_distinct_images_within_the_count_bounds() {
    let app = TestApp::spawn().await;
    let empty: Value = app
        .get("/v1/images/random?count=5")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(empty["images"], serde_json::json!([]));

    let mut ids = HashSet::new();
    for seed in 0..12 {
        ids.insert(
            app.upload_png(png(6, 6, 100 + seed)).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let response = app.get("/v1/images/random?count=10").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    let picked: Vec<&str> = body["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(picked.len(), 10);
    assert_eq!(
        picked.iter().collect::<HashSet<_>>().len(),
        10,
        "duplicates in {picked:?}"
    );
    assert!(picked.iter().all(|id| ids.contains(*id)));

    // More than exist: all of them, once each.
    let all: Value = app
        .get("/v1/images/random?count=100")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["images"].as_array().unwrap().len(), 12);
    let one: Value = app.get("/v1/images/random").await.json().await.unwrap();
    assert_eq!(one["images"].as_array().unwrap().len(), 1);
    let url = one["images"][0]["url"].as_str().unwrap();
    assert_eq!(app.get(url).await.status(), 200);

    for bad in ["0", "101", "-1", "ten", "1.5", ""] {
        problem(
            app.get(&format!("/v1/images/random?count={bad}")).await,
            400,
        )
        .await;
    }
}

#[tokio::test]
async fn a_restart_on_the_same_data_dir_brings_images_and_the_sample_back() {
    let app = TestApp::spawn().await;
    let mut names = HashSet::new();
    for seed in 0..5 {
        names.insert(
            app.upload_png(png(7, 7, 200 + seed)).await["name"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let first: Value = app
        .get("/v1/images/random?count=1")
        .await
        .json()
        .await
        .unwrap();
    let id = first["images"][0]["id"].as_str().unwrap().to_owned();
    let dir = app.stop().await;

    let app = TestApp::spawn_in(dir, |_| {}).await;
    let again: Value = app
        .get("/v1/images/random?count=100")
        .await
        .json()
        .await
        .unwrap();
    let back: HashSet<String> = again["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(back, names);
    let image: Value = app
        .get(&format!("/v1/images/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(image["id"], id.as_str());
    assert_eq!(app.get(image["url"].as_str().unwrap()).await.status(), 200);
}

#[tokio::test]
async fn the_upload_pool_answers_503_with_retry_after_when_full() {
    let app = TestApp::spawn_with(|s| s.uploads.max_in_flight = 1).await;
    // Hold the only slot with a body that does not finish yet.
    let (held_body, held) = app.start_held_upload(png(4, 4, 10)[..20].to_vec()).await;
    let refused = app.upload_raw(png(4, 4, 11), "image/png").await;
    assert_eq!(refused.headers()["retry-after"], "1");
    problem(refused, 503).await;
    drop(held_body);
    let _ = held.await;
    // With the slot free again, uploads go through.
    assert_eq!(
        app.upload_raw(png(4, 4, 12), "image/png").await.status(),
        201
    );
}

#[tokio::test]
async fn bad_requests_get_problem_json() {
    let app = TestApp::spawn().await;
    problem(app.get("/no/such/route").await, 404).await;
    problem(
        app.client
            .delete(app.url("/v1/images/random"))
            .send()
            .await
            .unwrap(),
        405,
    )
    .await;
    let form = reqwest::multipart::Form::new().text("tags", "x");
    problem(
        app.authed(reqwest::Method::POST, "/v1/images")
            .multipart(form)
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    let bad_tags = app
        .authed(reqwest::Method::POST, "/v1/images?tags=no%20spaces")
        .header("content-type", "image/png")
        .body(png(4, 4, 13))
        .send()
        .await
        .unwrap();
    problem(bad_tags, 400).await;
    assert!(app.files_under("images").is_empty());
}

#[tokio::test]
async fn an_upload_past_its_time_limit_is_cut_off_and_leaves_nothing() {
    let app = TestApp::spawn_with(|s| s.uploads.max_duration_secs = 1).await;
    let (_held, upload) = app.start_held_upload(png(4, 4, 30)[..10].to_vec()).await;
    let response = upload.await.unwrap().unwrap();
    problem(response, 503).await;
    assert!(app.files_under("tmp").is_empty());
    assert!(app.files_under("images").is_empty());
}

/// POSTs a multipart form as `tester`.
async fn upload_form(app: &TestApp, form: Form) -> reqwest::Response {
    app.authed(reqwest::Method::POST, "/v1/images")
        .multipart(form)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_empty_file_part_gets_415_and_a_form_without_one_400() {
    let app = TestApp::spawn().await;
    let empty_part = || {
        Part::bytes(Vec::new())
            .file_name("empty.jpg")
            .mime_str("image/jpeg")
            .unwrap()
    };
    // Like an empty raw body: the content is not an image.
    for form in [
        Form::new().part("file", empty_part()),
        Form::new().text("tags", "llama").part("file", empty_part()),
        Form::new().part("file", empty_part()).text("tags", "llama"),
    ] {
        let body = problem(upload_form(&app, form).await, 415).await;
        assert!(body["detail"].as_str().unwrap().contains("empty"), "{body}");
    }
    let body = problem(
        upload_form(&app, Form::new().text("tags", "llama")).await,
        400,
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("no `file` part"),
        "{body}"
    );
    // A form with no part at all is malformed (multer wants at least one part).
    problem(upload_form(&app, Form::new()).await, 400).await;
    assert!(app.files_under("tmp").is_empty());
    assert!(app.files_under("images").is_empty());
}

/// A baseline JPEG from `image`'s encoder, large enough that most cuts land in its scan.
fn baseline_jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(160, 120, |x, y| {
        image::Rgb([(x * 7 + y) as u8, (y * 5) as u8, ((x * y) % 251) as u8])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&img)
        .expect("encode jpeg");
    assert!(contains(&out, &[0xFF, 0xC0]), "baseline (SOF0)");
    out
}

/// A progressive JPEG (`image` cannot encode one): see tests/fixtures/README.md.
fn progressive_jpeg() -> Vec<u8> {
    let bytes = include_bytes!("fixtures/progressive.jpg").to_vec();
    assert!(contains(&bytes, &[0xFF, 0xC2]), "progressive (SOF2)");
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn truncated_jpegs_baseline_and_progressive_get_422_and_leave_nothing() {
    let app = TestApp::spawn().await;
    let jpegs = [
        ("baseline", baseline_jpeg()),
        ("progressive", progressive_jpeg()),
    ];
    for (kind, whole) in &jpegs {
        assert!(whole.ends_with(&[0xFF, 0xD9]), "{kind} ends with EOI");
        let first_scan = whole
            .windows(2)
            .position(|w| w == [0xFF, 0xDA])
            .expect("a scan");
        assert!(
            first_scan < whole.len() / 5,
            "{kind}: cuts from 20 % on fall in the scan data"
        );
        let mut cuts: Vec<(String, &[u8])> = [5, 20, 50, 90, 99]
            .into_iter()
            .map(|pct| (format!("cut at {pct} %"), &whole[..whole.len() * pct / 100]))
            .collect();
        cuts.push(("without its EOI".into(), &whole[..whole.len() - 2]));
        for (cut, bytes) in cuts {
            let response = app.upload_raw(bytes.to_vec(), "image/jpeg").await;
            assert_eq!(response.status(), 422, "{kind} {cut}");
            let body = problem(response, 422).await;
            assert!(
                body["detail"]
                    .as_str()
                    .unwrap()
                    .contains("corrupt or truncated"),
                "{kind} {cut}: {body}"
            );
        }
    }
    assert!(app.files_under("images").is_empty());
    assert!(app.files_under("tmp").is_empty());
    let mine: Value = app
        .authed(reqwest::Method::GET, "/v1/users/me/images")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mine["images"], serde_json::json!([]));

    // The whole files are accepted.
    for (kind, whole) in jpegs {
        let response = app.upload_raw(whole.clone(), "image/jpeg").await;
        assert_eq!(response.status(), 201, "{kind}");
        let image: Value = response.json().await.unwrap();
        assert_eq!(image["format"], "jpeg");
        assert_eq!(image["bytes"], whole.len());
    }
    assert_eq!(app.files_under("images").len(), 2);
}

/// Phones append previews and depth maps after EOI (MPF), each with its own EXIF: such a
/// file is accepted, and stored without them (metadata hygiene).
#[tokio::test]
async fn a_jpeg_with_bytes_after_its_eoi_is_accepted_and_stored_without_them() {
    let app = TestApp::spawn().await;
    for (kind, picture) in [
        ("baseline", baseline_jpeg()),
        ("progressive", progressive_jpeg()),
    ] {
        // Here, a JPEG's start, cut short.
        let mut bytes = picture.clone();
        bytes.extend_from_slice(b"\0\0junk\xFF\xD8\xFF\xE1\x00\x10Exif\0\0\xFF\xDA");
        let response = app.upload_raw(bytes.clone(), "image/jpeg").await;
        assert_eq!(response.status(), 201, "{kind}");
        let image: Value = response.json().await.unwrap();
        assert_eq!(image["bytes"], picture.len());
        let served = app.get(image["url"].as_str().unwrap()).await;
        assert_eq!(served.bytes().await.unwrap(), picture, "{kind}");
    }
}

#[tokio::test]
async fn users_cannot_see_or_change_each_other_s_images() {
    let app = TestApp::spawn().await;
    let (a, b) = (app.new_user("gus").await, app.new_user("hal").await);
    let image: Value = app
        .call(Method::POST, "/v1/images?tags=mine", &a)
        .header("content-type", "image/png")
        .body(png(7, 7, 910))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let path = format!("/v1/images/{}", image["id"].as_str().unwrap());

    problem(
        app.call(Method::PATCH, &path, &b)
            .json(&json!({"tags": ["stolen"]}))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    problem(
        app.call(Method::DELETE, &path, &b).send().await.unwrap(),
        404,
    )
    .await;
    let b_images: Value = app
        .call(Method::GET, "/v1/users/me/images", &b)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(b_images["images"], json!([]));
    let a_images: Value = app
        .call(Method::GET, "/v1/users/me/images", &a)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a_images["images"][0]["id"], image["id"]);

    // The owner can.
    let retagged: Value = app
        .call(Method::PATCH, &path, &a)
        .json(&json!({"tags": ["Llama"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(retagged["tags"], json!(["llama"]));
    // Served once (so it is in the small-file cache), then deleted: gone from /i too.
    let file = format!("/i/{}", image["name"].as_str().unwrap());
    assert_eq!(app.get(&file).await.status(), 200);
    assert_eq!(
        app.call(Method::DELETE, &path, &a)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    problem(app.get(&path).await, 404).await;
    problem(app.get(&file).await, 404).await;
    assert!(app.files_under("images").is_empty());
}

#[tokio::test]
async fn uploads_need_a_session_unless_anonymous_uploads_are_on() {
    let app = TestApp::spawn().await;
    let anonymous = app
        .client
        .post(app.url("/v1/images"))
        .header("content-type", "image/png")
        .body(png(3, 3, 920))
        .send()
        .await
        .unwrap();
    problem(anonymous, 401).await;
    assert!(app.files_under("tmp").is_empty() && app.files_under("images").is_empty());

    let open = TestApp::spawn_with(|s| s.uploads.allow_anonymous = true).await;
    let anonymous = open
        .client
        .post(open.url("/v1/images"))
        .header("content-type", "image/png")
        .body(png(3, 3, 921))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 201);
}

#[tokio::test]
async fn a_seed_picks_the_same_images_while_the_sample_is_the_same() {
    let app = TestApp::spawn().await;
    for seed in 0..12 {
        app.upload_png(png(6, 6, 300 + seed)).await;
    }
    let first = random_ids(&app, "count=5&seed=llamas").await;
    assert_eq!(first.len(), 5);
    assert_eq!(first.iter().collect::<HashSet<_>>().len(), 5);
    for _ in 0..3 {
        assert_eq!(random_ids(&app, "count=5&seed=llamas").await, first);
    }
    // Without a seed, 20 draws of 5 out of 12 all in the seeded order would be a fluke.
    let mut unseeded = HashSet::new();
    for _ in 0..20 {
        unseeded.insert(random_ids(&app, "count=5").await);
    }
    assert!(unseeded.len() > 1);
    let long = "s".repeat(65);
    for bad in ["seed=", &format!("seed={long}")] {
        problem(app.get(&format!("/v1/images/random?{bad}")).await, 400).await;
    }
}

#[tokio::test]
async fn i_random_redirects_to_an_immutable_file_and_is_never_cached() {
    let app = TestApp::spawn().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: &str| client.get(app.url(path)).send();
    problem(get("/i/random").await.unwrap(), 404).await;

    let mut names = HashSet::new();
    for seed in 0..4 {
        let image = app.upload_png(png(80, 40, 400 + seed)).await;
        names.insert(image["name"].as_str().unwrap().to_owned());
    }
    let redirect = get("/i/random").await.unwrap();
    assert_eq!(redirect.status(), 302);
    assert_eq!(redirect.headers()["cache-control"], "no-store");
    let location = redirect.headers()["location"].to_str().unwrap().to_owned();
    let name = location.strip_prefix("/i/").expect("a file URL");
    assert!(names.contains(name), "{location}");
    let file = get(&location).await.unwrap();
    assert_eq!(file.status(), 200);
    assert_eq!(
        file.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );

    // A variant's width and format are passed on; a seed makes it reproducible.
    let seeded = |query: &'static str| {
        let request = client.get(app.url(&format!("/i/random?{query}")));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 302, "{query}");
            response.headers()["location"].to_str().unwrap().to_owned()
        }
    };
    let small = seeded("w=64&format=auto&seed=x").await;
    assert!(small.ends_with("?w=64&format=auto"), "{small}");
    assert_eq!(seeded("w=64&format=auto&seed=x").await, small);
    let variant = client.get(app.url(&small)).send().await.unwrap();
    assert_eq!(variant.status(), 200);
    for bad in [
        "w=63",
        "format=webp",
        "w=64&format=tiff",
        "size=64",
        "seed=",
    ] {
        problem(get(&format!("/i/random?{bad}")).await.unwrap(), 400).await;
    }
}
