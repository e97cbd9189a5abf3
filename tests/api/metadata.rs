//! Metadata hygiene at ingest: stored originals keep only the EXIF orientation and the ICC
//! profile, edited out of the bytes without re-encoding them.

use img_parts::jpeg::{Jpeg, markers};
use img_parts::png::Png;
use img_parts::webp::WebP;
use img_parts::{Bytes, ImageEXIF, ImageICC};

use crate::common::{TestApp, png, png_chunk, sha1_hex};

/// A TIFF (EXIF) block as a phone writes one: orientation, maker, and a GPS position.
fn phone_exif(orientation: u16, maker: &str) -> Vec<u8> {
    // IFD0 at 8: three entries (2 + 3 * 12 + 4 = 42 bytes), then the maker string, then
    // the GPS IFD with its latitude reference.
    let maker = format!("{maker}\0");
    let maker_at: u32 = 8 + 42;
    let gps_at = maker_at + maker.len() as u32;
    let mut tiff = b"II\x2a\0\x08\0\0\0".to_vec();
    tiff.extend_from_slice(&3u16.to_le_bytes());
    let entries = [
        (0x010F_u16, 2_u16, maker.len() as u32, maker_at), // Make
        (0x0112, 3, 1, u32::from(orientation)),            // Orientation
        (0x8825, 4, 1, gps_at),                            // the GPS IFD
    ];
    for (tag, kind, count, value) in entries {
        tiff.extend_from_slice(&tag.to_le_bytes());
        tiff.extend_from_slice(&kind.to_le_bytes());
        tiff.extend_from_slice(&count.to_le_bytes());
        tiff.extend_from_slice(&value.to_le_bytes());
    }
    tiff.extend_from_slice(&0u32.to_le_bytes());
    tiff.extend_from_slice(maker.as_bytes());
    tiff.extend_from_slice(&1u16.to_le_bytes());
    tiff.extend_from_slice(&0x0001u16.to_le_bytes()); // GPSLatitudeRef
    tiff.extend_from_slice(&2u16.to_le_bytes());
    tiff.extend_from_slice(&2u32.to_le_bytes());
    tiff.extend_from_slice(b"N\0\0\0");
    tiff.extend_from_slice(&0u32.to_le_bytes());
    tiff
}

const XMP: &[u8] = b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta><exif:GPSLatitude>48,51.4N</exif:GPSLatitude></x:xmpmeta>";
const ICC: &[u8] = b"a colour profile, as far as this test cares";

/// A JPEG photo (orientation 6: stored on its side) with a phone's EXIF, XMP, IPTC, a
/// comment, an ICC profile, and a second picture after its end (as MPF files have).
fn phone_jpeg(maker: &str) -> Vec<u8> {
    let picture =
        image::RgbImage::from_fn(40, 20, |x, y| image::Rgb([x as u8 * 6, y as u8 * 12, 90]));
    let mut plain = std::io::Cursor::new(Vec::new());
    picture
        .write_to(&mut plain, image::ImageFormat::Jpeg)
        .unwrap();
    let mut jpeg = Jpeg::from_bytes(Bytes::from(plain.into_inner())).unwrap();
    jpeg.set_exif(Some(Bytes::from(phone_exif(6, maker))));
    jpeg.set_icc_profile(Some(Bytes::from_static(ICC)));
    let segment = img_parts::jpeg::JpegSegment::new_with_contents;
    let extra = [
        segment(markers::APP1, Bytes::from_static(XMP)),
        segment(
            markers::APP13,
            Bytes::from_static(b"Photoshop 3.0\0IPTC: a caption, a city"),
        ),
        segment(markers::COM, Bytes::from_static(b"shot at home")),
    ];
    for (i, s) in extra.into_iter().enumerate() {
        jpeg.segments_mut().insert(1 + i, s);
    }
    let mut bytes = jpeg.encoder().bytes().to_vec();
    bytes.extend_from_slice(b"\xFF\xD8 a second picture, with its own EXIF: GPS \xFF\xD9");
    bytes
}

async fn upload(app: &TestApp, bytes: Vec<u8>, content_type: &str) -> String {
    let response = app.upload_raw(bytes, content_type).await;
    assert_eq!(response.status(), 201);
    response.json::<serde_json::Value>().await.unwrap()["name"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn served(app: &TestApp, path: &str) -> Vec<u8> {
    let response = app.get(path).await;
    assert_eq!(response.status(), 200, "{path}");
    response.bytes().await.unwrap().to_vec()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_phone_jpeg_keeps_its_orientation_and_colour_profile_and_nothing_else() {
    let app = TestApp::spawn().await;
    let uploaded = phone_jpeg("PhoneMaker");
    let name = upload(&app, uploaded.clone(), "image/jpeg").await;
    let stored = served(&app, &format!("/i/{name}")).await;

    // Named by what is stored.
    assert_eq!(name, format!("{}.jpg", sha1_hex(&stored)));
    assert!(stored.len() < uploaded.len());
    for secret in [
        &b"PhoneMaker"[..],
        b"GPS",
        b"xap/1.0",
        b"IPTC",
        b"shot at home",
    ] {
        assert!(
            !contains(&stored, secret),
            "{:?} left in",
            String::from_utf8_lossy(secret)
        );
    }
    let jpeg = Jpeg::from_bytes(Bytes::from(stored.clone())).unwrap();
    let exif = jpeg.exif().expect("the orientation is kept");
    assert_eq!(
        image::metadata::Orientation::from_exif_chunk(&exif),
        Some(image::metadata::Orientation::Rotate90)
    );
    assert_eq!(exif.len(), 26, "one EXIF entry: the orientation");
    assert_eq!(jpeg.icc_profile().as_deref(), Some(ICC));
    let kinds: Vec<u8> = jpeg.segments().iter().map(|s| s.marker()).collect();
    assert!(
        !kinds.contains(&markers::COM) && !kinds.contains(&markers::APP13),
        "{kinds:x?}"
    );
    assert!(
        stored.ends_with(b"\xFF\xD9"),
        "nothing after the end of the picture"
    );

    // The same pixels: the bytes were edited, not re-encoded.
    let before = image::load_from_memory(&uploaded).unwrap().to_rgb8();
    let after = image::load_from_memory(&stored).unwrap().to_rgb8();
    assert_eq!(before, after);

    // Its variant has no EXIF at all, and is upright instead.
    let variant = served(&app, &format!("/i/{name}?w=64&format=jpeg")).await;
    let jpeg = Jpeg::from_bytes(Bytes::from(variant.clone())).unwrap();
    assert!(jpeg.exif().is_none());
    assert_eq!(
        image::load_from_memory(&variant)
            .unwrap()
            .to_rgb8()
            .dimensions(),
        (20, 40)
    );
}

#[tokio::test]
async fn photos_differing_only_in_metadata_share_one_file() {
    let app = TestApp::spawn().await;
    let first = upload(&app, phone_jpeg("PhoneA"), "image/jpeg").await;
    let second = upload(&app, phone_jpeg("PhoneB"), "image/jpeg").await;
    assert_eq!(first, second);
    assert_eq!(app.files_under("images").len(), 1);
}

#[tokio::test]
async fn png_text_and_time_chunks_are_removed() {
    let app = TestApp::spawn().await;
    let plain = png(8, 8, 41);
    // After IHDR (8 + 25 bytes): a comment, international text (XMP lives there), a time.
    let mut tagged = plain[..33].to_vec();
    tagged.extend(png_chunk(b"tEXt", b"Comment\0taken at 48.85N 2.35E"));
    tagged.extend(png_chunk(
        b"iTXt",
        b"XML:com.adobe.xmp\0\0\0\0\0<x:xmpmeta/>",
    ));
    tagged.extend(png_chunk(b"tIME", &[7, 234, 11, 30, 12, 0, 0]));
    tagged.extend_from_slice(&plain[33..]);

    let name = upload(&app, tagged, "image/png").await;
    let stored = served(&app, &format!("/i/{name}")).await;
    assert_eq!(stored, plain, "exactly the PNG without those chunks");
    assert_eq!(name, format!("{}.png", sha1_hex(&plain)));
    let png = Png::from_bytes(Bytes::from(stored)).unwrap();
    assert!(png.exif().is_none());
}

/// A PNG stored on its side (eXIf orientation 6) is as wide as it is tall upright, in
/// its JSON and its placeholder, as in its variants; the orientation is kept.
#[tokio::test]
async fn a_png_on_its_side_reports_its_upright_size() {
    let app = TestApp::spawn().await;
    let plain = png(40, 20, 43);
    let mut turned = plain[..33].to_vec();
    turned.extend(png_chunk(b"eXIf", &phone_exif(6, "PhoneMaker")));
    turned.extend_from_slice(&plain[33..]);
    let response = app.upload_raw(turned, "image/png").await;
    assert_eq!(response.status(), 201);
    let image: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(20), Some(40))
    );
    // A BlurHash's first character encodes its components: 3 across, 4 down for a
    // portrait picture (4 x 3 for a landscape one would be 'L').
    assert!(
        image["blurhash"]
            .as_str()
            .is_some_and(|h| h.starts_with('T')),
        "{image}"
    );
    let name = image["name"].as_str().unwrap();
    let stored = Png::from_bytes(Bytes::from(served(&app, &format!("/i/{name}")).await)).unwrap();
    let exif = stored.exif().expect("the orientation is kept");
    assert_eq!(
        image::metadata::Orientation::from_exif_chunk(&exif),
        Some(image::metadata::Orientation::Rotate90)
    );
    let variant = served(&app, &format!("/i/{name}?w=64&format=png")).await;
    assert_eq!(
        image::load_from_memory(&variant)
            .unwrap()
            .to_rgb8()
            .dimensions(),
        (20, 40)
    );

    // After the image data, where the PNG spec does not allow it, it is not applied:
    // not to the size, nor (by the decoder that makes them) to variants.
    let plain = png(40, 20, 44);
    let iend = plain.len() - 12;
    let mut late = plain[..iend].to_vec();
    late.extend(png_chunk(b"eXIf", &phone_exif(6, "PhoneMaker")));
    late.extend_from_slice(&plain[iend..]);
    let response = app.upload_raw(late, "image/png").await;
    assert_eq!(response.status(), 201);
    let image: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(40), Some(20))
    );
    let name = image["name"].as_str().unwrap();
    let variant = served(&app, &format!("/i/{name}?w=64&format=png")).await;
    assert_eq!(
        image::load_from_memory(&variant)
            .unwrap()
            .to_rgb8()
            .dimensions(),
        (40, 20)
    );
}

#[tokio::test]
async fn webp_exif_and_xmp_go_and_their_flags_with_them() {
    let app = TestApp::spawn().await;
    let picture = image::RgbaImage::from_fn(8, 8, |x, y| {
        image::Rgba([x as u8 * 30, y as u8 * 30, 0, 255])
    });
    let mut plain = std::io::Cursor::new(Vec::new());
    picture
        .write_to(&mut plain, image::ImageFormat::WebP)
        .unwrap();
    let mut webp = WebP::from_bytes(Bytes::from(plain.into_inner())).unwrap();
    let xmp = img_parts::riff::RiffChunk::new(
        *b"XMP ",
        img_parts::riff::RiffContent::Data(Bytes::from_static(XMP)),
    );
    webp.chunks_mut().push(xmp);
    // Adds the VP8X chunk, with its EXIF and XMP bits set.
    webp.set_exif(Some(Bytes::from(phone_exif(1, "PhoneMaker"))));
    let tagged = webp.encoder().bytes().to_vec();
    assert!(contains(&tagged, b"XMP ") && contains(&tagged, b"VP8X"));

    let name = upload(&app, tagged, "image/webp").await;
    let stored = served(&app, &format!("/i/{name}")).await;
    for secret in [&b"PhoneMaker"[..], b"XMP ", b"GPS"] {
        assert!(
            !contains(&stored, secret),
            "{:?} left in",
            String::from_utf8_lossy(secret)
        );
    }
    let riff_size = u32::from_le_bytes(stored[4..8].try_into().unwrap()) as usize;
    assert_eq!(
        riff_size,
        stored.len() - 8,
        "the RIFF's size follows the removal"
    );
    let webp = WebP::from_bytes(Bytes::from(stored.clone())).unwrap();
    // Upright, so no EXIF is needed at all; no flag may promise a chunk that is gone.
    assert!(webp.exif().is_none());
    if let Some(vp8x) = webp.chunk_by_id(*b"VP8X").and_then(|c| c.content().data()) {
        assert_eq!(
            vp8x[0] & 0b0000_1100,
            0,
            "EXIF and XMP flags cleared: {:08b}",
            vp8x[0]
        );
    }
    let decoded = image::load_from_memory(&stored).unwrap().to_rgba8();
    assert_eq!(decoded, picture);
}

/// A solid colour, as PNG and as JPEG: its placeholder decodes to that colour.
#[tokio::test]
async fn uploads_get_a_placeholder_in_their_json_and_in_random() {
    let app = TestApp::spawn().await;
    let red = image::RgbImage::from_pixel(120, 80, image::Rgb([200, 20, 20]));
    for format in [image::ImageFormat::Png, image::ImageFormat::Jpeg] {
        let mut bytes = std::io::Cursor::new(Vec::new());
        red.write_to(&mut bytes, format).unwrap();
        let response = app
            .upload_raw(bytes.into_inner(), format.to_mime_type())
            .await;
        assert_eq!(response.status(), 201);
        let image: serde_json::Value = response.json().await.unwrap();
        let hash = image["blurhash"]
            .as_str()
            .expect("a placeholder")
            .to_owned();
        // 4 x 3 components for a landscape picture: 28 characters.
        assert_eq!(hash.len(), 28, "{hash}");
        let pixels = blurhash::decode(&hash, 4, 4, 1.0).expect("a valid BlurHash");
        let [r, g, b] = [pixels[0], pixels[1], pixels[2]];
        assert!(r > 170 && g < 60 && b < 60, "{format:?}: {r} {g} {b}");

        let by_id = app
            .get(&format!("/v1/images/{}", image["id"].as_str().unwrap()))
            .await;
        let by_id: serde_json::Value = by_id.json().await.unwrap();
        assert_eq!(by_id["blurhash"], hash.as_str());
    }
    let random: serde_json::Value = app
        .get("/v1/images/random?count=2")
        .await
        .json()
        .await
        .unwrap();
    let entries = random["images"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert!(
        entries
            .iter()
            .all(|e| e["blurhash"].as_str().is_some_and(|h| h.len() == 28))
    );
}

/// Deleting the last image of some content while the same content arrives with metadata
/// (so it is checked on another worker, and cleaned to the same stored name): whichever
/// wins, an image the server answered 201 for has its file.
#[tokio::test]
async fn a_delete_racing_an_upload_of_the_same_content_leaves_no_record_without_its_file() {
    let app = TestApp::spawn_with(|s| s.rate_limits.enabled = false).await;
    for round in 0..40 {
        let plain = png(8, 8, 500 + round);
        let mut tagged = plain[..33].to_vec();
        tagged.extend(png_chunk(b"tEXt", b"Comment\0a caption"));
        tagged.extend_from_slice(&plain[33..]);
        let first: serde_json::Value = app
            .upload_raw(plain, "image/png")
            .await
            .json()
            .await
            .unwrap();
        let id = first["id"].as_str().unwrap().to_owned();
        let delete = app
            .authed(reqwest::Method::DELETE, &format!("/v1/images/{id}"))
            .send();
        let upload = app.upload_raw(tagged, "image/png");
        let (deleted, uploaded) = tokio::join!(delete, upload);
        assert_eq!(deleted.unwrap().status(), 204);
        assert_eq!(uploaded.status(), 201);
        let second: serde_json::Value = uploaded.json().await.unwrap();
        assert_eq!(second["name"], first["name"]);
        let file = app
            .get(&format!("/i/{}", second["name"].as_str().unwrap()))
            .await;
        assert_eq!(
            file.status(),
            200,
            "round {round}: a record without its file"
        );
    }
}
