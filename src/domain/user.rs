//! Accounts: validated usernames, email addresses and passwords, the user record, and the
//! opaque session token.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const USERNAME_LEN: std::ops::RangeInclusive<usize> = 3..=32;
pub const PASSWORD_LEN: std::ops::RangeInclusive<usize> = 8..=128;
/// Longest email address accepted (RFC 5321's path limit).
pub const MAX_EMAIL_LEN: usize = 254;
/// Random bytes in a session token: 256 bits.
const TOKEN_SECRET_LEN: usize = 32;

/// Why an account value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccountError {
    #[error(
        "username must be 3 to 32 characters of a-z, 0-9, '_', '-' or '.', starting with a letter or digit"
    )]
    BadUsername,
    #[error("{0:?} is not a valid email address")]
    BadEmail(String),
    #[error("password must be 8 to 128 characters")]
    BadPassword,
    #[error("{0:?} is not an IANA time zone such as \"Europe/Paris\" or \"UTC\"")]
    BadTimeZone(String),
}

super::id::uuid_id!(
    /// An account's identity.
    UserId
);

/// A username, stored lowercase so `Alice` and `alice` are one account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Username(String);

impl Username {
    pub fn parse(s: &str) -> Result<Self, AccountError> {
        let s = s.trim().to_lowercase();
        let first_ok = s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
        let chars_ok = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if USERNAME_LEN.contains(&s.len()) && first_ok && chars_ok {
            Ok(Self(s))
        } else {
            Err(AccountError::BadUsername)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Username {
    type Error = AccountError;
    fn try_from(s: String) -> Result<Self, AccountError> {
        Self::parse(&s)
    }
}

impl From<Username> for String {
    fn from(u: Username) -> String {
        u.0
    }
}

/// An email address, parsed as a real address (RFC 5322) and lowercased for uniqueness.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    pub fn parse(s: &str) -> Result<Self, AccountError> {
        let s = s.trim();
        let bad = || AccountError::BadEmail(s.chars().take(64).collect());
        // Bare addresses only: no display names, brackets or spaces.
        if s.len() > MAX_EMAIL_LEN
            || s.contains(|c: char| c.is_whitespace() || c == '<' || c == '>')
        {
            return Err(bad());
        }
        let parsed = email_address::EmailAddress::from_str(s).map_err(|_| bad())?;
        // Display names ("Ann <a@b.c>") are not addresses; require the bare form.
        if parsed.as_str() != s || !parsed.domain().contains('.') {
            return Err(bad());
        }
        Ok(Self(s.to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Email {
    type Error = AccountError;
    fn try_from(s: String) -> Result<Self, AccountError> {
        Self::parse(&s)
    }
}

impl From<Email> for String {
    fn from(e: Email) -> String {
        e.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An IANA time zone ("Europe/Paris"); mails show times in the recipient's zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TimeZone(pub chrono_tz::Tz);

impl TimeZone {
    pub fn parse(s: &str) -> Result<Self, AccountError> {
        s.trim()
            .parse()
            .map(Self)
            .map_err(|_| AccountError::BadTimeZone(s.chars().take(64).collect()))
    }

    pub fn name(&self) -> &'static str {
        self.0.name()
    }
}

impl TryFrom<String> for TimeZone {
    type Error = AccountError;
    fn try_from(s: String) -> Result<Self, AccountError> {
        Self::parse(&s)
    }
}

impl From<TimeZone> for String {
    fn from(z: TimeZone) -> String {
        z.name().to_owned()
    }
}

/// A plaintext password on its way to the hasher. Never printed.
#[derive(Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct Password(String);

impl Password {
    pub fn parse(s: String) -> Result<Self, AccountError> {
        if PASSWORD_LEN.contains(&s.chars().count()) {
            Ok(Self(s))
        } else {
            Err(AccountError::BadPassword)
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Password {
    type Error = AccountError;
    fn try_from(s: String) -> Result<Self, AccountError> {
        Self::parse(s)
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// An account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub username: Username,
    /// Where mail goes by default.
    pub email: Email,
    /// Further addresses the user has added.
    pub secondary_emails: Vec<Email>,
    /// argon2id, in PHC string form.
    pub password_hash: String,
    pub admin: bool,
    pub created_at: DateTime<Utc>,
    /// Where the user lives, for the times in their mail (UTC unless they say).
    #[serde(default)]
    pub time_zone: TimeZone,
}

impl User {
    /// Every address of the account, primary first.
    pub fn emails(&self) -> impl Iterator<Item = &Email> {
        std::iter::once(&self.email).chain(&self.secondary_emails)
    }
}

/// A signed-in session, stored under the hash of its token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub user_id: UserId,
    pub token_hash: TokenHash,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// SHA-256 of a token's secret part; what the store keeps instead of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TokenHash(pub [u8; 32]);

/// The opaque bearer token a client holds: base64url of the user id and 256 random bits.
/// The user id lets the store find the session by its partition; the secret proves it.
pub struct SessionToken {
    pub user_id: UserId,
    secret: [u8; TOKEN_SECRET_LEN],
}

impl SessionToken {
    pub fn generate(user_id: UserId) -> Self {
        let mut secret = [0u8; TOKEN_SECRET_LEN];
        rand::fill(&mut secret);
        Self { user_id, secret }
    }

    /// Parses a client's token; `None` for anything malformed.
    pub fn parse(s: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(s.trim()).ok()?;
        if bytes.len() != 16 + TOKEN_SECRET_LEN {
            return None;
        }
        let user_id = UserId(Uuid::from_slice(&bytes[..16]).ok()?);
        let secret = bytes[16..].try_into().ok()?;
        Some(Self { user_id, secret })
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.secret).into())
    }

    /// The string handed to the client (shown once, never stored).
    pub fn reveal(&self) -> String {
        let mut bytes = self.user_id.0.as_bytes().to_vec();
        bytes.extend_from_slice(&self.secret);
        URL_SAFE_NO_PAD.encode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_lowercased_and_checked() {
        assert_eq!(Username::parse(" Alice_1 ").unwrap().as_str(), "alice_1");
        for bad in ["ab", "_alice", "al ice", "al/ice", &"a".repeat(33)] {
            assert!(Username::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn emails_must_be_bare_real_addresses() {
        assert_eq!(
            Email::parse("Ann@Example.COM").unwrap().as_str(),
            "ann@example.com"
        );
        for bad in [
            "ann",
            "ann@",
            "@example.com",
            "Ann <ann@example.com>",
            "ann@localhost",
            "a b@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tokens_round_trip_and_only_their_hash_is_kept() {
        let token = SessionToken::generate(UserId::new());
        let parsed = SessionToken::parse(&token.reveal()).unwrap();
        assert_eq!(parsed.user_id, token.user_id);
        assert_eq!(parsed.hash(), token.hash());
        assert!(SessionToken::parse("not-a-token").is_none());
        assert_ne!(SessionToken::generate(token.user_id).hash(), token.hash());
    }

    #[test]
    fn passwords_never_print() {
        let p = Password::parse("correct horse".into()).unwrap();
        assert_eq!(format!("{p:?}"), "Password(<redacted>)");
        assert!(Password::parse("short".into()).is_err());
    }
}
