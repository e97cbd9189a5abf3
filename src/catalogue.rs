//! Searching the events catalogue: any combination of topic, time range and place.
//!
//! The most selective index answers (place, then topic, then time); the other filters are
//! checked exactly on each event, including the true great-circle distance. Pages follow
//! the catalogue's (start, id) order, and the cursor is the position of the last event
//! examined, so pages neither repeat nor skip events, however the filters thin them out.

use chrono::{DateTime, Utc};

use crate::domain::geo::Point;
use crate::domain::{Event, EventKey};
use crate::store::{EventIndex, SharedStore, StoreError};

/// Events read from an index per round trip.
const BATCH: usize = 200;
/// Most events examined for one page; past this the page ends early with a cursor.
const MAX_SCAN: usize = 5000;
/// Cells of a place search read at once (each reads its events a few at a time too).
const CELLS_AT_ONCE: usize = 4;

/// One search. `from..to` bounds the start time.
#[derive(Debug, Clone)]
pub struct Search {
    pub topic: Option<String>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub near: Option<(Point, f64)>,
    pub after: Option<EventKey>,
    pub limit: usize,
}

impl Search {
    fn matches(&self, event: &Event) -> bool {
        let topic_ok = self
            .topic
            .as_ref()
            .is_none_or(|t| event.topics.as_slice().contains(t));
        let place_ok = self
            .near
            .is_none_or(|(p, r)| event.location.point().distance_km(p) <= r);
        topic_ok && place_ok
    }
}

/// A page of results and the cursor for the next one (none once the range is exhausted).
pub struct Page {
    pub events: Vec<Event>,
    pub next: Option<EventKey>,
}

pub async fn search(store: &SharedStore, search: &Search) -> Result<Page, StoreError> {
    // Near a pole the cover would take too many cells: the topic or time index then
    // answers, and the exact distance check still filters.
    let cells = search.near.and_then(|(p, r)| p.covering_cells(r));
    let mut cursor = search.after;
    let (mut events, mut scanned) = (Vec::new(), 0);
    loop {
        let batch = match &cells {
            Some(cells) => cell_batch(store, cells, search, cursor).await?,
            None => {
                let index = search
                    .topic
                    .as_deref()
                    .map_or(EventIndex::Time, EventIndex::Topic);
                // Without a place the index answers the search exactly: read one page.
                let want = if search.near.is_some() {
                    BATCH
                } else {
                    search.limit.clamp(1, BATCH)
                };
                let page = store
                    .events_page(index, search.from, search.to, cursor, want)
                    .await?;
                Batch {
                    exhausted: page.rows < want,
                    read_until: page.last,
                    events: page.events,
                }
            }
        };
        for event in batch.events {
            scanned += 1;
            cursor = Some(event.key());
            if search.matches(&event) {
                events.push(event);
                if events.len() == search.limit {
                    return Ok(Page {
                        events,
                        next: cursor,
                    });
                }
            }
        }
        if batch.exhausted {
            return Ok(Page { events, next: None });
        }
        // Past index rows whose events are gone, too.
        cursor = batch.read_until.max(cursor);
        if scanned >= MAX_SCAN {
            return Ok(Page {
                events,
                next: cursor,
            });
        }
    }
}

/// Events from one round of index reads.
struct Batch {
    events: Vec<Event>,
    /// No index rows remain after this batch.
    exhausted: bool,
    /// The position up to which the index was read.
    read_until: Option<EventKey>,
}

/// The next events after `cursor` across several cells, merged in order. Complete up to
/// the last row read of any cell that filled its batch: such a cell may hold more.
async fn cell_batch(
    store: &SharedStore,
    cells: &[String],
    search: &Search,
    cursor: Option<EventKey>,
) -> Result<Batch, StoreError> {
    use futures_util::{StreamExt, TryStreamExt};
    // Made up front (a boxed future does nothing until polled), then polled a few at once.
    let reads: Vec<_> = cells
        .iter()
        .map(|cell| {
            let index = EventIndex::Cell(cell);
            store.events_page(index, search.from, search.to, cursor, BATCH)
        })
        .collect();
    let pages: Vec<_> = futures_util::stream::iter(reads)
        .buffered(CELLS_AT_ONCE)
        .try_collect()
        .await?;
    let mut merged = Vec::new();
    let mut complete_until: Option<EventKey> = None;
    for page in pages {
        if page.rows == BATCH {
            complete_until = complete_until.min(page.last).or(page.last);
        }
        merged.extend(page.events);
    }
    merged.sort_by_key(Event::key);
    merged.dedup_by_key(|e| e.id);
    if let Some(limit) = complete_until {
        merged.retain(|e| e.key() <= limit);
    }
    Ok(Batch {
        events: merged,
        exhausted: complete_until.is_none(),
        read_until: complete_until,
    })
}
