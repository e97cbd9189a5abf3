//! Variants: an original resized and re-encoded, made on first request and kept beside it.
//!
//! A variant is named by its source and its recipe, not by its own bytes
//! (`<data>/variants/ab/cd/<sha1>/<recipe>`), so it is found without an index, removed
//! with its source, and its strong ETag is known before it is made. Making decodes under
//! the upload limits, turns the picture upright (EXIF orientation), shrinks it (never
//! enlarges) and encodes it; the encoders write no metadata.

use std::collections::HashMap;
use std::io::{self, Cursor};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tokio::sync::Semaphore;

use image::codecs::gif::GifEncoder;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::imageops::FilterType;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder};

use super::MediaError;
use super::inspect::{DecodeLimits, reader};
use super::layout::{MediaRoot, Opened, StoredFile};
use crate::domain::{ImageFormat, ImageName};
use crate::problem::echo;

/// JPEG quality of variants (1–100): the usual web default, well below visible loss.
const JPEG_QUALITY: u8 = 82;
/// Lossy WebP quality (0–100).
const WEBP_QUALITY: f32 = 80.0;

/// How a variant is made from its source. Build it with [`Recipe::new`], which makes it
/// canonical (one recipe, one file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Recipe {
    /// Largest width (0: not bounded).
    width: u32,
    /// Largest height (0: not bounded).
    height: u32,
    fit: Fit,
    format: ImageFormat,
}

/// How a picture meets a box of both a width and a height.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fit {
    /// Inside the box, whole: one side may come out shorter.
    Contain,
    /// Covering the box, cut to it around the centre.
    Cover,
}

impl Fit {
    pub fn as_str(self) -> &'static str {
        match self {
            Fit::Contain => "contain",
            Fit::Cover => "cover",
        }
    }
}

impl Recipe {
    /// `width`/`height` 0 leave that side unbounded; with only one bounded, both fits are
    /// the same picture, so the fit is normalised to `Contain`.
    pub fn new(width: u32, height: u32, fit: Fit, format: ImageFormat) -> Self {
        let fit = if width == 0 || height == 0 {
            Fit::Contain
        } else {
            fit
        };
        Self {
            width,
            height,
            fit,
            format,
        }
    }

    pub fn format(&self) -> ImageFormat {
        self.format
    }

    /// The variant's file name, unique per recipe: `256x0-contain.webp`.
    pub fn file_name(&self) -> String {
        format!(
            "{}x{}-{}.{}",
            self.width,
            self.height,
            self.fit.as_str(),
            self.format.extension()
        )
    }

    /// The size to shrink a `w`×`h` picture to before cutting (never larger than it).
    fn scaled(&self, w: u32, h: u32) -> (u32, u32) {
        let ratio = |bound: u32, side: u32| {
            if bound == 0 {
                f64::INFINITY
            } else {
                f64::from(bound) / f64::from(side.max(1))
            }
        };
        let (rw, rh) = (ratio(self.width, w), ratio(self.height, h));
        let scale = match self.fit {
            Fit::Contain => rw.min(rh),
            Fit::Cover => rw.max(rh),
        }
        .min(1.0);
        let side = |s: u32| ((f64::from(s) * scale).round() as u32).max(1);
        (side(w), side(h))
    }
}

/// A variant as asked for (by a URL's query, or in `optimizer.eager`), before its source
/// is known: the source's format, or the client's `Accept`, may still choose the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asked {
    width: u32,
    height: u32,
    fit: Fit,
    format: AskedFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AskedFormat {
    /// The source's own.
    Source,
    Fixed(ImageFormat),
    /// WebP where `Accept` takes it, else the source's.
    Auto,
}

impl Asked {
    /// The variant the parameters `w`, `h`, `fit` and `format` ask for, or `None` when
    /// none is given (the original). Sizes must be in `sizes`; the error says what is
    /// wrong, quoting the input shortened.
    pub fn parse(
        w: Option<&str>,
        h: Option<&str>,
        fit: Option<&str>,
        format: Option<&str>,
        sizes: &[u32],
    ) -> Result<Option<Self>, String> {
        if w.is_none() && h.is_none() && fit.is_none() && format.is_none() {
            return Ok(None);
        }
        let size = |key: &str, raw: Option<&str>| -> Result<u32, String> {
            let Some(raw) = raw else { return Ok(0) };
            Some(raw)
                .filter(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|r| r.parse::<u32>().ok())
                .filter(|n| sizes.contains(n))
                .ok_or_else(|| {
                    let allowed: Vec<String> = sizes.iter().map(u32::to_string).collect();
                    format!(
                        "{key} must be one of {}, not {}",
                        allowed.join(", "),
                        echo(raw)
                    )
                })
        };
        let (width, height) = (size("w", w)?, size("h", h)?);
        // Every variant is smaller than some allowed box: a full-size re-encode of a large
        // original could take more disk and CPU than the allow-list is there to bound.
        if width == 0 && height == 0 {
            return Err(
                "a variant needs w or h (or both); without them, ask for the original".into(),
            );
        }
        if fit.is_some() && (width == 0 || height == 0) {
            return Err(
                "fit needs both w and h: with one side, the picture is scaled to it".into(),
            );
        }
        let fit = match fit {
            None | Some("contain") => Fit::Contain,
            Some("cover") => Fit::Cover,
            Some(other) => {
                return Err(format!("fit must be contain or cover, not {}", echo(other)));
            }
        };
        let format = match format {
            None => AskedFormat::Source,
            Some("auto") => AskedFormat::Auto,
            Some("jpeg") => AskedFormat::Fixed(ImageFormat::Jpeg),
            Some("png") => AskedFormat::Fixed(ImageFormat::Png),
            Some("webp") => AskedFormat::Fixed(ImageFormat::Webp),
            Some("gif") => AskedFormat::Fixed(ImageFormat::Gif),
            Some(other) => {
                return Err(format!(
                    "format must be jpeg, png, webp, gif or auto, not {}",
                    echo(other)
                ));
            }
        };
        Ok(Some(Self {
            width,
            height,
            fit,
            format,
        }))
    }

    /// A query string such as `w=256&format=webp` (an `optimizer.eager` entry), which
    /// must ask for a variant whose format does not depend on a request's `Accept`.
    pub fn from_query(query: &str, sizes: &[u32]) -> Result<Self, String> {
        let mut parts: HashMap<&str, &str> = HashMap::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !["w", "h", "fit", "format"].contains(&key) {
                return Err(format!("{} is not one of w, h, fit, format", echo(key)));
            }
            if parts.insert(key, value).is_some() {
                return Err(format!("{key} is given twice"));
            }
        }
        let get = |key: &str| parts.get(key).copied();
        let asked = Self::parse(get("w"), get("h"), get("fit"), get("format"), sizes)?
            .ok_or("a variant needs w or h (or both)")?;
        if asked.by_accept() {
            return Err("format=auto follows each request's Accept: name the format".into());
        }
        Ok(asked)
    }

    /// Whether the request's `Accept` chooses the format (so the answer must `Vary` by it).
    pub fn by_accept(&self) -> bool {
        self.format == AskedFormat::Auto
    }

    /// The recipe for a source in `source` format, for a client that does (or does not)
    /// accept WebP.
    pub fn recipe(&self, source: ImageFormat, accepts_webp: bool) -> Recipe {
        let format = match self.format {
            AskedFormat::Source => source,
            AskedFormat::Fixed(format) => format,
            AskedFormat::Auto if accepts_webp => ImageFormat::Webp,
            AskedFormat::Auto => source,
        };
        Recipe::new(self.width, self.height, self.fit, format)
    }
}

/// Makes each variant once, a bounded number at a time, and opens it for serving.
#[derive(Clone)]
pub struct Variants {
    root: MediaRoot,
    limits: DecodeLimits,
    /// One per variant being made (`images.variant_makers`): the CPU-bound step.
    permits: Arc<Semaphore>,
    /// Variants being made, so that concurrent first requests wait for one making.
    making: Arc<Mutex<HashMap<StoredFile, Making>>>,
}

type Making = Shared<BoxFuture<'static, Result<(), Arc<MediaError>>>>;

impl Variants {
    pub fn new(root: MediaRoot, limits: DecodeLimits, makers: usize) -> Self {
        Self {
            root,
            limits,
            permits: Arc::new(Semaphore::new(makers.max(1))),
            making: Arc::default(),
        }
    }

    /// Opens `source`'s variant made by `recipe`, making it first if it does not exist.
    /// `NotFound` (as [`MediaError::Io`]) when there is no such source.
    pub async fn open(&self, source: &ImageName, recipe: Recipe) -> Result<Opened, MediaError> {
        let file = StoredFile::Variant(source.clone(), recipe);
        match self.root.open_file(&file).await {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            opened => return Ok(opened?),
        }
        self.make_missing(&file).await?;
        Ok(self.root.open_file(&file).await?)
    }

    /// Makes `source`'s variant by `recipe` unless it exists (without reading it into
    /// memory, as [`Variants::open`] does): what the optimizer calls.
    pub async fn ensure(&self, source: &ImageName, recipe: Recipe) -> Result<(), MediaError> {
        let file = StoredFile::Variant(source.clone(), recipe);
        if tokio::fs::try_exists(self.root.file_path(&file)).await? {
            return Ok(());
        }
        self.make_missing(&file).await
    }

    /// Variants being made now, by requests or the optimizer.
    pub fn making(&self) -> usize {
        self.making
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    async fn make_missing(&self, file: &StoredFile) -> Result<(), MediaError> {
        let StoredFile::Variant(source, _) = file else {
            return Ok(());
        };
        let original = self.root.path_of(source);
        if !tokio::fs::try_exists(&original).await? {
            return Err(io::Error::from(io::ErrorKind::NotFound).into());
        }
        self.make_once(file.clone()).await.map_err(|e| match &*e {
            // The original went while this was made.
            MediaError::Io(gone) if gone.kind() == io::ErrorKind::NotFound => {
                MediaError::Io(io::ErrorKind::NotFound.into())
            }
            _ => MediaError::Variant(e),
        })
    }

    /// The making of `file`: the one under way, or a new one.
    fn make_once(&self, file: StoredFile) -> Making {
        let mut making = self.making.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(under_way) = making.get(&file) {
            return under_way.clone();
        }
        // Spawned, so that it finishes (and leaves the map) even if every request waiting
        // for it goes away.
        let task = tokio::spawn({
            let this = self.clone();
            let file = file.clone();
            async move {
                let made = this.make(&file).await.map_err(Arc::new);
                this.making
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&file);
                made
            }
        });
        let shared = async move {
            task.await
                .unwrap_or_else(|e| Err(Arc::new(MediaError::Io(io::Error::other(e)))))
        }
        .boxed()
        .shared();
        making.insert(file, shared.clone());
        shared
    }

    async fn make(&self, file: &StoredFile) -> Result<(), MediaError> {
        let StoredFile::Variant(source, recipe) = file else {
            return Ok(());
        };
        let (source, recipe) = (source.clone(), *recipe);
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| MediaError::Io(io::Error::other(e)))?;
        let (root, file, limits) = (self.root.clone(), file.clone(), self.limits);
        let started = Instant::now();
        let made = tokio::task::spawn_blocking(move || -> Result<bool, MediaError> {
            // Made already (by a making that ended just before this one was asked for).
            if root.file_path(&file).exists() {
                return Ok(false);
            }
            let original = root.path_of(&source);
            let bytes = make(&original, source.format(), recipe, limits)?;
            root.store(&file, &bytes)?;
            // The original may have been deleted while this was made: deleting removes
            // the original first, then its variants, so either that removal saw this
            // file, or this check sees the original gone.
            if !original.exists() {
                root.remove_derived(&root.file_path(&file))?;
                return Err(io::Error::from(io::ErrorKind::NotFound).into());
            }
            Ok(true)
        })
        .await
        .map_err(|e| MediaError::Io(io::Error::other(e)))??;
        if !made {
            return Ok(());
        }
        let format = recipe.format().as_str();
        metrics::counter!("corral_variants_made_total", "format" => format).increment(1);
        metrics::histogram!("corral_variant_make_seconds").record(started.elapsed().as_secs_f64());
        Ok(())
    }
}

/// Makes the variant of the file at `source` (whose format is `format`) that `recipe`
/// describes. Blocking and CPU-heavy: run it on a blocking thread, under a permit.
pub fn make(
    source: &Path,
    format: ImageFormat,
    recipe: Recipe,
    limits: DecodeLimits,
) -> Result<Vec<u8>, MediaError> {
    let corrupt = |e: &dyn std::fmt::Display| {
        MediaError::Invalid(format!("the stored {} is unreadable: {e}", format.as_str()))
    };
    let mut decoder = reader(source, format, limits)?
        .into_decoder()
        .map_err(|e| corrupt(&e))?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut picture = DynamicImage::from_decoder(decoder).map_err(|e| corrupt(&e))?;
    picture.apply_orientation(orientation);
    let picture = shrink(picture, recipe);
    encode(&picture, recipe.format)
}

fn shrink(picture: DynamicImage, recipe: Recipe) -> DynamicImage {
    let (w, h) = (picture.width(), picture.height());
    let (sw, sh) = recipe.scaled(w, h);
    let scaled = if (sw, sh) == (w, h) {
        picture
    } else {
        picture.resize_exact(sw, sh, FilterType::Triangle)
    };
    match recipe.fit {
        Fit::Contain => scaled,
        Fit::Cover => {
            let (cw, ch) = (recipe.width.min(sw), recipe.height.min(sh));
            scaled.crop_imm((sw - cw) / 2, (sh - ch) / 2, cw, ch)
        }
    }
}

fn encode(picture: &DynamicImage, format: ImageFormat) -> Result<Vec<u8>, MediaError> {
    let failed = |e: &dyn std::fmt::Display| {
        MediaError::Invalid(format!("the {} encoder failed: {e}", format.as_str()))
    };
    let mut out = Vec::new();
    match format {
        ImageFormat::Jpeg => {
            // JPEG has no alpha: transparent pixels are laid on white.
            let rgb = on_white(picture);
            JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY)
                .encode_image(&rgb)
                .map_err(|e| failed(&e))?;
        }
        ImageFormat::Png => picture
            .write_with_encoder(PngEncoder::new(Cursor::new(&mut out)))
            .map_err(|e| failed(&e))?,
        ImageFormat::Gif => {
            let rgba = picture.to_rgba8();
            GifEncoder::new(&mut out)
                .encode(
                    &rgba,
                    rgba.width(),
                    rgba.height(),
                    image::ExtendedColorType::Rgba8,
                )
                .map_err(|e| failed(&e))?;
        }
        ImageFormat::Webp => {
            // image's own WebP encoder is lossless only: photos come out larger than
            // their JPEG. libwebp's lossy one is what browsers' WebP is made for.
            let memory = if picture.color().has_alpha() {
                let rgba = picture.to_rgba8();
                webp::Encoder::from_rgba(&rgba, rgba.width(), rgba.height())
                    .encode_simple(false, WEBP_QUALITY)
                    .map(|m| m.to_vec())
            } else {
                let rgb = picture.to_rgb8();
                webp::Encoder::from_rgb(&rgb, rgb.width(), rgb.height())
                    .encode_simple(false, WEBP_QUALITY)
                    .map(|m| m.to_vec())
            };
            out = memory.map_err(|e| failed(&format!("{e:?}")))?;
        }
    }
    Ok(out)
}

/// The picture without alpha, its transparent parts laid on white.
fn on_white(picture: &DynamicImage) -> image::RgbImage {
    if !picture.color().has_alpha() {
        return picture.to_rgb8();
    }
    let rgba = picture.to_rgba8();
    image::RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let over = |c: u8| ((u16::from(c) * u16::from(a) + 255 * (255 - u16::from(a))) / 255) as u8;
        image::Rgb([over(r), over(g), over(b)])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(w: u32, h: u32, fit: Fit) -> Recipe {
        Recipe::new(w, h, fit, ImageFormat::Png)
    }

    #[test]
    fn a_width_alone_keeps_the_aspect_ratio_and_never_enlarges() {
        assert_eq!(recipe(256, 0, Fit::Contain).scaled(1024, 768), (256, 192));
        assert_eq!(recipe(0, 96, Fit::Contain).scaled(1024, 768), (128, 96));
        assert_eq!(recipe(2048, 0, Fit::Contain).scaled(1024, 768), (1024, 768));
    }

    #[test]
    fn contain_fits_inside_and_cover_covers_the_box() {
        assert_eq!(recipe(256, 256, Fit::Contain).scaled(1024, 512), (256, 128));
        assert_eq!(recipe(256, 256, Fit::Cover).scaled(1024, 512), (512, 256));
        let cover = shrink(
            DynamicImage::new_rgb8(1024, 512),
            recipe(256, 256, Fit::Cover),
        );
        assert_eq!((cover.width(), cover.height()), (256, 256));
    }

    #[test]
    fn jpeg_variants_lay_transparency_on_white() {
        let mut picture = image::RgbaImage::new(2, 1);
        picture.put_pixel(0, 0, image::Rgba([0, 0, 0, 0]));
        picture.put_pixel(1, 0, image::Rgba([200, 0, 0, 255]));
        let flat = on_white(&DynamicImage::ImageRgba8(picture));
        assert_eq!(flat.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(flat.get_pixel(1, 0).0, [200, 0, 0]);
    }

    #[test]
    fn one_side_bounded_is_one_recipe_whatever_the_fit() {
        assert_eq!(recipe(256, 0, Fit::Cover), recipe(256, 0, Fit::Contain));
        assert_eq!(recipe(256, 0, Fit::Cover).file_name(), "256x0-contain.png");
        assert_ne!(recipe(256, 128, Fit::Cover), recipe(256, 128, Fit::Contain));
    }
}
