//! Lossless recompression of stored PNG originals (`optimizer.recompress`).
//!
//! oxipng rewrites a PNG's image data (filters, deflate, and colour type, bit depth or
//! palette where that loses nothing) and keeps every other chunk as it is (the ICC
//! profile and orientation that hygiene kept). The result replaces the stored file only
//! if it is smaller and decodes to exactly the same pixels; either way the try is marked
//! beside the image's variants, so the next pass does not spend the CPU again.
//!
//! The file keeps its name: the name is the sha1 of the bytes as uploaded (after
//! hygiene), so an identical upload still finds and shares it, and its URL never breaks.
//! What changes is the `ETag`, which carries the length of the bytes served (a smaller
//! file is a different length), so a cache or a resumed range never mixes the two.

use std::io::Cursor;
use std::time::Duration;

use image::{DynamicImage, ImageReader, Limits};

use super::MediaError;
use super::inspect::DecodeLimits;
use super::layout::MediaRoot;
use crate::domain::{ImageFormat, ImageName};

/// The most one recompression may take; past it oxipng keeps the best found so far.
const TIMEOUT: Duration = Duration::from_secs(30);

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
    let original = match std::fs::read(root.path_of(name)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Recompressed::Skipped),
        Err(e) => return Err(e.into()),
    };
    let mut options = oxipng::Options::from_preset(2);
    options.max_decompressed_size = usize::try_from(limits.max_alloc).ok();
    options.timeout = Some(TIMEOUT);
    let outcome = match oxipng::optimize_from_memory(&original, &options) {
        Ok(smaller)
            if smaller.len() < original.len() && same_pixels(&original, &smaller, limits)? =>
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
    // Not for an image deleted meanwhile: the mark would outlive it.
    if root.path_of(name).exists() {
        root.mark_recompression_tried(name)?;
    }
    Ok(outcome)
}

/// Whether two PNGs decode to the same pixels (compared as 16-bit RGBA when their colour
/// types differ, so a palette or a lower bit depth that loses nothing compares equal).
fn same_pixels(a: &[u8], b: &[u8], limits: DecodeLimits) -> Result<bool, MediaError> {
    let (a, b) = (decode(a, limits)?, decode(b, limits)?);
    if (a.width(), a.height()) != (b.width(), b.height()) {
        return Ok(false);
    }
    if a.color() == b.color() {
        return Ok(a.as_bytes() == b.as_bytes());
    }
    Ok(a.to_rgba16().as_raw() == b.to_rgba16().as_raw())
}

fn decode(bytes: &[u8], limits: DecodeLimits) -> Result<DynamicImage, MediaError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), image::ImageFormat::Png);
    let mut image_limits = Limits::default();
    image_limits.max_image_width = Some(limits.max_width);
    image_limits.max_image_height = Some(limits.max_height);
    image_limits.max_alloc = Some(limits.max_alloc);
    reader.limits(image_limits);
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
