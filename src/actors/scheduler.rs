//! `scheduler` turns due reminders into queued mails, on time and once.
//!
//! Every `tick` (counted from the end of the last one) it lists the `reminders_due` buckets (minute × shard) up to `lookahead`
//! ahead, overdue ones included (that is the catch-up after a restart), takes or renews
//! the lease of each through the store, and loads the due rows of the buckets it holds
//! into an in-memory timer queue. An alarm wakes it at the earliest due time; it then
//! re-reads each reminder, renders its mail and fires the batch through the store, which
//! moves a reminder from scheduled to sending and queues its mail in one step, so a
//! reminder fires at most once however many schedulers share the store. Fired mails go to
//! the mailer. New, moved and deleted reminders reach it as messages from the API. A
//! node that dies keeps its leases until they expire; then another node takes over.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::mailer::MailerMsg;
use super::{ActorSlot, Alarm};
use crate::domain::reminder::minute_of;
use crate::domain::{Bucket, Due, MailJob, ReminderId, ReminderState};
use crate::mail::Composer;
use crate::store::{Claim, SharedStore, StoreError};

/// Most reminders fired in one store call.
const FIRE_BATCH: usize = 256;
/// Most batches fired per message, so a catch-up backlog does not hold the actor: after
/// that it wakes itself again, letting ticks and API messages in between.
const BATCHES_PER_TURN: usize = 4;

#[derive(Clone)]
pub struct SchedulerArgs {
    pub store: SharedStore,
    pub composer: Composer,
    pub mailer: ActorSlot<MailerMsg>,
    pub lookahead: Duration,
    pub tick: Duration,
    pub lease: Duration,
}

pub enum SchedulerMsg {
    /// Look for due buckets, renew leases, load new rows.
    Tick,
    /// The earliest timer is due.
    Wake,
    /// A reminder was created or moved (sent by the API after the store write).
    Scheduled {
        id: ReminderId,
        remind_at: DateTime<Utc>,
    },
    /// A reminder was deleted.
    Cancelled(ReminderId),
}

pub struct Scheduler;

pub struct SchedulerState {
    args: SchedulerArgs,
    /// Due rows waiting, by (due ms, id).
    timers: BTreeSet<(i64, ReminderId)>,
    dues: HashMap<ReminderId, Due>,
    /// Buckets this node holds, with the end of each lease.
    leases: HashMap<Bucket, DateTime<Utc>>,
    /// Buckets another node holds, and when to try claiming each again (so a busy
    /// cluster does not write a claim per bucket per tick).
    others: HashMap<Bucket, DateTime<Utc>>,
    alarm: Alarm<SchedulerMsg>,
    /// The next tick, set when the last one finished (so slow ticks never pile up).
    ticker: Alarm<SchedulerMsg>,
}

impl SchedulerState {
    fn add(&mut self, due: Due) {
        if self.dues.get(&due.reminder) == Some(&due) {
            return;
        }
        self.remove(due.reminder);
        self.timers.insert((due.at_ms, due.reminder));
        self.dues.insert(due.reminder, due);
    }

    fn remove(&mut self, id: ReminderId) {
        if let Some(old) = self.dues.remove(&id) {
            self.timers.remove(&(old.at_ms, id));
        }
    }

    fn lookahead_minute(&self, now: DateTime<Utc>) -> i64 {
        minute_of(now + chrono::Duration::from_std(self.args.lookahead).unwrap_or_default())
    }
}

impl Actor for Scheduler {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: SchedulerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        metrics::counter!("corral_reminders_fired_total").increment(0);
        metrics::counter!("corral_reminder_lease_takeovers_total").increment(0);
        Ok(SchedulerState {
            args,
            timers: BTreeSet::new(),
            dues: HashMap::new(),
            leases: HashMap::new(),
            others: HashMap::new(),
            alarm: Alarm::default(),
            ticker: Alarm::default(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // The first tick catches up every overdue reminder not yet sent.
        myself.send_message(SchedulerMsg::Tick)?;
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.alarm.clear();
        state.ticker.clear();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: SchedulerMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let result = match msg {
            SchedulerMsg::Tick => {
                let result = tick(state).await;
                let every = state.args.tick;
                state.ticker.set(&myself, every, || SchedulerMsg::Tick);
                result
            }
            SchedulerMsg::Wake => Ok(()),
            SchedulerMsg::Scheduled { id, remind_at } => scheduled(state, id, remind_at).await,
            SchedulerMsg::Cancelled(id) => {
                state.remove(id);
                Ok(())
            }
        };
        if let Err(e) = result {
            // The rows are still in the store; the next tick picks them up again.
            tracing::error!(error = %e, "scheduler could not read the store");
        }
        fire_due(state).await;
        arm(&myself, state);
        metrics::gauge!("corral_reminders_pending").set(state.dues.len() as f64);
        Ok(())
    }
}

async fn tick(state: &mut SchedulerState) -> Result<(), StoreError> {
    let now = Utc::now();
    let current = minute_of(now);
    let buckets = state
        .args
        .store
        .due_buckets(state.lookahead_minute(now))
        .await?;
    let listed: HashSet<Bucket> = buckets.iter().copied().collect();
    state.leases.retain(|b, _| listed.contains(b));
    state.others.retain(|b, _| listed.contains(b));
    for bucket in buckets {
        if !hold(state, bucket, now).await? {
            continue;
        }
        let rows = state.args.store.due_in(bucket).await?;
        // A bucket two minutes past can gain no new rows (reminders are set in the
        // future), so once empty it is forgotten.
        if rows.is_empty() && bucket.minute < current - 1 {
            if state.args.store.forget_bucket(bucket).await? {
                state.leases.remove(&bucket);
            }
            continue;
        }
        for due in rows {
            state.add(due);
        }
    }
    Ok(())
}

/// Whether this node holds `bucket`'s lease, taking or renewing it when needed.
async fn hold(
    state: &mut SchedulerState,
    bucket: Bucket,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let lease = chrono::Duration::from_std(state.args.lease).unwrap_or_default();
    if state
        .leases
        .get(&bucket)
        .is_some_and(|until| *until - now > lease / 2)
    {
        return Ok(true);
    }
    if state.others.get(&bucket).is_some_and(|retry| *retry > now) {
        return Ok(false);
    }
    let until = now + lease;
    let node = state.args.composer.node().to_owned();
    match state
        .args
        .store
        .claim_bucket(bucket, &node, until, now)
        .await?
    {
        Claim::Granted { taken_over } => {
            if taken_over {
                metrics::counter!("corral_reminder_lease_takeovers_total").increment(1);
                tracing::info!(?bucket, "took over an expired bucket lease");
            }
            state.others.remove(&bucket);
            state.leases.insert(bucket, until);
            Ok(true)
        }
        Claim::Held { by } => {
            tracing::debug!(?bucket, %by, "bucket is leased to another node");
            state.leases.remove(&bucket);
            // Try again after a quarter lease, or five ticks if sooner: a dead node's
            // buckets are taken over at most that long after its leases end.
            let tick = chrono::Duration::from_std(state.args.tick * 5).unwrap_or_default();
            state.others.insert(bucket, now + tick.min(lease / 4));
            let theirs: Vec<ReminderId> = state
                .dues
                .values()
                .filter(|d| d.bucket == bucket)
                .map(|d| d.reminder)
                .collect();
            for id in theirs {
                state.remove(id);
            }
            Ok(false)
        }
    }
}

async fn scheduled(
    state: &mut SchedulerState,
    id: ReminderId,
    remind_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    state.remove(id);
    let now = Utc::now();
    let due = Due {
        bucket: Bucket::of(id, remind_at),
        at_ms: remind_at.timestamp_millis(),
        reminder: id,
    };
    // Beyond the lookahead, a later tick loads it. A notice for a minute already past
    // (one relayed late) is left to the tick too: its bucket is still listed if the row
    // is there, and a lease taken on a bucket already forgotten would never be dropped.
    let fresh = due.bucket.minute >= minute_of(now) - 1;
    if fresh
        && due.bucket.minute <= state.lookahead_minute(now)
        && hold(state, due.bucket, now).await?
    {
        state.add(due);
    }
    Ok(())
}

/// Fires the timers that are due, a few batches at a time (`arm` wakes the actor again
/// at once if more are due).
async fn fire_due(state: &mut SchedulerState) {
    for _ in 0..BATCHES_PER_TURN {
        let now = Utc::now();
        let batch: Vec<Due> = state
            .timers
            .iter()
            .take_while(|(at, _)| *at <= now.timestamp_millis())
            .take(FIRE_BATCH)
            .filter_map(|(_, id)| state.dues.get(id).copied())
            .collect();
        if batch.is_empty() {
            return;
        }
        let mut fires = Vec::with_capacity(batch.len());
        for due in batch {
            state.remove(due.reminder);
            // A lease that lapsed (a stalled node) may be another node's by now.
            if state
                .leases
                .get(&due.bucket)
                .is_none_or(|until| *until <= now)
            {
                continue;
            }
            match render(state, &due).await {
                Ok(Some((job, ReminderState::Scheduled))) => fires.push((due, job)),
                Ok(Some((job, _))) => requeue(state, &due, job).await,
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(reminder = %due.reminder, error = %e, "could not prepare a reminder; retrying at the next tick")
                }
            }
        }
        if fires.is_empty() {
            continue;
        }
        match state.args.store.fire_reminders(&fires).await {
            Ok(fired) => {
                let mailer = state.args.mailer.get();
                for ((_, job), fired) in fires.into_iter().zip(fired) {
                    if !fired {
                        continue;
                    }
                    metrics::counter!("corral_reminders_fired_total").increment(1);
                    // If the mailer is down, it finds the mail in the store when it restarts.
                    if let Some(mailer) = &mailer {
                        let _ = mailer.send_message(MailerMsg::Queued(Box::new(job)));
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "could not fire reminders; retrying at the next tick");
            }
        }
    }
}

/// A reminder that fired but whose mail was never queued: Scylla fires in two writes (the
/// state change, then the mail with the due row's removal), and the second can fail. The
/// due row still being there says the mail is missing, so it is queued now.
async fn requeue(state: &SchedulerState, due: &Due, job: MailJob) {
    let store = &state.args.store;
    tracing::warn!(reminder = %due.reminder, "queueing the mail of a reminder fired without one");
    let queued = async {
        store.enqueue_mail(&job).await?;
        store.drop_due(due).await
    };
    match queued.await {
        Ok(()) => {
            if let Some(mailer) = state.args.mailer.get() {
                let _ = mailer.send_message(MailerMsg::Queued(Box::new(job)));
            }
        }
        Err(e) => {
            tracing::error!(reminder = %due.reminder, error = %e, "could not queue the mail; retrying at the next tick")
        }
    }
}

/// The mail for a due reminder, with the reminder's state (`scheduled`, or `sending` for
/// a fire whose mail went missing), or `None` (after cleaning up) when it must not fire.
async fn render(
    state: &SchedulerState,
    due: &Due,
) -> Result<Option<(MailJob, ReminderState)>, StoreError> {
    let store = &state.args.store;
    let reminder = match store.get_reminder(due.reminder).await? {
        Some(r)
            if matches!(r.state, ReminderState::Scheduled | ReminderState::Sending)
                && r.remind_at.timestamp_millis() == due.at_ms =>
        {
            r
        }
        _ => {
            store.drop_due(due).await?;
            return Ok(None);
        }
    };
    let Some(event) = store.get_event(reminder.event_id).await? else {
        store.fail_reminder(due, "the event was deleted").await?;
        return Ok(None);
    };
    let Some(user) = store.get_user(reminder.user_id).await? else {
        store.drop_due(due).await?;
        return Ok(None);
    };
    // A `sending` reminder whose mail was lost still has its due row; one without it has
    // fired already (a timer loaded from another node's late notice, say): leave it.
    if reminder.state == ReminderState::Sending && !store.due_in(due.bucket).await?.contains(due) {
        return Ok(None);
    }
    let job = state.args.composer.reminder(&reminder, &event, &user);
    Ok(Some((job, reminder.state)))
}

/// Sets the alarm for the earliest timer.
fn arm(myself: &ActorRef<SchedulerMsg>, state: &mut SchedulerState) {
    match state.timers.first() {
        Some((at, _)) => {
            let wait = u64::try_from(at - Utc::now().timestamp_millis()).unwrap_or(0);
            state
                .alarm
                .set(myself, Duration::from_millis(wait), || SchedulerMsg::Wake);
        }
        None => state.alarm.clear(),
    }
}
