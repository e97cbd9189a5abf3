//! Finds out what a staged file really is: magic bytes first, then a decode under limits.
//!
//! The client's `Content-Type` is never trusted. Dimensions are read from the header and
//! checked before any pixel is decoded, so a small file claiming a huge canvas (a
//! decompression bomb) is refused without allocating it; the full decode then catches
//! truncated and corrupt files (row by row for PNG, so it holds one row at a time).
//!
//! JPEG is the exception: its decoder (zune-jpeg, through `image`) pads a file that ends
//! early and decodes it without an error (its strict mode, which `image` does not offer,
//! still passes a baseline file missing only its end-of-image marker). So a JPEG's marker
//! structure is walked first, from start-of-image to end-of-image, which a file cut
//! anywhere cannot complete. (A scan cut short and then closed with an end-of-image
//! marker is corrupt, not truncated: neither this walk nor the decoder, strict or not,
//! can tell, short of counting the coefficients each scan should hold.)

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

use super::MediaError;
use super::placeholder::{self, Shrinker};
use crate::domain::ImageFormat;

/// Bounds on what an upload may decode to.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub max_width: u32,
    pub max_height: u32,
    pub max_pixels: u64,
    /// Most bytes the decoder may allocate.
    pub max_alloc: u64,
}

/// What inspection learned about a valid image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    pub format: ImageFormat,
    /// As the picture is shown: its EXIF orientation applied (a phone photo stored on its
    /// side is as wide as it is tall upright).
    pub width: u32,
    pub height: u32,
    /// Its BlurHash, from the pixels the check decoded (see `placeholder`).
    pub placeholder: Option<String>,
}

/// How many leading bytes the sniffer reads; enough for every accepted signature.
const SNIFF_LEN: usize = 16;
/// The decoders read the staged file (from the page cache) in reads of this size.
const READ_BUFFER: usize = 128 * 1024;

/// Checks the file at `path`. Blocking and CPU-heavy: run it on a blocking thread.
pub fn inspect(path: &Path, limits: DecodeLimits) -> Result<Inspected, MediaError> {
    let format = sniff(path)?;
    if format == ImageFormat::Jpeg {
        let file = BufReader::with_capacity(READ_BUFFER, File::open(path)?);
        check_jpeg_structure(file)?;
    }
    let (width, height) = reader(path, format, limits)?
        .into_dimensions()
        .map_err(|e| {
            MediaError::Invalid(format!("the {} header is unreadable: {e}", format.as_str()))
        })?;
    check_dimensions(width, height, limits)?;
    let corrupt = |e: &dyn std::fmt::Display| {
        MediaError::Invalid(format!(
            "the {} data is corrupt or truncated: {e}",
            format.as_str()
        ))
    };
    let (placeholder, orientation) = match format {
        // PNG rows are decoded and dropped one at a time: the check costs one row of
        // memory, not the whole canvas (and no page faults for it). The placeholder's
        // grid samples some of them on the way.
        ImageFormat::Png => {
            let limits = png::Limits {
                bytes: usize::try_from(limits.max_alloc).unwrap_or(usize::MAX),
            };
            let file = BufReader::with_capacity(READ_BUFFER, File::open(path)?);
            let mut decoder = png::Decoder::new_with_limits(file, limits);
            decoder.set_transformations(png::Transformations::normalize_to_color8());
            let mut rows = decoder.read_info().map_err(|e| corrupt(&e))?;
            // An eXIf chunk's orientation (hygiene keeps it), as viewers and the variant
            // maker (image's decoder) apply it: from before the image data only, where the
            // PNG spec puts it.
            let orientation = rows
                .info()
                .exif_metadata
                .as_deref()
                .and_then(Orientation::from_exif_chunk)
                .unwrap_or(Orientation::NoTransforms);
            let (color, _) = rows.output_color_type();
            // (An interlaced PNG's rows come in seven passes: it gets no placeholder.)
            let mut grid = (!rows.info().interlaced).then(|| Shrinker::new(width, height));
            let mut y = 0;
            while let Some(row) = rows.next_row().map_err(|e| corrupt(&e))? {
                if let Some(grid) = grid.as_mut() {
                    let data = row.data();
                    grid.add_row(y, |x| rgba(color, data, x));
                }
                y += 1;
            }
            // Through IEND: a PNG cut after its pixel data is truncated too.
            rows.finish().map_err(|e| corrupt(&e))?;
            (grid.and_then(|g| g.finish(orientation)), orientation)
        }
        _ => {
            let mut decoder = reader(path, format, limits)?
                .into_decoder()
                .map_err(|e| corrupt(&e))?;
            let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
            let picture = DynamicImage::from_decoder(decoder).map_err(|e| corrupt(&e))?;
            (placeholder::of_picture(&picture, orientation), orientation)
        }
    };
    let turned = matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    let (width, height) = if turned {
        (height, width)
    } else {
        (width, height)
    };
    Ok(Inspected {
        format,
        width,
        height,
        placeholder,
    })
}

/// Pixel `x` of a row of 8-bit samples in `color`, as RGBA.
fn rgba(color: png::ColorType, row: &[u8], x: usize) -> [u8; 4] {
    let at = |i: usize| row.get(i).copied().unwrap_or(0);
    match color {
        png::ColorType::Grayscale => {
            let v = at(x);
            [v, v, v, 255]
        }
        png::ColorType::GrayscaleAlpha => {
            let v = at(2 * x);
            [v, v, v, at(2 * x + 1)]
        }
        png::ColorType::Rgba => [at(4 * x), at(4 * x + 1), at(4 * x + 2), at(4 * x + 3)],
        // RGB (and indexed, which the transformations expand to RGB).
        _ => [at(3 * x), at(3 * x + 1), at(3 * x + 2), 255],
    }
}

fn sniff(path: &Path) -> Result<ImageFormat, MediaError> {
    let mut head = Vec::with_capacity(SNIFF_LEN);
    File::open(path)?
        .take(SNIFF_LEN as u64)
        .read_to_end(&mut head)?;
    if head.is_empty() {
        return Err(MediaError::Unsupported("the upload is empty".into()));
    }
    match image::guess_format(&head) {
        Ok(image::ImageFormat::Jpeg) => Ok(ImageFormat::Jpeg),
        Ok(image::ImageFormat::Png) => Ok(ImageFormat::Png),
        Ok(image::ImageFormat::Gif) => Ok(ImageFormat::Gif),
        Ok(image::ImageFormat::WebP) => Ok(ImageFormat::Webp),
        Ok(other) => Err(MediaError::Unsupported(format!(
            "{other:?} images are not accepted; send JPEG, PNG, GIF or WebP"
        ))),
        Err(_) => Err(MediaError::Unsupported(
            "the content is not an image; send JPEG, PNG, GIF or WebP".into(),
        )),
    }
}

pub(super) fn reader(
    path: &Path,
    format: ImageFormat,
    limits: DecodeLimits,
) -> Result<ImageReader<BufReader<File>>, MediaError> {
    let mut reader = ImageReader::new(BufReader::with_capacity(READ_BUFFER, File::open(path)?));
    reader.set_format(match format {
        ImageFormat::Jpeg => image::ImageFormat::Jpeg,
        ImageFormat::Png => image::ImageFormat::Png,
        ImageFormat::Gif => image::ImageFormat::Gif,
        ImageFormat::Webp => image::ImageFormat::WebP,
    });
    reader.limits(limits.for_image());
    Ok(reader)
}

impl DecodeLimits {
    /// The same bounds, as the `image` crate takes them.
    pub(super) fn for_image(self) -> Limits {
        let mut image_limits = Limits::default();
        image_limits.max_image_width = Some(self.max_width);
        image_limits.max_image_height = Some(self.max_height);
        image_limits.max_alloc = Some(self.max_alloc);
        image_limits
    }
}

/// JPEG marker codes the structure walk needs (each follows a 0xFF byte).
mod marker {
    pub const TEM: u8 = 0x01;
    pub const RST0: u8 = 0xD0;
    pub const RST7: u8 = 0xD7;
    pub const SOI: u8 = 0xD8;
    pub const EOI: u8 = 0xD9;
    pub const SOS: u8 = 0xDA;
}

/// Why a JPEG's structure walk stopped short.
#[derive(Debug, thiserror::Error)]
enum JpegFault {
    #[error("{0}")]
    Malformed(&'static str),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Refuses a JPEG whose markers do not run from start-of-image to end-of-image: a file
/// cut anywhere (in a header segment or in a scan's data) ends before its EOI marker.
/// Reads the file once, a buffer at a time, and decodes nothing. What follows EOI is not
/// read: phones append previews and depth maps there.
fn check_jpeg_structure(file: impl BufRead) -> Result<(), MediaError> {
    let corrupt = |detail: &str| {
        MediaError::Invalid(format!("the jpeg data is corrupt or truncated: {detail}"))
    };
    match walk_jpeg(file) {
        Ok(()) => Ok(()),
        Err(JpegFault::Malformed(detail)) => Err(corrupt(detail)),
        Err(JpegFault::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Err(corrupt("the file ends before its end-of-image marker"))
        }
        Err(JpegFault::Io(e)) => Err(MediaError::Io(e)),
    }
}

/// The length of the JPEG `file` starts with: through its end-of-image marker.
pub(super) fn jpeg_length(file: impl BufRead) -> io::Result<u64> {
    let mut counted = Counted {
        inner: file,
        count: 0,
    };
    walk_jpeg(&mut counted).map_err(|e| match e {
        JpegFault::Io(e) => e,
        JpegFault::Malformed(detail) => io::Error::other(detail),
    })?;
    Ok(counted.count)
}

/// A reader that counts the bytes taken from it.
struct Counted<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.count += n as u64;
        self.inner.consume(n);
    }
}

/// Follows SOI, the length-prefixed segments, each scan's entropy-coded data (after SOS)
/// and whatever segments come between scans (DHT, DQT, DNL... in a progressive file) up
/// to EOI. Running out of bytes first is an `UnexpectedEof` error. Whether the segments
/// make sense is left to the decoder.
fn walk_jpeg(mut file: impl BufRead) -> Result<(), JpegFault> {
    let mut soi = [0u8; 2];
    file.read_exact(&mut soi)?;
    if soi != [0xFF, marker::SOI] {
        return Err(JpegFault::Malformed(
            "it does not start with a start-of-image marker",
        ));
    }
    let mut in_scan = false;
    loop {
        match next_marker(&mut file, in_scan)? {
            marker::EOI => return Ok(()),
            // Stand-alone markers (no length) outside a scan.
            marker::SOI | marker::TEM | marker::RST0..=marker::RST7 => in_scan = false,
            code => {
                skip_segment(&mut file)?;
                // A scan's header: its entropy-coded data follows.
                in_scan = code == marker::SOS;
            }
        }
    }
}

/// The code of the next marker. In a scan's entropy-coded data, a 0xFF byte followed by
/// 0x00 (a stuffed byte) or by a restart marker (RSTn) is data; outside scans, stray bytes
/// before a marker and 0x00 after its 0xFF are tolerated, as decoders do. Fill bytes
/// (0xFF 0xFF) may precede any marker.
fn next_marker(file: &mut impl BufRead, in_scan: bool) -> Result<u8, JpegFault> {
    loop {
        // std's search for the byte is vectorised. If the file ends without a 0xFF, the
        // read of the code below fails as it should.
        if file.skip_until(0xFF)? == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        let mut code = read_u8(file)?;
        while code == 0xFF || (code == 0x00 && !in_scan) {
            code = read_u8(file)?;
        }
        match code {
            0x00 | marker::RST0..=marker::RST7 if in_scan => {}
            code => return Ok(code),
        }
    }
}

/// Skips a segment: a big-endian length that counts itself, then its content.
fn skip_segment(file: &mut impl BufRead) -> Result<(), JpegFault> {
    let mut len = [0u8; 2];
    file.read_exact(&mut len)?;
    let mut left = usize::from(u16::from_be_bytes(len))
        .checked_sub(2)
        .ok_or(JpegFault::Malformed("a segment's length is under 2"))?;
    while left > 0 {
        let available = file.fill_buf()?.len();
        if available == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        let step = available.min(left);
        file.consume(step);
        left -= step;
    }
    Ok(())
}

fn read_u8(file: &mut impl BufRead) -> io::Result<u8> {
    let mut byte = [0u8; 1];
    file.read_exact(&mut byte)?;
    Ok(byte[0])
}

fn check_dimensions(width: u32, height: u32, limits: DecodeLimits) -> Result<(), MediaError> {
    if width == 0 || height == 0 {
        return Err(MediaError::Invalid("the image has no pixels".into()));
    }
    let pixels = u64::from(width) * u64::from(height);
    if width > limits.max_width || height > limits.max_height || pixels > limits.max_pixels {
        return Err(MediaError::Invalid(format!(
            "the image is {width}x{height}; the limits are {}x{} and {} pixels",
            limits.max_width, limits.max_height, limits.max_pixels
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment: marker, length (counting itself), content.
    fn segment(code: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![0xFF, code];
        out.extend_from_slice(&u16::try_from(content.len() + 2).unwrap().to_be_bytes());
        out.extend_from_slice(content);
        out
    }

    /// SOI, an APP0 and a DQT holding 0xFF bytes, SOF, two scans whose data holds stuffed
    /// bytes, a restart marker and fill bytes, a DHT between them, and EOI.
    fn skeleton() -> Vec<u8> {
        let mut out = vec![0xFF, marker::SOI];
        out.extend(segment(0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"));
        out.extend(segment(0xDB, &[0xFF; 65]));
        out.extend(segment(0xC2, &[8, 0, 8, 0, 8, 1, 1, 0x11, 0]));
        out.extend(segment(marker::SOS, &[1, 1, 0, 0, 0x3F, 0]));
        out.extend([
            0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF, 0xFF, 0xFF, 0x00,
        ]);
        out.extend(segment(0xC4, &[0x10, 0xFF, 0xD9, 0xFF]));
        out.extend(segment(marker::SOS, &[1, 1, 0, 1, 0x3F, 0]));
        out.extend([0xAB, 0xFF, 0x00, 0xCD, 0xFF, 0xFF]);
        out.extend([0xFF, marker::EOI]);
        out
    }

    fn check(bytes: &[u8]) -> Result<(), MediaError> {
        check_jpeg_structure(bytes)
    }

    #[test]
    fn a_whole_structure_passes_and_what_follows_eoi_is_not_read() {
        check(&skeleton()).unwrap();
        let mut trailing = skeleton();
        trailing.extend_from_slice(b"\xFF\xD8 a preview image, cut short \xFF\xDA\x00");
        check(&trailing).unwrap();
        // Stray bytes and a stuffed zero before a marker, outside a scan, are tolerated.
        let mut stray = vec![0xFF, marker::SOI, 0x00, 0x01, 0xFF, 0x00];
        stray.extend_from_slice(&skeleton()[2..]);
        check(&stray).unwrap();
    }

    #[test]
    fn a_structure_cut_anywhere_is_truncated() {
        let whole = skeleton();
        for len in 0..whole.len() {
            let err = check(&whole[..len]).unwrap_err();
            assert!(
                matches!(&err, MediaError::Invalid(d) if d.contains("corrupt or truncated")),
                "cut at {len}: {err}"
            );
        }
    }

    #[test]
    fn an_impossible_segment_length_is_corrupt() {
        let mut bad = vec![0xFF, marker::SOI, 0xFF, 0xE0, 0x00, 0x01];
        bad.extend_from_slice(&[0xFF, marker::EOI]);
        assert!(matches!(check(&bad), Err(MediaError::Invalid(_))));
    }
}
