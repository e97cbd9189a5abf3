//! Reminders: "mail me about this event at that time", and where a due reminder waits.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::{Email, EventId, TimeKey, UserId};

super::id::uuid_id!(
    /// A reminder's identity.
    ReminderId
);

/// A position in a user's reminders (remind_at, id); also the paging cursor.
pub type ReminderKey = TimeKey<ReminderId>;

/// scheduled → sending (its mail is queued) → sent | failed. Deleting cancels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReminderState {
    Scheduled,
    Sending,
    Sent,
    Failed,
}

impl ReminderState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Scheduled, Self::Sending, Self::Sent, Self::Failed]
            .into_iter()
            .find(|state| state.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reminder {
    pub id: ReminderId,
    pub user_id: UserId,
    pub event_id: EventId,
    /// When the mail is due, UTC.
    pub remind_at: DateTime<Utc>,
    /// One of the owner's addresses.
    pub email: Email,
    pub state: ReminderState,
    /// Why it failed, when it did.
    pub detail: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Reminder {
    pub fn key(&self) -> ReminderKey {
        ReminderKey {
            at_ms: self.remind_at.timestamp_millis(),
            id: self.id,
        }
    }

    /// The row that waits in `reminders_due` while the reminder is scheduled.
    pub fn due(&self) -> Due {
        Due {
            bucket: Bucket::of(self.id, self.remind_at),
            at_ms: self.remind_at.timestamp_millis(),
            reminder: self.id,
        }
    }
}

/// Partitions of `reminders_due` per minute. Part of the stored layout: changing it
/// strands the rows already written under the old count.
pub const DUE_SHARDS: u16 = 8;

/// A `reminders_due` partition: a minute of due times and a shard of reminder ids. A
/// scheduler works a bucket only while it holds the bucket's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bucket {
    /// Minutes since the Unix epoch.
    pub minute: i64,
    pub shard: u16,
}

impl Bucket {
    pub fn of(id: ReminderId, at: DateTime<Utc>) -> Self {
        Self {
            minute: minute_of(at),
            // v7 ids end in random bits, so this spreads evenly.
            shard: (id.0.as_u128() % u128::from(DUE_SHARDS)) as u16,
        }
    }

    pub fn starts_at(self) -> DateTime<Utc> {
        Utc.timestamp_opt(self.minute * 60, 0)
            .single()
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// The minute (since the Unix epoch) an instant falls in.
pub fn minute_of(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(60)
}

/// A reminder waiting in `reminders_due`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Due {
    pub bucket: Bucket,
    pub at_ms: i64,
    pub reminder: ReminderId,
}

impl Due {
    pub fn at(&self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(self.at_ms)
            .single()
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_minutes_and_shards_stay_in_range() {
        let at = Utc.with_ymd_and_hms(2026, 11, 24, 12, 30, 59).unwrap();
        for _ in 0..100 {
            let b = Bucket::of(ReminderId::new(), at);
            assert!(b.shard < DUE_SHARDS);
            assert_eq!(
                b.starts_at(),
                Utc.with_ymd_and_hms(2026, 11, 24, 12, 30, 0).unwrap()
            );
        }
        let before_epoch = Utc.timestamp_opt(-1, 0).unwrap();
        assert_eq!(minute_of(before_epoch), -1);
    }

    #[test]
    fn states_round_trip() {
        for s in ["scheduled", "sending", "sent", "failed"] {
            assert_eq!(ReminderState::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(ReminderState::parse("cancelled"), None);
    }
}

/// What happened to a reminder, as pushed on the `reminders` feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReminderUpdate {
    Scheduled,
    Rescheduled,
    Sent,
    Failed,
    Cancelled,
}

impl ReminderUpdate {
    pub fn name(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Rescheduled => "rescheduled",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}
