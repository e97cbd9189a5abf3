//! Notices: what one node tells every node (its own WebSocket subscribers and random
//! sample at once, the others through the store's push feed), and the feed's entries.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Image, ImageId, Reminder, ReminderUpdate};

/// Something that happened which every node's subscribers or sample must hear of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    /// An image was published (uploaded, or a draft attached).
    ImageCreated { image: Box<Image> },
    /// A published image's tags or placeholder changed.
    ImageChanged { image: Box<Image> },
    /// A published image was deleted.
    ImageDeleted { id: ImageId },
    /// One of a user's reminders changed.
    Reminder {
        update: ReminderUpdate,
        reminder: Box<Reminder>,
    },
}

/// One notice in the push feed. The id is a UUID v7, so ids order by the time the
/// publishing node gave them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedEntry {
    pub id: Uuid,
    /// The node that published it (`node.id`); it skips its own entries.
    pub origin: String,
    pub notice: Notice,
}

impl FeedEntry {
    pub fn new(origin: &str, notice: Notice) -> Self {
        Self {
            id: Uuid::now_v7(),
            origin: origin.to_owned(),
            notice,
        }
    }

    /// When the entry was published (its id's time).
    pub fn at(&self) -> DateTime<Utc> {
        time_of(self.id)
    }
}

/// The smallest v7 id of the millisecond `t` (a bound for "published since `t`").
pub fn feed_floor(t: DateTime<Utc>) -> Uuid {
    let ms = u64::try_from(t.timestamp_millis()).unwrap_or(0);
    // A v7 UUID starts with its 48-bit Unix time in milliseconds; version 7, variant
    // RFC 4122, every other bit zero.
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    Uuid::from_bytes(bytes)
}

/// The time of a v7 id (the epoch for any other id).
pub fn time_of(id: Uuid) -> DateTime<Utc> {
    let ms = id
        .get_timestamp()
        .map(|ts| {
            let (secs, nanos) = ts.to_unix();
            secs.saturating_mul(1000) + u64::from(nanos / 1_000_000)
        })
        .unwrap_or(0);
    DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(0)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_of_a_time_sorts_before_every_id_made_from_then_on() {
        let t = Utc::now();
        let floor = feed_floor(t);
        let later = Uuid::now_v7();
        assert!(floor <= later);
        assert!(feed_floor(t - chrono::Duration::milliseconds(1)) < floor);
        assert_eq!(time_of(floor).timestamp_millis(), t.timestamp_millis());
        assert!(
            (time_of(later) - t).num_milliseconds().abs() < 1000,
            "{}",
            time_of(later)
        );
    }

    #[test]
    fn a_notice_survives_its_json() {
        let entry = FeedEntry::new("node-a", Notice::ImageDeleted { id: ImageId::new() });
        let json = serde_json::to_string(&entry).unwrap();
        assert!(json.contains(r#""kind":"image_deleted""#), "{json}");
        let back: FeedEntry = serde_json::from_str(&json).unwrap();
        assert_eq!(back, entry);
    }
}
