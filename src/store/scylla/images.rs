//! Image metadata in Scylla. Every write to an `images` row is a lightweight transaction
//! (created `IF NOT EXISTS`, changed and published on a condition, deleted `IF EXISTS`),
//! so Paxos and plain writes never mix on one row: with clock skew between coordinators
//! a plain write could land "before" a Paxos one it followed, and a retag racing a
//! delete could leave a row of tags alone. The index rows are plain writes, ordered
//! around the row's so that a crash leaves extra index rows (readers skip rows whose
//! image is gone or is not what the index says), never an image its index misses.

use std::sync::atomic::{AtomicI64, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, CqlValue};
use uuid::Uuid;

use super::{ScyllaStore, err, prepare, stored};
use crate::domain::{Draft, Image, ImageFormat, ImageId, Tags, TokenHash, UserId};
use crate::store::{ImageStore, StoreError};

/// How far back (in hours of expiry) a node's first sweep looks for expired drafts.
const SWEEP_LOOKBACK_HOURS: i64 = 7 * 24;
const HOUR_MS: i64 = 3_600_000;

type ImageRow = (
    Uuid,
    String,
    String,
    String,
    i32,
    i32,
    i64,
    Option<Vec<String>>,
    Option<Uuid>,
    DateTime<Utc>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<Vec<u8>>,
);

const COLUMNS: &str = "id, name, sha1, format, width, height, bytes, tags, owner, created_at, \
     blurhash, draft_expires_at, claim";

pub(super) struct Statements {
    insert: PreparedStatement,
    insert_by_sha1: PreparedStatement,
    insert_by_owner: PreparedStatement,
    get: PreparedStatement,
    scan_first: PreparedStatement,
    scan_after: PreparedStatement,
    count_sha1: PreparedStatement,
    by_owner: PreparedStatement,
    by_owner_before: PreparedStatement,
    set_tags: PreparedStatement,
    set_blurhash: PreparedStatement,
    delete: PreparedStatement,
    delete_by_sha1: PreparedStatement,
    delete_by_owner: PreparedStatement,
    insert_by_tag: PreparedStatement,
    delete_by_tag: PreparedStatement,
    by_tag: PreparedStatement,
    by_tag_after: PreparedStatement,
    insert_draft_by_sha1: PreparedStatement,
    delete_draft_by_sha1: PreparedStatement,
    count_draft_sha1: PreparedStatement,
    insert_draft_by_expiry: PreparedStatement,
    delete_draft_by_expiry: PreparedStatement,
    drafts_expiring: PreparedStatement,
    publish: PreparedStatement,
    unpublish: PreparedStatement,
    /// The oldest hour of draft expiry that may still hold rows (see `expired_drafts`).
    sweep_from: AtomicI64,
}

impl Statements {
    pub(super) async fn prepare(s: &Session, ks: &str) -> Result<Self, StoreError> {
        Ok(Self {
            insert: prepare(
                s,
                format!(
                    "INSERT INTO {ks}.images ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS"
                ),
            )
            .await?,
            insert_by_sha1: prepare(
                s,
                format!("INSERT INTO {ks}.images_by_sha1 (sha1, id) VALUES (?, ?)"),
            )
            .await?,
            insert_by_owner: prepare(
                s,
                format!("INSERT INTO {ks}.images_by_owner (owner, id) VALUES (?, ?)"),
            )
            .await?,
            get: prepare(s, format!("SELECT {COLUMNS} FROM {ks}.images WHERE id = ?")).await?,
            scan_first: prepare(s, format!("SELECT {COLUMNS} FROM {ks}.images LIMIT ?")).await?,
            scan_after: prepare(
                s,
                format!("SELECT {COLUMNS} FROM {ks}.images WHERE token(id) > token(?) LIMIT ?"),
            )
            .await?,
            count_sha1: prepare(
                s,
                format!("SELECT COUNT(*) FROM {ks}.images_by_sha1 WHERE sha1 = ?"),
            )
            .await?,
            by_owner: prepare(
                s,
                format!("SELECT id FROM {ks}.images_by_owner WHERE owner = ? LIMIT ?"),
            )
            .await?,
            by_owner_before: prepare(
                s,
                format!("SELECT id FROM {ks}.images_by_owner WHERE owner = ? AND id < ? LIMIT ?"),
            )
            .await?,
            // IF EXISTS: a plain UPDATE would recreate a row deleted meanwhile.
            set_tags: prepare(
                s,
                format!("UPDATE {ks}.images SET tags = ? WHERE id = ? IF EXISTS"),
            )
            .await?,
            set_blurhash: prepare(
                s,
                format!("UPDATE {ks}.images SET blurhash = ? WHERE id = ? IF EXISTS"),
            )
            .await?,
            delete: prepare(s, format!("DELETE FROM {ks}.images WHERE id = ? IF EXISTS")).await?,
            delete_by_sha1: prepare(
                s,
                format!("DELETE FROM {ks}.images_by_sha1 WHERE sha1 = ? AND id = ?"),
            )
            .await?,
            delete_by_owner: prepare(
                s,
                format!("DELETE FROM {ks}.images_by_owner WHERE owner = ? AND id = ?"),
            )
            .await?,
            insert_by_tag: prepare(
                s,
                format!("INSERT INTO {ks}.images_by_tag (tag, id) VALUES (?, ?)"),
            )
            .await?,
            delete_by_tag: prepare(
                s,
                format!("DELETE FROM {ks}.images_by_tag WHERE tag = ? AND id = ?"),
            )
            .await?,
            by_tag: prepare(
                s,
                format!("SELECT id FROM {ks}.images_by_tag WHERE tag = ? LIMIT ?"),
            )
            .await?,
            by_tag_after: prepare(
                s,
                format!("SELECT id FROM {ks}.images_by_tag WHERE tag = ? AND id > ? LIMIT ?"),
            )
            .await?,
            insert_draft_by_sha1: prepare(
                s,
                format!("INSERT INTO {ks}.drafts_by_sha1 (sha1, id) VALUES (?, ?)"),
            )
            .await?,
            delete_draft_by_sha1: prepare(
                s,
                format!("DELETE FROM {ks}.drafts_by_sha1 WHERE sha1 = ? AND id = ?"),
            )
            .await?,
            count_draft_sha1: prepare(
                s,
                format!("SELECT COUNT(*) FROM {ks}.drafts_by_sha1 WHERE sha1 = ?"),
            )
            .await?,
            insert_draft_by_expiry: prepare(
                s,
                format!(
                    "INSERT INTO {ks}.drafts_by_expiry (hour, expires_at, id) VALUES (?, ?, ?)"
                ),
            )
            .await?,
            delete_draft_by_expiry: prepare(
                s,
                format!(
                    "DELETE FROM {ks}.drafts_by_expiry WHERE hour = ? AND expires_at = ? AND id = ?"
                ),
            )
            .await?,
            drafts_expiring: prepare(
                s,
                format!(
                    "SELECT id FROM {ks}.drafts_by_expiry WHERE hour = ? AND expires_at < ? LIMIT ?"
                ),
            )
            .await?,
            // Only the draft that was read (its expiry) is published.
            publish: prepare(
                s,
                format!(
                    "UPDATE {ks}.images SET draft_expires_at = null, claim = null, owner = ?, tags = ? WHERE id = ? IF draft_expires_at = ?"
                ),
            )
            .await?,
            // Undoes a publish, for an attach that could not publish all its drafts.
            unpublish: prepare(
                s,
                format!(
                    "UPDATE {ks}.images SET draft_expires_at = ?, claim = ?, owner = ?, tags = ? WHERE id = ? IF owner = ? AND draft_expires_at = null"
                ),
            )
            .await?,
            sweep_from: AtomicI64::new(i64::MIN),
        })
    }
}

fn from_row(row: ImageRow) -> Result<Image, StoreError> {
    let (
        id,
        name,
        sha1,
        format,
        width,
        height,
        bytes,
        tags,
        owner,
        created_at,
        blurhash,
        draft_expires_at,
        claim,
    ) = row;
    let claim = claim
        .map(|c| <[u8; 32]>::try_from(c.as_slice()).map(TokenHash))
        .transpose()
        .map_err(|_| StoreError::Corrupt("a claim hash is not 32 bytes".into()))?;
    let format: ImageFormat = format
        .parse()
        .map_err(|()| StoreError::Corrupt(format!("unknown format {format:?}")))?;
    let tags = tags.unwrap_or_default();
    Ok(Image {
        id: ImageId(id),
        name,
        sha1,
        format,
        width: stored(width)?,
        height: stored(height)?,
        bytes: stored(bytes)?,
        tags: Tags::parse(tags.iter().map(String::as_str))
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        owner: owner.map(UserId),
        created_at,
        blurhash,
        draft: draft_expires_at.map(|expires_at| Draft { expires_at, claim }),
    })
}

/// A batch built statement by statement, each with its values.
struct Writes {
    batch: Batch,
    values: Vec<Vec<Option<CqlValue>>>,
}

impl Writes {
    /// A logged batch of plain writes (each idempotent, so the batch is too).
    fn new() -> Self {
        let mut batch = Batch::new(BatchType::Logged);
        batch.set_is_idempotent(true);
        Self {
            batch,
            values: Vec::new(),
        }
    }

    fn add(&mut self, statement: &PreparedStatement, values: Vec<Option<CqlValue>>) {
        self.batch.append_statement(statement.clone());
        self.values.push(values);
    }
}

fn uuid(id: Uuid) -> Option<CqlValue> {
    Some(CqlValue::Uuid(id))
}

fn text(s: &str) -> Option<CqlValue> {
    Some(CqlValue::Text(s.to_owned()))
}

fn timestamp(t: DateTime<Utc>) -> Option<CqlValue> {
    Some(CqlValue::Timestamp(CqlTimestamp(t.timestamp_millis())))
}

fn tag_list(tags: &Tags) -> Option<CqlValue> {
    Some(CqlValue::List(
        tags.as_slice()
            .iter()
            .map(|t| CqlValue::Text(t.clone()))
            .collect(),
    ))
}

fn expiry_hour(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis().div_euclid(HOUR_MS)
}

impl Statements {
    /// Adds (`add`) or removes an image's index rows: a published image's by sha1, owner
    /// and tag; a draft's among drafts, by sha1 and expiry.
    fn index(&self, writes: &mut Writes, image: &Image, add: bool) {
        let id = image.id.0;
        if let Some(draft) = &image.draft {
            let (by_sha1, by_expiry) = match add {
                true => (&self.insert_draft_by_sha1, &self.insert_draft_by_expiry),
                false => (&self.delete_draft_by_sha1, &self.delete_draft_by_expiry),
            };
            writes.add(by_sha1, vec![text(&image.sha1), uuid(id)]);
            let hour = Some(CqlValue::BigInt(expiry_hour(draft.expires_at)));
            writes.add(by_expiry, vec![hour, timestamp(draft.expires_at), uuid(id)]);
            return;
        }
        let (by_sha1, by_owner, by_tag) = match add {
            true => (
                &self.insert_by_sha1,
                &self.insert_by_owner,
                &self.insert_by_tag,
            ),
            false => (
                &self.delete_by_sha1,
                &self.delete_by_owner,
                &self.delete_by_tag,
            ),
        };
        writes.add(by_sha1, vec![text(&image.sha1), uuid(id)]);
        if let Some(owner) = image.owner {
            writes.add(by_owner, vec![uuid(owner.0), uuid(id)]);
        }
        for tag in image.tags.as_slice() {
            writes.add(by_tag, vec![text(tag), uuid(id)]);
        }
    }
}

impl ScyllaStore {
    async fn select_images(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<Vec<Image>, StoreError> {
        let rows = self
            .run(statement, values)
            .await?
            .into_rows_result()
            .map_err(err)?;
        // A row that does not decode (a column missing, say) is logged and skipped: one
        // bad row must not fail a whole scan page (the random sample's fill reads them).
        Ok(rows
            .rows::<ImageRow>()
            .map_err(err)?
            .filter_map(|row| match row.map_err(err).and_then(from_row) {
                Ok(image) => Some(image),
                Err(e) => {
                    tracing::warn!(error = %e, "an image row could not be read; skipped");
                    None
                }
            })
            .collect())
    }
}

fn limit(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[async_trait]
impl ImageStore for ScyllaStore {
    async fn insert_image(&self, image: &Image) -> Result<(), StoreError> {
        let st = &self.images;
        let width = i32::try_from(image.width).map_err(err)?;
        let height = i32::try_from(image.height).map_err(err)?;
        let bytes = i64::try_from(image.bytes).map_err(err)?;
        let draft = image.draft.as_ref();
        let row = vec![
            uuid(image.id.0),
            text(&image.name),
            text(&image.sha1),
            text(image.format.as_str()),
            Some(CqlValue::Int(width)),
            Some(CqlValue::Int(height)),
            Some(CqlValue::BigInt(bytes)),
            tag_list(&image.tags),
            image.owner.and_then(|o| uuid(o.0)),
            timestamp(image.created_at),
            image.blurhash.as_deref().and_then(text),
            draft.and_then(|d| timestamp(d.expires_at)),
            draft
                .and_then(|d| d.claim)
                .map(|c| CqlValue::Blob(c.0.to_vec())),
        ];
        // The index rows first: a crash before the row leaves rows readers skip.
        let mut writes = Writes::new();
        st.index(&mut writes, image, true);
        self.write(writes).await?;
        if !self.lwt(&st.insert, row).await? {
            return Err(StoreError::Corrupt(format!(
                "image id {} is taken",
                image.id
            )));
        }
        Ok(())
    }

    async fn get_image(&self, id: ImageId) -> Result<Option<Image>, StoreError> {
        Ok(self.select_images(&self.images.get, (id.0,)).await?.pop())
    }

    async fn scan_images(
        &self,
        after: Option<ImageId>,
        n: usize,
    ) -> Result<Vec<Image>, StoreError> {
        match after {
            Some(id) => {
                self.select_images(&self.images.scan_after, (id.0, limit(n)))
                    .await
            }
            None => {
                self.select_images(&self.images.scan_first, (limit(n),))
                    .await
            }
        }
    }

    async fn count_images_with_sha1(&self, sha1: &str) -> Result<u64, StoreError> {
        let rows = self
            .run(&self.images.count_sha1, (sha1,))
            .await?
            .into_rows_result()
            .map_err(err)?;
        let (count,): (i64,) = rows.single_row().map_err(err)?;
        stored(count)
    }

    async fn images_by_owner(
        &self,
        owner: UserId,
        before: Option<ImageId>,
        n: usize,
    ) -> Result<Vec<Image>, StoreError> {
        let result = match before {
            Some(id) => {
                self.run(&self.images.by_owner_before, (owner.0, id.0, limit(n)))
                    .await?
            }
            None => self.run(&self.images.by_owner, (owner.0, limit(n))).await?,
        };
        let found = self.images_with_ids(ids_of(result)?).await?;
        Ok(published_only(found))
    }

    async fn set_image_tags(&self, id: ImageId, tags: &Tags) -> Result<Option<Image>, StoreError> {
        let Some(mut image) = self.get_image(id).await? else {
            return Ok(None);
        };
        if !self
            .lwt(&self.images.set_tags, (tags.as_slice(), id.0))
            .await?
        {
            return Ok(None);
        }
        if !image.is_draft() {
            let st = &self.images;
            let mut writes = Writes::new();
            for tag in image.tags.as_slice().iter().filter(|t| !tags.contains(t)) {
                writes.add(&st.delete_by_tag, vec![text(tag), uuid(id.0)]);
            }
            for tag in tags.as_slice().iter().filter(|t| !image.tags.contains(t)) {
                writes.add(&st.insert_by_tag, vec![text(tag), uuid(id.0)]);
            }
            if !writes.values.is_empty() {
                self.session
                    .batch(&writes.batch, writes.values)
                    .await
                    .map_err(err)?;
            }
        }
        image.tags = tags.clone();
        Ok(Some(image))
    }

    async fn set_image_blurhash(
        &self,
        id: ImageId,
        blurhash: &str,
    ) -> Result<Option<Image>, StoreError> {
        let Some(mut image) = self.get_image(id).await? else {
            return Ok(None);
        };
        if !self
            .lwt(&self.images.set_blurhash, (blurhash, id.0))
            .await?
        {
            return Ok(None);
        }
        image.blurhash = Some(blurhash.to_owned());
        Ok(Some(image))
    }

    /// The row, then its index rows: a crash between leaves index rows of an image that
    /// is gone, which readers skip (and which keep its file: a leak, never a loss).
    async fn delete_image(&self, id: ImageId) -> Result<Option<Image>, StoreError> {
        let Some(image) = self.get_image(id).await? else {
            return Ok(None);
        };
        let st = &self.images;
        if !self.lwt(&st.delete, (id.0,)).await? {
            return Ok(None);
        }
        let mut writes = Writes::new();
        st.index(&mut writes, &image, false);
        self.write(writes).await?;
        Ok(Some(image))
    }

    async fn count_drafts_with_sha1(&self, sha1: &str) -> Result<u64, StoreError> {
        let rows = self
            .run(&self.images.count_draft_sha1, (sha1,))
            .await?
            .into_rows_result()
            .map_err(err)?;
        let (count,): (i64,) = rows.single_row().map_err(err)?;
        stored(count)
    }

    async fn images_by_tag(
        &self,
        tag: &str,
        after: Option<ImageId>,
        n: usize,
    ) -> Result<Vec<Image>, StoreError> {
        let result = match after {
            Some(id) => {
                self.run(&self.images.by_tag_after, (tag, id.0, limit(n)))
                    .await?
            }
            None => self.run(&self.images.by_tag, (tag, limit(n))).await?,
        };
        let found = self.images_with_ids(ids_of(result)?).await?;
        Ok(published_only(found))
    }

    /// Each draft is published by a compare-and-set on the expiry that was read, so a
    /// draft deleted or attached elsewhere meanwhile is not. If one cannot be, those
    /// published by this call are put back as they were, and nothing is attached. The
    /// published index rows go first and the draft ones last (see the module's note).
    /// A crash midway can leave some drafts published: attaching again finishes it.
    async fn attach_images(
        &self,
        ids: &[ImageId],
        owner: UserId,
        tags: Option<&Tags>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Image>, StoreError> {
        let st = &self.images;
        // (the draft as read, the image as published), for each draft to publish.
        let mut changes: Vec<(Image, Image)> = Vec::new();
        let mut attached = Vec::with_capacity(ids.len());
        for &id in ids {
            let image = self.get_image(id).await?.ok_or(StoreError::Changed)?;
            match &image.draft {
                Some(draft) if draft.expires_at > now => {}
                None if image.owner == Some(owner) => {
                    attached.push(image);
                    continue;
                }
                _ => return Err(StoreError::Changed),
            }
            let mut published = image.clone();
            published.draft = None;
            published.owner = Some(owner);
            if let Some(tags) = tags {
                published.tags = tags.clone();
            }
            changes.push((image, published));
        }
        let mut adds = Writes::new();
        for (_, published) in &changes {
            st.index(&mut adds, published, true);
        }
        self.write(adds).await?;
        for (i, (draft, published)) in changes.iter().enumerate() {
            let expires = draft.draft.as_ref().and_then(|d| timestamp(d.expires_at));
            let values = vec![
                uuid(owner.0),
                tag_list(&published.tags),
                uuid(draft.id.0),
                expires,
            ];
            if !self.lwt(&st.publish, values).await? {
                self.unpublish(owner, &changes[..i]).await?;
                return Err(StoreError::Changed);
            }
        }
        let mut removals = Writes::new();
        for (draft, _) in &changes {
            st.index(&mut removals, draft, false);
        }
        self.write(removals).await?;
        attached.extend(changes.into_iter().map(|(_, published)| published));
        Ok(attached)
    }

    /// Reads the expiry hours from the oldest that may still hold rows (on a node's first
    /// sweep, `SWEEP_LOOKBACK_HOURS` back) up to `until`'s, and moves that mark past the
    /// hours found empty.
    async fn expired_drafts(
        &self,
        until: DateTime<Utc>,
        n: usize,
    ) -> Result<Vec<ImageId>, StoreError> {
        let st = &self.images;
        let last = expiry_hour(until);
        let mut hour = st.sweep_from.load(Ordering::Relaxed);
        if hour == i64::MIN {
            hour = last - SWEEP_LOOKBACK_HOURS;
        }
        let mut out = Vec::new();
        let mut empty_until = hour;
        while hour <= last && out.len() < n {
            let result = self
                .run(
                    &st.drafts_expiring,
                    (
                        hour,
                        CqlTimestamp(until.timestamp_millis()),
                        limit(n - out.len()),
                    ),
                )
                .await?;
            let ids = ids_of(result)?;
            if ids.is_empty() && empty_until == hour && hour < last {
                empty_until = hour + 1;
            }
            out.extend(ids.into_iter().map(ImageId));
            hour += 1;
        }
        st.sweep_from.fetch_max(empty_until, Ordering::Relaxed);
        Ok(out)
    }
}

/// Drops drafts from what a published index returned: its rows are written before a
/// publish lands (and stay if it never does).
fn published_only(images: Vec<Image>) -> Vec<Image> {
    images.into_iter().filter(|i| !i.is_draft()).collect()
}

/// The ids a query of one `id` column returned.
fn ids_of(result: scylla::response::query_result::QueryResult) -> Result<Vec<Uuid>, StoreError> {
    let rows = result.into_rows_result().map_err(err)?;
    rows.rows::<(Uuid,)>()
        .map_err(err)?
        .map(|r| r.map(|(id,)| id).map_err(err))
        .collect()
}

impl ScyllaStore {
    /// The images with these ids that still exist, in the same order: point reads,
    /// `POINT_READS` at a time.
    /// Puts drafts this call published back as they were, then drops the index rows it
    /// added for them.
    async fn unpublish(&self, owner: UserId, changes: &[(Image, Image)]) -> Result<(), StoreError> {
        let st = &self.images;
        let mut drops = Writes::new();
        for (draft, published) in changes {
            let d = draft.draft.as_ref();
            let values = vec![
                d.and_then(|d| timestamp(d.expires_at)),
                d.and_then(|d| d.claim)
                    .map(|c| CqlValue::Blob(c.0.to_vec())),
                draft.owner.and_then(|o| uuid(o.0)),
                tag_list(&draft.tags),
                uuid(draft.id.0),
                uuid(owner.0),
            ];
            self.lwt(&st.unpublish, values).await?;
            st.index(&mut drops, published, false);
        }
        self.write(drops).await
    }

    /// Runs a batch of index writes, if it has any.
    async fn write(&self, writes: Writes) -> Result<(), StoreError> {
        if writes.values.is_empty() {
            return Ok(());
        }
        self.session
            .batch(&writes.batch, writes.values)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn images_with_ids(&self, ids: Vec<Uuid>) -> Result<Vec<Image>, StoreError> {
        use futures_util::{StreamExt, TryStreamExt};
        let found: Vec<Option<Image>> = futures_util::stream::iter(ids)
            .map(|id| self.get_image(ImageId(id)))
            .buffered(super::POINT_READS)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }
}
