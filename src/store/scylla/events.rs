//! The events catalogue in Scylla. Index partitions are bucketed by time (the day, or the
//! month, of the start) and ordered by (starts_at, id); pages are read with tuple slices,
//! so a cursor resumes exactly where the last page ended. A page walks the buckets of its
//! window in order, reading more of them at once each round it is not yet full.

use async_trait::async_trait;
use chrono::{DateTime, Datelike, Utc};
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

/// Buckets read at once at most, as a page walks its window.
const MAX_BUCKETS_AT_ONCE: i32 = 32;

/// How an index is bucketed in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Span {
    Day,
    Month,
}

impl Span {
    /// The bucket of `t`: days, or months, since the epoch.
    fn of(self, t: DateTime<Utc>) -> i32 {
        match self {
            Span::Day => day_of(t),
            Span::Month => (t.year() - 1970) * 12 + i32::try_from(t.month0()).unwrap_or(0),
        }
    }

    /// When bucket `b` starts.
    fn start(self, b: i32) -> DateTime<Utc> {
        let start = match self {
            Span::Day => DateTime::from_timestamp(i64::from(b) * 86_400, 0),
            Span::Month => chrono::NaiveDate::from_ymd_opt(
                1970 + b.div_euclid(12),
                u32::try_from(b.rem_euclid(12)).unwrap_or(0) + 1,
                1,
            )
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc()),
        };
        start.unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// A partition of an index: the day, or a topic or cell and a month.
#[derive(Debug, Clone, Copy)]
enum Partition<'a> {
    Day(i32),
    Keyed(&'a str, i32),
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
            "SELECT starts_at, id FROM {ks}.{table} WHERE {key} AND (starts_at, id) {op} (?, ?) AND (starts_at, id) < (?, ?) LIMIT ?"
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
                format!(
                    "INSERT INTO {ks}.events_by_topic_month (topic, month, starts_at, id) VALUES (?, ?, ?, ?)"
                ),
            )
            .await?,
            remove_topic: prepare(
                s,
                format!(
                    "DELETE FROM {ks}.events_by_topic_month WHERE topic = ? AND month = ? AND starts_at = ? AND id = ?"
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
                    "INSERT INTO {ks}.events_by_geohash_month (cell, month, starts_at, id) VALUES (?, ?, ?, ?)"
                ),
            )
            .await?,
            remove_cell: prepare(
                s,
                format!(
                    "DELETE FROM {ks}.events_by_geohash_month WHERE cell = ? AND month = ? AND starts_at = ? AND id = ?"
                ),
            )
            .await?,
            by_topic: reads(s, ks, "events_by_topic_month", "topic = ? AND month = ?").await?,
            by_day: reads(s, ks, "events_by_day", "day = ?").await?,
            by_cell: reads(s, ks, "events_by_geohash_month", "cell = ? AND month = ?").await?,
        })
    }
}

/// One index row of an event.
#[derive(Debug, Clone, PartialEq)]
enum IndexRow {
    Topic(String, i32, DateTime<Utc>, Uuid),
    Day(i32, DateTime<Utc>, Uuid),
    Cell(String, i32, DateTime<Utc>, Uuid),
}

fn index_rows(event: &Event) -> Vec<IndexRow> {
    // To the millisecond, as the table keeps it: a start that differs only below a
    // millisecond is the same row, and must not be removed and re-added as another.
    let t = DateTime::from_timestamp_millis(event.starts_at.timestamp_millis())
        .unwrap_or(event.starts_at);
    let id = event.id.0;
    let month = Span::Month.of(t);
    let topics = event
        .topics
        .as_slice()
        .iter()
        .map(|topic| IndexRow::Topic(topic.clone(), month, t, id));
    let cells = event
        .cells()
        .into_iter()
        .map(|cell| IndexRow::Cell(cell, month, t, id));
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
            Self::Topic(key, month, t, id) | Self::Cell(key, month, t, id) => {
                Box::new((key, month, t, id))
            }
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

    /// Up to `limit` rows of one partition from `lower` (a position, exclusive or not)
    /// to `to`.
    async fn index_ids(
        &self,
        reads: &IndexReads,
        partition: Partition<'_>,
        lower: (DateTime<Utc>, Uuid, bool),
        to: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(DateTime<Utc>, Uuid)>, StoreError> {
        let (start, start_id, exclusive) = lower;
        let statement = if exclusive { &reads.after } else { &reads.from };
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let bounds = (start, start_id, to, Uuid::nil(), limit);
        let result = match partition {
            Partition::Day(day) => {
                let (a, b, c, d, e) = bounds;
                self.run(statement, (day, a, b, c, d, e)).await?
            }
            Partition::Keyed(key, month) => {
                let (a, b, c, d, e) = bounds;
                self.run(statement, (key, month, a, b, c, d, e)).await?
            }
        };
        let rows = result.into_rows_result().map_err(err)?;
        rows.rows::<(DateTime<Utc>, Uuid)>()
            .map_err(err)?
            .map(|r| r.map_err(err))
            .collect()
    }

    /// Up to `limit` rows of an index from `lower` to `to`, walking its buckets in order:
    /// one at first, then twice as many at once each round the page is not full (up to
    /// [`MAX_BUCKETS_AT_ONCE`]), so a sparse window costs a few rounds, not one per bucket.
    async fn walk(
        &self,
        reads: &IndexReads,
        span: Span,
        key: Option<&str>,
        lower: (DateTime<Utc>, Uuid, bool),
        to: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(DateTime<Utc>, Uuid)>, StoreError> {
        let mut ids = Vec::new();
        if lower.0 >= to {
            return Ok(ids);
        }
        let (first, last) = (
            span.of(lower.0),
            span.of(to - chrono::TimeDelta::milliseconds(1)),
        );
        let (mut next, mut width) = (first, 1);
        while ids.len() < limit && next <= last {
            let end = next.saturating_add(width - 1).min(last);
            let want = limit - ids.len();
            let reads = (next..=end).map(|b| {
                let partition = match key {
                    Some(key) => Partition::Keyed(key, b),
                    None => Partition::Day(b),
                };
                let from = if b == first {
                    lower
                } else {
                    (span.start(b), Uuid::nil(), false)
                };
                self.index_ids(reads, partition, from, to, want)
            });
            // Buckets in order, each in order: the first `limit` rows are the page.
            for rows in futures_util::future::try_join_all(reads).await? {
                ids.extend(rows.into_iter().take(limit - ids.len()));
            }
            next = end.saturating_add(1);
            width = (width * 2).min(MAX_BUCKETS_AT_ONCE);
        }
        Ok(ids)
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
                self.walk(&st.by_topic, Span::Month, Some(topic), lower, to, limit)
                    .await?
            }
            EventIndex::Cell(cell) => {
                self.walk(&st.by_cell, Span::Month, Some(cell), lower, to, limit)
                    .await?
            }
            EventIndex::Time => {
                self.walk(&st.by_day, Span::Day, None, lower, to, limit)
                    .await?
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_start_where_their_first_instant_falls() {
        for t in [
            "1970-01-01T00:00:00Z",
            "2026-12-01T00:00:00Z",
            "2026-11-30T23:59:59.999Z",
            "2028-02-29T12:00:00Z",
            "1969-12-31T23:59:59Z",
        ] {
            let t = DateTime::parse_from_rfc3339(t).unwrap().to_utc();
            for span in [Span::Day, Span::Month] {
                let b = span.of(t);
                assert!(span.start(b) <= t, "{span:?} {t}");
                assert!(t < span.start(b + 1), "{span:?} {t}");
                assert_eq!(span.of(span.start(b)), b);
            }
        }
        let december = DateTime::parse_from_rfc3339("2026-12-15T00:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(Span::Month.of(december), 56 * 12 + 11);
    }
}
