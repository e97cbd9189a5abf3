//! `optimizer` makes the eager variants (`optimizer.eager`) of images that lack them,
//! off-peak (`optimizer.window`), so that the page's first requests find them made.
//!
//! It works in passes over every image (the store's scan order, read a batch at a time),
//! one image and one variant at a time, and keeps its place in
//! `<data_dir>/optimizer.json` after each image, so a restart resumes the pass rather
//! than starting it over. The work on an image runs in a task of its own that reports
//! back, so the actor's mailbox stays free and a stop does not wait for it. It yields to
//! traffic: between batches it pauses, and it waits while an upload is being decoded or
//! a request is waiting for a variant. After a pass it rests `optimizer.rest_secs`; the next
//! pass picks up images uploaded since (and variants removed since). Changing the eager
//! list (or turning recompression on) starts a new pass. It also fills in the placeholder
//! (BlurHash) of images stored before placeholders existed, and with
//! `optimizer.recompress` recompresses PNG originals losslessly (see `media::recompress`).
//! Progress is in `/metrics` as `corral_optimizer_*`.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::Alarm;
use super::relay::Notices;
use crate::config::Window;
use crate::domain::{Image, ImageId, ImageName, Notice};
use crate::media::{Asked, DecodeLimits, MediaError, MediaRoot, Recompressed, Variants};
use crate::store::SharedStore;

/// How often it looks at the clock outside its window, and retries after a store error.
const IDLE: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct OptimizerArgs {
    pub store: SharedStore,
    pub variants: Variants,
    /// The eager variants: as configured (the pass is for this list), and parsed.
    pub eager: Vec<(String, Asked)>,
    pub window: Window,
    pub batch: usize,
    pub pause: Duration,
    pub rest: Duration,
    /// Where the originals are, and the limits to decode them under.
    pub media: MediaRoot,
    pub limits: DecodeLimits,
    /// `optimizer.recompress`.
    pub recompress: bool,
    /// Told of placeholders filled in, so `/random` shows them.
    pub notices: Notices,
    /// Where the place in the pass is kept.
    pub cursor_path: PathBuf,
    /// The uploads' decode slots, and how many there are: any taken means uploads are
    /// being decoded, and the optimizer waits.
    pub decode_slots: Arc<Semaphore>,
    pub decoders: usize,
}

pub enum OptimizerMsg {
    /// Start on the next image, if the window is open and the server is not busy.
    Step,
    /// The work on this image is done (sent by the task doing it).
    Done(ImageId),
}

/// The place in the pass, as kept on disk.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    /// What this pass does: the eager variants it makes, and `recompress` if it does.
    work: Vec<String>,
    /// The last image done (`None`: the pass is at its start).
    after: Option<ImageId>,
    /// When the last pass ended; `None` while one is under way.
    finished_at: Option<DateTime<Utc>>,
}

pub struct Optimizer;

pub struct OptimizerState {
    args: OptimizerArgs,
    cursor: Cursor,
    /// The rest of the batch read from the store, after `cursor.after`.
    pending: VecDeque<Image>,
    /// An image is being worked on (by a task, which sends `Done`).
    working: bool,
    /// That task, aborted when the actor stops (so a restarted optimizer does not work
    /// beside it; a blocking step under way, such as oxipng, still runs to its end).
    work: Option<tokio::task::AbortHandle>,
    next: Alarm<OptimizerMsg>,
}

impl Actor for Optimizer {
    type Msg = OptimizerMsg;
    type State = OptimizerState;
    type Arguments = OptimizerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: OptimizerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut work: Vec<String> = args.eager.iter().map(|(query, _)| query.clone()).collect();
        if args.recompress {
            work.push("recompress".into());
        }
        let cursor = match load(&args.cursor_path).await {
            Ok(Some(cursor)) if cursor.work == work => cursor,
            Ok(_) => Cursor {
                work,
                ..Cursor::default()
            },
            Err(e) => {
                tracing::warn!(error = %e, path = %args.cursor_path.display(), "the optimizer's place is unreadable; starting a new pass");
                Cursor {
                    work,
                    ..Cursor::default()
                }
            }
        };
        myself.send_message(OptimizerMsg::Step)?;
        Ok(OptimizerState {
            args,
            cursor,
            pending: VecDeque::new(),
            working: false,
            work: None,
            next: Alarm::default(),
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.next.clear();
        if let Some(work) = state.work.take() {
            work.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: OptimizerMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let next = match msg {
            // One image at a time: a Step while one is being worked on waits for its Done.
            OptimizerMsg::Step if state.working => None,
            OptimizerMsg::Step => step(state, &myself).await,
            OptimizerMsg::Done(id) => {
                state.working = false;
                state.work = None;
                state.cursor.after = Some(id);
                metrics::counter!("corral_optimizer_images_total").increment(1);
                save_cursor(state).await;
                // The rest of the batch at once; a pause between batches.
                Some(if state.pending.is_empty() {
                    state.args.pause
                } else {
                    Duration::ZERO
                })
            }
        };
        if let Some(after) = next {
            state.next.set(&myself, after, || OptimizerMsg::Step);
        }
        Ok(())
    }
}

/// One step; returns when to take the next (`None`: never, the window being `never`, or
/// when the image it started on is done).
async fn step(state: &mut OptimizerState, myself: &ActorRef<OptimizerMsg>) -> Option<Duration> {
    let args = &state.args;
    let open = args.window.contains(chrono::Local::now().time());
    metrics::gauge!("corral_optimizer_in_window").set(if open { 1.0 } else { 0.0 });
    if args.window == Window::Never {
        return None;
    }
    if !open {
        return Some(IDLE);
    }
    if let Some(finished) = state.cursor.finished_at {
        let since = (Utc::now() - finished).to_std().unwrap_or_default();
        if since < args.rest {
            return Some((args.rest - since).min(IDLE));
        }
        state.cursor.after = None;
        state.cursor.finished_at = None;
        state.pending.clear();
    }
    if busy(args) {
        return Some(args.pause);
    }
    if state.pending.is_empty() {
        match args.store.scan_images(state.cursor.after, args.batch).await {
            Ok(page) => state.pending = page.into(),
            Err(e) => {
                tracing::warn!(error = %e, "the optimizer could not list images; trying again later");
                return Some(IDLE);
            }
        }
    }
    let Some(image) = state.pending.pop_front() else {
        state.cursor.finished_at = Some(Utc::now());
        metrics::counter!("corral_optimizer_passes_total").increment(1);
        tracing::info!("the optimizer finished a pass");
        save_cursor(state).await;
        return Some(IDLE.min(args.rest));
    };
    // The work runs in a task of its own, so that the actor stays free: a stop does not
    // wait for it (what it leaves half done is redone: the place moves on at `Done`).
    state.working = true;
    let (args, myself, id) = (args.clone(), myself.clone(), image.id);
    let work = tokio::spawn(async move { work_on(&args, &image).await });
    state.work = Some(work.abort_handle());
    // Done however the work ends (a panic included), so the pass never stalls.
    tokio::spawn(async move {
        if let Err(e) = work.await
            && e.is_panic()
        {
            tracing::error!(image = %id, "the optimizer's work on an image panicked");
        }
        let _ = myself.send_message(OptimizerMsg::Done(id));
    });
    None
}

/// Makes the image's missing eager variants, fills in its placeholder, recompresses it.
async fn work_on(args: &OptimizerArgs, image: &Image) {
    // A draft is not served at `/i/` (its file is apart) and may never be published.
    if image.is_draft() {
        return;
    }
    let Some(name) = ImageName::parse(&image.name) else {
        return;
    };
    for (query, asked) in &args.eager {
        match args
            .variants
            .ensure(&name, asked.recipe(image.format, false))
            .await
        {
            Ok(()) => {}
            // Deleted meanwhile.
            Err(MediaError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(image = %image.id, variant = %query, error = %e, "the optimizer could not make a variant");
            }
        }
    }
    if image.blurhash.is_none() {
        fill_placeholder(args, image.id, name.clone()).await;
    }
    if args.recompress {
        recompress(args.media.clone(), name, args.limits).await;
    }
}

async fn save_cursor(state: &OptimizerState) {
    let args = &state.args;
    if let Err(e) = save(&args.media, &args.cursor_path, &state.cursor).await {
        tracing::warn!(error = %e, path = %args.cursor_path.display(), "the optimizer could not keep its place");
    }
}

/// Computes the placeholder of an image stored before placeholders existed, from its
/// file (on a blocking thread, under the decode limits), and records it.
async fn fill_placeholder(args: &OptimizerArgs, id: ImageId, name: ImageName) {
    let (media, limits) = (args.media.clone(), args.limits);
    let path = media.path_of(&name);
    let inspected = tokio::task::spawn_blocking(move || crate::media::inspect(&path, limits)).await;
    let hash = match inspected {
        Ok(Ok(inspected)) => inspected.placeholder,
        // Deleted meanwhile.
        Ok(Err(MediaError::Io(e))) if e.kind() == io::ErrorKind::NotFound => None,
        Ok(Err(e)) => {
            tracing::warn!(image = %id, error = %e, "the optimizer could not read an original for its placeholder");
            None
        }
        Err(e) => {
            tracing::warn!(image = %id, error = %e, "the optimizer's placeholder task failed");
            None
        }
    };
    // Some pictures get none (an interlaced PNG): they are looked at again next pass.
    let Some(hash) = hash else { return };
    match args.store.set_image_blurhash(id, &hash).await {
        Ok(Some(image)) => {
            metrics::counter!("corral_optimizer_placeholders_total").increment(1);
            args.notices.announce(Notice::ImageChanged {
                image: Box::new(image),
            });
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(image = %id, error = %e, "the optimizer could not record a placeholder");
        }
    }
}

/// Recompresses one original (if it is a PNG not tried before), on a blocking thread.
async fn recompress(root: MediaRoot, name: ImageName, limits: DecodeLimits) {
    let shown = name.to_string();
    let done =
        tokio::task::spawn_blocking(move || crate::media::recompress(&root, &name, limits)).await;
    match done {
        Ok(Ok(Recompressed::Smaller { before, after })) => {
            metrics::counter!("corral_optimizer_recompressed_total").increment(1);
            metrics::counter!("corral_optimizer_bytes_saved_total").increment(before - after);
            tracing::debug!(image = %shown, before, after, "recompressed");
        }
        Ok(Ok(Recompressed::Kept | Recompressed::Skipped)) => {}
        Ok(Err(e)) => {
            tracing::warn!(image = %shown, error = %e, "the optimizer could not recompress an original");
        }
        Err(e) => {
            tracing::warn!(image = %shown, error = %e, "the optimizer's recompression failed");
        }
    }
}

/// An upload is being decoded, or a request waits for a variant.
fn busy(args: &OptimizerArgs) -> bool {
    args.decode_slots.available_permits() < args.decoders || args.variants.making() > 0
}

async fn load(path: &Path) -> io::Result<Option<Cursor>> {
    match tokio::fs::read(path).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(io::Error::other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces the file whole (a temp file in `tmp`, which is emptied at start, renamed over
/// it), so a crash leaves the old place or the new one, never half of one.
async fn save(media: &MediaRoot, path: &Path, cursor: &Cursor) -> io::Result<()> {
    let json = serde_json::to_vec(cursor).map_err(io::Error::other)?;
    let (media, path) = (media.clone(), path.to_owned());
    tokio::task::spawn_blocking(move || media.write_whole(&path, &json))
        .await
        .map_err(io::Error::other)?
}
