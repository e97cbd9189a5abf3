//! `mailer` delivers the mails in this node's partition of the persisted `mail_queue`.
//! It loads the partition when it starts (so a crash or restart loses nothing), learns of
//! newly queued mails by message, and keeps the waiting ones in memory ordered by their
//! next attempt. Up to `concurrency` deliveries run at once, each in its own task; the
//! outcome comes back as a message and is recorded in the store: delivered mails leave
//! the queue, failures back off exponentially with jitter, and a mail that fails
//! permanently or too often becomes a dead letter. Supervised by the root supervisor.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::Alarm;
use crate::domain::{DeadLetter, MailId, MailJob, MailKind, ReminderState};
use crate::mail::{Composer, DeliveryError, RetryPolicy, Transport};
use crate::store::SharedStore;

pub struct MailerArgs {
    pub store: SharedStore,
    pub transport: Arc<Transport>,
    pub composer: Composer,
    pub policy: RetryPolicy,
    pub concurrency: usize,
}

impl Clone for MailerArgs {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            transport: self.transport.clone(),
            composer: self.composer.clone(),
            policy: self.policy,
            concurrency: self.concurrency,
        }
    }
}

/// How one delivery attempt ended.
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
    /// A delivery attempt finished.
    Attempted(Box<MailJob>, Attempt),
}

pub struct Mailer;

pub struct MailerState {
    args: MailerArgs,
    /// Mails waiting for their next attempt, by (next attempt, id).
    waiting: BTreeMap<(i64, MailId), MailJob>,
    in_flight: HashSet<MailId>,
    alarm: Alarm<MailerMsg>,
}

impl MailerState {
    fn wait(&mut self, job: MailJob) {
        self.waiting.retain(|(_, id), _| *id != job.id);
        self.waiting
            .insert((job.next_attempt_at.timestamp_millis(), job.id), job);
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
        let queued = args.store.queued_mail(args.composer.node()).await?;
        tracing::info!(queued = queued.len(), "mailer loaded its queue");
        let mut state = MailerState {
            args,
            waiting: BTreeMap::new(),
            in_flight: HashSet::new(),
            alarm: Alarm::default(),
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
        dispatch(&myself, state);
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.alarm.clear();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: MailerMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MailerMsg::Queued(job) => {
                if !state.in_flight.contains(&job.id) {
                    state.wait(*job);
                }
            }
            MailerMsg::Wake => {}
            MailerMsg::Attempted(job, outcome) => {
                state.in_flight.remove(&job.id);
                record(state, *job, outcome).await;
            }
        }
        dispatch(&myself, state);
        Ok(())
    }
}

/// Records an attempt's outcome in the store (and the metrics).
async fn record(state: &mut MailerState, mut job: MailJob, outcome: Attempt) {
    let store = &state.args.store;
    let kind = job.kind.name();
    match outcome {
        Attempt::Delivered => {
            metrics::counter!("corral_mails_sent_total", "kind" => kind).increment(1);
            if let MailKind::Reminder { remind_at, .. } = job.kind {
                let late = (Utc::now() - remind_at).to_std().unwrap_or_default();
                metrics::histogram!("corral_reminder_lateness_seconds").record(late.as_secs_f64());
            }
            if let Err(e) = store.mail_sent(&job).await {
                tracing::error!(mail = %job.id, error = %e, "could not record a delivered mail; it may be sent again after a restart");
            }
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
        state.in_flight.insert(job.id);
        let args = state.args.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            let outcome = attempt(&args, &job).await;
            // If the mailer stopped meanwhile, the job is still queued in the store.
            let _ = myself.send_message(MailerMsg::Attempted(Box::new(job), outcome));
        });
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

async fn attempt(args: &MailerArgs, job: &MailJob) -> Attempt {
    if let MailKind::Reminder { reminder, .. } = job.kind {
        match args.store.get_reminder(reminder).await {
            Ok(Some(r)) if r.state == ReminderState::Sending => {}
            Ok(_) => return Attempt::Cancelled,
            // Deliver anyway: a missed cancellation beats a missed reminder.
            Err(e) => tracing::warn!(mail = %job.id, error = %e, "could not check the reminder"),
        }
    }
    match args.transport.deliver(args.composer.from(), job).await {
        Ok(()) => Attempt::Delivered,
        Err(e) => Attempt::Failed(e),
    }
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
