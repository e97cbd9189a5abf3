//! Reminders, their due index, bucket leases and the mail queue in the embedded store.
//! A reminder and its rows change in one transaction; firing a reminder (state change,
//! queued mail, due row removed) is one transaction too, so it happens once or not at all.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};

use super::{
    BUCKET_LEASES, DUE_BUCKETS, EmbeddedStore, MAIL_DEAD, MAIL_QUEUE, REMINDERS, REMINDERS_BY_USER,
    REMINDERS_DUE, decode, encode, scan,
};
use crate::domain::{
    Bucket, DeadLetter, Due, MailId, MailJob, MailKind, Reminder, ReminderId, ReminderKey,
    ReminderState, UserId,
};
use crate::store::{Claim, MailStore, ReminderStore, ScheduleStore, StoreError};

type DueKey = (i64, u16, i64, u128);

fn due_key(due: &Due) -> DueKey {
    (
        due.bucket.minute,
        due.bucket.shard,
        due.at_ms,
        due.reminder.0.as_u128(),
    )
}

fn write_rows(tx: &WriteTransaction, r: &Reminder) -> Result<(), StoreError> {
    let id = r.id.0.as_u128();
    tx.open_table(REMINDERS)?
        .insert(id, encode(r)?.as_slice())?;
    tx.open_table(REMINDERS_BY_USER)?.insert(
        (r.user_id.0.as_u128(), r.remind_at.timestamp_millis(), id),
        (),
    )?;
    if r.state == ReminderState::Scheduled {
        let due = r.due();
        tx.open_table(REMINDERS_DUE)?.insert(due_key(&due), ())?;
        tx.open_table(DUE_BUCKETS)?
            .insert((due.bucket.minute, due.bucket.shard), ())?;
    }
    Ok(())
}

fn remove_rows(tx: &WriteTransaction, r: &Reminder) -> Result<(), StoreError> {
    let id = r.id.0.as_u128();
    tx.open_table(REMINDERS)?.remove(id)?;
    tx.open_table(REMINDERS_BY_USER)?.remove((
        r.user_id.0.as_u128(),
        r.remind_at.timestamp_millis(),
        id,
    ))?;
    tx.open_table(REMINDERS_DUE)?.remove(due_key(&r.due()))?;
    Ok(())
}

fn read_reminder(tx: &WriteTransaction, id: ReminderId) -> Result<Option<Reminder>, StoreError> {
    let table = tx.open_table(REMINDERS)?;
    let row = table.get(id.0.as_u128())?;
    row.map(|v| decode(v.value())).transpose()
}

/// Moves the reminder from `from` to `to` if it is in state `from` (and, with `due`,
/// still due at that time). Returns whether it did.
fn transition(
    tx: &WriteTransaction,
    id: ReminderId,
    due: Option<&Due>,
    from: ReminderState,
    change: impl FnOnce(&mut Reminder),
) -> Result<bool, StoreError> {
    let Some(mut r) = read_reminder(tx, id)? else {
        return Ok(false);
    };
    if r.state != from || due.is_some_and(|d| d.at_ms != r.remind_at.timestamp_millis()) {
        return Ok(false);
    }
    change(&mut r);
    r.updated_at = Utc::now();
    tx.open_table(REMINDERS)?
        .insert(id.0.as_u128(), encode(&r)?.as_slice())?;
    Ok(true)
}

#[async_trait]
impl ReminderStore for EmbeddedStore {
    async fn insert_reminder(&self, reminder: &Reminder) -> Result<(), StoreError> {
        let r = reminder.clone();
        self.write(move |tx| write_rows(tx, &r)).await
    }

    async fn get_reminder(&self, id: ReminderId) -> Result<Option<Reminder>, StoreError> {
        self.read_now(|db| {
            let table = db.begin_read()?.open_table(REMINDERS)?;
            let row = table.get(id.0.as_u128())?;
            row.map(|v| decode(v.value())).transpose()
        })
    }

    async fn reminders_of(
        &self,
        user: UserId,
        after: Option<ReminderKey>,
        limit: usize,
    ) -> Result<Vec<Reminder>, StoreError> {
        self.with_db(move |db| {
            let tx = db.begin_read()?;
            let index = tx.open_table(REMINDERS_BY_USER)?;
            let reminders = tx.open_table(REMINDERS)?;
            let u = user.0.as_u128();
            let start = match after {
                Some(k) => std::ops::Bound::Excluded((u, k.at_ms, k.id.0.as_u128())),
                None => std::ops::Bound::Included((u, i64::MIN, 0)),
            };
            let end = std::ops::Bound::Included((u, i64::MAX, u128::MAX));
            let mut page = Vec::new();
            for row in index.range((start, end))? {
                let (_, _, id) = row?.0.value();
                if let Some(v) = reminders.get(id)? {
                    page.push(decode(v.value())?);
                }
                if page.len() == limit {
                    break;
                }
            }
            Ok(page)
        })
        .await
    }

    async fn update_reminder(&self, before: &Reminder, after: &Reminder) -> Result<(), StoreError> {
        let (before, after) = (before.clone(), after.clone());
        self.write(move |tx| {
            if read_reminder(tx, before.id)?.as_ref() != Some(&before) {
                return Err(StoreError::Changed);
            }
            remove_rows(tx, &before)?;
            write_rows(tx, &after)
        })
        .await
    }

    async fn delete_reminder(&self, reminder: &Reminder) -> Result<(), StoreError> {
        let id = reminder.id;
        self.write(move |tx| match read_reminder(tx, id)? {
            Some(stored) => remove_rows(tx, &stored),
            None => Ok(()),
        })
        .await
    }
}

#[async_trait]
impl ScheduleStore for EmbeddedStore {
    async fn due_buckets(&self, until_minute: i64) -> Result<Vec<Bucket>, StoreError> {
        self.with_db(move |db| {
            let table = db.begin_read()?.open_table(DUE_BUCKETS)?;
            table
                .range(..=(until_minute, u16::MAX))?
                .map(|row| {
                    let (minute, shard) = row?.0.value();
                    Ok(Bucket { minute, shard })
                })
                .collect()
        })
        .await
    }

    async fn due_in(&self, bucket: Bucket) -> Result<Vec<Due>, StoreError> {
        self.with_db(move |db| {
            let table = db.begin_read()?.open_table(REMINDERS_DUE)?;
            let (m, s) = (bucket.minute, bucket.shard);
            table
                .range((m, s, i64::MIN, 0)..=(m, s, i64::MAX, u128::MAX))?
                .map(|row| {
                    let (_, _, at_ms, id) = row?.0.value();
                    Ok(Due {
                        bucket,
                        at_ms,
                        reminder: ReminderId(uuid::Uuid::from_u128(id)),
                    })
                })
                .collect()
        })
        .await
    }

    async fn forget_bucket(&self, bucket: Bucket) -> Result<bool, StoreError> {
        self.write(move |tx| {
            let (m, s) = (bucket.minute, bucket.shard);
            let empty = tx
                .open_table(REMINDERS_DUE)?
                .range((m, s, i64::MIN, 0)..=(m, s, i64::MAX, u128::MAX))?
                .next()
                .is_none();
            if empty {
                tx.open_table(DUE_BUCKETS)?.remove((m, s))?;
                tx.open_table(BUCKET_LEASES)?.remove((m, s))?;
            }
            Ok(empty)
        })
        .await
    }

    async fn claim_bucket(
        &self,
        bucket: Bucket,
        node: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Claim, StoreError> {
        let node = node.to_owned();
        self.write(move |tx| {
            let mut leases = tx.open_table(BUCKET_LEASES)?;
            let key = (bucket.minute, bucket.shard);
            let current = leases
                .get(key)?
                .map(|v| (v.value().0.to_owned(), v.value().1));
            let taken_over = match current {
                Some((holder, until_ms)) if holder != node => {
                    if until_ms > now.timestamp_millis() {
                        return Ok(Claim::Held { by: holder });
                    }
                    true
                }
                _ => false,
            };
            leases.insert(key, (node.as_str(), until.timestamp_millis()))?;
            Ok(Claim::Granted { taken_over })
        })
        .await
    }

    async fn fire_reminders(&self, batch: &[(Due, MailJob)]) -> Result<Vec<bool>, StoreError> {
        let batch = batch.to_vec();
        self.write(move |tx| {
            let mut fired = Vec::with_capacity(batch.len());
            for (due, job) in &batch {
                let stored = read_reminder(tx, due.reminder)?;
                if stored.is_some_and(|r| {
                    r.remind_at.timestamp_millis() == due.at_ms && r.email != job.to
                }) {
                    // Its address changed after the mail was rendered: keep the due row,
                    // so the next tick renders it again.
                    fired.push(false);
                    continue;
                }
                tx.open_table(REMINDERS_DUE)?.remove(due_key(due))?;
                let ok = transition(tx, due.reminder, Some(due), ReminderState::Scheduled, |r| {
                    r.state = ReminderState::Sending;
                })?;
                if ok {
                    tx.open_table(MAIL_QUEUE)?.insert(
                        (job.node.as_str(), job.id.0.as_u128()),
                        encode(job)?.as_slice(),
                    )?;
                }
                fired.push(ok);
            }
            Ok(fired)
        })
        .await
    }

    async fn drop_due(&self, due: &Due) -> Result<(), StoreError> {
        let key = due_key(due);
        self.write(move |tx| {
            tx.open_table(REMINDERS_DUE)?.remove(key)?;
            Ok(())
        })
        .await
    }

    async fn fail_reminder(&self, due: &Due, detail: &str) -> Result<bool, StoreError> {
        let (due, detail) = (*due, detail.to_owned());
        self.write(move |tx| {
            tx.open_table(REMINDERS_DUE)?.remove(due_key(&due))?;
            transition(
                tx,
                due.reminder,
                Some(&due),
                ReminderState::Scheduled,
                |r| {
                    r.state = ReminderState::Failed;
                    r.detail = Some(detail.clone());
                },
            )
        })
        .await
    }
}

/// The reminder a mail belongs to, if it is one.
fn reminder_of(job: &MailJob) -> Option<ReminderId> {
    match job.kind {
        MailKind::Reminder { reminder, .. } => Some(reminder),
        MailKind::Welcome { .. } => None,
    }
}

fn put_job(tx: &WriteTransaction, job: &MailJob) -> Result<(), StoreError> {
    tx.open_table(MAIL_QUEUE)?.insert(
        (job.node.as_str(), job.id.0.as_u128()),
        encode(job)?.as_slice(),
    )?;
    Ok(())
}

fn remove_job(tx: &WriteTransaction, job: &MailJob) -> Result<(), StoreError> {
    tx.open_table(MAIL_QUEUE)?
        .remove((job.node.as_str(), job.id.0.as_u128()))?;
    Ok(())
}

#[async_trait]
impl MailStore for EmbeddedStore {
    async fn enqueue_mail(&self, job: &MailJob) -> Result<(), StoreError> {
        let job = job.clone();
        self.write(move |tx| put_job(tx, &job)).await
    }

    async fn queued_mail(&self, node: &str) -> Result<Vec<MailJob>, StoreError> {
        let node = node.to_owned();
        self.with_db(move |db| {
            let table = db.begin_read()?.open_table(MAIL_QUEUE)?;
            table
                .range((node.as_str(), 0)..=(node.as_str(), u128::MAX))?
                .map(|row| decode(row?.1.value()))
                .collect()
        })
        .await
    }

    async fn update_mail(&self, job: &MailJob) -> Result<(), StoreError> {
        self.enqueue_mail(job).await
    }

    async fn mail_sent(&self, job: &MailJob) -> Result<(), StoreError> {
        self.mails_sent(std::slice::from_ref(job)).await
    }

    /// One transaction for the whole batch.
    async fn mails_sent(&self, jobs: &[MailJob]) -> Result<(), StoreError> {
        let jobs = jobs.to_vec();
        self.write(move |tx| {
            for job in &jobs {
                remove_job(tx, job)?;
                if let Some(id) = reminder_of(job) {
                    transition(tx, id, None, ReminderState::Sending, |r| {
                        r.state = ReminderState::Sent;
                    })?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn mail_dead(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        let letter = letter.clone();
        self.write(move |tx| {
            remove_job(tx, &letter.job)?;
            tx.open_table(MAIL_DEAD)?
                .insert(letter.job.id.0.as_u128(), encode(&letter)?.as_slice())?;
            if let Some(id) = reminder_of(&letter.job) {
                transition(tx, id, None, ReminderState::Sending, |r| {
                    r.state = ReminderState::Failed;
                    r.detail = Some(letter.reason.clone());
                })?;
            }
            Ok(())
        })
        .await
    }

    async fn discard_mail(&self, job: &MailJob) -> Result<(), StoreError> {
        let job = job.clone();
        self.write(move |tx| remove_job(tx, &job)).await
    }

    async fn dead_letters(
        &self,
        after: Option<MailId>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.with_db(move |db| scan(db, MAIL_DEAD, after.map(|id| id.0), limit))
            .await
    }
}
