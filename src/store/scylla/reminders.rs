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
//! The one window that loses something is in [`ScyllaStore::fire`]: see there.

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use futures_util::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::deserialize::row::DeserializeRow;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, CqlValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::{Cas, ScyllaStore, err, prepare};
use crate::domain::reminder::DUE_SHARDS;
use crate::domain::{
    Bucket, DeadLetter, Due, Email, EventId, MailId, MailJob, MailKind, Reminder, ReminderId,
    ReminderKey, ReminderState, UserId,
};
use crate::store::{Claim, MailStore, ReminderStore, StoreError};

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

/// Reminders `fire_reminders` works on at once (each is an LWT and a batch).
const FIRE_CONCURRENCY: usize = 16;
/// Tries at queueing the mail of a reminder that fired.
const QUEUE_ATTEMPTS: usize = 3;
/// Rounds of `claim_bucket` against a lease row that keeps changing.
const CLAIM_ATTEMPTS: usize = 3;
/// Rounds of `delete_reminder` against a reminder that keeps changing.
const DELETE_ATTEMPTS: usize = 3;

pub(super) struct Statements {
    insert: PreparedStatement,
    get: PreparedStatement,
    update: PreparedStatement,
    delete: PreparedStatement,
    delete_any: PreparedStatement,
    fire: PreparedStatement,
    fail: PreparedStatement,
    sent: PreparedStatement,
    undeliverable: PreparedStatement,
    add_by_user: PreparedStatement,
    remove_by_user: PreparedStatement,
    by_user: PreparedStatement,
    by_user_after: PreparedStatement,
    add_due: PreparedStatement,
    remove_due: PreparedStatement,
    due_in: PreparedStatement,
    due_any: PreparedStatement,
    add_bucket: PreparedStatement,
    buckets: PreparedStatement,
    forget_bucket: PreparedStatement,
    take_lease: PreparedStatement,
    swap_lease: PreparedStatement,
    drop_lease: PreparedStatement,
    put_job: PreparedStatement,
    jobs: PreparedStatement,
    remove_job: PreparedStatement,
    put_dead: PreparedStatement,
    dead: PreparedStatement,
    dead_after: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(s: &Session, ks: &str) -> Result<Self, StoreError> {
        let scheduled = ReminderState::Scheduled.as_str();
        let sending = ReminderState::Sending.as_str();
        let sent = ReminderState::Sent.as_str();
        let failed = ReminderState::Failed.as_str();
        Ok(Self {
            insert: prepare(
                s,
                format!(
                    "INSERT INTO {ks}.reminders ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS"
                ),
            )
            .await?,
            get: prepare(s, format!("SELECT {COLUMNS} FROM {ks}.reminders WHERE id = ?")).await?,
            // Conditions cover what places the index rows (state, remind_at) and what a
            // writer changes (email, and updated_at, which every change sets).
            update: prepare(
                s,
                format!(
                    "UPDATE {ks}.reminders SET user_id = ?, event_id = ?, remind_at = ?, email = ?, state = ?, detail = ?, created_at = ?, updated_at = ? WHERE id = ? IF state = ? AND remind_at = ? AND email = ? AND updated_at = ?"
                ),
            )
            .await?,
            delete: prepare(
                s,
                format!("DELETE FROM {ks}.reminders WHERE id = ? IF state = ? AND remind_at = ?"),
            )
            .await?,
            delete_any: prepare(s, format!("DELETE FROM {ks}.reminders WHERE id = ? IF EXISTS"))
                .await?,
            fire: prepare(
                s,
                format!(
                    "UPDATE {ks}.reminders SET state = '{sending}', updated_at = ? WHERE id = ? IF state = '{scheduled}' AND remind_at = ? AND email = ?"
                ),
            )
            .await?,
            fail: prepare(
                s,
                format!(
                    "UPDATE {ks}.reminders SET state = '{failed}', detail = ?, updated_at = ? WHERE id = ? IF state = '{scheduled}' AND remind_at = ?"
                ),
            )
            .await?,
            sent: prepare(
                s,
                format!(
                    "UPDATE {ks}.reminders SET state = '{sent}', updated_at = ? WHERE id = ? IF state = '{sending}'"
                ),
            )
            .await?,
            undeliverable: prepare(
                s,
                format!(
                    "UPDATE {ks}.reminders SET state = '{failed}', detail = ?, updated_at = ? WHERE id = ? IF state = '{sending}'"
                ),
            )
            .await?,
            add_by_user: prepare(
                s,
                format!(
                    "INSERT INTO {ks}.reminders_by_user (user_id, remind_at, id) VALUES (?, ?, ?)"
                ),
            )
            .await?,
            remove_by_user: prepare(
                s,
                format!(
                    "DELETE FROM {ks}.reminders_by_user WHERE user_id = ? AND remind_at = ? AND id = ?"
                ),
            )
            .await?,
            by_user: prepare(
                s,
                format!(
                    "SELECT remind_at, id FROM {ks}.reminders_by_user WHERE user_id = ? LIMIT ?"
                ),
            )
            .await?,
            by_user_after: prepare(
                s,
                format!(
                    "SELECT remind_at, id FROM {ks}.reminders_by_user WHERE user_id = ? AND (remind_at, id) > (?, ?) LIMIT ?"
                ),
            )
            .await?,
            add_due: prepare(
                s,
                format!(
                    "INSERT INTO {ks}.reminders_due (minute, shard, remind_at, id) VALUES (?, ?, ?, ?)"
                ),
            )
            .await?,
            remove_due: prepare(
                s,
                format!(
                    "DELETE FROM {ks}.reminders_due WHERE minute = ? AND shard = ? AND remind_at = ? AND id = ?"
                ),
            )
            .await?,
            due_in: prepare(
                s,
                format!(
                    "SELECT remind_at, id FROM {ks}.reminders_due WHERE minute = ? AND shard = ?"
                ),
            )
            .await?,
            due_any: prepare(
                s,
                format!(
                    "SELECT id FROM {ks}.reminders_due WHERE minute = ? AND shard = ? LIMIT 1"
                ),
            )
            .await?,
            add_bucket: prepare(
                s,
                format!("INSERT INTO {ks}.due_buckets (shard, minute) VALUES (?, ?)"),
            )
            .await?,
            buckets: prepare(
                s,
                format!("SELECT minute FROM {ks}.due_buckets WHERE shard = ? AND minute <= ?"),
            )
            .await?,
            forget_bucket: prepare(
                s,
                format!("DELETE FROM {ks}.due_buckets WHERE shard = ? AND minute = ?"),
            )
            .await?,
            take_lease: prepare(
                s,
                format!(
                    "INSERT INTO {ks}.bucket_leases (minute, shard, node, until) VALUES (?, ?, ?, ?) IF NOT EXISTS"
                ),
            )
            .await?,
            swap_lease: prepare(
                s,
                format!(
                    "UPDATE {ks}.bucket_leases SET node = ?, until = ? WHERE minute = ? AND shard = ? IF node = ? AND until = ?"
                ),
            )
            .await?,
            drop_lease: prepare(
                s,
                format!("DELETE FROM {ks}.bucket_leases WHERE minute = ? AND shard = ? IF EXISTS"),
            )
            .await?,
            put_job: prepare(
                s,
                format!("INSERT INTO {ks}.mail_queue (node, id, job) VALUES (?, ?, ?)"),
            )
            .await?,
            jobs: prepare(s, format!("SELECT job FROM {ks}.mail_queue WHERE node = ?")).await?,
            remove_job: prepare(
                s,
                format!("DELETE FROM {ks}.mail_queue WHERE node = ? AND id = ?"),
            )
            .await?,
            put_dead: prepare(
                s,
                format!("INSERT INTO {ks}.mail_dead (shelf, id, letter) VALUES (0, ?, ?)"),
            )
            .await?,
            dead: prepare(
                s,
                format!("SELECT letter FROM {ks}.mail_dead WHERE shelf = 0 LIMIT ?"),
            )
            .await?,
            dead_after: prepare(
                s,
                format!("SELECT letter FROM {ks}.mail_dead WHERE shelf = 0 AND id > ? LIMIT ?"),
            )
            .await?,
        })
    }
}

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

/// The reminder a mail belongs to, if it is one.
fn reminder_of(job: &MailJob) -> Option<ReminderId> {
    match job.kind {
        MailKind::Reminder { reminder, .. } => Some(reminder),
        MailKind::Welcome { .. } => None,
    }
}

/// The lease an LWT on `bucket_leases` found: holder and end.
fn lease_of(cas: &Cas) -> (Option<String>, Option<CqlTimestamp>) {
    (
        cas.column("node").and_then(CqlValue::as_text).cloned(),
        cas.column("until").and_then(CqlValue::as_cql_timestamp),
    )
}

/// Who holds a lease that is not `node`'s and still runs at `now_ms`.
fn held_by_other(
    lease: &(Option<String>, Option<CqlTimestamp>),
    node: &str,
    now_ms: i64,
) -> Option<String> {
    match lease {
        (Some(holder), Some(until)) if holder != node && until.0 > now_ms => Some(holder.clone()),
        _ => None,
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

    /// Fires one due reminder: scheduled → sending (an LWT on the reminder), then, in one
    /// logged batch, its mail queued and its due row removed; if it was not scheduled for
    /// that time, only the due row goes. Returns whether it fired.
    ///
    /// Crash window: once the LWT applied, the reminder is `sending` whatever follows. If
    /// the node dies (or the batch fails every try) before the batch is written, no mail
    /// is queued for it and it stays `sending` for good: its due row is still there, but
    /// the scheduler drops it (the reminder is no longer scheduled) and no mailer knows
    /// of the mail. The order is deliberate: queueing the mail first would close that
    /// window but open one for sending a reminder twice (two nodes racing a lease
    /// handover both queue it), and the scheduler promises at most once.
    async fn fire(&self, due: &Due, job: &MailJob) -> Result<bool, StoreError> {
        let st = &self.reminders;
        let key = due_key(due)?;
        let now = ms(Utc::now());
        let fired = self
            .lwt(
                &st.fire,
                (
                    now,
                    due.reminder.0,
                    CqlTimestamp(due.at_ms),
                    job.to.as_str(),
                ),
            )
            .await?;
        if !fired {
            // Only the address changed since the mail was rendered: keep the due row so
            // the next tick renders it again. Anything else makes the row stale.
            let readdressed = self.get_reminder(due.reminder).await?.is_some_and(|r| {
                r.state == ReminderState::Scheduled
                    && r.remind_at.timestamp_millis() == due.at_ms
                    && r.email != job.to
            });
            if !readdressed {
                self.run(&st.remove_due, key).await?;
            }
            return Ok(false);
        }
        let mut batch = Batch::new(BatchType::Logged);
        batch.append_statement(st.put_job.clone());
        batch.append_statement(st.remove_due.clone());
        let values = ((job.node.as_str(), job.id.0, encode(job)?), key);
        // Both writes are idempotent, so a failed batch is simply sent again.
        let mut attempt = 1;
        loop {
            match self.session.batch(&batch, &values).await {
                Ok(_) => return Ok(true),
                Err(e) if attempt >= QUEUE_ATTEMPTS => return Err(err(e)),
                Err(_) => attempt += 1,
            }
        }
    }

    async fn remove_job(&self, job: &MailJob) -> Result<(), StoreError> {
        self.run(&self.reminders.remove_job, (job.node.as_str(), job.id.0))
            .await?;
        Ok(())
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

    async fn due_buckets(&self, until_minute: i64) -> Result<Vec<Bucket>, StoreError> {
        let mut buckets = Vec::new();
        for shard in 0..DUE_SHARDS {
            let rows = self
                .run(
                    &self.reminders.buckets,
                    (i16::try_from(shard).map_err(err)?, until_minute),
                )
                .await?
                .into_rows_result()
                .map_err(err)?;
            for row in rows.rows::<(i64,)>().map_err(err)? {
                let (minute,) = row.map_err(err)?;
                buckets.push(Bucket { minute, shard });
            }
        }
        buckets.sort();
        Ok(buckets)
    }

    async fn due_in(&self, bucket: Bucket) -> Result<Vec<Due>, StoreError> {
        let key = (bucket.minute, shard(bucket)?);
        let rows: Vec<(CqlTimestamp, Uuid)> = self.select_all(&self.reminders.due_in, key).await?;
        Ok(rows
            .into_iter()
            .map(|(at, id)| Due {
                bucket,
                at_ms: at.0,
                reminder: ReminderId(id),
            })
            .collect())
    }

    /// The lease goes before the bucket row: a crash between leaves the bucket listed,
    /// and the next tick forgets it again.
    async fn forget_bucket(&self, bucket: Bucket) -> Result<bool, StoreError> {
        let st = &self.reminders;
        let key = (bucket.minute, shard(bucket)?);
        let rows = self
            .run(&st.due_any, key)
            .await?
            .into_rows_result()
            .map_err(err)?;
        if rows.rows_num() > 0 {
            return Ok(false);
        }
        self.lwt(&st.drop_lease, key).await?;
        self.run(&st.forget_bucket, (key.1, key.0)).await?;
        Ok(true)
    }

    /// `INSERT ... IF NOT EXISTS`; if a lease exists, and it is this node's or has
    /// expired, a compare-and-set on the holder and end read. A lease that changes between
    /// the two is read again, a few times; then it counts as held.
    async fn claim_bucket(
        &self,
        bucket: Bucket,
        node: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Claim, StoreError> {
        let st = &self.reminders;
        let (minute, shard) = (bucket.minute, shard(bucket)?);
        let (until, now_ms) = (ms(until), now.timestamp_millis());
        let mut last_holder = None;
        for _ in 0..CLAIM_ATTEMPTS {
            let taken = self
                .cas(&st.take_lease, (minute, shard, node, until))
                .await?;
            if taken.applied {
                return Ok(Claim::Granted { taken_over: false });
            }
            let lease = lease_of(&taken);
            if let Some(by) = held_by_other(&lease, node, now_ms) {
                return Ok(Claim::Held { by });
            }
            let (holder, held_until) = &lease;
            let swap = (node, until, minute, shard, holder.as_deref(), *held_until);
            let swapped = self.cas(&st.swap_lease, swap).await?;
            if swapped.applied {
                let taken_over = holder.as_deref().is_some_and(|h| h != node);
                return Ok(Claim::Granted { taken_over });
            }
            let lease = lease_of(&swapped);
            if let Some(by) = held_by_other(&lease, node, now_ms) {
                return Ok(Claim::Held { by });
            }
            last_holder = lease.0;
        }
        Ok(Claim::Held {
            by: last_holder.unwrap_or_default(),
        })
    }

    /// Each entry is fired on its own (see [`ScyllaStore::fire`]), several at a time.
    /// Entries that fail count as not fired, unless none fired: then the call fails.
    async fn fire_reminders(&self, batch: &[(Due, MailJob)]) -> Result<Vec<bool>, StoreError> {
        // By index: a closure over borrowed entries trips the Send check of async_trait.
        let results: Vec<Result<bool, StoreError>> = futures_util::stream::iter(0..batch.len())
            .map(|i| self.fire(&batch[i].0, &batch[i].1))
            .buffered(FIRE_CONCURRENCY)
            .collect()
            .await;
        let mut fired = Vec::with_capacity(results.len());
        let mut failure = None;
        for ((due, _), result) in batch.iter().zip(results) {
            match result {
                Ok(f) => fired.push(f),
                Err(e) => {
                    tracing::warn!(reminder = %due.reminder, error = %e, "could not fire a reminder");
                    failure.get_or_insert(e);
                    fired.push(false);
                }
            }
        }
        match failure {
            Some(e) if !fired.contains(&true) => Err(e),
            _ => Ok(fired),
        }
    }

    async fn drop_due(&self, due: &Due) -> Result<(), StoreError> {
        self.run(&self.reminders.remove_due, due_key(due)?).await?;
        Ok(())
    }

    /// The LWT first: a crash before the due row goes leaves a row the scheduler drops.
    async fn fail_reminder(&self, due: &Due, detail: &str) -> Result<bool, StoreError> {
        let st = &self.reminders;
        let now = ms(Utc::now());
        let failed = self
            .lwt(
                &st.fail,
                (detail, now, due.reminder.0, CqlTimestamp(due.at_ms)),
            )
            .await?;
        self.run(&st.remove_due, due_key(due)?).await?;
        Ok(failed)
    }
}

#[async_trait]
impl MailStore for ScyllaStore {
    async fn enqueue_mail(&self, job: &MailJob) -> Result<(), StoreError> {
        let row = (job.node.as_str(), job.id.0, encode(job)?);
        self.run(&self.reminders.put_job, row).await?;
        Ok(())
    }

    async fn queued_mail(&self, node: &str) -> Result<Vec<MailJob>, StoreError> {
        let rows: Vec<(String,)> = self.select_all(&self.reminders.jobs, (node,)).await?;
        rows.iter().map(|(job,)| decode(job)).collect()
    }

    async fn update_mail(&self, job: &MailJob) -> Result<(), StoreError> {
        self.enqueue_mail(job).await
    }

    /// The reminder becomes `sent` before the job goes: a crash between leaves a job the
    /// mailer cancels when it finds it again (its reminder is no longer `sending`).
    async fn mail_sent(&self, job: &MailJob) -> Result<(), StoreError> {
        if let Some(id) = reminder_of(job) {
            self.lwt(&self.reminders.sent, (ms(Utc::now()), id.0))
                .await?;
        }
        self.remove_job(job).await
    }

    /// The dead letter, then the reminder's `failed`, then the job goes. A crash after the
    /// letter and before the reminder changed leaves the job queued and tried again, so
    /// the letter may stand for a mail that goes out after all.
    async fn mail_dead(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        let st = &self.reminders;
        self.run(&st.put_dead, (letter.job.id.0, encode(letter)?))
            .await?;
        if let Some(id) = reminder_of(&letter.job) {
            let values = (letter.reason.as_str(), ms(Utc::now()), id.0);
            self.lwt(&st.undeliverable, values).await?;
        }
        self.remove_job(&letter.job).await
    }

    async fn discard_mail(&self, job: &MailJob) -> Result<(), StoreError> {
        self.remove_job(job).await
    }

    /// One partition in clustering order: id order (byte order, as the embedded store,
    /// for ids of one UUID version; Scylla sorts different versions by version first).
    async fn dead_letters(
        &self,
        after: Option<MailId>,
        n: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let st = &self.reminders;
        let result = match after {
            Some(id) => self.run(&st.dead_after, (id.0, limit(n))).await?,
            None => self.run(&st.dead, (limit(n),)).await?,
        };
        let rows = result.into_rows_result().map_err(err)?;
        rows.rows::<(String,)>()
            .map_err(err)?
            .map(|row| row.map_err(err).and_then(|(letter,)| decode(&letter)))
            .collect()
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

    #[test]
    fn a_lease_blocks_only_while_another_node_holds_it() {
        let lease = |node: &str, until: i64| (Some(node.to_owned()), Some(CqlTimestamp(until)));
        assert_eq!(held_by_other(&lease("b", 200), "a", 100), Some("b".into()));
        assert_eq!(held_by_other(&lease("b", 100), "a", 100), None);
        assert_eq!(held_by_other(&lease("a", 200), "a", 100), None);
        assert_eq!(held_by_other(&(None, None), "a", 100), None);
    }

    #[test]
    fn lwt_answers_are_read_by_column_name() {
        let cas = Cas {
            applied: false,
            columns: vec![
                ("[applied]".into(), Some(CqlValue::Boolean(false))),
                ("minute".into(), Some(CqlValue::BigInt(1))),
                ("shard".into(), Some(CqlValue::SmallInt(2))),
                ("node".into(), Some(CqlValue::Text("b".into()))),
                ("until".into(), Some(CqlValue::Timestamp(CqlTimestamp(5)))),
            ],
        };
        assert_eq!(lease_of(&cas), (Some("b".into()), Some(CqlTimestamp(5))));
        let empty = Cas {
            applied: false,
            columns: vec![
                ("[applied]".into(), Some(CqlValue::Boolean(false))),
                ("node".into(), None),
            ],
        };
        assert_eq!(lease_of(&empty), (None, None));
    }
}
