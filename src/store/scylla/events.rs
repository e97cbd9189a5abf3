//! The events catalogue in Scylla. Index partitions are ordered by (starts_at, id); pages
//! are read with tuple slices, so a cursor resumes exactly where the last page ended.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use uuid::Uuid;

use super::{ScyllaStore, err, prepare};
use crate::domain::event::day_of;
use crate::domain::{Event, EventId, EventKey, Location, Tags, UserId};
use crate::store::{EventIndex, EventStore, IndexPage, StoreError};

type EventRow = (
    Uuid,
    String,
    String,
    Option<Vec<String>>,
    DateTime<Utc>,
    DateTime<Utc>,
    String,
    f64,
    f64,
    Uuid,
    DateTime<Utc>,
);

const COLUMNS: &str = "id, title, description, topics, starts_at, ends_at, location_name, lat, lon, created_by, created_at";

/// Reads of one index table: from a start (inclusive) or after a cursor (exclusive).
struct IndexReads {
    from: PreparedStatement,
    after: PreparedStatement,
}

pub(super) struct Statements {
    write: PreparedStatement,
    get: PreparedStatement,
    delete: PreparedStatement,
    add_topic: PreparedStatement,
    remove_topic: PreparedStatement,
    add_day: PreparedStatement,
    remove_day: PreparedStatement,
    add_cell: PreparedStatement,
    remove_cell: PreparedStatement,
    by_topic: IndexReads,
    by_day: IndexReads,
    by_cell: IndexReads,
}

async fn reads(s: &Session, ks: &str, table: &str, key: &str) -> Result<IndexReads, StoreError> {
    let q = |op: &str| {
        format!(
            "SELECT starts_at, id FROM {ks}.{table} WHERE {key} = ? AND (starts_at, id) {op} (?, ?) AND (starts_at, id) < (?, ?) LIMIT ?"
        )
    };
    Ok(IndexReads {
        from: prepare(s, q(">=")).await?,
        after: prepare(s, q(">")).await?,
    })
}

impl Statements {
    pub(super) async fn prepare(s: &Session, ks: &str) -> Result<Self, StoreError> {
        Ok(Self {
            write: prepare(
                s,
                format!(
                    "INSERT INTO {ks}.events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
            )
            .await?,
            get: prepare(s, format!("SELECT {COLUMNS} FROM {ks}.events WHERE id = ?")).await?,
            delete: prepare(s, format!("DELETE FROM {ks}.events WHERE id = ?")).await?,
            add_topic: prepare(
                s,
                format!("INSERT INTO {ks}.events_by_topic (topic, starts_at, id) VALUES (?, ?, ?)"),
            )
            .await?,
            remove_topic: prepare(
                s,
                format!(
                    "DELETE FROM {ks}.events_by_topic WHERE topic = ? AND starts_at = ? AND id = ?"
                ),
            )
            .await?,
            add_day: prepare(
                s,
                format!("INSERT INTO {ks}.events_by_day (day, starts_at, id) VALUES (?, ?, ?)"),
            )
            .await?,
            remove_day: prepare(
                s,
                format!(
                    "DELETE FROM {ks}.events_by_day WHERE day = ? AND starts_at = ? AND id = ?"
                ),
            )
            .await?,
            add_cell: prepare(
                s,
                format!(
                    "INSERT INTO {ks}.events_by_geohash (cell, starts_at, id) VALUES (?, ?, ?)"
                ),
            )
            .await?,
            remove_cell: prepare(
                s,
                format!(
                    "DELETE FROM {ks}.events_by_geohash WHERE cell = ? AND starts_at = ? AND id = ?"
                ),
            )
            .await?,
            by_topic: reads(s, ks, "events_by_topic", "topic").await?,
            by_day: reads(s, ks, "events_by_day", "day").await?,
            by_cell: reads(s, ks, "events_by_geohash", "cell").await?,
        })
    }
}

/// One index row of an event.
#[derive(Debug, Clone, PartialEq)]
enum IndexRow {
    Topic(String, DateTime<Utc>, Uuid),
    Day(i32, DateTime<Utc>, Uuid),
    Cell(String, DateTime<Utc>, Uuid),
}

fn index_rows(event: &Event) -> Vec<IndexRow> {
    let (t, id) = (event.starts_at, event.id.0);
    let topics = event
        .topics
        .as_slice()
        .iter()
        .map(|topic| IndexRow::Topic(topic.clone(), t, id));
    let cells = event
        .cells()
        .into_iter()
        .map(|cell| IndexRow::Cell(cell, t, id));
    topics
        .chain([IndexRow::Day(day_of(t), t, id)])
        .chain(cells)
        .collect()
}

impl IndexRow {
    fn statement(&self, st: &Statements, add: bool) -> PreparedStatement {
        match (self, add) {
            (Self::Topic(..), true) => st.add_topic.clone(),
            (Self::Topic(..), false) => st.remove_topic.clone(),
            (Self::Day(..), true) => st.add_day.clone(),
            (Self::Day(..), false) => st.remove_day.clone(),
            (Self::Cell(..), true) => st.add_cell.clone(),
            (Self::Cell(..), false) => st.remove_cell.clone(),
        }
    }

    fn values(&self) -> Box<dyn scylla::serialize::row::SerializeRow + Send + Sync> {
        match self.clone() {
            Self::Topic(key, t, id) | Self::Cell(key, t, id) => Box::new((key, t, id)),
            Self::Day(day, t, id) => Box::new((day, t, id)),
        }
    }
}

fn from_row(row: EventRow) -> Result<Event, StoreError> {
    let (
        id,
        title,
        description,
        topics,
        starts_at,
        ends_at,
        location_name,
        lat,
        lon,
        created_by,
        created_at,
    ) = row;
    let topics = topics.unwrap_or_default();
    Ok(Event {
        id: EventId(id),
        title,
        description,
        topics: Tags::parse(topics.iter().map(String::as_str))
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        starts_at,
        ends_at,
        location: Location {
            name: location_name,
            lat,
            lon,
        },
        created_by: UserId(created_by),
        created_at,
    })
}

impl ScyllaStore {
    /// In one logged batch: removes the index rows of `old` that `new` does not have, and
    /// writes every row of `new`, or deletes the event row when there is no `new`. Rows a
    /// change keeps are overwritten, never deleted and rewritten (a tombstone with the same
    /// timestamp would hide the rewrite).
    async fn event_rows(&self, old: Option<&Event>, new: Option<&Event>) -> Result<(), StoreError> {
        let st = &self.events;
        let keep: Vec<IndexRow> = new.map(index_rows).unwrap_or_default();
        let mut batch = Batch::new(BatchType::Logged);
        let mut values: Vec<Box<dyn scylla::serialize::row::SerializeRow + Send + Sync>> =
            Vec::new();
        for row in old.map(index_rows).unwrap_or_default() {
            if !keep.contains(&row) {
                batch.append_statement(row.statement(st, false));
                values.push(row.values());
            }
        }
        for row in &keep {
            batch.append_statement(row.statement(st, true));
            values.push(row.values());
        }
        match (new, old) {
            (Some(event), _) => {
                batch.append_statement(st.write.clone());
                let l = &event.location;
                values.push(Box::new((
                    event.id.0,
                    event.title.clone(),
                    event.description.clone(),
                    event.topics.as_slice().to_vec(),
                    event.starts_at,
                    event.ends_at,
                    l.name.clone(),
                    l.lat,
                    l.lon,
                    event.created_by.0,
                    event.created_at,
                )));
            }
            (None, Some(event)) => {
                batch.append_statement(st.delete.clone());
                values.push(Box::new((event.id.0,)));
            }
            (None, None) => return Ok(()),
        }
        self.session.batch(&batch, values).await.map_err(err)?;
        Ok(())
    }

    async fn index_ids(
        &self,
        reads: &IndexReads,
        key: impl scylla::serialize::value::SerializeValue + Copy,
        lower: (DateTime<Utc>, Uuid, bool),
        to: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(DateTime<Utc>, Uuid)>, StoreError> {
        let (start, start_id, exclusive) = lower;
        let statement = if exclusive { &reads.after } else { &reads.from };
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows = self
            .run(statement, (key, start, start_id, to, Uuid::nil(), limit))
            .await?
            .into_rows_result()
            .map_err(err)?;
        rows.rows::<(DateTime<Utc>, Uuid)>()
            .map_err(err)?
            .map(|r| r.map_err(err))
            .collect()
    }
}

#[async_trait]
impl EventStore for ScyllaStore {
    async fn insert_event(&self, event: &Event) -> Result<(), StoreError> {
        self.event_rows(None, Some(event)).await
    }

    async fn get_event(&self, id: EventId) -> Result<Option<Event>, StoreError> {
        let rows = self
            .run(&self.events.get, (id.0,))
            .await?
            .into_rows_result()
            .map_err(err)?;
        rows.maybe_first_row::<EventRow>()
            .map_err(err)?
            .map(from_row)
            .transpose()
    }

    async fn update_event(&self, before: &Event, after: &Event) -> Result<(), StoreError> {
        self.event_rows(Some(before), Some(after)).await
    }

    async fn delete_event(&self, event: &Event) -> Result<(), StoreError> {
        self.event_rows(Some(event), None).await
    }

    async fn events_page(
        &self,
        index: EventIndex<'_>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<EventKey>,
        limit: usize,
    ) -> Result<IndexPage, StoreError> {
        let mut lower = (from, Uuid::nil(), false);
        if let Some(k) = after.filter(|k| k.at_ms >= from.timestamp_millis()) {
            lower = (k.at().unwrap_or(from), k.id.0, true);
        }
        let st = &self.events;
        let ids = match index {
            EventIndex::Topic(topic) => {
                self.index_ids(&st.by_topic, topic, lower, to, limit)
                    .await?
            }
            EventIndex::Cell(cell) => self.index_ids(&st.by_cell, cell, lower, to, limit).await?,
            EventIndex::Time => {
                // Walk the day partitions in order until the page is full.
                let mut ids = Vec::new();
                let mut day_start = lower.0;
                while ids.len() < limit && day_start < to {
                    let day = day_of(day_start);
                    ids.extend(
                        self.index_ids(&st.by_day, day, lower, to, limit - ids.len())
                            .await?,
                    );
                    let next =
                        DateTime::from_timestamp(i64::from(day + 1) * 86_400, 0).unwrap_or(to);
                    lower = (next, Uuid::nil(), false);
                    day_start = next.max(day_start + Duration::milliseconds(1));
                }
                ids
            }
        };
        let mut page = IndexPage {
            rows: ids.len(),
            last: ids.last().map(|&(t, id)| EventKey {
                at_ms: t.timestamp_millis(),
                id: EventId(id),
            }),
            ..IndexPage::default()
        };
        // Point reads, `POINT_READS` in flight at once, kept in index order.
        use futures_util::{StreamExt, TryStreamExt};
        let found: Vec<Option<Event>> = futures_util::stream::iter(ids)
            .map(|(_, id)| self.get_event(EventId(id)))
            .buffered(super::POINT_READS)
            .try_collect()
            .await?;
        page.events = found.into_iter().flatten().collect();
        Ok(page)
    }
}
