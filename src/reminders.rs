//! Reminders: "mail me about this event at that time", for every frontend.
//!
//! Each change is written to the store first, then the scheduler is told (if it is down,
//! it reads the store when it restarts) and the owner's WebSocket connections are pushed
//! the new state. Each user sees only their own reminders; anyone else's is not found.

use chrono::{DateTime, Duration, FixedOffset, Utc};

use crate::actors::relay::Notices;
use crate::actors::{ActorSlot, SchedulerMsg};
use crate::domain::user::AccountError;
use crate::domain::{
    Email, EventId, Notice, Reminder, ReminderId, ReminderKey, ReminderState, ReminderUpdate, User,
    UserId,
};
use crate::links::Links;
use crate::store::{SharedStore, StoreError};

/// How far ahead a reminder may be set.
const MAX_AHEAD_DAYS: i64 = 3660;
/// Reminders cancelled per store read when an account goes.
const DELETE_PAGE: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum RemindersError {
    /// No such reminder of the caller's; holds the id as the client gave it.
    #[error("no reminder with id {0:?}")]
    NotFound(String),
    /// An unsubscribe token Corral did not make (or made under another secret).
    #[error("this unsubscribe link is not one Corral made")]
    UnknownLink,
    /// The request is well formed but cannot be honoured (a time in the past, an unknown
    /// event, an address that is not the user's).
    #[error("{0}")]
    Unprocessable(String),
    #[error(transparent)]
    BadEmail(#[from] AccountError),
    #[error("the reminder is {} and can no longer be changed", .0.as_str())]
    NotScheduled(ReminderState),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A change to a scheduled reminder; `None` keeps the current value.
#[derive(Debug, Default)]
pub struct Changes<'a> {
    pub remind_at: Option<DateTime<FixedOffset>>,
    pub email: Option<&'a str>,
}

/// Cheap to clone: the store and the actor slots are shared.
#[derive(Clone)]
pub struct Reminders {
    store: SharedStore,
    scheduler: ActorSlot<SchedulerMsg>,
    notices: Notices,
    /// Checks the unsubscribe links of reminder mails.
    links: Links,
}

impl Reminders {
    pub fn new(
        store: SharedStore,
        scheduler: ActorSlot<SchedulerMsg>,
        notices: Notices,
        links: Links,
    ) -> Self {
        Self {
            store,
            scheduler,
            notices,
            links,
        }
    }

    /// Schedules a reminder of `event_id` for `user`, to `email` (default: the primary
    /// address).
    pub async fn create(
        &self,
        user: &User,
        event_id: &str,
        remind_at: DateTime<FixedOffset>,
        email: Option<&str>,
    ) -> Result<Reminder, RemindersError> {
        let remind_at = future(remind_at)?;
        let unknown = || RemindersError::Unprocessable(format!("no event with id {event_id:?}"));
        let event_id: EventId = event_id.parse().map_err(|_| unknown())?;
        let event = self.store.get_event(event_id).await?.ok_or_else(unknown)?;
        let email = match email {
            Some(email) => own_email(user, email)?,
            None => user.email.clone(),
        };
        let now = Utc::now();
        let reminder = Reminder {
            id: ReminderId::new(),
            user_id: user.id,
            event_id: event.id,
            remind_at,
            email,
            state: ReminderState::Scheduled,
            detail: None,
            created_at: now,
            updated_at: now,
        };
        self.store.insert_reminder(&reminder).await?;
        metrics::counter!("corral_reminders_scheduled_total").increment(1);
        self.announce(ReminderUpdate::Scheduled, &reminder);
        Ok(reminder)
    }

    /// `owner`'s reminder `id`.
    pub async fn find(&self, owner: UserId, id: &str) -> Result<Reminder, RemindersError> {
        let missing = || RemindersError::NotFound(id.to_owned());
        let parsed: ReminderId = id.parse().map_err(|_| missing())?;
        self.store
            .get_reminder(parsed)
            .await?
            .filter(|r| r.user_id == owner)
            .ok_or_else(missing)
    }

    /// Moves `user`'s scheduled reminder `id` to another time and/or address.
    pub async fn change(
        &self,
        user: &User,
        id: &str,
        changes: Changes<'_>,
    ) -> Result<Reminder, RemindersError> {
        let before = self.find(user.id, id).await?;
        if before.state != ReminderState::Scheduled {
            return Err(RemindersError::NotScheduled(before.state));
        }
        let mut after = before.clone();
        if let Some(t) = changes.remind_at {
            after.remind_at = future(t)?;
        }
        if let Some(email) = changes.email {
            after.email = own_email(user, email)?;
        }
        after.updated_at = Utc::now();
        match self.store.update_reminder(&before, &after).await {
            // It fired (or changed) meanwhile: say what it is now.
            Err(StoreError::Changed) => {
                let now = self.find(user.id, id).await?;
                return Err(RemindersError::NotScheduled(now.state));
            }
            result => result?,
        }
        if after.remind_at != before.remind_at {
            metrics::counter!("corral_reminders_scheduled_total").increment(1);
        }
        self.announce(ReminderUpdate::Rescheduled, &after);
        Ok(after)
    }

    /// Deletes `owner`'s reminder `id`; a scheduled one is cancelled.
    pub async fn cancel(&self, owner: UserId, id: &str) -> Result<(), RemindersError> {
        let reminder = self.find(owner, id).await?;
        self.remove(&reminder).await
    }

    /// The reminder an unsubscribe token was made for: `None` if it is gone already.
    pub async fn by_token(&self, token: &str) -> Result<Option<Reminder>, RemindersError> {
        let id = self
            .links
            .verify(token)
            .ok_or(RemindersError::UnknownLink)?;
        Ok(self.store.get_reminder(id).await?)
    }

    /// Deletes the reminder of an unsubscribe token (a one-click unsubscribe from its
    /// mail); returns it, or `None` if it was gone already.
    pub async fn unsubscribe(&self, token: &str) -> Result<Option<Reminder>, RemindersError> {
        let reminder = self.by_token(token).await?;
        if let Some(reminder) = &reminder {
            self.remove(reminder).await?;
        }
        Ok(reminder)
    }

    /// Deletes every reminder of `owner`.
    pub async fn cancel_all_of(&self, owner: UserId) -> Result<(), RemindersError> {
        loop {
            let page = self.store.reminders_of(owner, None, DELETE_PAGE).await?;
            if page.is_empty() {
                return Ok(());
            }
            for reminder in &page {
                self.remove(reminder).await?;
            }
        }
    }

    /// A page of `owner`'s reminders by time, after the cursor `after`.
    pub async fn page(
        &self,
        owner: UserId,
        after: Option<ReminderKey>,
        limit: usize,
    ) -> Result<Vec<Reminder>, RemindersError> {
        Ok(self.store.reminders_of(owner, after, limit).await?)
    }

    async fn remove(&self, reminder: &Reminder) -> Result<(), RemindersError> {
        self.store.delete_reminder(reminder).await?;
        self.announce(ReminderUpdate::Cancelled, reminder);
        Ok(())
    }

    /// Tells the scheduler (if it is down, it reads the store when it restarts) and the
    /// owner's WebSocket connections.
    fn announce(&self, update: ReminderUpdate, reminder: &Reminder) {
        let msg = match update {
            ReminderUpdate::Cancelled => SchedulerMsg::Cancelled(reminder.id),
            _ => SchedulerMsg::Scheduled {
                id: reminder.id,
                remind_at: reminder.remind_at,
            },
        };
        if let Some(scheduler) = self.scheduler.get() {
            let _ = scheduler.send_message(msg);
        }
        self.notices.announce(Notice::Reminder {
            update,
            reminder: Box::new(reminder.clone()),
        });
    }
}

/// `remind_at` in UTC, if it is in the future and not absurdly far.
fn future(t: DateTime<FixedOffset>) -> Result<DateTime<Utc>, RemindersError> {
    let t = t.with_timezone(&Utc);
    let now = Utc::now();
    if t <= now {
        return Err(RemindersError::Unprocessable(format!(
            "remind_at must be in the future (it is {}, now is {})",
            t.to_rfc3339(),
            now.to_rfc3339()
        )));
    }
    if t > now + Duration::days(MAX_AHEAD_DAYS) {
        return Err(RemindersError::Unprocessable(format!(
            "remind_at may be at most {MAX_AHEAD_DAYS} days ahead"
        )));
    }
    Ok(t)
}

/// The address, if it is one of the user's.
fn own_email(user: &User, email: &str) -> Result<Email, RemindersError> {
    let email = Email::parse(email)?;
    if user.emails().any(|e| *e == email) {
        Ok(email)
    } else {
        Err(RemindersError::Unprocessable(format!(
            "{email} is not one of your addresses; add it first (POST /v1/users/me/emails)"
        )))
    }
}
