//! The events catalogue in the embedded store. An event and all its index rows are
//! written, moved or removed in one transaction.

use std::ops::Bound;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redb::{Database, ReadableDatabase, TableDefinition, WriteTransaction};

use super::{
    EVENTS, EVENTS_BY_DAY, EVENTS_BY_GEOHASH, EVENTS_BY_TOPIC, EmbeddedStore, decode, encode,
};
use crate::domain::event::day_of;
use crate::domain::{Event, EventId, EventKey};
use crate::store::{EventIndex, EventStore, IndexPage, StoreError};

/// Index rows keyed by a text partition (topic or geohash cell).
type TextIndex = TableDefinition<'static, (&'static str, i64, u128), ()>;

fn write_rows(tx: &WriteTransaction, event: &Event) -> Result<(), StoreError> {
    let (ms, id) = (event.starts_at.timestamp_millis(), event.id.0.as_u128());
    tx.open_table(EVENTS)?
        .insert(id, encode(event)?.as_slice())?;
    let mut topics = tx.open_table(EVENTS_BY_TOPIC)?;
    for topic in event.topics.as_slice() {
        topics.insert((topic.as_str(), ms, id), ())?;
    }
    tx.open_table(EVENTS_BY_DAY)?
        .insert((day_of(event.starts_at), ms, id), ())?;
    let mut cells = tx.open_table(EVENTS_BY_GEOHASH)?;
    for cell in event.cells() {
        cells.insert((cell.as_str(), ms, id), ())?;
    }
    Ok(())
}

fn remove_rows(tx: &WriteTransaction, event: &Event) -> Result<(), StoreError> {
    let (ms, id) = (event.starts_at.timestamp_millis(), event.id.0.as_u128());
    tx.open_table(EVENTS)?.remove(id)?;
    let mut topics = tx.open_table(EVENTS_BY_TOPIC)?;
    for topic in event.topics.as_slice() {
        topics.remove((topic.as_str(), ms, id))?;
    }
    tx.open_table(EVENTS_BY_DAY)?
        .remove((day_of(event.starts_at), ms, id))?;
    let mut cells = tx.open_table(EVENTS_BY_GEOHASH)?;
    for cell in event.cells() {
        cells.remove((cell.as_str(), ms, id))?;
    }
    Ok(())
}

/// The (ms, id) bounds of a page: after the cursor (or from `from`), before `to`.
fn bounds(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    after: Option<EventKey>,
) -> (Bound<(i64, u128)>, (i64, u128)) {
    let from = (from.timestamp_millis(), 0u128);
    let start = match after.map(|k| (k.at_ms, k.id.0.as_u128())) {
        Some(cursor) if cursor >= from => Bound::Excluded(cursor),
        _ => Bound::Included(from),
    };
    (start, (to.timestamp_millis(), 0))
}

fn with_partition<P: Copy>(p: P, b: Bound<(i64, u128)>) -> Bound<(P, i64, u128)> {
    match b {
        Bound::Included((ms, id)) => Bound::Included((p, ms, id)),
        Bound::Excluded((ms, id)) => Bound::Excluded((p, ms, id)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn text_ids(
    db: &redb::Database,
    table: TextIndex,
    key: &str,
    start: Bound<(i64, u128)>,
    end: (i64, u128),
    limit: usize,
) -> Result<Vec<(i64, u128)>, StoreError> {
    let table = db.begin_read()?.open_table(table)?;
    let range = (
        with_partition(key, start),
        Bound::Excluded((key, end.0, end.1)),
    );
    let mut ids = Vec::new();
    for row in table.range::<(&str, i64, u128)>(range)?.take(limit) {
        let (_, ms, id) = row?.0.value();
        ids.push((ms, id));
    }
    Ok(ids)
}

fn time_ids(
    db: &redb::Database,
    start: Bound<(i64, u128)>,
    end: (i64, u128),
    limit: usize,
) -> Result<Vec<(i64, u128)>, StoreError> {
    let table = db.begin_read()?.open_table(EVENTS_BY_DAY)?;
    // The day is a function of the start time, so (day, ms, id) orders like (ms, id).
    let day = |ms: i64| i32::try_from(ms.div_euclid(86_400_000)).unwrap_or(i32::MAX);
    let start = match start {
        Bound::Included((ms, id)) => Bound::Included((day(ms), ms, id)),
        Bound::Excluded((ms, id)) => Bound::Excluded((day(ms), ms, id)),
        Bound::Unbounded => Bound::Unbounded,
    };
    let range = (start, Bound::Excluded((day(end.0), end.0, end.1)));
    let mut ids = Vec::new();
    for row in table.range::<(i32, i64, u128)>(range)?.take(limit) {
        let (_, ms, id) = row?.0.value();
        ids.push((ms, id));
    }
    Ok(ids)
}

/// Pages up to this many events (the most a client may ask for) are read on the calling
/// thread (`read_now`).
const INLINE_PAGE: usize = 100;

#[async_trait]
impl EventStore for EmbeddedStore {
    async fn insert_event(&self, event: &Event) -> Result<(), StoreError> {
        let event = event.clone();
        self.write(move |tx| {
            write_rows(tx, &event)?;
            Ok(())
        })
        .await
    }

    /// One transaction for the whole batch.
    async fn insert_events(&self, events: &[Event]) -> Result<(), StoreError> {
        let events = events.to_vec();
        self.write(move |tx| events.iter().try_for_each(|e| write_rows(tx, e)))
            .await
    }

    async fn get_event(&self, id: EventId) -> Result<Option<Event>, StoreError> {
        self.read_now(|db| {
            let table = db.begin_read()?.open_table(EVENTS)?;
            let row = table.get(id.0.as_u128())?;
            row.map(|v| decode(v.value())).transpose()
        })
    }

    async fn update_event(&self, before: &Event, after: &Event) -> Result<(), StoreError> {
        let (before, after) = (before.clone(), after.clone());
        self.write(move |tx| {
            remove_rows(tx, &before)?;
            write_rows(tx, &after)?;
            Ok(())
        })
        .await
    }

    async fn delete_event(&self, event: &Event) -> Result<(), StoreError> {
        let event = event.clone();
        self.write(move |tx| {
            remove_rows(tx, &event)?;
            Ok(())
        })
        .await
    }

    async fn events_page(
        &self,
        index: EventIndex<'_>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<EventKey>,
        limit: usize,
    ) -> Result<IndexPage, StoreError> {
        let (start, end) = bounds(from, to, after);
        let partition = match index {
            EventIndex::Time => None,
            EventIndex::Topic(t) => Some((EVENTS_BY_TOPIC, t.to_owned())),
            EventIndex::Cell(c) => Some((EVENTS_BY_GEOHASH, c.to_owned())),
        };
        let read = move |db: &Database| {
            let ids = match &partition {
                None => time_ids(db, start, end, limit)?,
                Some((table, key)) => text_ids(db, *table, key, start, end, limit)?,
            };
            let events = db.begin_read()?.open_table(EVENTS)?;
            let mut page = IndexPage {
                rows: ids.len(),
                last: ids.last().map(|&(ms, id)| EventKey {
                    at_ms: ms,
                    id: EventId(uuid::Uuid::from_u128(id)),
                }),
                ..IndexPage::default()
            };
            for (_, id) in ids {
                if let Some(row) = events.get(id)? {
                    page.events.push(decode(row.value())?);
                }
            }
            Ok(page)
        };
        // A page a client asked for is read at once; the catalogue's larger batches (a
        // search that filters by place) go to the blocking pool, so a long search never
        // holds up the other requests on this thread.
        if limit <= INLINE_PAGE {
            self.read_now(read)
        } else {
            self.with_db(read).await
        }
    }
}
