//! Events in the catalogue: what they are, where and when, and the rules their fields obey.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::geo::Point;
use super::{Tags, UserId};

pub const TITLE_LEN: std::ops::RangeInclusive<usize> = 1..=200;
pub const MAX_DESCRIPTION_LEN: usize = 5000;
pub const MAX_PLACE_NAME_LEN: usize = 200;
/// Most topics one event may have.
pub const MAX_TOPICS: usize = 10;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("title must be 1 to 200 characters on one line, without control characters")]
    BadTitle,
    #[error("description must be at most 5000 characters")]
    BadDescription,
    #[error(
        "an event has 1 to {MAX_TOPICS} topics of 1 to 64 characters of a-z, 0-9, '-', '_' or '.'"
    )]
    BadTopics,
    #[error("ends_at must not be before starts_at")]
    EndsBeforeStart,
    #[error("location name must be 1 to 200 characters on one line, without control characters")]
    BadPlaceName,
    #[error("lat must be within -90..90 and lon within -180..180")]
    BadCoordinates,
}

super::id::uuid_id!(
    /// An event's identity.
    EventId
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Location {
    pub name: String,
    pub lat: f64,
    pub lon: f64,
}

impl Location {
    pub fn parse(name: String, lat: f64, lon: f64) -> Result<Self, EventError> {
        let name = name.trim().to_owned();
        if name.is_empty() || name.chars().count() > MAX_PLACE_NAME_LEN {
            return Err(EventError::BadPlaceName);
        }
        Point::new(lat, lon).ok_or(EventError::BadCoordinates)?;
        Ok(Self { name, lat, lon })
    }

    pub fn point(&self) -> Point {
        Point {
            lat: self.lat,
            lon: self.lon,
        }
    }
}

/// One event. Times are UTC; clients may send any offset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: EventId,
    pub title: String,
    pub description: String,
    /// Lowercased, sorted, de-duplicated (the same rules as image tags).
    pub topics: Tags,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub location: Location,
    pub created_by: UserId,
    pub created_at: DateTime<Utc>,
}

impl Event {
    /// Checks the fields a client controls.
    pub fn validate(&self) -> Result<(), EventError> {
        // Titles and places end up in mail subjects and bodies: one line, no controls.
        let one_line = |t: &str| !t.chars().any(char::is_control);
        if !TITLE_LEN.contains(&self.title.trim().chars().count()) || !one_line(&self.title) {
            return Err(EventError::BadTitle);
        }
        if !one_line(&self.location.name) {
            return Err(EventError::BadPlaceName);
        }
        if self.description.chars().count() > MAX_DESCRIPTION_LEN {
            return Err(EventError::BadDescription);
        }
        if self.topics.as_slice().is_empty() || self.topics.as_slice().len() > MAX_TOPICS {
            return Err(EventError::BadTopics);
        }
        if self.ends_at < self.starts_at {
            return Err(EventError::EndsBeforeStart);
        }
        Ok(())
    }

    /// Where this event sits in every index: (start time, id).
    pub fn key(&self) -> EventKey {
        EventKey {
            at_ms: self.starts_at.timestamp_millis(),
            id: self.id,
        }
    }

    /// The geohash cells this event is indexed under.
    pub fn cells(&self) -> Vec<String> {
        super::geo::INDEXED_PRECISIONS
            .iter()
            .map(|p| self.location.point().geohash(*p))
            .collect()
    }
}

/// A position in the catalogue's order (start time, then id); also the paging cursor.
pub type EventKey = super::TimeKey<EventId>;

/// The day (since the Unix epoch, UTC) an instant falls on: the `events_by_day` partition.
pub fn day_of(t: DateTime<Utc>) -> i32 {
    i32::try_from(t.timestamp().div_euclid(86_400)).unwrap_or(i32::MAX)
}
