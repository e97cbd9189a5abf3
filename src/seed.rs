//! `corral seed`: generated images and events written straight through the store in
//! batches (not through HTTP), for demos and the scale benchmark. The image rows share a
//! handful of real files, so every seeded image can also be fetched by name.

use std::io::{Cursor, Write};
use std::time::Instant;

use chrono::{Duration, Utc};

use crate::config::Settings;
use crate::domain::{
    Event, EventId, Image, ImageFormat, ImageId, ImageName, Location, Tags, UserId,
};
use crate::media::MediaRoot;
use crate::{AppError, open_store};

/// Rows written per store call.
const BATCH: usize = 10_000;
/// Distinct image files the rows point at.
const FILES: usize = 16;

/// Writes `images` image rows and `events` events; reports progress on stderr.
pub async fn seed(settings: &Settings, images: u64, events: u64) -> Result<(), AppError> {
    let store = open_store(settings).await?;
    let dir = &settings.storage.data_dir;
    let media = MediaRoot::open(dir, 0).map_err(crate::data_dir(dir))?;
    let files = write_files(&media).map_err(crate::data_dir(dir))?;
    // Every image is a "llama"; one in ten is also an "alpaca" (for draws by tag).
    let tags = Tags::parse_csv("seed,llama").unwrap_or_default();
    let alpaca = Tags::parse_csv("seed,llama,alpaca").unwrap_or_default();
    let mut progress = Progress::new("images", images);
    let mut written = 0;
    while written < images {
        let now = Utc::now();
        let batch: Vec<Image> = (written..images.min(written + BATCH as u64))
            .map(|n| {
                let (name, sha1, bytes) = &files[n as usize % files.len()];
                Image {
                    id: ImageId::new(),
                    name: name.clone(),
                    sha1: sha1.clone(),
                    format: ImageFormat::Png,
                    width: 64,
                    height: 64,
                    bytes: *bytes,
                    tags: if n % 10 == 0 { &alpaca } else { &tags }.clone(),
                    owner: None,
                    created_at: now,
                    blurhash: None,
                    draft: None,
                }
            })
            .collect();
        store.insert_images(&batch).await?;
        written += batch.len() as u64;
        progress.show(written);
    }
    let topics = ["music", "sport", "food", "art", "tech"];
    let places = [
        ("Paris", 48.8566, 2.3522),
        ("London", 51.5074, -0.1278),
        ("Berlin", 52.52, 13.405),
        ("Madrid", 40.4168, -3.7038),
    ];
    let mut progress = Progress::new("events", events);
    let mut written = 0;
    let creator = UserId::new();
    while written < events {
        let now = Utc::now();
        let batch: Vec<Event> = (written..events.min(written + BATCH as u64))
            .map(|n| {
                let (place, lat, lon) = places[n as usize % places.len()];
                let starts_at = now + Duration::hours(1 + (n as i64 * 37) % (24 * 60));
                Event {
                    id: EventId::new(),
                    title: format!("{} meetup #{n}", topics[n as usize % topics.len()]),
                    description: "Seeded for a demo.".into(),
                    topics: Tags::parse_csv(topics[n as usize % topics.len()]).unwrap_or_default(),
                    starts_at,
                    ends_at: starts_at + Duration::hours(2),
                    location: Location {
                        name: place.into(),
                        lat: lat + (n % 100) as f64 * 0.001,
                        lon,
                    },
                    created_by: creator,
                    created_at: now,
                }
            })
            .collect();
        store.insert_events(&batch).await?;
        written += batch.len() as u64;
        progress.show(written);
    }
    store.close().await?;
    Ok(())
}

/// Writes `FILES` small distinct PNGs; returns (name, sha1, size) of each.
fn write_files(media: &MediaRoot) -> std::io::Result<Vec<(String, String, u64)>> {
    use sha1::Digest;
    (0..FILES)
        .map(|n| {
            let img = image::RgbImage::from_fn(64, 64, |x, y| {
                image::Rgb([(x * 4) as u8, (y * 4) as u8, (n * 16) as u8])
            });
            let mut png = Cursor::new(Vec::new());
            img.write_to(&mut png, image::ImageFormat::Png)
                .map_err(std::io::Error::other)?;
            let png = png.into_inner();
            let name = ImageName::new(sha1::Sha1::digest(&png).into(), ImageFormat::Png);
            let sha1 = name.sha1().to_owned();
            let mut staged = tempfile::NamedTempFile::new_in(media.tmp_dir())?;
            staged.write_all(&png)?;
            media.commit(
                staged.into_temp_path(),
                crate::media::Shelf::Published,
                &name,
            )?;
            Ok((name.to_string(), sha1, png.len() as u64))
        })
        .collect()
}

/// A one-line progress bar on stderr.
struct Progress {
    what: &'static str,
    total: u64,
    started: Instant,
}

impl Progress {
    fn new(what: &'static str, total: u64) -> Self {
        Self {
            what,
            total,
            started: Instant::now(),
        }
    }

    fn show(&mut self, done: u64) {
        let share = done as f64 / self.total.max(1) as f64;
        let filled = (share * 30.0) as usize;
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r{:<7} [{}{}] {done}/{} ({:.0}/s)",
            self.what,
            "#".repeat(filled),
            ".".repeat(30 - filled.min(30)),
            self.total,
            rate
        );
        if done >= self.total {
            let _ = writeln!(err);
        }
    }
}
