//! Plain domain types and their validation. No I/O lives here.

pub mod event;
pub mod geo;
mod id;
pub mod image;
mod key;
pub mod mail;
pub mod notice;
pub mod quota;
pub mod reminder;
pub mod reservoir;
pub mod user;

pub use event::{Event, EventId, EventKey, Location};
pub use id::{v7_floor, v7_time};
pub use image::{
    Draft, Image, ImageFormat, ImageId, ImageName, ImageSummary, Tags, Viewer, claim_hash,
    new_claim_token,
};
pub use key::TimeKey;
pub use mail::{DeadLetter, MailId, MailJob, MailKind};
pub use notice::{FeedEntry, Notice};
pub use quota::{Held, Quota};
pub use reminder::{Bucket, Due, Reminder, ReminderId, ReminderKey, ReminderState, ReminderUpdate};
pub use user::{
    Email, Password, Session, SessionToken, TimeZone, TokenHash, User, UserId, Username,
};
