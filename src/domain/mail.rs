//! Mail waiting in the mailer's persisted queue, and mail that gave up.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Email, ReminderId, UserId};

super::id::uuid_id!(
    /// A queued mail's identity: the reminder's id for a reminder, the account's id for a
    /// welcome mail, so queueing the same mail twice writes one row.
    MailId
);

/// Why the mail is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum MailKind {
    Reminder {
        reminder: ReminderId,
        remind_at: DateTime<Utc>,
    },
    Welcome {
        user: UserId,
    },
}

impl MailKind {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Reminder { .. } => "reminder",
            Self::Welcome { .. } => "welcome",
        }
    }
}

/// One mail, rendered, with its delivery attempts so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MailJob {
    pub id: MailId,
    /// The node whose mailer delivers it (its queue partition).
    pub node: String,
    pub kind: MailKind,
    pub to: Email,
    pub subject: String,
    /// The plain-text part.
    pub body: String,
    /// The HTML part, if the mail has one (jobs queued before it existed have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// The one-click unsubscribe URL (`List-Unsubscribe`), if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<String>,
    /// Stable across retries, so a receiver can recognise a mail sent twice.
    pub message_id: String,
    /// Failed attempts so far.
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A mail the mailer gave up on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub job: MailJob,
    pub reason: String,
    pub died_at: DateTime<Utc>,
}
