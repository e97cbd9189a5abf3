//! The push feed in Scylla: `push_feed`, one partition per 10-second slot, rows in id
//! (time) order, expired by the table's TTL (see `schema/006_push_feed.cql`).

use async_trait::async_trait;
use chrono::Utc;
use futures_util::{StreamExt, TryStreamExt};
use scylla::client::session::Session as CqlSession;
use scylla::statement::prepared::PreparedStatement;
use uuid::Uuid;

use super::{ScyllaStore, err, prepare};
use crate::domain::FeedEntry;
use crate::domain::{v7_floor, v7_time};
use crate::store::{FEED_TTL, FeedStore, StoreError};

/// Seconds per partition of `push_feed`.
const SLOT_SECS: i64 = 10;

pub(super) struct Statements {
    append: PreparedStatement,
    read: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(s: &CqlSession, ks: &str) -> Result<Self, StoreError> {
        Ok(Self {
            append: prepare(s, append_cql(ks)).await?,
            read: prepare(s, read_cql(ks)).await?,
        })
    }
}

fn append_cql(ks: &str) -> String {
    format!("INSERT INTO {ks}.push_feed (slot, id, origin, notice) VALUES (?, ?, ?, ?)")
}

fn read_cql(ks: &str) -> String {
    format!("SELECT id, origin, notice FROM {ks}.push_feed WHERE slot = ? AND id > ? LIMIT ?")
}

/// The slot an id's time falls in.
fn slot_of(id: Uuid) -> i64 {
    v7_time(id).timestamp().div_euclid(SLOT_SECS)
}

/// The slots to read for entries after `after`, oldest first: from `after`'s (or the
/// oldest unexpired one) to the one after now, for a writer whose clock runs ahead.
fn slots(after: Uuid, now: chrono::DateTime<Utc>) -> std::ops::RangeInclusive<i64> {
    let oldest = v7_floor(now - FEED_TTL);
    slot_of(after.max(oldest))..=now.timestamp().div_euclid(SLOT_SECS) + 1
}

#[async_trait]
impl FeedStore for ScyllaStore {
    async fn append_feed(&self, entries: &[FeedEntry]) -> Result<(), StoreError> {
        let rows: Vec<(i64, Uuid, String, String)> = entries
            .iter()
            .map(|e| {
                let notice = serde_json::to_string(&e.notice)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok((slot_of(e.id), e.id, e.origin.clone(), notice))
            })
            .collect::<Result<_, StoreError>>()?;
        futures_util::stream::iter(rows)
            .map(|row| self.run(&self.feed.append, row))
            .buffer_unordered(super::POINT_READS)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }

    async fn read_feed(&self, after: Uuid, limit: usize) -> Result<Vec<FeedEntry>, StoreError> {
        let mut found = Vec::new();
        for slot in slots(after, Utc::now()) {
            let want = limit.saturating_sub(found.len());
            if want == 0 {
                break;
            }
            let rows = self
                .run(
                    &self.feed.read,
                    (slot, after, i32::try_from(want).unwrap_or(i32::MAX)),
                )
                .await?
                .into_rows_result()
                .map_err(err)?;
            for row in rows.rows::<(Uuid, String, String)>().map_err(err)? {
                let (id, origin, notice) = row.map_err(err)?;
                match serde_json::from_str(&notice) {
                    Ok(notice) => found.push(FeedEntry { id, origin, notice }),
                    // One unreadable row (a newer node's notice kind, say) costs only itself.
                    Err(e) => {
                        tracing::warn!(%id, error = %e, "skipped an unreadable push feed row")
                    }
                }
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_walks_from_the_watermarks_slot_to_the_one_after_now() {
        let now = Utc::now();
        let after = v7_floor(now - chrono::Duration::seconds(25));
        let slots = slots(after, now);
        let here = now.timestamp().div_euclid(SLOT_SECS);
        assert_eq!(*slots.end(), here + 1);
        assert!((here - 3..=here - 2).contains(slots.start()), "{slots:?}");
    }

    #[test]
    fn a_read_never_reaches_back_past_the_feeds_lifetime() {
        let now = Utc::now();
        let slots = slots(Uuid::nil(), now);
        let span = i64::try_from(FEED_TTL.as_secs()).unwrap() / SLOT_SECS;
        assert!(slots.end() - slots.start() <= span + 2, "{slots:?}");
    }

    #[test]
    fn statements_bind_every_value() {
        assert_eq!(append_cql("ks").matches('?').count(), 4);
        assert!(read_cql("ks").contains("WHERE slot = ? AND id > ? LIMIT ?"));
    }
}
