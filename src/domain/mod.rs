//! Plain domain types and their validation. No I/O lives here.

pub mod image;
pub mod reservoir;
pub mod user;

pub use image::{Image, ImageFormat, ImageId, ImageName, ImageSummary, Tags};
pub use user::{Email, Password, Session, SessionToken, TokenHash, User, UserId, Username};
