//! Finds out what a staged file really is: magic bytes first, then a decode under limits.
//!
//! The client's `Content-Type` is never trusted. Dimensions are read from the header and
//! checked before any pixel is decoded, so a small file claiming a huge canvas (a
//! decompression bomb) is refused without allocating it; the full decode then catches
//! truncated and corrupt files (row by row for PNG, so it holds one row at a time).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use image::{ImageReader, Limits};

use super::MediaError;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inspected {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

/// How many leading bytes the sniffer reads; enough for every accepted signature.
const SNIFF_LEN: usize = 16;
/// The decoders read the staged file (from the page cache) in reads of this size.
const READ_BUFFER: usize = 128 * 1024;

/// Checks the file at `path`. Blocking and CPU-heavy: run it on a blocking thread.
pub fn inspect(path: &Path, limits: DecodeLimits) -> Result<Inspected, MediaError> {
    let format = sniff(path)?;
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
    match format {
        // PNG rows are decoded and dropped one at a time: the check costs one row of
        // memory, not the whole canvas (and no page faults for it).
        ImageFormat::Png => {
            let limits = png::Limits {
                bytes: usize::try_from(limits.max_alloc).unwrap_or(usize::MAX),
            };
            let file = BufReader::with_capacity(READ_BUFFER, File::open(path)?);
            let mut rows = png::Decoder::new_with_limits(file, limits)
                .read_info()
                .map_err(|e| corrupt(&e))?;
            while rows.next_row().map_err(|e| corrupt(&e))?.is_some() {}
        }
        _ => {
            reader(path, format, limits)?
                .decode()
                .map_err(|e| corrupt(&e))?;
        }
    }
    Ok(Inspected {
        format,
        width,
        height,
    })
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

fn reader(
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
    let mut image_limits = Limits::default();
    image_limits.max_image_width = Some(limits.max_width);
    image_limits.max_image_height = Some(limits.max_height);
    image_limits.max_alloc = Some(limits.max_alloc);
    reader.limits(image_limits);
    Ok(reader)
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
