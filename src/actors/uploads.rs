//! `uploads` is a ractor factory of upload workers. A worker takes a staged upload (already
//! streamed to a temp file by the HTTP handler), inspects it under decode limits, commits
//! the file under its sha1 name, records the metadata and tells `image_pool` and `hub`.
//!
//! Jobs are routed by sha1, so uploads of identical content run on one worker one after
//! another: the "file already there?" check and the undo of a failed commit never race.
//! There are as many workers as uploads may be admitted (`uploads.max_in_flight`, the
//! images service's semaphore), so no upload waits behind another's fsyncs unless they share
//! content; the CPU-bound decode is bounded separately (`uploads.decoders`). Supervised by
//! the root supervisor; the factory itself replaces a worker that panics.

use ractor::factory::{
    Factory, FactoryArguments, FactoryMessage, Job, Worker, WorkerId, queues, routing,
    worker_builder,
};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr};
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::relay::Notices;
use chrono::{DateTime, Utc};

use crate::domain::{Draft, Image, ImageId, ImageName, Notice, Tags, UserId};
use crate::media::{
    DecodeLimits, MediaError, MediaRoot, Shelf, StagedUpload, clean_metadata, inspect,
};
use crate::store::{SharedStore, StoreError};

/// Jobs are keyed by the content's sha1.
pub type UploadKey = [u8; 20];
pub type UploadsMsg = FactoryMessage<UploadKey, UploadMsg>;
pub type UploadsRef = ActorRef<UploadsMsg>;

/// Why a staged upload was not stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Media(#[from] MediaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("an upload task failed: {0}")]
    Task(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the caller stopped waiting")]
    Abandoned,
    /// An attach found an image that is not (or no longer) an attachable draft.
    #[error("{0}")]
    NotAttachable(String),
}

/// A stored upload, and whether its bytes were new or already on disk.
#[derive(Debug)]
pub struct Ingested {
    pub image: Image,
    pub new_file: bool,
}

pub enum UploadMsg {
    /// Check, store and record one staged upload.
    Ingest {
        staged: StagedUpload,
        tags: Tags,
        owner: Option<UserId>,
        /// Set to store it as a draft: apart, unannounced, until attached.
        draft: Option<Draft>,
        /// The upload's admission permit, held until the job is done or dropped, so
        /// `uploads.max_in_flight` also bounds jobs whose caller has timed out.
        permit: OwnedSemaphorePermit,
        reply: RpcReplyPort<Result<Ingested, IngestError>>,
    },
    /// Remove an image's record, and its file once no record shares it. Keyed by the
    /// image's sha1 like ingests, so it never races an upload of the same content; the
    /// name lock covers uploads cleaned to that content on other workers.
    Delete {
        id: ImageId,
        /// Set by the sweeper: delete only a draft that expired before this.
        expired_before: Option<DateTime<Utc>>,
        reply: RpcReplyPort<Result<Option<Image>, IngestError>>,
    },
    /// Publish drafts, all or none (the caller checked they are the attacher's to take):
    /// their files are linked among the published, their records published in one
    /// write, then they are announced like new uploads. Runs on any one worker: the
    /// name locks, not the worker, keep it from racing uploads and deletes.
    Attach {
        ids: Vec<ImageId>,
        owner: UserId,
        tags: Option<Tags>,
        /// Each image, and whether this attach published it (not an earlier one).
        reply: RpcReplyPort<Result<Vec<(Image, bool)>, IngestError>>,
    },
}

/// What every worker needs; cloned into each.
#[derive(Clone)]
pub struct UploadDeps {
    pub store: SharedStore,
    pub media: MediaRoot,
    pub limits: DecodeLimits,
    /// Decodes running at once (`uploads.decoders`): the CPU-bound step. The rest of an
    /// ingest (fsyncs, the metadata write) waits on the disk and holds no slot.
    pub decode_slots: Arc<Semaphore>,
    /// Told of each image published or deleted: the sample, the WebSocket
    /// subscribers, the other nodes.
    pub notices: Notices,
    /// Held by an upload from storing its file to writing its record, and by a delete
    /// from its record to its file: see [`NameLocks`].
    pub names: NameLocks,
}

/// Locks by stored name (striped). Workers are keyed by the sha1 of the bytes as
/// uploaded, but hygiene can clean an upload to the name of other content (the same
/// picture without its metadata), whose uploads and deletes run on another worker.
/// Without this, a delete could remove the last file of a name between an upload of it
/// finding the file there (and keeping it) and writing its record: a record without its
/// file.
#[derive(Clone)]
pub struct NameLocks(Arc<[tokio::sync::Mutex<()>]>);

impl Default for NameLocks {
    fn default() -> Self {
        Self((0..64).map(|_| tokio::sync::Mutex::new(())).collect())
    }
}

impl NameLocks {
    fn stripe(&self, name: &ImageName) -> usize {
        let stripe = u8::from_str_radix(&name.sha1()[..2], 16).unwrap_or(0);
        usize::from(stripe) % self.0.len()
    }

    async fn lock(&self, name: &ImageName) -> tokio::sync::MutexGuard<'_, ()> {
        self.0[self.stripe(name)].lock().await
    }

    /// Locks every name, taking the stripes in order (so two callers never deadlock).
    async fn lock_all<'a>(
        &self,
        names: impl IntoIterator<Item = &'a ImageName>,
    ) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = names.into_iter().map(|n| self.stripe(n)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for stripe in stripes {
            guards.push(self.0[stripe].lock().await);
        }
        guards
    }
}

pub struct UploadWorker;

impl Worker for UploadWorker {
    type Key = UploadKey;
    type Message = UploadMsg;
    type Arguments = UploadDeps;
    type State = UploadDeps;

    async fn pre_start(
        &self,
        _: WorkerId,
        _: &ActorRef<UploadsMsg>,
        deps: UploadDeps,
    ) -> Result<UploadDeps, ActorProcessingErr> {
        Ok(deps)
    }

    async fn handle(
        &self,
        _: WorkerId,
        _: &ActorRef<UploadsMsg>,
        Job { msg, key, .. }: Job<UploadKey, UploadMsg>,
        deps: &mut UploadDeps,
    ) -> Result<UploadKey, ActorProcessingErr> {
        match msg {
            UploadMsg::Ingest {
                staged,
                tags,
                owner,
                draft,
                permit,
                reply,
            } => {
                if reply.is_closed() {
                    // The caller timed out while the job waited and was told 503: store
                    // nothing. Dropping `staged` deletes its temp file.
                    tracing::warn!("upload abandoned by its caller before a worker took it");
                    return Ok(key);
                }
                let ingested = ingest(deps, staged, tags, owner, draft, || reply.is_closed());
                let result = ingested.await;
                drop(permit);
                if let Ok(done) = &result {
                    // Announced here, not by the caller, so an upload whose caller has
                    // gone still reaches the sample and the subscribers (a draft, once
                    // it is attached).
                    announce(deps, &done.image);
                }
                // The caller may have timed out and gone; nothing more to do then.
                let _ = reply.send(result);
            }
            UploadMsg::Delete {
                id,
                expired_before,
                reply,
            } => {
                let result = delete(deps, id, expired_before).await;
                // A draft was never offered to the sample, so its deletion is not one.
                if let Ok(Some(gone)) = &result
                    && !gone.is_draft()
                {
                    deps.notices.announce(Notice::ImageDeleted { id });
                }
                let _ = reply.send(result);
            }
            UploadMsg::Attach {
                ids,
                owner,
                tags,
                reply,
            } => {
                let result = attach(deps, &ids, owner, tags.as_ref()).await;
                if let Ok(attached) = &result {
                    let newly = attached.iter().filter(|(_, newly)| *newly);
                    newly.for_each(|(image, _)| announce(deps, image));
                }
                let _ = reply.send(result);
            }
        }
        Ok(key)
    }
}

/// Tells the sample and the subscribers of a published image; a draft is not announced.
fn announce(deps: &UploadDeps, image: &Image) {
    if image.is_draft() {
        return;
    }
    deps.notices.announce(Notice::ImageCreated {
        image: Box::new(image.clone()),
    });
}

#[tracing::instrument(name = "uploads.ingest", skip_all, fields(bytes = staged.bytes))]
async fn ingest(
    deps: &UploadDeps,
    staged: StagedUpload,
    tags: Tags,
    owner: Option<UserId>,
    draft: Option<Draft>,
    caller_gone: impl Fn() -> bool,
) -> Result<Ingested, IngestError> {
    let shelf = if draft.is_some() {
        Shelf::Draft
    } else {
        Shelf::Published
    };
    let limits = deps.limits;
    let waiting = metrics::gauge!("corral_upload_decodes_waiting");
    waiting.increment(1.0);
    let slot = deps.decode_slots.clone().acquire_owned().await;
    waiting.decrement(1.0);
    let slot = slot.map_err(|e| IngestError::Task(e.into()))?;
    let tmp = deps.media.tmp_dir().to_owned();
    // Checked, then stripped of the metadata it must not keep (in the same slot: both
    // read the whole file).
    let (inspected, staged) = tokio::task::spawn_blocking(move || {
        let inspected = inspect(&staged.path, limits)?;
        let staged = clean_metadata(staged, &tmp, inspected.format)?;
        Ok::<_, MediaError>((inspected, staged))
    })
    .await
    .map_err(|e| IngestError::Task(e.into()))??;
    drop(slot);
    let (bytes, sha1) = (staged.bytes, staged.sha1);
    // The inspection is the slow part: if the caller gave up meanwhile (and was told
    // 503), keep nothing. Dropping `staged` deletes the temp file.
    if caller_gone() {
        return Err(IngestError::Abandoned);
    }
    let name = ImageName::new(sha1, inspected.format);
    let _name_lock = deps.names.lock(&name).await;
    let media = deps.media.clone();
    let commit_name = name.clone();
    let committed =
        tokio::task::spawn_blocking(move || media.commit(staged.path, shelf, &commit_name))
            .await
            .map_err(|e| IngestError::Task(e.into()))?;
    let new_file = match committed {
        Ok(new_file) => new_file,
        Err(e) => {
            // Nothing was moved into place; a failed settle is retried at start.
            let _ = deps.media.settle(shelf, &name);
            return Err(MediaError::from(e).into());
        }
    };

    let image = Image {
        id: ImageId::new(),
        name: name.to_string(),
        sha1: name.sha1().to_owned(),
        format: inspected.format,
        width: inspected.width,
        height: inspected.height,
        bytes,
        tags,
        owner,
        created_at: chrono::Utc::now(),
        blurhash: inspected.placeholder,
        draft,
    };
    let inserted = deps.store.insert_image(&image).await;
    if new_file {
        // Leave nothing half-written: a file no record points to is removed again. If
        // that fails, the intent stays, and the next start removes the file.
        let settled = match &inserted {
            Ok(()) => Ok(()),
            Err(_) => deps.media.remove(shelf, &name),
        };
        if settled.is_ok()
            && let Err(e) = deps.media.settle(shelf, &name)
        {
            tracing::warn!(error = %e, %name, "an upload's intent could not be removed; the next start settles it");
        }
    }
    inserted?;
    Ok(Ingested { image, new_file })
}

#[tracing::instrument(name = "uploads.delete", skip(deps))]
async fn delete(
    deps: &UploadDeps,
    id: ImageId,
    expired_before: Option<DateTime<Utc>>,
) -> Result<Option<Image>, IngestError> {
    let Some(image) = deps.store.get_image(id).await? else {
        return Ok(None);
    };
    let name = ImageName::parse(&image.name);
    let _name_lock = match &name {
        Some(name) => Some(deps.names.lock(name).await),
        None => None,
    };
    // Read again under the lock: an attach may have published the draft meanwhile,
    // which moves its file.
    let Some(image) = deps.store.get_image(id).await? else {
        return Ok(None);
    };
    let still_wanted = |t| image.draft.as_ref().is_some_and(|d| d.expires_at < t);
    if expired_before.is_some_and(|t| !still_wanted(t)) {
        return Ok(None);
    }
    let shelf = Shelf::of(&image);
    // Before the record goes, so a crash between the two cannot strand the file.
    if let Some(name) = name.clone() {
        let media = deps.media.clone();
        tokio::task::spawn_blocking(move || media.intend_removal(shelf, &name))
            .await
            .map_err(|e| IngestError::Task(e.into()))?
            .map_err(MediaError::from)?;
    }
    let deleted = deps.store.delete_image(id).await?;
    if let Some(name) = name {
        tidy(deps, shelf, &name).await?;
    }
    Ok(deleted)
}

/// How many records use the file of content `sha1` on `shelf`.
async fn uses(store: &SharedStore, shelf: Shelf, sha1: &str) -> Result<u64, StoreError> {
    match shelf {
        Shelf::Published => store.count_images_with_sha1(sha1).await,
        Shelf::Draft => store.count_drafts_with_sha1(sha1).await,
    }
}

#[tracing::instrument(name = "uploads.attach", skip(deps, tags))]
async fn attach(
    deps: &UploadDeps,
    ids: &[ImageId],
    owner: UserId,
    tags: Option<&Tags>,
) -> Result<Vec<(Image, bool)>, IngestError> {
    let gone = || {
        IngestError::NotAttachable(
            "an image stopped being a draft you can attach (it expired, was deleted or was \
             attached by someone else); nothing was attached"
                .into(),
        )
    };
    // The names to lock (a name never changes, so reading them before the locks is safe).
    let mut names = Vec::new();
    for &id in ids {
        let image = deps.store.get_image(id).await?.ok_or_else(gone)?;
        if let Some(name) = ImageName::parse(&image.name)
            && !names.contains(&name)
        {
            names.push(name);
        }
    }
    let _locks = deps.names.lock_all(&names).await;
    // Read again under the locks, which a delete (the owner's, the sweeper's) also takes:
    // what is a draft now keeps its draft file until this attach is done. Only these are
    // announced (a twin request may have attached some already).
    let now = Utc::now();
    let (mut drafts, mut newly) = (Vec::new(), std::collections::HashSet::new());
    for &id in ids {
        let image = deps.store.get_image(id).await?.ok_or_else(gone)?;
        match &image.draft {
            Some(draft) if draft.expires_at > now => {}
            None if image.owner == Some(owner) => continue,
            _ => return Err(gone()),
        }
        newly.insert(id);
        if let Some(name) = ImageName::parse(&image.name)
            && !drafts.contains(&name)
        {
            drafts.push(name);
        }
    }
    // Each draft's file joins the published ones first (an intent covers the link), so
    // once the records say "published" the file is there.
    let media = deps.media.clone();
    let to_publish = drafts.clone();
    let linked = tokio::task::spawn_blocking(move || {
        to_publish.iter().try_for_each(|name| {
            media.intend_removal(Shelf::Draft, name)?;
            media.publish_draft(name).map(|_| ())
        })
    })
    .await
    .map_err(|e| IngestError::Task(e.into()))
    .and_then(|linked| linked.map_err(|e| MediaError::from(e).into()));
    let attached = match linked {
        Ok(()) => deps
            .store
            .attach_images(ids, owner, tags, now)
            .await
            .map_err(|e| match e {
                StoreError::Changed => gone(),
                e => e.into(),
            }),
        Err(e) => Err(e),
    };
    // Whatever happened, each file is kept where records use it and removed where none
    // does (a link made before a failure included); what a failure here leaves, its
    // intent settles at the next start.
    for name in &drafts {
        for shelf in [Shelf::Published, Shelf::Draft] {
            if let Err(e) = tidy(deps, shelf, name).await {
                tracing::warn!(error = %e, %name, ?shelf, "a file could not be tidied after an attach; the next start settles it");
            }
        }
    }
    Ok(attached?
        .into_iter()
        .map(|image| {
            let newly = newly.contains(&image.id);
            (image, newly)
        })
        .collect())
}

/// Removes `name`'s file on `shelf` if no record uses it, and drops its intent.
async fn tidy(deps: &UploadDeps, shelf: Shelf, name: &ImageName) -> Result<(), IngestError> {
    if uses(&deps.store, shelf, name.sha1()).await? == 0 {
        deps.media.remove(shelf, name).map_err(MediaError::from)?;
    }
    deps.media.settle(shelf, name).map_err(MediaError::from)?;
    Ok(())
}

/// Settles the intents a crash left under the media root (see `MediaRoot::commit`): a
/// file that no record names is removed. Run at start, before any upload or delete.
/// Returns how many files were removed.
pub async fn settle_intents(media: &MediaRoot, store: &SharedStore) -> Result<usize, IngestError> {
    let mut removed = 0;
    for (shelf, name) in media.intents().map_err(MediaError::from)? {
        if uses(store, shelf, name.sha1()).await? == 0 {
            // Counted only if it was there: most intents outlived their file's removal.
            removed += usize::from(media.path_on(shelf, &name).exists());
            media.remove(shelf, &name).map_err(MediaError::from)?;
        }
        media.settle(shelf, &name).map_err(MediaError::from)?;
    }
    Ok(removed)
}

/// The job key of an existing image: its content hash.
pub fn key_of(image: &Image) -> UploadKey {
    let mut key = [0u8; 20];
    // A stored sha1 is always 40 hex digits; a corrupt one routes to worker 0's key.
    let _ = hex::decode_to_slice(&image.sha1, &mut key);
    key
}

/// Spawns the factory linked to `supervisor`.
pub async fn spawn(
    deps: UploadDeps,
    workers: usize,
    supervisor: ActorCell,
) -> Result<UploadsRef, SpawnErr> {
    let factory = Factory::<
        UploadKey,
        UploadMsg,
        UploadDeps,
        UploadWorker,
        routing::KeyPersistentRouting<UploadKey, UploadMsg>,
        queues::DefaultQueue<UploadKey, UploadMsg>,
    >::default();
    let args = FactoryArguments::builder()
        .worker_builder(Box::new(worker_builder(move |_| {
            (UploadWorker, deps.clone())
        })))
        .queue(Default::default())
        .router(Default::default())
        .num_initial_workers(workers)
        .build();
    let (factory, _) = Actor::spawn_linked(None, factory, args, supervisor).await?;
    Ok(factory)
}

/// Who an upload is counted against under `uploads.max_in_flight_per_client`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Uploader {
    User(UserId),
    Address(IpAddr),
}

/// Uploads in flight per uploader (`uploads.max_in_flight_per_client`), so one client
/// cannot hold the whole pool.
pub type Uploaders = crate::domain::Quota<Uploader>;
