//! Images: the workflows of an image's life, for every frontend.
//!
//! An upload is admitted (a share per client, then a slot in the pool), staged by the
//! frontend, and ingested by the upload workers, which also tell the random sample and
//! the hub. Re-tagging, deleting one image and deleting all of an owner's images (the
//! first step of deleting an account) are here too. Deletes run on the upload workers,
//! keyed by the file's sha1, so they never race an upload of the same content.

use std::sync::Arc;
use std::time::Duration;

use ractor::rpc::CallResult;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::actors::uploads::{IngestError, Uploader, Uploaders, UploadsMsg, key_of};
use crate::actors::{ActorSlot, Ingested, UploadMsg};
use chrono::{DateTime, Utc};

use crate::actors::relay::Notices;
use crate::domain::{Draft, Held, Image, ImageId, Notice, Tags, User, UserId, Viewer, claim_hash};
use crate::media::StagedUpload;
use crate::store::{SharedStore, StoreError};

/// Images deleted per store read when an account goes.
const DELETE_PAGE: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    /// No such image (or not the caller's); holds the id as the client gave it.
    #[error("no image with id {0:?}")]
    NotFound(String),
    #[error("you have {0} uploads in flight already; wait for one to finish")]
    TooManyInFlight(usize),
    #[error("the upload pool is full; retry shortly")]
    PoolFull,
    #[error("the upload workers are busy or restarting; retry shortly")]
    Busy,
    #[error("an upload worker stopped before replying")]
    WorkerLost,
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Settings the images module needs.
#[derive(Debug, Clone, Copy)]
pub struct UploadRules {
    /// Uploads one client may have in flight (`uploads.max_in_flight_per_client`).
    pub max_in_flight_per_client: usize,
    /// How long a caller waits for a worker's answer (`uploads.process_timeout_secs`).
    pub process_timeout: Duration,
    /// How long a draft waits to be attached (`uploads.draft_ttl_secs`).
    pub draft_ttl: Duration,
}

/// One draft to attach: its id and, for an anonymous upload, its claim token.
#[derive(Debug, Clone)]
pub struct Claim {
    pub id: String,
    pub token: Option<String>,
}

/// Cheap to clone: everything in it is shared.
#[derive(Clone)]
pub struct Images {
    store: SharedStore,
    uploads: ActorSlot<UploadsMsg>,
    /// Told when an image's tags change.
    notices: Notices,
    /// One permit per upload in flight (`uploads.max_in_flight`).
    pool: Arc<Semaphore>,
    max_in_flight: usize,
    uploaders: Uploaders,
    rules: UploadRules,
}

/// An upload's place: its client's share and its slot in the pool, held from before the
/// body is read until the upload is answered (the slot until the worker is done).
pub struct Admission {
    _share: Held<Uploader>,
    slot: OwnedSemaphorePermit,
}

impl Images {
    pub fn new(
        store: SharedStore,
        uploads: ActorSlot<UploadsMsg>,
        notices: Notices,
        max_in_flight: usize,
        rules: UploadRules,
    ) -> Self {
        Self {
            store,
            uploads,
            notices,
            pool: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            uploaders: Uploaders::default(),
            rules,
        }
    }

    /// Uploads admitted and not yet done (against `uploads.max_in_flight`).
    pub fn slots_in_use(&self) -> usize {
        self.max_in_flight - self.pool.available_permits()
    }

    /// A place for one upload by `uploader`, or why there is none now.
    pub fn admit(&self, uploader: Uploader) -> Result<Admission, ImagesError> {
        let max = self.rules.max_in_flight_per_client;
        let share = self
            .uploaders
            .admit(uploader, max)
            .ok_or(ImagesError::TooManyInFlight(max))?;
        let slot = self
            .pool
            .clone()
            .try_acquire_owned()
            .map_err(|_| ImagesError::PoolFull)?;
        Ok(Admission {
            _share: share,
            slot,
        })
    }

    /// Checks, stores and records a staged upload; the workers announce the new image.
    /// With `draft` it is stored as a draft, expiring after `uploads.draft_ttl_secs`, and
    /// an anonymous one gets a claim token: returned here, shown once, stored hashed.
    pub async fn ingest(
        &self,
        admission: Admission,
        staged: StagedUpload,
        tags: Tags,
        owner: Option<UserId>,
        draft: bool,
    ) -> Result<(Ingested, Option<String>), ImagesError> {
        let key = staged.sha1;
        let Admission { _share, slot } = admission;
        let (token, draft) = match draft {
            false => (None, None),
            true => {
                let (token, claim) = match owner {
                    Some(_) => (None, None),
                    None => {
                        let (token, hash) = crate::domain::new_claim_token();
                        (Some(token), Some(hash))
                    }
                };
                let ttl = chrono::Duration::from_std(self.rules.draft_ttl)
                    .unwrap_or(chrono::Duration::MAX);
                let expires_at = Utc::now()
                    .checked_add_signed(ttl)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                (token, Some(Draft { expires_at, claim }))
            }
        };
        let ingested = self
            .job(key, |reply| UploadMsg::Ingest {
                staged,
                tags,
                owner,
                draft,
                permit: slot,
                reply,
            })
            .await?;
        Ok((ingested, token))
    }

    /// The image `id`, if `viewer` may see it (a draft only its owner or claim holder;
    /// an expired draft nobody).
    pub async fn find(&self, id: &str, viewer: Viewer<'_>) -> Result<Image, ImagesError> {
        let missing = || ImagesError::NotFound(id.to_owned());
        let parsed: ImageId = id.parse().map_err(|_| missing())?;
        let image = self.store.get_image(parsed).await?.ok_or_else(missing)?;
        match image.visible_to(viewer, Utc::now()) {
            true => Ok(image),
            false => Err(missing()),
        }
    }

    /// An image `user` may change: their own, or any published one for an admin.
    /// Others' are not found.
    pub async fn find_own(&self, id: &str, user: &User) -> Result<Image, ImagesError> {
        let viewer = Viewer {
            user: Some(user),
            claim: None,
        };
        let image = self.find(id, viewer).await?;
        if user.admin || image.owner == Some(user.id) {
            Ok(image)
        } else {
            Err(ImagesError::NotFound(id.to_owned()))
        }
    }

    /// Replaces an image's tags (and the sample's copy of them).
    pub async fn retag(&self, image: &Image, tags: &Tags) -> Result<Image, ImagesError> {
        let image = self
            .store
            .set_image_tags(image.id, tags)
            .await?
            .ok_or_else(|| ImagesError::NotFound(image.id.to_string()))?;
        if !image.is_draft() {
            self.notices.announce(Notice::ImageChanged {
                image: Box::new(image.clone()),
            });
        }
        Ok(image)
    }

    /// Publishes drafts for `user`, all or none: each must be a live draft of theirs, or
    /// an anonymous one with its claim token (or already attached to them: attaching
    /// twice changes nothing). Any other id is not found, and nothing is attached.
    /// `tags`, when given, replace the drafts' own. Returns each image, and whether
    /// this call published it.
    pub async fn attach(
        &self,
        user: &User,
        claims: &[Claim],
        tags: Option<Tags>,
    ) -> Result<Vec<(Image, bool)>, ImagesError> {
        let now = Utc::now();
        let mut ids: Vec<ImageId> = Vec::with_capacity(claims.len());
        for claim in claims {
            let missing = || ImagesError::NotFound(claim.id.clone());
            let id: ImageId = claim.id.parse().map_err(|_| missing())?;
            let image = self.store.get_image(id).await?.ok_or_else(missing)?;
            let allowed = match &image.draft {
                Some(draft) => {
                    draft.expires_at > now
                        && (image.owner == Some(user.id)
                            || (image.owner.is_none()
                                && draft.claim.is_some()
                                && claim.token.as_deref().map(claim_hash) == draft.claim))
                }
                None => image.owner == Some(user.id),
            };
            if !allowed {
                return Err(missing());
            }
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let Some(first) = ids.first().copied() else {
            return Ok(Vec::new());
        };
        let mut key = [0u8; 20];
        key[..16].copy_from_slice(first.0.as_bytes());
        let owner = user.id;
        self.job(key, |reply| UploadMsg::Attach {
            ids,
            owner,
            tags,
            reply,
        })
        .await
    }

    /// Deletes an image, and its file once no other upload shares it.
    pub async fn delete(&self, image: &Image) -> Result<(), ImagesError> {
        let id = image.id;
        self.job(key_of(image), |reply| UploadMsg::Delete {
            id,
            expired_before: None,
            reply,
        })
        .await?;
        Ok(())
    }

    /// Deletes a draft that expired before `before` (the sweeper's job); whether it went.
    pub async fn delete_expired(
        &self,
        id: ImageId,
        before: DateTime<Utc>,
    ) -> Result<bool, ImagesError> {
        let Some(image) = self.store.get_image(id).await? else {
            return Ok(false);
        };
        let deleted = self
            .job(key_of(&image), |reply| UploadMsg::Delete {
                id,
                expired_before: Some(before),
                reply,
            })
            .await?;
        Ok(deleted.is_some())
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// Deletes every image `owner` uploaded.
    pub async fn delete_all_of(&self, owner: UserId) -> Result<(), ImagesError> {
        loop {
            let page = self.store.images_by_owner(owner, None, DELETE_PAGE).await?;
            if page.is_empty() {
                return Ok(());
            }
            for image in &page {
                self.delete(image).await?;
            }
        }
    }

    /// Runs one job on the upload workers and waits (bounded) for its outcome.
    async fn job<T: Send + 'static>(
        &self,
        key: [u8; 20],
        job: impl FnOnce(ractor::RpcReplyPort<Result<T, IngestError>>) -> UploadMsg,
    ) -> Result<T, ImagesError> {
        let uploads = self.uploads.get().ok_or(ImagesError::Busy)?;
        let reply = uploads
            .call_job(key, job, Some(self.rules.process_timeout))
            .await
            .map_err(|_| ImagesError::Busy)?;
        match reply {
            CallResult::Success(result) => Ok(result?),
            CallResult::Timeout => Err(ImagesError::Busy),
            CallResult::SenderError => Err(ImagesError::WorkerLost),
        }
    }
}
