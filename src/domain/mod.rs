//! Plain domain types and their validation. No I/O lives here.

pub mod event;
pub mod geo;
mod id;
pub mod image;
pub mod reservoir;
pub mod user;

pub use event::{Event, EventId, EventKey, Location};
pub use image::{Image, ImageFormat, ImageId, ImageName, ImageSummary, Tags};
pub use user::{Email, Password, Session, SessionToken, TokenHash, User, UserId, Username};
