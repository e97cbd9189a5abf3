//! Lossless recompression of stored PNG originals (`optimizer.recompress`).
//!
//! oxipng rewrites a PNG's image data (filters, deflate, and colour type, bit depth or
//! palette where that loses nothing; an interlaced file comes out non-interlaced) and
//! keeps the other chunks, such as the ICC profile and orientation that hygiene kept,
//! except hints that no longer match a reduced picture (`bKGD`, `hIST`, `sBIT`). The
//! result replaces the stored file only if it is smaller, well-formed (see
//! [`transparency_in_range`]) and decodes to exactly the same pixels; either way the try
//! is marked beside the image's variants, so the next pass does not spend the CPU again.
//! Pictures too large to check within the decode limits are left alone.
//!
//! The file keeps its name: the name is the sha1 of the bytes as uploaded (after
//! hygiene), so an identical upload still finds and shares it, and its URL never breaks.
//! What changes is the `ETag`, which carries the length of the bytes served (a smaller
//! file is a different length), so a cache or a resumed range never mixes the two.

use std::io::Cursor;
use std::time::Duration;

use image::{DynamicImage, ImageReader};

use super::MediaError;
use super::inspect::DecodeLimits;
use super::layout::MediaRoot;
use crate::domain::{ImageFormat, ImageName};

/// The most one recompression may take; past it oxipng keeps the best found so far (so
/// a stop of the server waits at most about this long for it).
const TIMEOUT: Duration = Duration::from_secs(10);
/// Pictures whose decoded pixels take more than this share of `max_decode_bytes` are
/// left alone: oxipng holds the pixels and its trials, and the check decodes both files.
const MAX_SHARE_OF_DECODE: u64 = 8;

/// What a try did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recompressed {
    /// Replaced by a smaller file with the same pixels.
    Smaller { before: u64, after: u64 },
    /// Kept: nothing smaller came out (or not with the same pixels).
    Kept,
    /// Tried before, or not a PNG, or gone: nothing done.
    Skipped,
}

/// Recompresses the stored original `name` if it is a PNG not tried before. Blocking and
/// CPU-heavy: run it on a blocking thread.
pub fn recompress(
    root: &MediaRoot,
    name: &ImageName,
    limits: DecodeLimits,
) -> Result<Recompressed, MediaError> {
    if name.format() != ImageFormat::Png || root.recompression_tried(name) {
        return Ok(Recompressed::Skipped);
    }
    let path = root.path_of(name);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Recompressed::Skipped),
        Err(e) => return Err(e.into()),
    };
    // From the header alone. Not marked: with a higher limit it is tried.
    let decoded_size = image::codecs::png::PngDecoder::new(std::io::BufReader::new(file))
        .map(|d| image::ImageDecoder::total_bytes(&d))
        .map_err(|e| MediaError::Invalid(format!("the stored PNG is unreadable: {e}")))?;
    if decoded_size > limits.max_alloc / MAX_SHARE_OF_DECODE {
        return Ok(Recompressed::Skipped);
    }
    let original = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Recompressed::Skipped),
        Err(e) => return Err(e.into()),
    };
    let mut options = oxipng::Options::from_preset(2);
    options.max_decompressed_size = usize::try_from(limits.max_alloc).ok();
    options.timeout = Some(TIMEOUT);
    let outcome = match oxipng::optimize_from_memory(&original, &options) {
        Ok(smaller)
            if smaller.len() < original.len()
                && transparency_in_range(&smaller)
                && same_pixels(&original, &smaller, limits)? =>
        {
            if root.replace(name, &smaller)? {
                Recompressed::Smaller {
                    before: original.len() as u64,
                    after: smaller.len() as u64,
                }
            } else {
                // Deleted meanwhile.
                return Ok(Recompressed::Skipped);
            }
        }
        Ok(_) => Recompressed::Kept,
        Err(e) => {
            tracing::warn!(image = %name, error = %e, "oxipng could not recompress a stored PNG");
            Recompressed::Kept
        }
    };
    mark(root, name)?;
    Ok(outcome)
}

/// Marks the try; if the image was deleted meanwhile, takes the mark back (deleting
/// removes the original first, then the directory the mark is in). Only the mark: the
/// original now there may be an identical upload's, made since.
fn mark(root: &MediaRoot, name: &ImageName) -> Result<(), MediaError> {
    root.mark_recompression_tried(name)?;
    if !root.path_of(name).exists() {
        root.unmark_recompression(name)?;
    }
    Ok(())
}

/// Whether a grey or RGB PNG's `tRNS` colour fits its bit depth. oxipng can lower a
/// 16-bit picture to 8 bits and keep a `tRNS` whose samples do not fit 8 bits: decoders
/// differ on such a file (some mask the high byte, some drop the transparency), so it
/// must not replace a well-formed one.
fn transparency_in_range(png: &[u8]) -> bool {
    let mut rest = png.get(8..).unwrap_or_default();
    let (mut depth, mut colour) = (16u32, 0u8);
    while rest.len() >= 12 {
        let length = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let (kind, Some(data)) = (&rest[4..8], rest.get(8..8 + length)) else {
            return false;
        };
        match kind {
            b"IHDR" if data.len() >= 10 => (depth, colour) = (u32::from(data[8]), data[9]),
            b"tRNS" if colour == 0 || colour == 2 => {
                let fits = data
                    .chunks_exact(2)
                    .all(|s| u32::from(u16::from_be_bytes([s[0], s[1]])) < (1 << depth));
                if !fits {
                    return false;
                }
            }
            b"IDAT" => return true,
            _ => {}
        }
        rest = rest.get(12 + length..).unwrap_or_default();
    }
    true
}

/// Whether two PNGs decode to the same pixels (compared pixel by pixel as 16-bit RGBA
/// when their colour types differ, so a palette or a lower bit depth that loses nothing
/// compares equal; no converted copy of either is made).
fn same_pixels(a: &[u8], b: &[u8], limits: DecodeLimits) -> Result<bool, MediaError> {
    let (a, b) = (decode(a, limits)?, decode(b, limits)?);
    if (a.width(), a.height()) != (b.width(), b.height()) {
        return Ok(false);
    }
    if a.color() == b.color() {
        return Ok(a.as_bytes() == b.as_bytes());
    }
    let (width, height) = (a.width(), a.height());
    Ok((0..height).all(|y| {
        (0..width)
            .all(|x| matches!((rgba16(&a, x, y), rgba16(&b, x, y)), (Some(p), Some(q)) if p == q))
    }))
}

/// One pixel as 16-bit RGBA.
fn rgba16(picture: &DynamicImage, x: u32, y: u32) -> Option<[u16; 4]> {
    use image::Pixel;
    let wide = |p: image::Rgba<u8>| p.0.map(|c| u16::from(c) * 257);
    Some(match picture {
        DynamicImage::ImageLuma8(p) => wide(p.get_pixel(x, y).to_rgba()),
        DynamicImage::ImageLumaA8(p) => wide(p.get_pixel(x, y).to_rgba()),
        DynamicImage::ImageRgb8(p) => wide(p.get_pixel(x, y).to_rgba()),
        DynamicImage::ImageRgba8(p) => wide(*p.get_pixel(x, y)),
        DynamicImage::ImageLuma16(p) => p.get_pixel(x, y).to_rgba().0,
        DynamicImage::ImageLumaA16(p) => p.get_pixel(x, y).to_rgba().0,
        DynamicImage::ImageRgb16(p) => p.get_pixel(x, y).to_rgba().0,
        DynamicImage::ImageRgba16(p) => p.get_pixel(x, y).0,
        // PNG decodes to none of the others.
        _ => return None,
    })
}

fn decode(bytes: &[u8], limits: DecodeLimits) -> Result<DynamicImage, MediaError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), image::ImageFormat::Png);
    reader.limits(limits.for_image());
    reader
        .decode()
        .map_err(|e| MediaError::Invalid(format!("a PNG to compare is unreadable: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DecodeLimits = DecodeLimits {
        max_width: 4096,
        max_height: 4096,
        max_pixels: 1 << 24,
        max_alloc: 1 << 28,
    };

    fn png(picture: &DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        picture.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    /// A PNG's chunks up to IDAT (checksums are not looked at).
    fn chunks(depth: u8, colour: u8, trns: &[u8]) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in [
            (
                b"IHDR",
                [&[0, 0, 0, 1, 0, 0, 0, 1, depth, colour][..], &[0, 0, 0]].concat(),
            ),
            (b"tRNS", trns.to_vec()),
            (b"IDAT", vec![]),
        ] {
            out.extend((data.len() as u32).to_be_bytes());
            out.extend(kind);
            out.extend(&data);
            out.extend([0; 4]);
        }
        out
    }

    #[test]
    fn a_transparent_colour_must_fit_the_bit_depth() {
        assert!(transparency_in_range(&chunks(8, 0, &[0x00, 0x32])));
        assert!(!transparency_in_range(&chunks(8, 0, &[0x32, 0x32])));
        assert!(transparency_in_range(&chunks(
            16,
            2,
            &[0x6a, 0x6a, 0x98, 0x98, 0xf9, 0xf9]
        )));
        assert!(!transparency_in_range(&chunks(
            8,
            2,
            &[0, 0x6a, 0x98, 0x98, 0, 0xf9]
        )));
        // A palette's tRNS is alpha per entry, one byte each.
        assert!(transparency_in_range(&chunks(8, 3, &[0xff, 0x00, 0x80])));
    }

    #[test]
    fn the_same_pixels_in_another_colour_type_compare_equal_and_one_changed_pixel_does_not() {
        let gray = image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * 8 + y) as u8]));
        let as_gray = png(&DynamicImage::ImageLuma8(gray.clone()));
        let as_rgba = png(&DynamicImage::ImageLuma8(gray.clone()).to_rgba8().into());
        assert!(same_pixels(&as_gray, &as_rgba, LIMITS).unwrap());
        let mut changed = gray;
        changed.put_pixel(3, 3, image::Luma([255]));
        let changed = png(&DynamicImage::ImageLuma8(changed));
        assert!(!same_pixels(&as_gray, &changed, LIMITS).unwrap());
    }
}
