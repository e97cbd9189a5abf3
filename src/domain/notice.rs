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
        super::v7_time(self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{v7_floor, v7_time};

    #[test]
    fn the_floor_of_a_time_sorts_before_every_id_made_from_then_on() {
        let t = Utc::now();
        let floor = v7_floor(t);
        let later = Uuid::now_v7();
        assert!(floor <= later);
        assert!(v7_floor(t - chrono::Duration::milliseconds(1)) < floor);
        assert_eq!(v7_time(floor).timestamp_millis(), t.timestamp_millis());
        assert!(
            (v7_time(later) - t).num_milliseconds().abs() < 1000,
            "{}",
            v7_time(later)
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
