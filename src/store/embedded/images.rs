//! Image metadata in the embedded store.

use std::ops::Bound;

use async_trait::async_trait;
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};

use super::{EmbeddedStore, IMAGES, IMAGES_BY_OWNER, IMAGES_BY_SHA1, decode, encode, scan};
use crate::domain::{Image, ImageId, Tags, UserId};
use crate::store::{ImageStore, StoreError};

fn write_image(tx: &WriteTransaction, image: &Image) -> Result<(), StoreError> {
    let id = image.id.0.as_u128();
    tx.open_table(IMAGES)?
        .insert(id, encode(image)?.as_slice())?;
    tx.open_table(IMAGES_BY_SHA1)?
        .insert((image.sha1.as_str(), id), ())?;
    if let Some(owner) = image.owner {
        tx.open_table(IMAGES_BY_OWNER)?
            .insert((owner.0.as_u128(), id), ())?;
    }
    Ok(())
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
        let sha1 = sha1.to_owned();
        self.with_db(move |db| {
            let table = db.begin_read()?.open_table(IMAGES_BY_SHA1)?;
            let mut n = 0;
            for row in table.range((sha1.as_str(), 0u128)..=(sha1.as_str(), u128::MAX))? {
                row?;
                n += 1;
            }
            Ok(n)
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
                        image.tags = tags.clone();
                        table.insert(id.0.as_u128(), encode(&image)?.as_slice())?;
                        Some(image)
                    }
                    None => None,
                }
            };
            Ok(updated)
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
                tx.open_table(IMAGES_BY_SHA1)?
                    .remove((image.sha1.as_str(), id.0.as_u128()))?;
                if let Some(owner) = image.owner {
                    tx.open_table(IMAGES_BY_OWNER)?
                        .remove((owner.0.as_u128(), id.0.as_u128()))?;
                }
            }
            Ok(removed)
        })
        .await
    }
}
