//! Reminders, their due index, bucket leases and the mail queue in Scylla.
//!
//! The embedded store changes a reminder and its rows in one transaction; Scylla has no
//! transactions across partitions, so here each change is a sequence of writes, ordered
//! so that stopping part-way (a crash, a timeout) leaves rows the readers tolerate:
//!
//! - A `reminders` row changes only through lightweight transactions: inserted `IF NOT
//!   EXISTS`, updated `IF` it is still as read, deleted `IF` it is still as read. State
//!   changes are therefore compare-and-set, and plain writes never race Paxos ones there.
//! - Index rows (`reminders_by_user`, `reminders_due`, `due_buckets`) are written before
//!   the reminder changes and removed after it changed. The worst a crash leaves is a
//!   stale index row: `reminders_of` skips rows their reminder disagrees with, and the
//!   scheduler drops due rows whose reminder moved or is no longer scheduled.
//! - A queued mail is removed last, after its reminder's state changed, so a crash leaves
//!   the job queued; the mailer finds it again and cancels it when its reminder is no
//!   longer `sending`.
//!
//! The one window that loses something is in firing (`schedule.rs`): see there.
//!
//! Here: reminders and their per-user index. `schedule` holds the due index, the leases
//! and firing; `mail_queue` the mail queue and dead letters; `statements` the CQL.

mod mail_queue;
mod schedule;
mod statements;

pub(super) use schedule::DueFloors;
pub(super) use statements::Statements;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use futures_util::TryStreamExt;
use scylla::deserialize::row::DeserializeRow;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::{ScyllaStore, err};
use crate::domain::{
    Bucket, Due, Email, EventId, Reminder, ReminderId, ReminderKey, ReminderState, UserId,
};
use crate::store::{ReminderStore, StoreError};

type ReminderRow = (
    Uuid,
    Uuid,
    Uuid,
    DateTime<Utc>,
    String,
    String,
    Option<String>,
    DateTime<Utc>,
    DateTime<Utc>,
);

const COLUMNS: &str =
    "id, user_id, event_id, remind_at, email, state, detail, created_at, updated_at";

/// Rounds of `delete_reminder` against a reminder that keeps changing.
const DELETE_ATTEMPTS: usize = 3;

/// Scylla keeps timestamps in milliseconds.
fn ms(t: DateTime<Utc>) -> CqlTimestamp {
    CqlTimestamp(t.timestamp_millis())
}

fn limit(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn shard(bucket: Bucket) -> Result<i16, StoreError> {
    i16::try_from(bucket.shard).map_err(err)
}

/// The primary key of a `reminders_due` row.
fn due_key(due: &Due) -> Result<(i64, i16, CqlTimestamp, Uuid), StoreError> {
    Ok((
        due.bucket.minute,
        shard(due.bucket)?,
        CqlTimestamp(due.at_ms),
        due.reminder.0,
    ))
}

fn encode<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_row(row: ReminderRow) -> Result<Reminder, StoreError> {
    let (id, user_id, event_id, remind_at, email, state, detail, created_at, updated_at) = row;
    Ok(Reminder {
        id: ReminderId(id),
        user_id: UserId(user_id),
        event_id: EventId(event_id),
        remind_at,
        email: Email::parse(&email).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        state: ReminderState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown reminder state {state:?}")))?,
        detail,
        created_at,
        updated_at,
    })
}

/// A reminder as Scylla gives it back: its times cut to milliseconds.
fn as_stored(r: &Reminder) -> Reminder {
    let cut = |t: DateTime<Utc>| {
        Utc.timestamp_millis_opt(t.timestamp_millis())
            .single()
            .unwrap_or(t)
    };
    Reminder {
        remind_at: cut(r.remind_at),
        created_at: cut(r.created_at),
        updated_at: cut(r.updated_at),
        ..r.clone()
    }
}

/// One index row of a reminder.
#[derive(Debug, Clone, Copy, PartialEq)]
enum IndexRow {
    ByUser {
        user: UserId,
        at_ms: i64,
        id: ReminderId,
    },
    Due(Due),
    /// Never removed with a reminder (the bucket is shared); `forget_bucket` drops it.
    Bucket(Bucket),
}

/// The index rows a reminder has: its per-user row and, while scheduled, its due row.
fn index_rows(r: &Reminder) -> Vec<IndexRow> {
    let mut rows = vec![IndexRow::ByUser {
        user: r.user_id,
        at_ms: r.remind_at.timestamp_millis(),
        id: r.id,
    }];
    if r.state == ReminderState::Scheduled {
        let due = r.due();
        rows.push(IndexRow::Due(due));
        rows.push(IndexRow::Bucket(due.bucket));
    }
    rows
}

impl IndexRow {
    fn add<'a>(&self, st: &'a Statements) -> &'a PreparedStatement {
        match self {
            Self::ByUser { .. } => &st.add_by_user,
            Self::Due(_) => &st.add_due,
            Self::Bucket(_) => &st.add_bucket,
        }
    }

    fn remove<'a>(&self, st: &'a Statements) -> Option<&'a PreparedStatement> {
        match self {
            Self::ByUser { .. } => Some(&st.remove_by_user),
            Self::Due(_) => Some(&st.remove_due),
            Self::Bucket(_) => None,
        }
    }

    /// The row's primary key, which is all of it.
    fn values(&self) -> Result<Box<dyn SerializeRow + Send + Sync>, StoreError> {
        Ok(match *self {
            Self::ByUser { user, at_ms, id } => Box::new((user.0, CqlTimestamp(at_ms), id.0)),
            Self::Due(due) => Box::new(due_key(&due)?),
            Self::Bucket(bucket) => Box::new((shard(bucket)?, bucket.minute)),
        })
    }
}

impl ScyllaStore {
    /// In one logged batch: removes the `remove` rows that `add` does not have (never a
    /// bucket row), and writes every `add` row. A row in both is only written, never
    /// deleted and rewritten (a tombstone with the same timestamp would hide the rewrite).
    async fn index_batch(&self, add: &[IndexRow], remove: &[IndexRow]) -> Result<(), StoreError> {
        let st = &self.reminders;
        let mut batch = Batch::new(BatchType::Logged);
        let mut values: Vec<Box<dyn SerializeRow + Send + Sync>> = Vec::new();
        for row in remove.iter().filter(|row| !add.contains(row)) {
            if let Some(statement) = row.remove(st) {
                batch.append_statement(statement.clone());
                values.push(row.values()?);
            }
        }
        for row in add {
            batch.append_statement(row.add(st).clone());
            values.push(row.values()?);
        }
        if values.is_empty() {
            return Ok(());
        }
        self.session.batch(&batch, values).await.map_err(err)?;
        Ok(())
    }

    /// Every row of a query, read page by page (for partitions that can grow large).
    async fn select_all<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    {
        self.session
            .execute_iter(statement.clone(), values)
            .await
            .map_err(err)?
            .rows_stream::<R>()
            .map_err(err)?
            .map_err(err)
            .try_collect()
            .await
    }
}

#[async_trait]
impl ReminderStore for ScyllaStore {
    /// Index rows first, then the reminder (`IF NOT EXISTS`). An id already taken is
    /// fine when it holds this very reminder (a retried insert), [`StoreError::Changed`]
    /// otherwise.
    async fn insert_reminder(&self, reminder: &Reminder) -> Result<(), StoreError> {
        self.index_batch(&index_rows(reminder), &[]).await?;
        let r = reminder;
        let row = (
            r.id.0,
            r.user_id.0,
            r.event_id.0,
            r.remind_at,
            r.email.as_str(),
            r.state.as_str(),
            r.detail.as_deref(),
            r.created_at,
            r.updated_at,
        );
        if self.lwt(&self.reminders.insert, row).await? {
            return Ok(());
        }
        match self.get_reminder(r.id).await? {
            Some(stored) if stored == as_stored(r) => Ok(()),
            _ => Err(StoreError::Changed),
        }
    }

    async fn get_reminder(&self, id: ReminderId) -> Result<Option<Reminder>, StoreError> {
        let rows = self
            .run(&self.reminders.get, (id.0,))
            .await?
            .into_rows_result()
            .map_err(err)?;
        rows.maybe_first_row::<ReminderRow>()
            .map_err(err)?
            .map(from_row)
            .transpose()
    }

    /// Reads index rows after the cursor and their reminders, skipping rows a reminder
    /// disagrees with (gone, moved: left by a crash or a lost race), until the page is
    /// full or the index ends.
    async fn reminders_of(
        &self,
        user: UserId,
        after: Option<ReminderKey>,
        n: usize,
    ) -> Result<Vec<Reminder>, StoreError> {
        let st = &self.reminders;
        let mut page = Vec::new();
        let mut cursor = after.map(|k| (CqlTimestamp(k.at_ms), k.id.0));
        while page.len() < n {
            let want = n - page.len();
            let result = match cursor {
                Some((at, id)) => {
                    self.run(&st.by_user_after, (user.0, at, id, limit(want)))
                        .await?
                }
                None => self.run(&st.by_user, (user.0, limit(want))).await?,
            };
            let rows: Vec<(CqlTimestamp, Uuid)> = result
                .into_rows_result()
                .map_err(err)?
                .rows::<(CqlTimestamp, Uuid)>()
                .map_err(err)?
                .map(|r| r.map_err(err))
                .collect::<Result<_, _>>()?;
            let read = rows.len();
            for (at, id) in rows {
                cursor = Some((at, id));
                match self.get_reminder(ReminderId(id)).await? {
                    Some(r) if r.user_id == user && r.remind_at.timestamp_millis() == at.0 => {
                        page.push(r);
                    }
                    _ => {}
                }
            }
            if read < want {
                break;
            }
        }
        Ok(page)
    }

    /// Writes the rows `after` adds, then the reminder if it is still `before` (an LWT on
    /// state, remind_at, email and updated_at), then removes the rows `after` dropped. If
    /// the LWT does not apply, the rows written for `after` are taken back, except those
    /// the reminder as it is now also has.
    async fn update_reminder(&self, before: &Reminder, after: &Reminder) -> Result<(), StoreError> {
        let (old, new) = (index_rows(before), index_rows(after));
        let added: Vec<IndexRow> = new.iter().filter(|r| !old.contains(r)).copied().collect();
        self.index_batch(&added, &[]).await?;
        let values = (
            after.user_id.0,
            after.event_id.0,
            after.remind_at,
            after.email.as_str(),
            after.state.as_str(),
            after.detail.as_deref(),
            after.created_at,
            after.updated_at,
            before.id.0,
            before.state.as_str(),
            before.remind_at,
            before.email.as_str(),
            before.updated_at,
        );
        if !self.lwt(&self.reminders.update, values).await? {
            let now = self.get_reminder(before.id).await?;
            let keep = now.as_ref().map(index_rows).unwrap_or_default();
            let stray: Vec<IndexRow> = added.into_iter().filter(|r| !keep.contains(r)).collect();
            self.index_batch(&[], &stray).await?;
            return Err(StoreError::Changed);
        }
        // All of `after`'s rows again, not just the added ones: a concurrent writer taking
        // back its own rows may have removed one of them meanwhile.
        self.index_batch(&new, &old).await
    }

    /// Deletes the reminder as last read (an LWT on its state and remind_at, which place
    /// its index rows), then those rows. Should it keep changing, it is deleted whatever
    /// it is, with the rows of the last read.
    async fn delete_reminder(&self, reminder: &Reminder) -> Result<(), StoreError> {
        let st = &self.reminders;
        for attempt in 1..=DELETE_ATTEMPTS {
            let Some(stored) = self.get_reminder(reminder.id).await? else {
                return Ok(());
            };
            let deleted = if attempt < DELETE_ATTEMPTS {
                let condition = (stored.id.0, stored.state.as_str(), ms(stored.remind_at));
                self.lwt(&st.delete, condition).await?
            } else {
                self.lwt(&st.delete_any, (stored.id.0,)).await?;
                true
            };
            if deleted {
                return self.index_batch(&[], &index_rows(&stored)).await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn reminder(state: ReminderState) -> Reminder {
        let at = Utc.timestamp_millis_opt(1_900_000_000_123).unwrap();
        Reminder {
            id: ReminderId::new(),
            user_id: UserId::new(),
            event_id: EventId::new(),
            remind_at: at,
            email: Email::parse("ann@example.com").unwrap(),
            state,
            detail: None,
            created_at: at,
            updated_at: at,
        }
    }

    #[test]
    fn only_scheduled_reminders_have_due_rows() {
        let r = reminder(ReminderState::Scheduled);
        let rows = index_rows(&r);
        assert_eq!(rows.len(), 3);
        assert!(rows.contains(&IndexRow::Due(r.due())));
        assert!(rows.contains(&IndexRow::Bucket(r.due().bucket)));
        for state in [
            ReminderState::Sending,
            ReminderState::Sent,
            ReminderState::Failed,
        ] {
            let rows = index_rows(&Reminder { state, ..r.clone() });
            assert!(matches!(rows.as_slice(), [IndexRow::ByUser { .. }]));
        }
    }

    #[test]
    fn a_move_keeps_the_rows_it_shares() {
        let before = reminder(ReminderState::Scheduled);
        let same_minute = Reminder {
            remind_at: before.remind_at + Duration::seconds(1),
            ..before.clone()
        };
        let (old, new) = (index_rows(&before), index_rows(&same_minute));
        let added: Vec<_> = new.iter().filter(|r| !old.contains(r)).collect();
        // New per-user and due rows; the bucket row is shared.
        assert_eq!(added.len(), 2);
        assert!(added.iter().all(|r| !matches!(r, IndexRow::Bucket(_))));
    }

    #[test]
    fn stored_form_cuts_to_milliseconds() {
        let mut r = reminder(ReminderState::Scheduled);
        r.updated_at += Duration::nanoseconds(456_789);
        let s = as_stored(&r);
        assert_eq!(
            s.updated_at.timestamp_millis(),
            r.updated_at.timestamp_millis()
        );
        assert_eq!(s.updated_at.timestamp_subsec_nanos() % 1_000_000, 0);
        assert_eq!(as_stored(&s), s);
    }
}
