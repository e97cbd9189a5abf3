//! The mail queue in Scylla: a partition per node and minute of the job's making
//! (`mail_jobs`) read from the node's floor (`mail_floors`), and the dead letters
//! (`dead_letters`, a shelf per month, listed in `dead_letter_months`). See
//! `schema/008_time_buckets.cql`.

use async_trait::async_trait;
use chrono::{DateTime, Datelike, Utc};
use futures_util::{StreamExt, TryStreamExt};

use super::{decode, encode, limit, ms};
use crate::domain::{DeadLetter, MailId, MailJob, MailKind, ReminderId, v7_time};
use crate::store::scylla::{POINT_READS, ScyllaStore, err};
use crate::store::{MailStore, StoreError};

/// How far back a node with no floor yet looks for its jobs (minutes).
const FIRST_LOOK_BACK: i64 = 24 * 60;
/// Minutes below the oldest one found that the floor stays, for a job being written
/// while the queue is read.
const FLOOR_MARGIN: i64 = 2;
/// `dead_letter_months`' one partition.
const MONTHS_KEY: i32 = 0;

/// The partition minute of a job: the minute it was made.
pub(super) fn job_minute(job: &MailJob) -> i64 {
    job.created_at.timestamp().div_euclid(60)
}

fn minute_now() -> i64 {
    Utc::now().timestamp().div_euclid(60)
}

/// The shelf of a dead letter: yyyymm of its id's time.
fn month_of(id: MailId) -> i32 {
    let t: DateTime<Utc> = v7_time(id.0);
    t.year() * 100 + i32::try_from(t.month()).unwrap_or(1)
}

/// The reminder a mail belongs to, if it is one.
fn reminder_of(job: &MailJob) -> Option<ReminderId> {
    match job.kind {
        MailKind::Reminder { reminder, .. } => Some(reminder),
        MailKind::Welcome { .. } => None,
    }
}

impl ScyllaStore {
    async fn remove_job(&self, job: &MailJob) -> Result<(), StoreError> {
        let key = (job.node.as_str(), job_minute(job), job.id.0);
        self.run(&self.reminders.remove_job, key).await?;
        Ok(())
    }

    /// The jobs of `node` made in the minutes `from..=to`, with the minutes that held
    /// any. The partitions are read a few at a time.
    async fn jobs_in(
        &self,
        node: &str,
        from: i64,
        to: i64,
    ) -> Result<(Vec<MailJob>, Option<i64>), StoreError> {
        let found: Vec<(i64, Vec<(String,)>)> = futures_util::stream::iter(from..=to)
            .map(|minute| async move {
                let rows = self
                    .select_all(&self.reminders.jobs, (node, minute))
                    .await?;
                Ok::<_, StoreError>((minute, rows))
            })
            .buffered(POINT_READS)
            .try_collect()
            .await?;
        let oldest = found
            .iter()
            .find(|(_, rows)| !rows.is_empty())
            .map(|(m, _)| *m);
        let jobs = found
            .iter()
            .flat_map(|(_, rows)| rows)
            .map(|(job,)| decode(job))
            .collect::<Result<_, _>>()?;
        Ok((jobs, oldest))
    }
}

#[async_trait]
impl MailStore for ScyllaStore {
    async fn enqueue_mail(&self, job: &MailJob) -> Result<(), StoreError> {
        let row = (job.node.as_str(), job_minute(job), job.id.0, encode(job)?);
        self.run(&self.reminders.put_job, row).await?;
        Ok(())
    }

    /// Reads the minutes from the node's floor to now, then moves the floor up to the
    /// oldest minute that held a job (less a margin), or to now if none did.
    async fn queued_mail(&self, node: &str) -> Result<Vec<MailJob>, StoreError> {
        let st = &self.reminders;
        let now = minute_now();
        let floor: Option<(i64,)> = self
            .run(&st.floor, (node,))
            .await?
            .into_rows_result()
            .map_err(err)?
            .maybe_first_row()
            .map_err(err)?;
        let from = floor.map_or(now - FIRST_LOOK_BACK, |(m,)| m);
        let (jobs, oldest) = self.jobs_in(node, from, now).await?;
        let next = oldest.unwrap_or(now) - FLOOR_MARGIN;
        if next > from {
            self.run(&st.set_floor, (node, next)).await?;
        }
        Ok(jobs)
    }

    async fn recent_mail(
        &self,
        node: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<MailJob>, StoreError> {
        let from = since.timestamp().div_euclid(60);
        let now = minute_now();
        let (jobs, _) = self.jobs_in(node, from.min(now), now).await?;
        Ok(jobs.into_iter().filter(|j| j.created_at >= since).collect())
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
        let month = month_of(letter.job.id);
        self.run(&st.add_dead_month, (MONTHS_KEY, month)).await?;
        self.run(&st.put_dead, (month, letter.job.id.0, encode(letter)?))
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

    /// Shelf by shelf from `after`'s month, each in clustering order: id order (byte
    /// order, as the embedded store, for ids of one UUID version).
    async fn dead_letters(
        &self,
        after: Option<MailId>,
        n: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let st = &self.reminders;
        let start = after.map_or(i32::MIN, month_of);
        let months: Vec<(i32,)> = self
            .select_all(&st.dead_months, (MONTHS_KEY, start))
            .await?;
        let mut letters = Vec::new();
        for (month,) in months {
            let want = n.saturating_sub(letters.len());
            if want == 0 {
                break;
            }
            let result = match after {
                Some(id) if month == start => {
                    self.run(&st.dead_after, (month, id.0, limit(want))).await?
                }
                _ => self.run(&st.dead, (month, limit(want))).await?,
            };
            let rows = result.into_rows_result().map_err(err)?;
            for row in rows.rows::<(String,)>().map_err(err)? {
                let (letter,) = row.map_err(err)?;
                letters.push(decode(&letter)?);
            }
        }
        Ok(letters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_is_shelved_by_the_month_of_its_id() {
        let t = DateTime::parse_from_rfc3339("2026-11-30T23:59:59.999Z").unwrap();
        let id = MailId(crate::domain::v7_floor(t.to_utc()));
        assert_eq!(month_of(id), 202611);
        let later = MailId(crate::domain::v7_floor(
            t.to_utc() + chrono::TimeDelta::milliseconds(1),
        ));
        assert_eq!(month_of(later), 202612);
        assert!(month_of(id) < month_of(later), "shelf order is id order");
    }
}
