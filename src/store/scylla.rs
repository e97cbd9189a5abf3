//! The Scylla backend: one shared session, every statement prepared once, partition keys
//! bound as values. The schema comes from `schema/*.cql` (applied by `corral migrate`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use uuid::Uuid;

use super::{ImageStore, Store, StoreError};
use crate::domain::{Image, ImageFormat, ImageId, Tags};

/// The CQL files, in the order they apply. Embedded so a deployed binary can migrate.
pub const SCHEMA: &[(&str, &str)] = &[(
    "001_images.cql",
    include_str!("../../schema/001_images.cql"),
)];

/// Where the cluster is and which keyspace is ours.
#[derive(Debug, Clone)]
pub struct ScyllaTarget {
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub replication_factor: u32,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Scylla(e.to_string())
}

type ImageRow = (
    Uuid,
    String,
    String,
    String,
    i32,
    i32,
    i64,
    Option<Vec<String>>,
    DateTime<Utc>,
);

const IMAGE_COLUMNS: &str = "id, name, sha1, format, width, height, bytes, tags, created_at";

struct Prepared {
    insert_image: PreparedStatement,
    insert_image_by_sha1: PreparedStatement,
    get_image: PreparedStatement,
    scan_first: PreparedStatement,
    scan_after: PreparedStatement,
    count_sha1: PreparedStatement,
    ping: PreparedStatement,
}

pub struct ScyllaStore {
    session: Session,
    prepared: Prepared,
}

async fn session(target: &ScyllaTarget) -> Result<Session, StoreError> {
    SessionBuilder::new()
        .known_nodes(&target.nodes)
        .build()
        .await
        .map_err(err)
}

/// Applies every schema file to the cluster, in order. Returns the names applied.
pub async fn migrate(target: &ScyllaTarget) -> Result<Vec<&'static str>, StoreError> {
    let session = session(target).await?;
    for (name, cql) in SCHEMA {
        for statement in statements(cql, target) {
            session
                .query_unpaged(statement, ())
                .await
                .map_err(|e| StoreError::Scylla(format!("{name}: {e}")))?;
        }
        session.await_schema_agreement().await.map_err(err)?;
    }
    Ok(SCHEMA.iter().map(|(name, _)| *name).collect())
}

/// Splits a schema file into statements, substituting the placeholders.
fn statements(cql: &str, target: &ScyllaTarget) -> Vec<String> {
    let body: String = cql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    body.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.replace("${keyspace}", &target.keyspace).replace(
                "${replication_factor}",
                &target.replication_factor.to_string(),
            )
        })
        .collect()
}

impl ScyllaStore {
    /// Connects and prepares every statement. The schema must already be applied.
    pub async fn connect(target: &ScyllaTarget) -> Result<Self, StoreError> {
        let session = session(target).await?;
        let ks = &target.keyspace;
        let prepare = |cql: String| {
            let session = &session;
            async move { session.prepare(cql).await.map_err(err) }
        };
        let prepared = Prepared {
            insert_image: prepare(format!(
                "INSERT INTO {ks}.images ({IMAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            insert_image_by_sha1: prepare(format!(
                "INSERT INTO {ks}.images_by_sha1 (sha1, id) VALUES (?, ?)"
            ))
            .await?,
            get_image: prepare(format!(
                "SELECT {IMAGE_COLUMNS} FROM {ks}.images WHERE id = ?"
            ))
            .await?,
            scan_first: prepare(format!("SELECT {IMAGE_COLUMNS} FROM {ks}.images LIMIT ?")).await?,
            scan_after: prepare(format!(
                "SELECT {IMAGE_COLUMNS} FROM {ks}.images WHERE token(id) > token(?) LIMIT ?"
            ))
            .await?,
            count_sha1: prepare(format!(
                "SELECT COUNT(*) FROM {ks}.images_by_sha1 WHERE sha1 = ?"
            ))
            .await?,
            ping: prepare("SELECT now() FROM system.local".to_owned()).await?,
        };
        Ok(Self { session, prepared })
    }

    async fn select_images(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<Vec<Image>, StoreError> {
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(err)?;
        let rows = result.into_rows_result().map_err(err)?;
        rows.rows::<ImageRow>()
            .map_err(err)?
            .map(|row| row.map_err(err).and_then(from_row))
            .collect()
    }
}

fn from_row(row: ImageRow) -> Result<Image, StoreError> {
    let (id, name, sha1, format, width, height, bytes, tags, created_at) = row;
    let format: ImageFormat = format
        .parse()
        .map_err(|()| StoreError::Corrupt(format!("unknown format {format:?}")))?;
    let tags = tags.unwrap_or_default();
    Ok(Image {
        id: ImageId(id),
        name,
        sha1,
        format,
        width: u32::try_from(width).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        height: u32::try_from(height).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        bytes: u64::try_from(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        tags: Tags::parse(tags.iter().map(String::as_str))
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        created_at,
    })
}

#[async_trait]
impl ImageStore for ScyllaStore {
    async fn insert_image(&self, image: &Image) -> Result<(), StoreError> {
        let width = i32::try_from(image.width).map_err(err)?;
        let height = i32::try_from(image.height).map_err(err)?;
        let bytes = i64::try_from(image.bytes).map_err(err)?;
        let mut batch = Batch::new(BatchType::Logged);
        batch.append_statement(self.prepared.insert_image.clone());
        batch.append_statement(self.prepared.insert_image_by_sha1.clone());
        let row = (
            image.id.0,
            &image.name,
            &image.sha1,
            image.format.as_str(),
            width,
            height,
            bytes,
            image.tags.as_slice(),
            image.created_at,
        );
        self.session
            .batch(&batch, (row, (&image.sha1, image.id.0)))
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn get_image(&self, id: ImageId) -> Result<Option<Image>, StoreError> {
        Ok(self
            .select_images(&self.prepared.get_image, (id.0,))
            .await?
            .pop())
    }

    async fn scan_images(
        &self,
        after: Option<ImageId>,
        limit: usize,
    ) -> Result<Vec<Image>, StoreError> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        match after {
            Some(id) => {
                self.select_images(&self.prepared.scan_after, (id.0, limit))
                    .await
            }
            None => {
                self.select_images(&self.prepared.scan_first, (limit,))
                    .await
            }
        }
    }

    async fn count_images_with_sha1(&self, sha1: &str) -> Result<u64, StoreError> {
        let result = self
            .session
            .execute_unpaged(&self.prepared.count_sha1, (sha1,))
            .await
            .map_err(err)?;
        let (count,): (i64,) = result
            .into_rows_result()
            .map_err(err)?
            .single_row()
            .map_err(err)?;
        u64::try_from(count).map_err(err)
    }
}

#[async_trait]
impl Store for ScyllaStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(&self.prepared.ping, ())
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn close(&self) -> Result<(), StoreError> {
        // The session closes its connections when dropped; writes are acknowledged already.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_file_is_embedded_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/schema");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".cql"))
            .collect();
        on_disk.sort();
        let embedded: Vec<&str> = SCHEMA.iter().map(|(name, _)| *name).collect();
        assert_eq!(embedded, on_disk);
    }

    #[test]
    fn statements_are_split_and_placeholders_filled() {
        let target = ScyllaTarget {
            nodes: vec![],
            keyspace: "ks1".into(),
            replication_factor: 3,
        };
        let all: Vec<String> = SCHEMA
            .iter()
            .flat_map(|(_, cql)| statements(cql, &target))
            .collect();
        assert!(all[0].starts_with("CREATE KEYSPACE IF NOT EXISTS ks1"));
        assert!(all[0].contains("'replication_factor': 3"));
        assert!(all.iter().all(|s| !s.contains("${") && !s.contains(';')));
        assert!(all.iter().any(|s| s.contains("ks1.images_by_sha1")));
    }
}
