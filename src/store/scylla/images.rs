//! Image metadata in Scylla.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use uuid::Uuid;

use super::{ScyllaStore, err, prepare, stored};
use crate::domain::{Image, ImageFormat, ImageId, Tags, UserId};
use crate::store::{ImageStore, StoreError};

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
);

const COLUMNS: &str =
    "id, name, sha1, format, width, height, bytes, tags, owner, created_at, blurhash";

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
}

impl Statements {
    pub(super) async fn prepare(s: &Session, ks: &str) -> Result<Self, StoreError> {
        Ok(Self {
            insert: prepare(
                s,
                format!(
                    "INSERT INTO {ks}.images ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
            delete: prepare(s, format!("DELETE FROM {ks}.images WHERE id = ?")).await?,
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
        })
    }
}

fn from_row(row: ImageRow) -> Result<Image, StoreError> {
    let (id, name, sha1, format, width, height, bytes, tags, owner, created_at, blurhash) = row;
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
    })
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
        rows.rows::<ImageRow>()
            .map_err(err)?
            .map(|row| row.map_err(err).and_then(from_row))
            .collect()
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
        let row = (
            image.id.0,
            &image.name,
            &image.sha1,
            image.format.as_str(),
            width,
            height,
            bytes,
            image.tags.as_slice(),
            image.owner.map(|o| o.0),
            image.created_at,
            &image.blurhash,
        );
        let mut batch = Batch::new(BatchType::Logged);
        batch.append_statement(st.insert.clone());
        batch.append_statement(st.insert_by_sha1.clone());
        match image.owner {
            Some(owner) => {
                batch.append_statement(st.insert_by_owner.clone());
                self.session
                    .batch(
                        &batch,
                        (row, (&image.sha1, image.id.0), (owner.0, image.id.0)),
                    )
                    .await
            }
            None => {
                self.session
                    .batch(&batch, (row, (&image.sha1, image.id.0)))
                    .await
            }
        }
        .map_err(err)?;
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
        let rows = result.into_rows_result().map_err(err)?;
        let ids: Vec<Uuid> = rows
            .rows::<(Uuid,)>()
            .map_err(err)?
            .map(|r| r.map(|(id,)| id).map_err(err))
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(image) = self.get_image(ImageId(id)).await? {
                out.push(image);
            }
        }
        Ok(out)
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

    async fn delete_image(&self, id: ImageId) -> Result<Option<Image>, StoreError> {
        let Some(image) = self.get_image(id).await? else {
            return Ok(None);
        };
        let st = &self.images;
        let mut batch = Batch::new(BatchType::Logged);
        batch.append_statement(st.delete.clone());
        batch.append_statement(st.delete_by_sha1.clone());
        match image.owner {
            Some(owner) => {
                batch.append_statement(st.delete_by_owner.clone());
                self.session
                    .batch(&batch, ((id.0,), (&image.sha1, id.0), (owner.0, id.0)))
                    .await
            }
            None => {
                self.session
                    .batch(&batch, ((id.0,), (&image.sha1, id.0)))
                    .await
            }
        }
        .map_err(err)?;
        Ok(Some(image))
    }
}
