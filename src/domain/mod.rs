//! Plain domain types and their validation. No I/O lives here.

pub mod image;
pub mod reservoir;

pub use image::{Image, ImageFormat, ImageId, ImageName, ImageSummary, Tags};
