//! The schedule in Scylla: the due index (`reminders_due`, listed by `due_buckets`),
//! the bucket leases (`bucket_leases`, compare-and-set) and firing a due reminder into
//! the mail queue.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::{CqlTimestamp, CqlValue};
use uuid::Uuid;

use super::{due_key, encode, ms, shard};
use crate::domain::reminder::DUE_SHARDS;
use crate::domain::{Bucket, Due, MailJob, ReminderId, ReminderState};
use crate::store::scylla::{Cas, ScyllaStore, err};
use crate::store::{Claim, ReminderStore, ScheduleStore, StoreError};

/// Reminders `fire_reminders` works on at once (each is an LWT and a batch).
const FIRE_CONCURRENCY: usize = 16;
/// Tries at queueing the mail of a reminder that fired.
const QUEUE_ATTEMPTS: usize = 3;
/// Rounds of `claim_bucket` against a lease row that keeps changing.
const CLAIM_ATTEMPTS: usize = 3;

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
        let job_row = (
            job.node.as_str(),
            super::mail_queue::job_minute(job),
            job.id.0,
            encode(job)?,
        );
        let values = (job_row, key);
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
}

#[async_trait]
impl ScheduleStore for ScyllaStore {
    /// The shards are read at once, each from its floor (see [`DueFloors`]) rather than
    /// from the start of its partition, through the tombstones of forgotten minutes.
    async fn due_buckets(&self, until_minute: i64) -> Result<Vec<Bucket>, StoreError> {
        let now_minute = Utc::now().timestamp().div_euclid(60);
        self.due_floors.reset_if_due(WHOLE_READ_EVERY);
        let reads = (0..DUE_SHARDS).map(|shard| async move {
            let key = (
                i16::try_from(shard).map_err(err)?,
                self.due_floors.get(shard),
                until_minute,
            );
            let rows = self
                .run(&self.reminders.buckets, key)
                .await?
                .into_rows_result()
                .map_err(err)?;
            let minutes = rows
                .rows::<(i64,)>()
                .map_err(err)?
                .map(|row| row.map(|(minute,)| minute).map_err(err))
                .collect::<Result<Vec<i64>, StoreError>>()?;
            self.due_floors
                .raise(shard, minutes.first().copied(), now_minute);
            Ok::<_, StoreError>(
                minutes
                    .into_iter()
                    .map(move |minute| Bucket { minute, shard }),
            )
        });
        let mut buckets: Vec<Bucket> = futures_util::future::try_join_all(reads)
            .await?
            .into_iter()
            .flatten()
            .collect();
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

#[cfg(test)]
mod tests {
    use super::*;

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

/// Per shard, the lowest minute `due_buckets` still reads from: the oldest bucket it
/// found listed, or now, less [`DUE_FLOOR_MARGIN`]. Buckets below it were forgotten (or
/// never existed), so their tombstones are not read at every tick. Kept in memory: a
/// node reads each shard from its start when it starts and then hourly
/// ([`WHOLE_READ_EVERY`]), which finds a bucket written below a floor (by a node whose
/// clock runs minutes behind) late rather than never.
#[derive(Debug)]
pub struct DueFloors {
    floors: Vec<std::sync::atomic::AtomicI64>,
    /// When the floors were last lowered to read every shard whole.
    reset_at: std::sync::Mutex<std::time::Instant>,
}

/// How often every shard is read from its start.
const WHOLE_READ_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Minutes below now (or below the oldest listed bucket) a shard's floor stays: room for
/// a reminder created on a node whose clock runs behind, due in its own next minute.
const DUE_FLOOR_MARGIN: i64 = 2;

impl Default for DueFloors {
    fn default() -> Self {
        Self {
            floors: (0..DUE_SHARDS)
                .map(|_| std::sync::atomic::AtomicI64::new(i64::MIN))
                .collect(),
            reset_at: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }
}

impl DueFloors {
    fn get(&self, shard: u16) -> i64 {
        self.floors
            .get(usize::from(shard))
            .map_or(i64::MIN, |f| f.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// After a read of `shard` whose oldest bucket was `oldest` (if any), at `now`.
    fn raise(&self, shard: u16, oldest: Option<i64>, now: i64) {
        let floor = oldest.map_or(now, |m| m.min(now)) - DUE_FLOOR_MARGIN;
        if let Some(f) = self.floors.get(usize::from(shard)) {
            f.fetch_max(floor, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Lowers every floor to the start once `every` has passed since it last did.
    fn reset_if_due(&self, every: std::time::Duration) {
        let mut at = self.reset_at.lock().unwrap_or_else(|e| e.into_inner());
        if at.elapsed() >= every {
            *at = std::time::Instant::now();
            for f in &self.floors {
                f.store(i64::MIN, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod floor_tests {
    use super::*;

    #[test]
    fn a_shards_floor_follows_its_oldest_bucket_and_never_passes_now() {
        let floors = DueFloors::default();
        assert_eq!(floors.get(0), i64::MIN, "a node reads a shard whole once");
        floors.raise(0, Some(100), 500);
        assert_eq!(floors.get(0), 98, "the oldest listed bucket stays readable");
        floors.raise(0, None, 500);
        assert_eq!(floors.get(0), 498, "with none listed, from just before now");
        floors.raise(0, Some(900), 600);
        assert_eq!(
            floors.get(0),
            598,
            "a future bucket does not lift it past now"
        );
        floors.raise(0, Some(10), 600);
        assert_eq!(floors.get(0), 598, "it never goes down");
        assert_eq!(floors.get(1), i64::MIN, "shards are apart");
        floors.reset_if_due(std::time::Duration::from_secs(3600));
        assert_eq!(floors.get(0), 598, "not yet");
        floors.reset_if_due(std::time::Duration::ZERO);
        assert_eq!(floors.get(0), i64::MIN, "read whole again");
    }
}
