//! Image variants: `GET /i/{name}?w=&h=&fit=&format=`, made on first request and kept.

use std::time::SystemTime;

use image::GenericImageView;

use crate::common::{TestApp, metric, png, problem};

/// A small allow-list, so a test image covers every size quickly.
const SIZES: [u32; 4] = [16, 32, 64, 128];

/// The allow-list above, and no eager variants (the defaults' 256 px is off this list).
fn small_sizes(s: &mut corral::config::Settings) {
    s.images.variant_sizes = SIZES.to_vec();
    s.optimizer.eager.clear();
}

async fn app() -> TestApp {
    TestApp::spawn_with(small_sizes).await
}

async fn get_with(app: &TestApp, path: &str, accept: Option<&str>) -> reqwest::Response {
    let mut request = app.client.get(app.url(path));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    request.send().await.unwrap()
}

/// Uploads `bytes` (a PNG) and returns the stored file's name.
async fn uploaded(app: &TestApp, bytes: Vec<u8>) -> String {
    app.upload_png(bytes).await["name"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn decode(bytes: &[u8]) -> (image::ImageFormat, image::DynamicImage) {
    let format = image::guess_format(bytes).expect("a known image format");
    let picture = image::load_from_memory(bytes).expect("the variant decodes");
    (format, picture)
}

#[tokio::test]
async fn each_allowed_width_decodes_to_that_width_with_the_sources_aspect_ratio() {
    let app = app().await;
    let image = app.upload_png(png(100, 50, 1)).await;
    let url = image["url"].as_str().unwrap().to_owned();
    let path = url
        .split_once("/i/")
        .map(|(_, name)| format!("/i/{name}"))
        .unwrap();
    let original = app.get(&path).await;
    let original_etag = original.headers()["etag"].to_str().unwrap().to_owned();
    for width in SIZES {
        let response = app.get(&format!("{path}?w={width}")).await;
        assert_eq!(response.status(), 200, "w={width}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], "image/png");
        assert_eq!(
            headers["cache-control"],
            "public, max-age=31536000, immutable"
        );
        assert_ne!(headers["etag"].to_str().unwrap(), original_etag);
        assert!(headers.get("vary").is_none(), "only format=auto varies");
        let (format, picture) = decode(&response.bytes().await.unwrap());
        assert_eq!(format, image::ImageFormat::Png);
        // Never enlarged: 128 keeps the source's 100 x 50.
        let expected = width.min(100);
        assert_eq!(picture.dimensions(), (expected, expected / 2), "w={width}");
    }
    // A height alone, and a box both ways.
    for (query, size) in [
        ("h=16", (32, 16)),
        ("w=32&h=32", (32, 16)),
        ("w=32&h=32&fit=cover", (32, 32)),
    ] {
        let bytes = app
            .get(&format!("{path}?{query}"))
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(decode(&bytes).1.dimensions(), size, "{query}");
    }
}

#[tokio::test]
async fn format_webp_is_webp_and_auto_follows_accept_with_vary() {
    let app = app().await;
    let name = uploaded(&app, png(64, 32, 2)).await;

    let webp = app.get(&format!("/i/{name}?w=32&format=webp")).await;
    assert_eq!(webp.headers()["content-type"], "image/webp");
    let (format, picture) = decode(&webp.bytes().await.unwrap());
    assert_eq!(
        (format, picture.dimensions()),
        (image::ImageFormat::WebP, (32, 16))
    );

    let browser = "image/avif,image/webp,image/apng,image/*,*/*;q=0.8";
    let auto = get_with(&app, &format!("/i/{name}?w=32&format=auto"), Some(browser)).await;
    assert_eq!(auto.headers()["content-type"], "image/webp");
    assert_eq!(auto.headers()["vary"], "accept");
    let webp_etag = auto.headers()["etag"].to_str().unwrap().to_owned();
    let (format, _) = decode(&auto.bytes().await.unwrap());
    assert_eq!(format, image::ImageFormat::WebP);

    for accept in [
        None,
        Some("image/png,image/*"),
        Some("image/webp;q=0, image/*"),
    ] {
        let plain = get_with(&app, &format!("/i/{name}?w=32&format=auto"), accept).await;
        assert_eq!(plain.headers()["content-type"], "image/png", "{accept:?}");
        assert_eq!(plain.headers()["vary"], "accept");
        assert_ne!(plain.headers()["etag"].to_str().unwrap(), webp_etag);
    }

    // A revalidation answers 304 and still says what the answer varies by.
    let again = app
        .client
        .get(app.url(&format!("/i/{name}?w=32&format=auto")))
        .header("accept", browser)
        .header("if-none-match", &webp_etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["vary"], "accept");
}

#[tokio::test]
async fn a_size_off_the_list_or_an_unknown_parameter_is_a_400() {
    let app = app().await;
    let name = uploaded(&app, png(40, 40, 3)).await;
    for query in [
        "w=100",
        "w=0",
        "w=-16",
        "w=sixteen",
        "h=4096",
        "w=16&fit=stretch",
        "w=16&format=bmp",
        "width=16",
        // A variant needs a size; fit, both sides.
        "format=png",
        "fit=cover",
        "w=16&fit=cover",
    ] {
        let body = problem(app.get(&format!("/i/{name}?{query}")).await, 400).await;
        let detail = body["detail"].as_str().unwrap().to_owned();
        assert!(!detail.is_empty(), "{query}");
    }
    let body = problem(app.get(&format!("/i/{name}?w=100")).await, 400).await;
    assert!(
        body["detail"].as_str().unwrap().contains("16, 32, 64, 128"),
        "the detail names the allowed sizes: {body}"
    );
    // Nothing was made for the refused requests.
    assert!(app.files_under("variants").is_empty());
    // The files' routes are wrapped apart from the API's, with the same fallbacks.
    let post = app
        .client
        .post(app.url(&format!("/i/{name}")))
        .send()
        .await
        .unwrap();
    problem(post, 405).await;
    // A variant of a missing image is a 404, and makes nothing either.
    let missing = format!("{}.png", "0".repeat(40));
    problem(app.get(&format!("/i/{missing}?w=16")).await, 404).await;
    assert!(app.files_under("variants").is_empty());
}

/// The `jpeg` format is asked for by this test alone, so the process-wide counter moves
/// only by its requests.
#[tokio::test]
async fn a_variant_is_made_once_and_then_served_from_where_it_was_kept() {
    let app = app().await;
    let name = uploaded(&app, png(80, 40, 4)).await;
    let path = format!("/i/{name}?w=64&format=jpeg");
    let made = || metric(&app, "corral_variants_made_total", "format=\"jpeg\"");
    let before = made().await;

    let first = app.get(&path).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["content-type"], "image/jpeg");
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let bytes = first.bytes().await.unwrap();
    assert_eq!(decode(&bytes).1.dimensions(), (64, 32));
    let kept = app.files_under("variants");
    assert_eq!(kept.len(), 1, "{kept:?}");
    let written = std::fs::metadata(&kept[0]).unwrap().modified().unwrap();
    assert_eq!(std::fs::read(&kept[0]).unwrap(), bytes);

    let second = app.get(&path).await;
    assert_eq!(second.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(second.bytes().await.unwrap(), bytes);
    let ranged = app
        .client
        .get(app.url(&path))
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(ranged.bytes().await.unwrap(), bytes[..10]);
    // If-Range: a range of this very file, or else the whole file.
    for (validator, status) in [(etag.as_str(), 206), ("\"another\"", 200)] {
        let conditional = app
            .client
            .get(app.url(&path))
            .header("range", "bytes=0-9")
            .header("if-range", validator)
            .send()
            .await
            .unwrap();
        assert_eq!(conditional.status(), status, "if-range {validator}");
    }
    assert_eq!(made().await - before, 1.0, "made once");
    assert_eq!(app.files_under("variants"), kept);
    let unchanged: SystemTime = std::fs::metadata(&kept[0]).unwrap().modified().unwrap();
    assert_eq!(unchanged, written);
}

/// The `gif` format is asked for by this test alone (see above). Several makers, so that
/// only the sharing of one making (not a queue for one permit) keeps it to one.
#[tokio::test]
async fn concurrent_first_requests_make_one_variant() {
    let app = TestApp::spawn_with(|s| {
        small_sizes(s);
        s.images.variant_makers = 8;
    })
    .await;
    let name = uploaded(&app, png(128, 128, 5)).await;
    let made = || metric(&app, "corral_variants_made_total", "format=\"gif\"");
    let before = made().await;
    let path = format!("/i/{name}?w=64&format=gif");
    let requests = (0..8).map(|_| app.get(&path));
    let answers = futures_util::future::join_all(requests).await;
    let mut bodies = Vec::new();
    for answer in answers {
        assert_eq!(answer.status(), 200);
        bodies.push(answer.bytes().await.unwrap());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(decode(&bodies[0]).0, image::ImageFormat::Gif);
    assert_eq!(made().await - before, 1.0, "eight requests, one making");
    assert_eq!(app.files_under("variants").len(), 1);
}

/// A JPEG whose EXIF says "rotate 90° clockwise to display" (orientation 6), as phones
/// write them: its variant comes out upright.
#[tokio::test]
async fn a_rotated_phone_photo_s_variant_is_upright() {
    let app = app().await;
    // 40 x 20 stored: left half red, right half blue; upright it is 20 x 40, red on top.
    let picture = image::RgbImage::from_fn(40, 20, |x, _| {
        if x < 20 {
            image::Rgb([255, 0, 0])
        } else {
            image::Rgb([0, 0, 255])
        }
    });
    let mut plain = std::io::Cursor::new(Vec::new());
    picture
        .write_to(&mut plain, image::ImageFormat::Jpeg)
        .unwrap();
    let plain = plain.into_inner();
    let mut photo = plain[..2].to_vec();
    photo.extend(exif_orientation(6));
    photo.extend_from_slice(&plain[2..]);
    let response = app.upload_raw(photo, "image/jpeg").await;
    assert_eq!(response.status(), 201);
    let image: serde_json::Value = response.json().await.unwrap();
    // Its size as shown, not as stored.
    assert_eq!(
        (&image["width"], &image["height"]),
        (&20.into(), &40.into())
    );
    let name = image["name"].as_str().unwrap().to_owned();

    let variant = app.get(&format!("/i/{name}?w=64&format=png")).await;
    let (_, upright) = decode(&variant.bytes().await.unwrap());
    assert_eq!(upright.dimensions(), (20, 40));
    let top = upright.get_pixel(10, 5);
    let bottom = upright.get_pixel(10, 35);
    assert!(top[0] > 200 && top[2] < 60, "red on top: {top:?}");
    assert!(bottom[2] > 200 && bottom[0] < 60, "blue below: {bottom:?}");
}

/// An APP1 segment holding only an EXIF orientation tag (big-endian TIFF, one IFD entry).
fn exif_orientation(orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // one value
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]); // padding to four bytes
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut data = b"Exif\0\0".to_vec();
    data.extend(tiff);
    let mut segment = vec![0xFF, 0xE1];
    segment.extend_from_slice(&u16::try_from(data.len() + 2).unwrap().to_be_bytes());
    segment.extend(data);
    segment
}

#[tokio::test]
async fn deleting_an_image_removes_its_variants() {
    let app = app().await;
    let token = app.new_user("variants-owner").await;
    let bytes = png(64, 64, 6);
    let response = app
        .client
        .post(app.url("/v1/images"))
        .bearer_auth(&token)
        .header("content-type", "image/png")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let image: serde_json::Value = response.json().await.unwrap();
    let (id, name) = (
        image["id"].as_str().unwrap(),
        image["name"].as_str().unwrap(),
    );
    assert_eq!(app.get(&format!("/i/{name}?w=32")).await.status(), 200);
    assert_eq!(app.files_under("variants").len(), 1);

    let deleted = app
        .client
        .delete(app.url(&format!("/v1/images/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert!(app.files_under("variants").is_empty());
    problem(app.get(&format!("/i/{name}?w=32")).await, 404).await;
    assert!(app.files_under("variants").is_empty());
}
