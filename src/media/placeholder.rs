//! Placeholders: an image's BlurHash (<https://blurha.sh>), a string of ~30 characters a
//! page paints as a blurred preview before the bytes arrive. Computed at ingest from the
//! pixels the upload check decodes anyway, shrunk to a small grid first.

use image::DynamicImage;
use image::metadata::Orientation;

/// The longer side of the grid the hash is computed from.
const GRID: u32 = 32;
/// Pixels sampled per grid cell along each side (of a PNG, whose rows stream past).
const SAMPLES_PER_CELL: u32 = 4;

/// The placeholder of a whole decoded picture, turned upright by `orientation`.
pub fn of_picture(picture: &DynamicImage, orientation: Orientation) -> Option<String> {
    let mut small = picture.thumbnail(GRID, GRID);
    small.apply_orientation(orientation);
    let small = small.to_rgba8();
    encode(small.width(), small.height(), small.as_raw())
}

/// Shrinks a picture whose rows stream past (a PNG's, while it is checked) to a small
/// grid of averaged cells, looking at a few pixels per cell, not every pixel.
pub struct Shrinker {
    width: u32,
    height: u32,
    grid: (u32, u32),
    /// Every how many pixels (and rows) one is looked at.
    step: u32,
    sums: Vec<[u32; 4]>,
    counts: Vec<u32>,
}

impl Shrinker {
    pub fn new(width: u32, height: u32) -> Self {
        let (width, height) = (width.max(1), height.max(1));
        let longer = width.max(height);
        let side = |s: u32| (u64::from(s) * u64::from(GRID)).div_ceil(u64::from(longer)) as u32;
        let grid = (side(width).clamp(1, GRID), side(height).clamp(1, GRID));
        let cells = (grid.0 * grid.1) as usize;
        Self {
            width,
            height,
            grid,
            step: (longer / (GRID * SAMPLES_PER_CELL)).max(1),
            sums: vec![[0; 4]; cells],
            counts: vec![0; cells],
        }
    }

    /// Whether row `y` is one this looks at.
    fn wants(&self, y: u32) -> bool {
        y.is_multiple_of(self.step)
    }

    /// Adds row `y`, whose pixel `x` is `pixel(x)` as RGBA (if it is a row this samples).
    pub fn add_row(&mut self, y: u32, pixel: impl Fn(usize) -> [u8; 4]) {
        if !self.wants(y) || y >= self.height {
            return;
        }
        let row = (u64::from(y) * u64::from(self.grid.1) / u64::from(self.height)) as u32;
        for x in (0..self.width).step_by(self.step as usize) {
            let column = (u64::from(x) * u64::from(self.grid.0) / u64::from(self.width)) as u32;
            let cell = (row * self.grid.0 + column) as usize;
            let p = pixel(x as usize);
            for (sum, v) in self.sums[cell].iter_mut().zip(p) {
                *sum += u32::from(v);
            }
            self.counts[cell] += 1;
        }
    }

    /// The hash of the grid, turned upright by `orientation`.
    pub fn finish(self, orientation: Orientation) -> Option<String> {
        let rgba: Vec<u8> = self
            .sums
            .iter()
            .zip(&self.counts)
            .flat_map(|(sum, &n)| sum.map(|s| (s / n.max(1)) as u8))
            .collect();
        let mut grid =
            DynamicImage::ImageRgba8(image::RgbaImage::from_raw(self.grid.0, self.grid.1, rgba)?);
        grid.apply_orientation(orientation);
        let grid = grid.to_rgba8();
        encode(grid.width(), grid.height(), grid.as_raw())
    }
}

/// Four components along the longer side, three along the other: enough for a blur.
fn encode(width: u32, height: u32, rgba: &[u8]) -> Option<String> {
    if rgba.len() != (width * height * 4) as usize || rgba.is_empty() {
        return None;
    }
    let (x, y) = if width >= height { (4, 3) } else { (3, 4) };
    blurhash::encode(x, y, width, height, rgba).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_picture_hashes_like_the_same_picture_whole() {
        let picture = image::RgbaImage::from_fn(300, 200, |x, _| {
            if x < 150 {
                image::Rgba([220, 30, 30, 255])
            } else {
                image::Rgba([30, 30, 220, 255])
            }
        });
        let mut rows = Shrinker::new(300, 200);
        for y in 0..200 {
            rows.add_row(y, |x| picture.get_pixel(x as u32, y).0);
        }
        let streamed = rows.finish(Orientation::NoTransforms).expect("a hash");
        let whole = of_picture(
            &DynamicImage::ImageRgba8(picture),
            Orientation::NoTransforms,
        )
        .expect("a hash");
        // Both 4 x 3 components; the first character encodes that.
        assert_eq!(streamed.len(), whole.len());
        assert_eq!(&streamed[..1], &whole[..1]);
        let size = blurhash::decode(&streamed, 4, 3, 1.0).expect("decodes");
        assert_eq!(size.len(), 4 * 3 * 4);
    }
}
