//! The mail queue in Scylla: one partition per node (`mail_queue`), and the dead
//! letters (`mail_dead`, one partition in id order).

use async_trait::async_trait;
use chrono::Utc;

use super::{decode, encode, limit, ms};
use crate::domain::{DeadLetter, MailId, MailJob, MailKind, ReminderId};
use crate::store::scylla::{ScyllaStore, err};
use crate::store::{MailStore, StoreError};

/// The reminder a mail belongs to, if it is one.
fn reminder_of(job: &MailJob) -> Option<ReminderId> {
    match job.kind {
        MailKind::Reminder { reminder, .. } => Some(reminder),
        MailKind::Welcome { .. } => None,
    }
}

impl ScyllaStore {
    async fn remove_job(&self, job: &MailJob) -> Result<(), StoreError> {
        self.run(&self.reminders.remove_job, (job.node.as_str(), job.id.0))
            .await?;
        Ok(())
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
