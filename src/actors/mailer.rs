//! `mailer` delivers the mails in this node's part of the persisted mail queue. It loads
//! its queue when it starts, every `RESCAN` re-reads what was queued since its last
//! read, and hourly the whole queue again (so a crash, a restart, a lost message or an
//! outcome it could not record strands nothing for long), learns of newly
//! queued mails by message, and keeps
//! the waiting ones in memory ordered by their next attempt. Up to `concurrency` deliveries run at once, each in its own task; the
//! outcome comes back as a message and is recorded in the store: delivered mails leave
//! the queue, failures back off exponentially with jitter, and a mail that fails
//! permanently or too often becomes a dead letter. When it stops it waits (bounded) for
//! the deliveries in flight and records them. Delivery is at least once: a crash between
//! the SMTP server accepting a mail and the store recording it sends it again, with the
//! same Message-ID. Supervised by the root supervisor.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::FutureExt;
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::Alarm;
use super::relay::Notices;
use crate::domain::{
    DeadLetter, MailId, MailJob, MailKind, Notice, Reminder, ReminderState, ReminderUpdate,
};
use crate::mail::{Composer, DeliveryError, RetryPolicy, Transport};
use crate::store::SharedStore;

/// How often the queue is re-read from the store, for mails whose message was lost
/// (queued while this actor restarted, say).
const RESCAN: Duration = Duration::from_secs(10);
/// How far before the last re-read each re-read looks: mails made just before it but
/// stored after it are still found.
const RESCAN_OVERLAP: chrono::TimeDelta = chrono::TimeDelta::minutes(1);
/// Every this many re-reads, one reads the whole queue (as a start does): it finds a
/// mail whose outcome could not be recorded, and lets the store move its floor.
const FULL_RESCAN_EVERY: u32 = 360;
/// How long stopping waits for deliveries in flight.
const DRAIN_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct MailerArgs {
    pub store: SharedStore,
    pub transport: Arc<Transport>,
    pub composer: Composer,
    pub policy: RetryPolicy,
    pub concurrency: usize,
    /// Told when a reminder's mail is sent or fails for good.
    pub notices: Notices,
}

/// How one delivery attempt ended.
#[derive(Clone)]
pub enum Attempt {
    Delivered,
    Failed(DeliveryError),
    /// The mail must not go: its reminder was deleted (or already dealt with).
    Cancelled,
}

pub enum MailerMsg {
    /// A mail was just written to this node's queue.
    Queued(Box<MailJob>),
    /// The next waiting mail is due.
    Wake,
    /// Re-read the queue from the store.
    Rescan,
    /// Record the deliveries collected so far, in one store call.
    Flush,
    /// A delivery attempt finished.
    Attempted(Box<Outcome>),
}

/// A finished attempt: the mail, how it went, and its reminder as read before sending.
#[derive(Clone)]
pub struct Outcome {
    job: MailJob,
    attempt: Attempt,
    reminder: Option<Reminder>,
}

pub struct Mailer;

pub struct MailerState {
    args: MailerArgs,
    /// Mails waiting for their next attempt, by (next attempt, id).
    waiting: BTreeMap<(i64, MailId), MailJob>,
    /// Each waiting mail's key in `waiting`.
    keys: HashMap<MailId, i64>,
    /// Deliveries running, each returning its mail and outcome.
    in_flight: HashMap<MailId, JoinHandle<Outcome>>,
    /// Delivered mails not yet recorded in the store (a `Flush` is on its way). They are
    /// still in the stored queue, so a rescan must not pick them up again.
    delivered: Vec<MailJob>,
    /// The reminders of `delivered`, to announce as sent once recorded.
    sent: Vec<Reminder>,
    unrecorded: std::collections::HashSet<MailId>,
    alarm: Alarm<MailerMsg>,
    rescan: Option<JoinHandle<()>>,
    /// When the queue was last read: a re-read reads what was made since (less
    /// [`RESCAN_OVERLAP`]), not the whole queue.
    read_at: chrono::DateTime<Utc>,
    /// Re-reads since the last whole read.
    rescans: u32,
}

impl MailerState {
    /// Queues `job` for its next attempt, replacing a waiting copy; ignored while the same
    /// mail is being delivered.
    fn wait(&mut self, job: MailJob) {
        if self.in_flight.contains_key(&job.id) || self.unrecorded.contains(&job.id) {
            return;
        }
        if let Some(at) = self.keys.remove(&job.id) {
            self.waiting.remove(&(at, job.id));
        }
        let at = job.next_attempt_at.timestamp_millis();
        self.keys.insert(job.id, at);
        self.waiting.insert((at, job.id), job);
    }
}

impl Actor for Mailer {
    type Msg = MailerMsg;
    type State = MailerState;
    type Arguments = MailerArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: MailerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        for kind in ["reminder", "welcome"] {
            metrics::counter!("corral_mails_sent_total", "kind" => kind).increment(0);
            metrics::counter!("corral_mail_retries_total", "kind" => kind).increment(0);
            metrics::counter!("corral_mails_dead_total", "kind" => kind).increment(0);
        }
        let read_at = Utc::now();
        let queued = args.store.queued_mail(args.composer.node()).await?;
        tracing::info!(queued = queued.len(), "mailer loaded its queue");
        let mut state = MailerState {
            args,
            waiting: BTreeMap::new(),
            keys: HashMap::new(),
            in_flight: HashMap::new(),
            delivered: Vec::new(),
            sent: Vec::new(),
            unrecorded: std::collections::HashSet::new(),
            alarm: Alarm::default(),
            rescan: None,
            read_at,
            rescans: 0,
        };
        for job in queued {
            state.wait(job);
        }
        Ok(state)
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.rescan = Some(myself.send_interval(RESCAN, || MailerMsg::Rescan));
        dispatch(&myself, state);
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.alarm.clear();
        if let Some(rescan) = state.rescan.take() {
            rescan.abort();
        }
        // Record the deliveries in flight, so a mail the server accepted is not sent
        // again after a restart.
        let running: Vec<_> = state.in_flight.drain().map(|(_, task)| task).collect();
        let drained = tokio::time::timeout(DRAIN_WAIT, futures_util::future::join_all(running));
        match drained.await {
            Ok(done) => {
                for outcome in done.into_iter().flatten() {
                    record(state, outcome).await;
                }
            }
            Err(_) => tracing::warn!("deliveries still running at stop; they may be sent again"),
        }
        flush(state).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: MailerMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MailerMsg::Queued(job) => state.wait(*job),
            MailerMsg::Wake => {}
            MailerMsg::Rescan => {
                let now = Utc::now();
                let since = state.read_at - RESCAN_OVERLAP;
                let node = state.args.composer.node();
                state.rescans += 1;
                let read = match state.rescans % FULL_RESCAN_EVERY {
                    0 => state.args.store.queued_mail(node).await,
                    _ => state.args.store.recent_mail(node, since).await,
                };
                match read {
                    Ok(queued) => {
                        state.read_at = now;
                        for job in queued {
                            if !state.keys.contains_key(&job.id) {
                                state.wait(job);
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "mailer could not re-read its queue"),
                }
            }
            MailerMsg::Attempted(outcome) => {
                if state.in_flight.remove(&outcome.job.id).is_some() {
                    let first = state.delivered.is_empty();
                    record(state, *outcome).await;
                    // Messages already queued (more outcomes) are handled before the
                    // flush, so one transaction records them all.
                    if first && !state.delivered.is_empty() {
                        myself.send_message(MailerMsg::Flush)?;
                    }
                }
            }
            MailerMsg::Flush => flush(state).await,
        }
        dispatch(&myself, state);
        Ok(())
    }
}

/// Records an attempt's outcome in the store (and the metrics).
async fn record(state: &mut MailerState, outcome: Outcome) {
    let Outcome {
        mut job,
        attempt,
        reminder,
    } = outcome;
    let store = &state.args.store;
    let kind = job.kind.name();
    match attempt {
        Attempt::Delivered => {
            metrics::counter!("corral_mails_sent_total", "kind" => kind).increment(1);
            if let MailKind::Reminder { remind_at, .. } = job.kind {
                let late = (Utc::now() - remind_at).to_std().unwrap_or_default();
                metrics::histogram!("corral_reminder_lateness_seconds").record(late.as_secs_f64());
            }
            state.unrecorded.insert(job.id);
            state.delivered.push(job);
            state.sent.extend(reminder);
        }
        Attempt::Cancelled => {
            if let Err(e) = store.discard_mail(&job).await {
                tracing::error!(mail = %job.id, error = %e, "could not discard a cancelled mail");
            }
        }
        Attempt::Failed(error) => {
            job.attempts += 1;
            job.last_error = Some(error.detail.clone());
            let policy = state.args.policy;
            if error.permanent || job.attempts >= policy.max_attempts {
                tracing::warn!(mail = %job.id, kind, attempts = job.attempts, error = %error.detail, "mail is a dead letter");
                metrics::counter!("corral_mails_dead_total", "kind" => kind).increment(1);
                let letter = DeadLetter {
                    job,
                    reason: error.detail,
                    died_at: Utc::now(),
                };
                if let Err(e) = store.mail_dead(&letter).await {
                    tracing::error!(mail = %letter.job.id, error = %e, "could not record a dead letter");
                    return;
                }
                if let Some(mut r) = reminder {
                    r.state = ReminderState::Failed;
                    r.detail = Some(letter.reason);
                    r.updated_at = letter.died_at;
                    state.args.notices.announce(Notice::Reminder {
                        update: ReminderUpdate::Failed,
                        reminder: Box::new(r),
                    });
                }
                return;
            }
            let delay = policy.delay(job.attempts);
            tracing::info!(mail = %job.id, kind, attempts = job.attempts, retry_in = ?delay, error = %error.detail, "mail delivery failed; will retry");
            metrics::counter!("corral_mail_retries_total", "kind" => kind).increment(1);
            job.next_attempt_at =
                Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
            if let Err(e) = store.update_mail(&job).await {
                tracing::error!(mail = %job.id, error = %e, "could not record a failed attempt");
            }
            state.wait(job);
        }
    }
}

/// Records the delivered mails in one store call.
async fn flush(state: &mut MailerState) {
    if state.delivered.is_empty() {
        return;
    }
    let batch = std::mem::take(&mut state.delivered);
    let sent = std::mem::take(&mut state.sent);
    match state.args.store.mails_sent(&batch).await {
        Ok(()) => {
            let now = Utc::now();
            for mut r in sent {
                r.state = ReminderState::Sent;
                r.updated_at = now;
                state.args.notices.announce(Notice::Reminder {
                    update: ReminderUpdate::Sent,
                    reminder: Box::new(r),
                });
            }
        }
        Err(e) => {
            tracing::error!(mails = batch.len(), error = %e, "could not record delivered mails; they may be sent again after a restart");
        }
    }
    for job in &batch {
        state.unrecorded.remove(&job.id);
    }
}

/// Starts the attempts that are due, as far as the concurrency allows, and sets the
/// alarm for the next one.
fn dispatch(myself: &ActorRef<MailerMsg>, state: &mut MailerState) {
    let now = Utc::now().timestamp_millis();
    while state.in_flight.len() < state.args.concurrency {
        let Some(entry) = state.waiting.first_entry() else {
            break;
        };
        if entry.key().0 > now {
            break;
        }
        let job = entry.remove();
        state.keys.remove(&job.id);
        let id = job.id;
        let args = state.args.clone();
        let myself = myself.clone();
        let task = tokio::spawn(async move {
            let (attempt, reminder) = AssertUnwindSafe(attempt(&args, &job))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    let failed = Attempt::Failed(DeliveryError {
                        permanent: false,
                        detail: "the delivery task panicked".into(),
                    });
                    (failed, None)
                });
            let outcome = Outcome {
                job,
                attempt,
                reminder,
            };
            let report = MailerMsg::Attempted(Box::new(outcome.clone()));
            // If the mailer is stopping, it collects the result from this task instead.
            let _ = myself.send_message(report);
            outcome
        });
        state.in_flight.insert(id, task);
    }
    let depth = state.waiting.len() + state.in_flight.len();
    metrics::gauge!("corral_mail_queue_depth").set(depth as f64);
    match state.waiting.first_key_value() {
        Some(((at, _), _)) if state.in_flight.len() < state.args.concurrency => {
            let wait = u64::try_from(at - now).unwrap_or(0);
            state
                .alarm
                .set(myself, std::time::Duration::from_millis(wait), || {
                    MailerMsg::Wake
                });
        }
        _ => state.alarm.clear(),
    }
}

/// One delivery; a reminder's mail first checks that its reminder still wants it.
async fn attempt(args: &MailerArgs, job: &MailJob) -> (Attempt, Option<Reminder>) {
    let mut current = None;
    if let MailKind::Reminder { reminder, .. } = job.kind {
        match args.store.get_reminder(reminder).await {
            Ok(Some(r)) if r.state == ReminderState::Sending => current = Some(r),
            Ok(_) => return (Attempt::Cancelled, None),
            // Deliver anyway: a missed cancellation beats a missed reminder.
            Err(e) => tracing::warn!(mail = %job.id, error = %e, "could not check the reminder"),
        }
    }
    let started = std::time::Instant::now();
    let delivered = args.transport.deliver(args.composer.from(), job).await;
    metrics::histogram!("corral_mail_delivery_duration_seconds", "kind" => job.kind.name())
        .record(started.elapsed().as_secs_f64());
    let attempt = match delivered {
        Ok(()) => Attempt::Delivered,
        Err(e) => Attempt::Failed(e),
    };
    (attempt, current)
}

/// Queues a mail: writes it to the store (so it survives a crash), then tells the
/// mailer. If the mailer is down, it finds the mail when it restarts.
pub async fn queue(
    store: &SharedStore,
    mailer: &super::ActorSlot<MailerMsg>,
    job: MailJob,
) -> Result<(), crate::store::StoreError> {
    store.enqueue_mail(&job).await?;
    if let Some(mailer) = mailer.get() {
        let _ = mailer.send_message(MailerMsg::Queued(Box::new(job)));
    }
    Ok(())
}
