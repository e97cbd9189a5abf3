//! Image metadata in the embedded store.

use std::ops::Bound;

use async_trait::async_trait;
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};

use chrono::{DateTime, Utc};

use super::{
    DRAFTS_BY_EXPIRY, DRAFTS_BY_SHA1, EmbeddedStore, IMAGES, IMAGES_BY_OWNER, IMAGES_BY_SHA1,
    IMAGES_BY_TAG, decode, encode, scan,
};
use crate::domain::{Image, ImageId, Tags, UserId};
use crate::store::{ImageStore, StoreError};

/// Writes an image's record and its index rows: a published image is indexed by sha1,
/// owner and tag; a draft only among drafts, by sha1 and expiry.
fn write_image(tx: &WriteTransaction, image: &Image) -> Result<(), StoreError> {
    let id = image.id.0.as_u128();
    tx.open_table(IMAGES)?
        .insert(id, encode(image)?.as_slice())?;
    index(tx, image, true)
}

/// Adds (`add`) or removes an image's index rows.
fn index(tx: &WriteTransaction, image: &Image, add: bool) -> Result<(), StoreError> {
    let id = image.id.0.as_u128();
    let sha1 = image.sha1.as_str();
    if let Some(draft) = &image.draft {
        let expiry = (draft.expires_at.timestamp_millis(), id);
        let (mut by_sha1, mut by_expiry) = (
            tx.open_table(DRAFTS_BY_SHA1)?,
            tx.open_table(DRAFTS_BY_EXPIRY)?,
        );
        if add {
            by_sha1.insert((sha1, id), ())?;
            by_expiry.insert(expiry, ())?;
        } else {
            by_sha1.remove((sha1, id))?;
            by_expiry.remove(expiry)?;
        }
        return Ok(());
    }
    let mut by_sha1 = tx.open_table(IMAGES_BY_SHA1)?;
    match add {
        true => by_sha1.insert((sha1, id), ())?,
        false => by_sha1.remove((sha1, id))?,
    };
    if let Some(owner) = image.owner {
        let mut by_owner = tx.open_table(IMAGES_BY_OWNER)?;
        match add {
            true => by_owner.insert((owner.0.as_u128(), id), ())?,
            false => by_owner.remove((owner.0.as_u128(), id))?,
        };
    }
    index_tags_of(tx, image, add)
}

fn index_tags_of(tx: &WriteTransaction, image: &Image, add: bool) -> Result<(), StoreError> {
    let id = image.id.0.as_u128();
    let mut by_tag = tx.open_table(IMAGES_BY_TAG)?;
    for tag in image.tags.as_slice() {
        match add {
            true => by_tag.insert((tag.as_str(), id), ())?,
            false => by_tag.remove((tag.as_str(), id))?,
        };
    }
    Ok(())
}

/// Builds the tag index from every published record (once, for a store made before it).
pub(super) fn index_tags(tx: &WriteTransaction) -> Result<(), StoreError> {
    let images: Vec<Image> = {
        let table = tx.open_table(IMAGES)?;
        let mut all = Vec::new();
        for row in table.iter()? {
            let image: Image = decode(row?.1.value())?;
            if !image.is_draft() && !image.tags.as_slice().is_empty() {
                all.push(image);
            }
        }
        all
    };
    images.iter().try_for_each(|i| index_tags_of(tx, i, true))
}

/// The stored image `id`, read inside a write transaction.
fn read_image(tx: &WriteTransaction, id: ImageId) -> Result<Option<Image>, StoreError> {
    tx.open_table(IMAGES)?
        .get(id.0.as_u128())?
        .map(|v| decode(v.value()))
        .transpose()
}

impl EmbeddedStore {
    async fn count_by_sha1(
        &self,
        table: redb::TableDefinition<'static, (&'static str, u128), ()>,
        sha1: &str,
    ) -> Result<u64, StoreError> {
        let sha1 = sha1.to_owned();
        self.with_db(move |db| {
            let table = db.begin_read()?.open_table(table)?;
            let mut n = 0;
            for row in table.range((sha1.as_str(), 0u128)..=(sha1.as_str(), u128::MAX))? {
                row?;
                n += 1;
            }
            Ok(n)
        })
        .await
    }
}

#[async_trait]
impl ImageStore for EmbeddedStore {
    async fn insert_image(&self, image: &Image) -> Result<(), StoreError> {
        let image = image.clone();
        self.write(move |tx| {
            write_image(tx, &image)?;
            Ok(())
        })
        .await
    }

    /// One transaction for the whole batch.
    async fn insert_images(&self, images: &[Image]) -> Result<(), StoreError> {
        let images = images.to_vec();
        self.write(move |tx| images.iter().try_for_each(|i| write_image(tx, i)))
            .await
    }

    async fn get_image(&self, id: ImageId) -> Result<Option<Image>, StoreError> {
        self.read_now(|db| {
            let table = db.begin_read()?.open_table(IMAGES)?;
            let row = table.get(id.0.as_u128())?;
            row.map(|v| decode(v.value())).transpose()
        })
    }

    async fn scan_images(
        &self,
        after: Option<ImageId>,
        limit: usize,
    ) -> Result<Vec<Image>, StoreError> {
        self.with_db(move |db| scan(db, IMAGES, after.map(|id| id.0), limit))
            .await
    }

    async fn count_images_with_sha1(&self, sha1: &str) -> Result<u64, StoreError> {
        self.count_by_sha1(IMAGES_BY_SHA1, sha1).await
    }

    async fn count_drafts_with_sha1(&self, sha1: &str) -> Result<u64, StoreError> {
        self.count_by_sha1(DRAFTS_BY_SHA1, sha1).await
    }

    async fn images_by_tag(
        &self,
        tag: &str,
        after: Option<ImageId>,
        limit: usize,
    ) -> Result<Vec<Image>, StoreError> {
        let tag = tag.to_owned();
        self.with_db(move |db| {
            let tx = db.begin_read()?;
            let (index, images) = (tx.open_table(IMAGES_BY_TAG)?, tx.open_table(IMAGES)?);
            let start = after.map_or(Bound::Included((tag.as_str(), 0)), |id| {
                Bound::Excluded((tag.as_str(), id.0.as_u128()))
            });
            let mut out = Vec::new();
            for row in index
                .range((start, Bound::Included((tag.as_str(), u128::MAX))))?
                .take(limit)
            {
                let (_, id) = row?.0.value();
                if let Some(image) = images.get(id)? {
                    out.push(decode(image.value())?);
                }
            }
            Ok(out)
        })
        .await
    }

    /// One transaction: every id is checked before anything is written.
    async fn attach_images(
        &self,
        ids: &[ImageId],
        owner: UserId,
        tags: Option<&Tags>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Image>, StoreError> {
        let (ids, tags) = (ids.to_vec(), tags.cloned());
        self.write(move |tx| {
            let mut found = Vec::with_capacity(ids.len());
            for &id in &ids {
                let image = read_image(tx, id)?.ok_or(StoreError::Changed)?;
                let attachable = match &image.draft {
                    Some(draft) => draft.expires_at > now,
                    None => image.owner == Some(owner),
                };
                if !attachable {
                    return Err(StoreError::Changed);
                }
                found.push(image);
            }
            let mut attached = Vec::with_capacity(found.len());
            for image in found {
                if !image.is_draft() {
                    attached.push(image);
                    continue;
                }
                index(tx, &image, false)?;
                let mut image = image;
                image.draft = None;
                image.owner = Some(owner);
                if let Some(tags) = &tags {
                    image.tags = tags.clone();
                }
                write_image(tx, &image)?;
                attached.push(image);
            }
            Ok(attached)
        })
        .await
    }

    async fn expired_drafts(
        &self,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<ImageId>, StoreError> {
        let until = until.timestamp_millis();
        self.with_db(move |db| {
            let table = db.begin_read()?.open_table(DRAFTS_BY_EXPIRY)?;
            let mut out = Vec::new();
            for row in table.range((i64::MIN, 0u128)..(until, 0u128))?.take(limit) {
                let (_, id) = row?.0.value();
                out.push(ImageId(uuid::Uuid::from_u128(id)));
            }
            Ok(out)
        })
        .await
    }

    async fn images_by_owner(
        &self,
        owner: UserId,
        before: Option<ImageId>,
        limit: usize,
    ) -> Result<Vec<Image>, StoreError> {
        self.with_db(move |db| {
            let tx = db.begin_read()?;
            let (index, images) = (tx.open_table(IMAGES_BY_OWNER)?, tx.open_table(IMAGES)?);
            let owner = owner.0.as_u128();
            let end = before.map_or(Bound::Included((owner, u128::MAX)), |id| {
                Bound::Excluded((owner, id.0.as_u128()))
            });
            let mut out = Vec::new();
            for row in index
                .range((Bound::Included((owner, 0)), end))?
                .rev()
                .take(limit)
            {
                let (_, id) = row?.0.value();
                if let Some(image) = images.get(id)? {
                    out.push(decode(image.value())?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn set_image_tags(&self, id: ImageId, tags: &Tags) -> Result<Option<Image>, StoreError> {
        let tags = tags.clone();
        self.write(move |tx| {
            let updated = {
                let mut table = tx.open_table(IMAGES)?;
                let current: Option<Image> = table
                    .get(id.0.as_u128())?
                    .map(|v| decode(v.value()))
                    .transpose()?;
                match current {
                    Some(mut image) => {
                        let old = image.clone();
                        image.tags = tags.clone();
                        table.insert(id.0.as_u128(), encode(&image)?.as_slice())?;
                        Some((old, image))
                    }
                    None => None,
                }
            };
            let Some((old, image)) = updated else {
                return Ok(None);
            };
            if !image.is_draft() {
                index_tags_of(tx, &old, false)?;
                index_tags_of(tx, &image, true)?;
            }
            Ok(Some(image))
        })
        .await
    }

    async fn set_image_blurhash(
        &self,
        id: ImageId,
        blurhash: &str,
    ) -> Result<Option<Image>, StoreError> {
        let blurhash = blurhash.to_owned();
        self.write(move |tx| {
            let mut table = tx.open_table(IMAGES)?;
            let current: Option<Image> = table
                .get(id.0.as_u128())?
                .map(|v| decode(v.value()))
                .transpose()?;
            let Some(mut image) = current else {
                return Ok(None);
            };
            image.blurhash = Some(blurhash.clone());
            table.insert(id.0.as_u128(), encode(&image)?.as_slice())?;
            Ok(Some(image))
        })
        .await
    }

    async fn delete_image(&self, id: ImageId) -> Result<Option<Image>, StoreError> {
        self.write(move |tx| {
            let removed: Option<Image> = tx
                .open_table(IMAGES)?
                .remove(id.0.as_u128())?
                .map(|v| decode(v.value()))
                .transpose()?;
            if let Some(image) = &removed {
                index(tx, image, false)?;
            }
            Ok(removed)
        })
        .await
    }
}
