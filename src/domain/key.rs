//! A position in a time-ordered listing: (instant in ms, id). It orders index rows and is
//! the opaque paging cursor `<ms>.<id>` handed to clients.

use chrono::{DateTime, TimeZone, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeKey<I> {
    pub at_ms: i64,
    pub id: I,
}

impl<I: std::fmt::Display + std::str::FromStr> TimeKey<I> {
    pub fn to_cursor(self) -> String {
        format!("{}.{}", self.at_ms, self.id)
    }

    pub fn parse_cursor(s: &str) -> Option<Self> {
        let (ms, id) = s.split_once('.')?;
        Some(Self {
            at_ms: ms.parse().ok()?,
            id: id.parse().ok()?,
        })
    }
}

impl<I> TimeKey<I> {
    pub fn at(&self) -> Option<DateTime<Utc>> {
        Utc.timestamp_millis_opt(self.at_ms).single()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventId;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let key = TimeKey {
            at_ms: 1_700_000_000_123,
            id: EventId::new(),
        };
        assert_eq!(TimeKey::parse_cursor(&key.to_cursor()), Some(key));
        for bad in ["", "12", "x.y", "12.not-a-uuid"] {
            assert_eq!(TimeKey::<EventId>::parse_cursor(bad), None, "{bad:?}");
        }
    }
}
