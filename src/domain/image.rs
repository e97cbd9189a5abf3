//! The image record, its content-addressed name, and the rules its fields obey.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::TokenHash;

/// Most tags one image may carry.
pub const MAX_TAGS: usize = 32;
/// Longest tag, in bytes.
pub const MAX_TAG_LEN: usize = 64;

/// Why a domain value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DomainError {
    #[error("too many tags: at most {MAX_TAGS} are allowed")]
    TooManyTags,
    #[error(
        "tag {0:?} is invalid: tags are 1 to {MAX_TAG_LEN} characters of a-z, 0-9, '-', '_' or '.'"
    )]
    BadTag(String),
}

super::id::uuid_id!(
    /// An image's identity: a UUID v7, so ids sort by creation time.
    ImageId
);

/// The formats Corral accepts; everything else is refused at upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Jpeg,
    Png,
    Gif,
    Webp,
}

impl ImageFormat {
    /// The file extension used in names and on disk.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Jpeg => "jpg",
            Self::Png => "png",
            Self::Gif => "gif",
            Self::Webp => "webp",
        }
    }

    pub fn from_extension(ext: &str) -> Option<Self> {
        match ext {
            "jpg" => Some(Self::Jpeg),
            "png" => Some(Self::Png),
            "gif" => Some(Self::Gif),
            "webp" => Some(Self::Webp),
            _ => None,
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Gif => "image/gif",
            Self::Webp => "image/webp",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jpeg => "jpeg",
            Self::Png => "png",
            Self::Gif => "gif",
            Self::Webp => "webp",
        }
    }
}

impl FromStr for ImageFormat {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "jpeg" => Ok(Self::Jpeg),
            "png" => Ok(Self::Png),
            "gif" => Ok(Self::Gif),
            "webp" => Ok(Self::Webp),
            _ => Err(()),
        }
    }
}

/// A stored file's public name: `<40 lowercase hex sha1>.<extension>`.
///
/// Parsing is the only way to get one, so a name can never carry a path separator,
/// a dot segment or anything else that could escape the image directory.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ImageName {
    /// Lowercase hex: always ASCII (a fixed array, so a name is cloned without allocating).
    sha1: [u8; 40],
    format: ImageFormat,
}

impl ImageName {
    pub fn new(sha1: [u8; 20], format: ImageFormat) -> Self {
        let mut hex = [0; 40];
        // Cannot fail: 20 bytes take exactly 40 hex digits.
        let _ = hex::encode_to_slice(sha1, &mut hex);
        Self { sha1: hex, format }
    }

    /// Accepts exactly `<40 lowercase hex>.<jpg|png|gif|webp>`; anything else is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        let (sha1, ext) = s.split_once('.')?;
        let hex_ok =
            sha1.len() == 40 && sha1.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let format = ImageFormat::from_extension(ext)?;
        let sha1 = <[u8; 40]>::try_from(sha1.as_bytes()).ok()?;
        hex_ok.then_some(Self { sha1, format })
    }

    /// The content hash, lowercase hex.
    pub fn sha1(&self) -> &str {
        std::str::from_utf8(&self.sha1).unwrap_or_default()
    }

    pub fn format(&self) -> ImageFormat {
        self.format
    }

    /// The two shard directories (`ab`, `cd`) this file lives under.
    pub fn shards(&self) -> (&str, &str) {
        let sha1 = self.sha1();
        (&sha1[0..2], &sha1[2..4])
    }
}

impl fmt::Debug for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.sha1(), self.format.extension())
    }
}

/// A validated, de-duplicated, sorted set of tags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Tags(Vec<String>);

impl Tags {
    /// Parses a comma-separated list (`"llama, cute"`); tags are lowercased.
    pub fn parse_csv(s: &str) -> Result<Self, DomainError> {
        Self::parse(s.split(',').map(str::trim).filter(|t| !t.is_empty()))
    }

    pub fn parse<'a>(tags: impl IntoIterator<Item = &'a str>) -> Result<Self, DomainError> {
        let mut out = Vec::new();
        for tag in tags {
            let tag = tag.to_lowercase();
            let ok = !tag.is_empty()
                && tag.len() <= MAX_TAG_LEN
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !ok {
                return Err(DomainError::BadTag(tag));
            }
            out.push(tag);
        }
        out.sort();
        out.dedup();
        if out.len() > MAX_TAGS {
            return Err(DomainError::TooManyTags);
        }
        Ok(Self(out))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    pub fn contains(&self, tag: &str) -> bool {
        self.0.binary_search_by(|t| t.as_str().cmp(tag)).is_ok()
    }
}

/// An uploaded image's metadata. The bytes live on disk under [`ImageName`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub id: ImageId,
    pub name: String,
    pub sha1: String,
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
    pub tags: Tags,
    /// The account that uploaded it; `None` for anonymous uploads.
    #[serde(default)]
    pub owner: Option<crate::domain::UserId>,
    pub created_at: DateTime<Utc>,
    /// Its BlurHash placeholder; `None` for images stored before placeholders were made.
    #[serde(default)]
    pub blurhash: Option<String>,
    /// Set while the image is a draft (uploaded with `?draft=true`, not yet attached);
    /// `None` once published (and for every image stored before drafts existed).
    #[serde(default)]
    pub draft: Option<Draft>,
}

/// What a draft carries until it is attached: when it expires, and for an anonymous
/// upload the hash of the claim token it was given (the token itself is shown once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draft {
    pub expires_at: DateTime<Utc>,
    #[serde(default)]
    pub claim: Option<TokenHash>,
}

/// Who is asking to see an image: a signed-in user (or nobody), and the claim token
/// they sent, if any.
#[derive(Debug, Clone, Copy, Default)]
pub struct Viewer<'a> {
    pub user: Option<&'a crate::domain::User>,
    pub claim: Option<&'a str>,
}

impl Image {
    pub fn summary(&self) -> ImageSummary {
        ImageSummary {
            id: self.id,
            name: self.name.clone(),
            width: self.width,
            height: self.height,
            blurhash: self.blurhash.clone(),
            tags: self.tags.clone(),
            rendered: std::sync::OnceLock::new(),
        }
    }

    pub fn is_draft(&self) -> bool {
        self.draft.is_some()
    }

    /// A draft past its expiry: gone for every reader, whether or not the sweeper has
    /// removed it yet.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.draft.as_ref().is_some_and(|d| d.expires_at <= now)
    }

    /// Whether `viewer` may see this image: a published one, anyone; a live draft, its
    /// owner or whoever holds its claim token; an expired draft, nobody.
    pub fn visible_to(&self, viewer: Viewer<'_>, now: DateTime<Utc>) -> bool {
        let Some(draft) = &self.draft else {
            return true;
        };
        if draft.expires_at <= now {
            return false;
        }
        let owns = viewer
            .user
            .is_some_and(|u| self.owner.is_some_and(|o| o == u.id));
        owns || draft
            .claim
            .is_some_and(|c| viewer.claim.map(claim_hash) == Some(c))
    }
}

/// A new claim token for an anonymous draft (256 random bits, base64url), and the hash
/// the store keeps instead.
pub fn new_claim_token() -> (String, TokenHash) {
    use base64::Engine;
    let mut secret = [0u8; 32];
    rand::fill(&mut secret);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let hash = claim_hash(&token);
    (token, hash)
}

/// The stored form of a claim token.
pub fn claim_hash(token: &str) -> TokenHash {
    use sha2::Digest;
    TokenHash(sha2::Sha256::digest(token.trim().as_bytes()).into())
}

/// What the random sample keeps of an image: enough to answer `/random` without the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSummary {
    pub id: ImageId,
    pub name: String,
    pub width: u32,
    pub height: u32,
    #[serde(default)]
    pub blurhash: Option<String>,
    /// Its tags, for drawing by tag (not part of the rendered entry).
    #[serde(skip)]
    pub tags: Tags,
    /// The entry as `/random` renders it in JSON, made once on first use: a sample entry
    /// is served many times, and re-serialising it each time was most of that route's
    /// cost.
    #[serde(skip)]
    pub rendered: std::sync::OnceLock<bytes::Bytes>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_only_in_their_exact_shape() {
        let good = "0123456789abcdef0123456789abcdef01234567.png";
        assert_eq!(
            ImageName::parse(good).map(|n| n.to_string()).as_deref(),
            Some(good)
        );
        for bad in [
            "../etc/passwd",
            "0123456789abcdef0123456789abcdef01234567.png/..",
            "0123456789ABCDEF0123456789abcdef01234567.png",
            "0123456789abcdef0123456789abcdef0123456.png",
            "0123456789abcdef0123456789abcdef01234567.bmp",
            "0123456789abcdef0123456789abcdef01234567.png.png",
            "",
        ] {
            assert!(ImageName::parse(bad).is_none(), "{bad:?} parsed");
        }
    }

    #[test]
    fn tags_are_lowercased_sorted_and_deduplicated() {
        let tags = Tags::parse_csv("Llama, cute,llama,,").unwrap();
        assert_eq!(tags.as_slice(), ["cute", "llama"]);
        assert!(Tags::parse_csv("no spaces please").is_err());
        assert!(Tags::parse_csv("a/b").is_err());
    }
}
